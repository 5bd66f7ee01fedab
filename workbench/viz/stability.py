"""Stability in long chains: the chain task at growing lengths, per algorithm.

The paper claims GRPO-S is the more stable of its two algorithms in long chains of
thought; this figure shows entropy and gradient-norm trajectories per chain length
(``config["task_params"]["steps"]``) and final accuracy against length, seed by seed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .curves import (
    METRIC_LABELS,
    _mark_no_update,
    _order,
    _value_range,
    add_band_legend,
    add_curves,
    aggregate_runs,
    population_note,
    run_series,
    step_axis,
    titled,
)
from .sources import RunData, as_runs
from .style import algorithm_color, display_name

__all__ = ["stability_table", "stability_figure"]


def _length(run: RunData, length_key: str) -> int:
    value = (run.config.get("task_params") or {}).get(length_key)
    if value is None:
        raise ValueError(f"run {run.label!r} has no task_params[{length_key!r}] in its config")
    return int(value)


def _final_metric(runs: list[RunData], final: str) -> tuple[str, bool]:
    """The metric behind "final accuracy" and whether it comes from ``eval.jsonl``."""
    if final == "auto":
        if all("greedy_accuracy" in run.evals.columns for run in runs):
            return "greedy_accuracy", True
        return "accuracy", False
    return final, all(final in run.evals.columns for run in runs)


def stability_table(runs, *, final: str = "auto", window: int = 1, length_key: str = "steps") -> pd.DataFrame:
    """One row per run: ``run``, ``algorithm``, ``seed``, ``length``, ``initial`` and ``final``.

    ``final`` is the mean of the last ``window`` logged values of a metric (``initial`` its first
    value: the warm start's, for an evaluation at step 0): ``"auto"`` takes the eval
    ``greedy_accuracy`` when every run has one, else the training ``accuracy``; a name is looked up
    in ``eval.jsonl`` (when every run has it) or ``metrics.jsonl``. The ``metric`` column says which.
    """
    runs = as_runs(runs)
    metric, from_evals = _final_metric(runs, final)
    rows = []
    for run in runs:
        series = run_series(run, metric, evals=from_evals)
        values = series.dropna() if series is not None else pd.Series(dtype=float)
        rows.append(
            {
                "run": run.label,
                "algorithm": run.algorithm,
                "seed": run.config.get("seed"),
                "length": _length(run, length_key),
                "initial": float(values.iloc[0]) if len(values) else np.nan,
                "final": float(values.iloc[-window:].mean()) if len(values) else np.nan,
                "metric": f"eval {metric}" if from_evals else metric,
            }
        )
    return pd.DataFrame(rows)


def _trajectories(
    fig: go.Figure, runs: list[RunData], name: str, length: int, row: int, col: int, smooth: int, in_legend: set
) -> int:
    """One panel: ``name`` against step for one chain length, mean and min–max band per algorithm.
    Returns the most seeds behind one curve."""
    curves = aggregate_runs(runs, name, smooth=smooth)
    curves = dict(sorted(curves.items(), key=lambda kv: _order(kv[0])))
    meta = {"metric": name, "length": int(length)}
    widest = add_curves(fig, curves, row=row, col=col, meta=meta, in_legend=in_legend)
    if name == "grad_norm":
        _mark_no_update(fig, runs, "algorithm", row, col)
    step_axis(fig, max((float(c.index.max()) for c in curves.values()), default=1.0), row=row, col=col)
    fig.update_yaxes(autorangeoptions=_value_range(name), row=row, col=col)
    return widest


def _final_panel(fig: go.Figure, table: pd.DataFrame, row: int, in_legend: set) -> list[int]:
    """Final accuracy per chain length, lengths as evenly spaced categories (``x`` is the category's index
    plus a small offset per algorithm): one dot per seed, a dash for the mean, a grey diamond for the
    start (the warm start's evaluation at step 0). Returns the lengths in category order."""
    lengths = sorted(table["length"].unique())
    algorithms = sorted(table["algorithm"].unique(), key=_order)
    slot = {name: -0.4 + 0.8 * (k + 0.5) / (len(algorithms) + 1) for k, name in enumerate(["start", *algorithms])}

    def where(values, name):
        return [lengths.index(v) + slot[name] for v in values]

    starts = table.groupby("length")["initial"].mean()
    fig.add_trace(
        go.Scatter(
            x=where(starts.index, "start"),
            y=starts,
            mode="markers",
            name="start (step 0)",
            legendrank=2000,
            marker={"symbol": "diamond-open", "size": 11, "color": "#555", "line": {"width": 2}},
            meta={"kind": "start"},
            customdata=list(starts.index),
            hovertemplate="chain of %{customdata}: start %{y:.1%}<extra></extra>",
        ),
        row=row,
        col=1,
    )
    for algorithm in algorithms:
        points = table[table["algorithm"] == algorithm]
        color, name = algorithm_color(algorithm), display_name(algorithm)
        fig.add_trace(
            go.Scatter(
                x=where(points["length"], algorithm),
                y=points["final"],
                mode="markers",
                name=name,
                legendgroup=algorithm,
                showlegend=algorithm not in in_legend,
                marker={"color": color, "size": 8},
                customdata=list(zip(points["seed"], points["length"])),
                meta={"kind": "seed", "group": algorithm},
                hovertemplate=f"{name}, chain of %{{customdata[1]}}, seed %{{customdata[0]}}: %{{y:.1%}}"
                "<extra></extra>",
            ),
            row=row,
            col=1,
        )
        means = points.groupby("length")["final"].mean()
        fig.add_trace(
            go.Scatter(
                x=where(means.index, algorithm),
                y=means,
                mode="markers",
                name=f"{name} mean",
                showlegend=False,
                legendgroup=algorithm,
                marker={"color": color, "symbol": "line-ew-open", "size": 22, "line": {"width": 3}},
                customdata=list(means.index),
                meta={"kind": "final", "group": algorithm},
                hovertemplate=f"{name}, chain of %{{customdata}}: mean %{{y:.1%}}<extra></extra>",
            ),
            row=row,
            col=1,
        )
        in_legend.add(algorithm)
    return lengths


def stability_figure(
    runs,
    *,
    metrics=("entropy", "grad_norm"),
    final: str = "auto",
    window: int = 1,
    smooth: int = 1,
    length_key: str = "steps",
    title: str | None = None,
) -> go.Figure:
    """Trajectories of ``metrics`` (rows) per chain length (columns), one colour per algorithm
    (mean and min–max band over seeds), and a bottom panel of final accuracy against chain
    length: a categorical axis (lengths are not evenly spaced), one dot per seed, a dash for the
    mean over seeds and a diamond for the start. See :func:`stability_table` for ``final``."""
    runs = as_runs(runs)
    table = stability_table(runs, final=final, window=window, length_key=length_key)
    lengths = sorted(table["length"].unique())
    rows, cols = len(metrics) + 1, len(lengths)
    titles = [f"chain of {k}" for k in lengths] + [""] * (cols * (len(metrics) - 1))  # rows: the y-axis titles
    metric = table["metric"].iloc[0]
    titles.append(f"final {METRIC_LABELS.get(metric, (metric,))[0]} by chain length (dots: seeds, dash: mean)")
    specs = [[{}] * cols for _ in metrics] + [[{"colspan": cols}] + [None] * (cols - 1)]
    fig = make_subplots(
        rows=rows, cols=cols, specs=specs, subplot_titles=titles, vertical_spacing=0.3 / rows, horizontal_spacing=0.06
    )
    in_legend: set = set()
    widest = 1
    for col, length in enumerate(lengths, start=1):
        subset = [run for run in runs if _length(run, length_key) == length]
        for row, name in enumerate(metrics, start=1):
            widest = max(widest, _trajectories(fig, subset, name, length, row, col, smooth, in_legend))
            if col == 1:
                fig.update_yaxes(title_text=METRIC_LABELS.get(name, (name, name))[1], row=row, col=col)
    categories = _final_panel(fig, table, rows, in_legend)
    label = METRIC_LABELS.get(metric, (metric, metric, None))
    fig.update_xaxes(
        title_text="chain length (operations)",
        tickvals=list(range(len(categories))),
        ticktext=[str(k) for k in categories],
        range=[-0.5, len(categories) - 0.5],
        showgrid=False,
        row=rows,
        col=1,
    )
    fig.update_yaxes(
        title_text=label[1],
        tickformat=label[2],
        row=rows,
        col=1,
        autorangeoptions={"clipmin": 0, "clipmax": 1} if label[2] == ".0%" else None,
    )
    if widest > 1:
        add_band_legend(fig, "band: min–max over seeds")
    notes = [f"lines: mean over seeds of a trailing mean of {smooth} steps"] if smooth > 1 else []
    notes += [
        f"{METRIC_LABELS.get(m, (m,))[0]}: {population_note(runs, m)}" for m in metrics if population_note(runs, m)
    ]
    notes = ["; ".join(notes)] if notes else []  # one line of small print
    title = (title or "Stability across chain lengths") + "".join(f"<br><sup>{n}</sup>" for n in notes)
    return titled(fig, title, 210 * rows + 150 + 20 * len(notes), notes=len(notes)).update_layout(hovermode="closest")
