"""Training curves: metrics against step, runs overlaid, seeds aggregated into a named band.

Training metrics may be smoothed (a trailing mean over steps); held-out evaluations never are:
they are few, so they are drawn as markers and lines, and the last point of an evaluation curve is
the run's last evaluation (the mean of the runs' last evaluations for a group of seeds).

What a training metric measures with dynamic sampling depends on when the run was made: runs that
log ``<metric>_kept`` beside ``<metric>`` report ``<metric>`` over every sampled group (comparable
with GRPO); older runs of an algorithm with dynamic sampling report it over the kept groups only.
Panels say which (:func:`population_note`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .sources import RunData, as_runs
from .style import PALETTE, algorithm_color, display_name, rgba, styled

__all__ = [
    "DEFAULT_METRICS",
    "DEFAULT_EVALS",
    "METRIC_LABELS",
    "run_series",
    "aggregate_runs",
    "add_curve",
    "add_curves",
    "add_band_legend",
    "band_label",
    "population_note",
    "step_axis",
    "training_curves",
    "titled",
]

#: ``clip_frac`` and ``approx_kl`` are left out: with one update per batch (the default) the policy that
#: sampled is the one updated, so the ratio is 1, nothing is clipped and the KL is 0. Ask for them
#: with ``ppo_epochs > 1`` or several mini-batches.
DEFAULT_METRICS = ("accuracy", "reward", "entropy", "response_len_mean", "grad_norm")
DEFAULT_EVALS = ("greedy_accuracy", "sampled_accuracy")
BANDS = ("minmax", "std", None)
#: metric -> (panel title, y-axis title with unit, tick format)
METRIC_LABELS = {
    "accuracy": ("training accuracy", "accuracy (% of responses)", ".0%"),
    "reward": ("training reward", "reward (mean per response)", None),
    "entropy": ("training entropy", "entropy (nats per token)", None),
    "response_len_mean": ("response length", "length (tokens)", None),
    "grad_norm": ("gradient norm", "L2 norm (before clipping)", None),
    "loss": ("loss", "loss", None),
    "clip_frac": ("clipped tokens", "clipped (% of tokens)", ".0%"),
    "approx_kl": ("approx. KL(old ‖ new)", "KL (nats per token)", None),
    "generated_tokens": ("generated tokens", "tokens per step", None),
    "eval greedy_accuracy": ("held-out greedy accuracy", "accuracy (% of problems)", ".0%"),
    "eval sampled_accuracy": ("held-out sampled accuracy", "accuracy (% of problems)", ".0%"),
    "eval entropy": ("held-out entropy (sampled)", "entropy (nats per token)", None),
    **{
        f"eval pass@{k}": (f"held-out pass@{k}", f"pass@{k} (% of problems)", ".0%")
        for k in (1, 2, 4, 8, 16, 32, 64, 128)
    },
    "entropy_coef": ("entropy bonus weight", "coefficient", None),
    "top_entropy_kept_frac": ("forking tokens trained on", "kept (% of tokens)", ".0%"),
    "clip_cov_frac": ("Clip-Cov detached tokens", "detached (% of tokens)", ".2%"),
    "kl_cov_frac": ("KL-Cov penalised tokens", "penalised (% of tokens)", ".2%"),
    "erc_kept_frac": ("ERC kept tokens", "kept (% of tokens)", ".0%"),
}
_KEPT_AFFECTED = ("accuracy", "reward", "entropy", "response_len_mean")


def run_series(run: RunData, metric: str, *, evals: bool = False, smooth: int = 1) -> pd.Series | None:
    """``metric`` of one run indexed by step (the last row of a repeated step wins), training metrics
    smoothed by a trailing mean over ``smooth`` steps (evaluations never); None when the run does not log it."""
    table = run.evals if evals else run.metrics
    if metric not in table.columns or "step" not in table.columns:
        return None
    series = pd.to_numeric(table.set_index("step")[metric], errors="coerce").astype(float)
    series = series[~series.index.duplicated(keep="last")].sort_index()
    if series.isna().all():
        return None
    return series.rolling(smooth, min_periods=1).mean() if smooth > 1 and not evals else series


def aggregate_runs(
    runs, metric: str, *, by: str = "algorithm", evals: bool = False, smooth: int = 1, band: str | None = "minmax"
) -> dict[str, pd.DataFrame]:
    """Per overlay group, a table indexed by step: ``mean``, ``lower``, ``upper``, ``runs``.

    The band is the min–max (``band="minmax"``) or mean ± std (``"std"``, sample std) across
    the group's runs at each step; ``lower``/``upper`` equal the mean with ``band=None``.
    """
    if band not in BANDS:
        raise ValueError(f"band must be one of {BANDS}, got {band!r}")
    columns: dict[str, dict[str, pd.Series]] = {}
    for run in as_runs(runs):
        series = run_series(run, metric, evals=evals, smooth=smooth)
        if series is not None:
            columns.setdefault(run.key(by), {})[run.label] = series
    out = {}
    for key, series in columns.items():
        wide = pd.DataFrame(series)
        table = pd.DataFrame({"mean": wide.mean(axis=1), "runs": wide.notna().sum(axis=1)})
        if band == "minmax":
            table["lower"], table["upper"] = wide.min(axis=1), wide.max(axis=1)
        elif band == "std":
            std = wide.std(axis=1).fillna(0.0)
            table["lower"], table["upper"] = table["mean"] - std, table["mean"] + std
        else:
            table["lower"] = table["upper"] = table["mean"]
        out[key] = table
    return out


def band_label(band: str | None, runs: int) -> str:
    """What the shaded band is, for the legend."""
    what = {"minmax": "min–max", "std": "mean ± 1 std"}.get(band, "")
    return f"band: {what} over runs (up to {runs})" if what else ""


def add_curve(
    fig: go.Figure,
    table: pd.DataFrame,
    *,
    name: str,
    color: str,
    row: int,
    col: int,
    meta: dict,
    showlegend: bool = True,
    band: bool = True,
    markers: bool | None = None,
    dash: str | None = None,
) -> None:
    """Add a mean line (``table["mean"]`` against its index) and, when ``band``, the shaded
    ``lower``–``upper`` band behind it. Every trace's ``meta`` is ``meta`` plus its ``kind``.
    ``markers``: draw a marker at every point (default: when there are at most 30), so that a lone
    point between gaps stays visible."""
    x = list(table.index)
    markers = len(x) <= 30 if markers is None else markers
    if band:
        common = {"mode": "lines", "line": {"width": 0}, "showlegend": False, "hoverinfo": "skip", "legendgroup": name}
        fill = {"upper": {}, "lower": {"fill": "tonexty", "fillcolor": rgba(color, 0.2)}}  # the lower edge fills up
        for edge in ("upper", "lower"):
            trace = go.Scatter(x=x, y=table[edge], name=f"{name} {edge}", meta={**meta, "kind": edge}, **common)
            fig.add_trace(trace.update(fill[edge]), row=row, col=col)
    fig.add_trace(
        go.Scatter(
            x=x,
            y=table["mean"],
            mode="lines+markers" if markers else "lines",
            name=name,
            legendgroup=name,
            line={"color": color, "width": 2, "dash": dash},
            marker={"size": 5},
            showlegend=showlegend,
            meta={**meta, "kind": "mean"},
        ),
        row=row,
        col=col,
    )


def add_curves(
    fig: go.Figure,
    groups: dict[str, pd.DataFrame],
    *,
    row: int,
    col: int,
    meta: dict,
    in_legend: set,
    band: bool = True,
    markers: bool | None = None,
) -> int:
    """One panel's overlay: :func:`add_curve` for each ``{group: table}`` of :func:`aggregate_runs`, in the
    group's colour and display name, a band where the group has several runs, each group in the legend
    once per figure (``in_legend`` collects the shown ones). Returns the most runs behind one curve."""
    widest = 1
    for key, table in groups.items():
        runs = int(table["runs"].max())
        widest = max(widest, runs)
        add_curve(
            fig,
            table,
            name=display_name(key),
            color=algorithm_color(key),
            row=row,
            col=col,
            meta={**meta, "group": key},
            showlegend=key not in in_legend,
            band=band and runs > 1,
            markers=markers,
        )
        in_legend.add(key)
    return widest


def add_band_legend(fig: go.Figure, label: str) -> None:
    """A legend entry that says what the shaded bands are (``label``, e.g. :func:`band_label`'s)."""
    fig.add_trace(
        go.Scatter(
            x=[None],
            y=[None],
            mode="markers",
            name=label,
            marker={"symbol": "square", "size": 12, "color": "rgba(120,120,120,0.3)"},
            meta={"kind": "band_legend"},
        )
    )


def population_note(runs: list[RunData], metric: str) -> str:
    """Which sampled groups ``metric`` covers, when runs differ: names of the runs' algorithms whose
    values cover the kept groups only (runs with dynamic sampling from before the trainer logged every
    group and the ``updated`` column); ``""`` when all cover every group."""
    if metric not in _KEPT_AFFECTED:
        return ""
    kept_only = sorted(
        {
            display_name(r.algorithm)
            for r in runs
            if r.config.get("dynamic_sampling")
            and metric in r.metrics.columns
            and f"{metric}_kept" not in r.metrics.columns
            and "updated" not in r.metrics.columns  # today's runs: every group, also when none was kept
        }
    )
    return f"kept groups only: {', '.join(kept_only)}" if kept_only else ""


def step_axis(fig: go.Figure, last_step: float, **where) -> None:
    """Whole-number step ticks (never 1.5) on the x axes of ``where`` (all by default)."""
    dtick = max(1, math.ceil(max(last_step, 1) / 6))
    for nice in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000):
        if nice >= dtick:
            dtick = nice
            break
    fig.update_xaxes(tickmode="linear", tick0=0, dtick=dtick, tickformat="d", **where)


