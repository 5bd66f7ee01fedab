"""Training curves: metrics against step, runs overlaid, seeds aggregated into a band."""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .sources import RunData, as_runs
from .style import algorithm_color, rgba

__all__ = ["DEFAULT_METRICS", "DEFAULT_EVALS", "run_series", "aggregate_runs", "add_curve", "training_curves"]

DEFAULT_METRICS = ("accuracy", "reward", "entropy", "response_len_mean", "clip_frac", "approx_kl", "grad_norm")
DEFAULT_EVALS = ("greedy_accuracy", "sampled_accuracy")
BANDS = ("minmax", "std", None)


def run_series(run: RunData, metric: str, *, evals: bool = False, smooth: int = 1) -> pd.Series | None:
    """``metric`` of one run indexed by step (the last row of a repeated step wins), smoothed by a
    trailing rolling mean of ``smooth`` rows; None when the run does not log it."""
    table = run.evals if evals else run.metrics
    if metric not in table.columns or "step" not in table.columns:
        return None
    series = pd.to_numeric(table.set_index("step")[metric], errors="coerce").astype(float)
    series = series[~series.index.duplicated(keep="last")].sort_index()
    if series.isna().all():
        return None
    return series.rolling(smooth, min_periods=1).mean() if smooth > 1 else series


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
) -> None:
    """Add a mean line (``table["mean"]`` against its index) and, when ``band``, the shaded
    ``lower``–``upper`` band behind it. Every trace's ``meta`` is ``meta`` plus its ``kind``."""
    x = list(table.index)
    if band:
        fig.add_trace(
            go.Scatter(
                x=x,
                y=table["upper"],
                mode="lines",
                line={"width": 0},
                showlegend=False,
                hoverinfo="skip",
                legendgroup=name,
                name=f"{name} upper",
                meta={**meta, "kind": "upper"},
            ),
            row=row,
            col=col,
        )
        fig.add_trace(
            go.Scatter(
                x=x,
                y=table["lower"],
                mode="lines",
                line={"width": 0},
                showlegend=False,
                fill="tonexty",
                fillcolor=rgba(color, 0.2),
                hoverinfo="skip",
                legendgroup=name,
                name=f"{name} lower",
                meta={**meta, "kind": "lower"},
            ),
            row=row,
            col=col,
        )
    fig.add_trace(
        go.Scatter(
            x=x,
            y=table["mean"],
            mode="lines",
            line={"color": color, "width": 2},
            name=name,
            legendgroup=name,
            showlegend=showlegend,
            meta={**meta, "kind": "mean"},
        ),
        row=row,
        col=col,
    )


def training_curves(
    runs,
    metrics=DEFAULT_METRICS,
    *,
    by: str = "algorithm",
    evals=DEFAULT_EVALS,
    smooth: int = 1,
    band: str | None = "minmax",
    cols: int = 3,
    title: str | None = None,
) -> go.Figure:
    """Metrics against step, one subplot each, runs overlaid with one colour per group.

    ``runs``: a Run, run path, metrics DataFrame, a list of them or ``{label: run}``.
    ``by``: ``"algorithm"`` (default), ``"run"`` or any config key (``"seed"``, ``"task"``);
    runs of one group (e.g. the seeds of an algorithm) give a mean line and a ``band``
    (``"minmax"``, ``"std"`` or None). ``evals`` adds panels of ``eval.jsonl`` columns.
    ``smooth``: trailing rolling-mean window in rows. Metrics no run logs are left out.
    Each trace's ``meta`` holds ``metric``, ``group`` and ``kind`` (mean, upper, lower).
    """
    runs = as_runs(runs)
    panels = []
    for metric, is_eval in [(m, False) for m in metrics] + [(m, True) for m in evals]:
        groups = aggregate_runs(runs, metric, by=by, evals=is_eval, smooth=smooth, band=band)
        if groups:
            panels.append((f"eval {metric}" if is_eval else metric, groups))
    if not panels:
        raise ValueError(f"none of the runs logs any of {tuple(metrics) + tuple(evals)}")
    cols = min(cols, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = make_subplots(
        rows=rows,
        cols=cols,
        subplot_titles=[p[0] for p in panels],
        vertical_spacing=0.3 / rows,
        horizontal_spacing=0.06,
    )
    in_legend = set()
    for k, (panel, groups) in enumerate(panels):
        row, col = k // cols + 1, k % cols + 1
        for key, table in groups.items():
            add_curve(
                fig,
                table,
                name=key,
                color=algorithm_color(key),
                row=row,
                col=col,
                meta={"metric": panel, "group": key},
                showlegend=key not in in_legend,
                band=band is not None and table["runs"].max() > 1,
            )
            in_legend.add(key)
        if k + cols >= len(panels):
            fig.update_xaxes(title_text="step", row=row, col=col)
    fig.update_layout(
        title=title or "Training curves", height=260 * rows + 80, hovermode="x unified", plot_bgcolor="white"
    )
    fig.update_xaxes(gridcolor="#eee")
    fig.update_yaxes(gridcolor="#eee")
    return fig
