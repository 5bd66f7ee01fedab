"""Stability in long chains: the chain task at growing lengths, per algorithm.

The paper claims GRPO-S is the more stable of its two algorithms in long chains of
thought; this figure shows entropy and gradient-norm trajectories per chain length
(``config["task_params"]["steps"]``) and final accuracy against length.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .curves import add_curve, aggregate_runs, run_series
from .sources import RunData, as_runs
from .style import algorithm_color

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
    """One row per run: ``run``, ``algorithm``, ``seed``, ``length`` and ``final``.

    ``final`` is the mean of the last ``window`` logged values of a metric: ``"auto"`` takes
    the eval ``greedy_accuracy`` when every run has one, else the training ``accuracy``;
    a name is looked up in ``eval.jsonl`` (when every run has it) or ``metrics.jsonl``.
    The table's ``metric`` column says which was used.
    """
    runs = as_runs(runs)
    metric, from_evals = _final_metric(runs, final)
    rows = []
    for run in runs:
        series = run_series(run, metric, evals=from_evals)
        value = float(series.dropna().iloc[-window:].mean()) if series is not None else np.nan
        rows.append(
            {
                "run": run.label,
                "algorithm": run.algorithm,
                "seed": run.config.get("seed"),
                "length": _length(run, length_key),
                "final": value,
                "metric": f"eval {metric}" if from_evals else metric,
            }
        )
    return pd.DataFrame(rows)


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
    length (mean over seeds, error bars: sample std). See :func:`stability_table` for ``final``."""
    runs = as_runs(runs)
    table = stability_table(runs, final=final, window=window, length_key=length_key)
    lengths = sorted(table["length"].unique())
    rows, cols = len(metrics) + 1, len(lengths)
    titles = [f"{metric} — length {length}" for metric in metrics for length in lengths]
    titles.append(f"final {table['metric'].iloc[0]} vs chain length")
    specs = [[{}] * cols for _ in metrics] + [[{"colspan": cols}] + [None] * (cols - 1)]
    fig = make_subplots(
        rows=rows, cols=cols, specs=specs, subplot_titles=titles, vertical_spacing=0.3 / rows, horizontal_spacing=0.05
    )
    in_legend = set()
    for col, length in enumerate(lengths, start=1):
        subset = [run for run in runs if _length(run, length_key) == length]
        for row, metric in enumerate(metrics, start=1):
            for algorithm, curve in aggregate_runs(subset, metric, smooth=smooth).items():
                add_curve(
                    fig,
                    curve,
                    name=algorithm,
                    color=algorithm_color(algorithm),
                    row=row,
                    col=col,
                    meta={"metric": metric, "length": int(length), "group": algorithm},
                    showlegend=algorithm not in in_legend,
                    band=curve["runs"].max() > 1,
                )
                in_legend.add(algorithm)
    for algorithm, points in table.groupby("algorithm", sort=False):
        stats = points.groupby("length")["final"].agg(["mean", "std", "count"])
        fig.add_trace(
            go.Scatter(
                x=list(stats.index),
                y=stats["mean"],
                error_y={"type": "data", "array": stats["std"].fillna(0.0)},
                mode="lines+markers",
                line={"color": algorithm_color(algorithm)},
                name=algorithm,
                legendgroup=algorithm,
                showlegend=algorithm not in in_legend,
                meta={"kind": "final", "group": algorithm},
                customdata=stats["count"],
                hovertemplate="length %{x}: %{y:.3f} (%{customdata} runs)",
            ),
            row=rows,
            col=1,
        )
        in_legend.add(algorithm)
    fig.update_xaxes(title_text="chain length", tickvals=lengths, row=rows, col=1)
    fig.update_yaxes(title_text=table["metric"].iloc[0], row=rows, col=1)
    fig.update_layout(title=title or "Stability across chain lengths", height=240 * rows + 80, plot_bgcolor="white")
    fig.update_xaxes(gridcolor="#eee")
    fig.update_yaxes(gridcolor="#eee")
    return fig