def _value_range(panel: str) -> dict:
    """Axis limits a metric cannot leave: shares within 0-100%, counts and norms from 0 (so a lone point or
    a flat line at 0 is not drawn on an axis from -100% to 100%)."""
    tickformat = METRIC_LABELS.get(panel, (None, None, None))[2]
    if tickformat == ".0%":
        return {"clipmin": 0, "clipmax": 1}
    nonnegative = ("entropy", "response_len_mean", "grad_norm", "approx_kl", "generated_tokens")
    return {"clipmin": 0} if panel.removeprefix("eval ") in nonnegative else {}


def _no_update_steps(run: RunData) -> list:
    m = run.metrics
    if "updated" in m.columns:
        return list(m.loc[~m["updated"].astype(bool), "step"])
    if "grad_norm" in m.columns and len(m):  # older runs: no gradient norm logged on such a step
        return list(m.loc[pd.to_numeric(m["grad_norm"], errors="coerce").isna(), "step"])
    return []


def _mark_no_update(fig: go.Figure, runs: list[RunData], by: str, row: int, col: int) -> None:
    """Crosses on the step axis (y = 0) at steps where a run made no update (no group kept)."""
    shown = any(t.legendgroup == "no-update" and t.showlegend is not False for t in fig.data)
    for key in dict.fromkeys(r.key(by) for r in runs):
        steps = sorted({s for r in runs if r.key(by) == key for s in _no_update_steps(r)})
        if steps:
            fig.add_trace(
                go.Scatter(
                    x=steps,
                    y=[0.0] * len(steps),
                    mode="markers",
                    marker={"symbol": "x-thin-open", "size": 9, "color": algorithm_color(key), "line": {"width": 2}},
                    name="✕ step without an update",
                    legendgroup="no-update",
                    showlegend=not shown,
                    meta={"kind": "no_update", "group": key},
                    hovertemplate=f"{display_name(key)}: no update at step %{{x}}<extra></extra>",
                ),
                row=row,
                col=col,
            )
            shown = True


def _order(key: str) -> tuple:
    return (list(PALETTE).index(key) if key in PALETTE else len(PALETTE), key)


def _panels(runs, metrics, evals, by, smooth, band) -> list[tuple[str, dict]]:
    panels = []
    for metric, is_eval in [(m, False) for m in metrics] + [(m, True) for m in evals]:
        groups = aggregate_runs(runs, metric, by=by, evals=is_eval, smooth=smooth, band=band)
        groups = {key: groups[key] for key in sorted(groups, key=_order)}
        if groups:
            panels.append((f"eval {metric}" if is_eval else metric, groups))
    if not panels:
        raise ValueError(f"none of the runs logs any of {tuple(metrics) + tuple(evals)}")
    return panels


def _panel_title(panel: str, runs: list[RunData], smooth: int) -> str:
    title = METRIC_LABELS.get(panel, (panel,))[0]
    if smooth > 1 and not panel.startswith("eval "):
        title += f" (mean of {smooth} steps)"
    note = population_note(runs, panel)
    return f"{title}<br><sup>{note}</sup>" if note else title


def training_curves(
    runs,
    metrics=DEFAULT_METRICS,
    *,
    by: str | None = None,
    evals=DEFAULT_EVALS,
    smooth: int = 1,
    band: str | None = "minmax",
    cols: int = 3,
    title: str | None = None,
) -> go.Figure:
    """Metrics against step, one subplot each (y axis with its unit), runs overlaid with one colour per group.

    ``runs``: a Run, run path, metrics DataFrame, a list of them, ``{label: run}`` or ``{label: [runs]}``
    (named groups, e.g. the seeds of each ablation variant).
    ``by``: ``"algorithm"`` (the default), ``"group"`` (the default for named groups), ``"run"`` or
    any config key (``"seed"``, ``"task"``);
    runs of one group (e.g. the seeds of an algorithm) give a mean line and a ``band``
    (``"minmax"``, ``"std"`` or None), named in the legend. ``evals`` adds panels of
    ``eval.jsonl`` columns, never smoothed. ``smooth``: trailing mean over that many steps, for
    training metrics. Steps without an update are marked ✕ on the gradient-norm panel.
    Each trace's ``meta`` holds ``metric``, ``group`` and ``kind`` (mean, upper, lower, no_update).
    """
    runs = as_runs(runs)
    by = by or ("group" if any(r.group for r in runs) else "algorithm")
    panels = _panels(runs, metrics, evals, by, smooth, band)
    cols = 2 if len(panels) == 4 and cols >= 2 else min(cols, len(panels))  # 2 x 2 rather than 3 + 1
    rows = math.ceil(len(panels) / cols)
    fig = make_subplots(
        rows=rows,
        cols=cols,
        subplot_titles=[_panel_title(p, runs, smooth) for p, _ in panels],
        vertical_spacing=0.42 / rows,
        horizontal_spacing=0.09,
    )
    in_legend, widest = set(), 1
    for k, (panel, groups) in enumerate(panels):
        row, col = k // cols + 1, k % cols + 1
        markers = True if panel.startswith("eval ") else None
        widest = max(
            widest,
            add_curves(
                fig,
                groups,
                row=row,
                col=col,
                meta={"metric": panel},
                in_legend=in_legend,
                band=band is not None,
                markers=markers,
            ),
        )
        label = METRIC_LABELS.get(panel, (panel, panel, None))
        fig.update_yaxes(
            title_text=label[1], tickformat=label[2], autorangeoptions=_value_range(panel), row=row, col=col
        )
        fig.update_xaxes(title_text="step", row=row, col=col)
        if panel == "grad_norm":
            _mark_no_update(fig, runs, by, row, col)
    if band is not None and widest > 1:
        add_band_legend(fig, band_label(band, widest))
    step_axis(fig, max((float(np.nanmax(t.index)) for _, g in panels for t in g.values() if len(t)), default=1.0))
    return titled(fig, title or "Training curves", 300 * rows + 140)


def titled(fig: go.Figure, title: str, height: int, notes: int = 0) -> go.Figure:
    """The workbench style with the title at the top and the legend in a row under it (``notes``: lines
    of small print under the title). A legend of more than five entries gets room for a second row, which
    it takes at a README's width (about 700 px)."""
    top = 46 + 20 * notes
    entries = sum(1 for t in fig.data if t.showlegend is not False and t.name)
    legend = {"orientation": "h", "x": 0, "yref": "container", "y": 1 - top / height, "yanchor": "top"}
    return styled(fig, title=title, height=height).update_layout(
        hovermode="x unified",
        legend=legend,
        margin={"t": 74 + top + (24 if entries > 5 else 0)},
        title={"y": 1, "yref": "container", "yanchor": "top", "pad": {"t": 14}},
    )
