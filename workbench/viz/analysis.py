"""Entropy analysis of logged rollouts: distributions, positions, forking tokens, shifts.

Every function takes anything :func:`~workbench.viz.sources.token_table` reads: a Run, a
run path, ``samples.jsonl`` records, a token table, a list of runs or ``{label: samples}``.
"""

from __future__ import annotations

import html

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .curves import add_curve
from .sources import token_table
from .style import CORRECT_COLOR, WRONG_COLOR, algorithm_color

__all__ = [
    "entropy_distribution",
    "entropy_by_position",
    "position_stats",
    "forking_tokens",
    "forking_tokens_table",
    "split_first_last",
    "entropy_shift_figure",
]

_SHIFT_COLORS = ("#7F7F7F", "#FF7F0E")


def _splits(table: pd.DataFrame, by: str | None) -> list[tuple[str, str, pd.DataFrame]]:
    """``(label, colour, rows)`` for each value of column ``by`` (one split when None)."""
    if by is None:
        return [("all tokens", "#1F77B4", table)]
    if by not in table.columns:
        raise ValueError(f"cannot split by {by!r}: the token table has columns {list(table.columns)}")
    if by == "correct":
        return [
            (label, color, table[table["correct"] == value])
            for value, label, color in ((True, "correct ✓", CORRECT_COLOR), (False, "wrong ✗", WRONG_COLOR))
            if (table["correct"] == value).any()
        ]
    return [(str(value), algorithm_color(str(value)), rows) for value, rows in table.groupby(by, sort=True)]


def entropy_distribution(
    samples,
    *,
    by: str | None = "correct",
    nbins: int = 50,
    histnorm: str = "probability density",
    title: str | None = None,
) -> go.Figure:
    """Histogram of token entropies, one overlaid histogram per value of ``by`` (a token-table
    column: ``"correct"``, ``"algorithm"``, ``"source"``, ``"step"``; None for all tokens)."""
    table = token_table(samples)
    fig = go.Figure()
    for label, color, rows in _splits(table, by):
        fig.add_trace(
            go.Histogram(
                x=rows["entropy"],
                name=f"{label} (mean {rows['entropy'].mean():.2f})",
                nbinsx=nbins,
                histnorm=histnorm,
                marker_color=color,
                opacity=0.55,
                meta={"group": label, "tokens": len(rows)},
            )
        )
    fig.update_layout(
        barmode="overlay",
        title=title or "Token entropy distribution",
        xaxis_title="entropy (nats)",
        yaxis_title=histnorm or "count",
        plot_bgcolor="white",
    )
    return fig


def position_stats(table: pd.DataFrame, max_position: int | None = None) -> pd.DataFrame:
    """Per position: ``mean`` entropy, ``lower``/``upper`` quartiles and ``runs`` (token count)."""
    if max_position is not None:
        table = table[table["position"] <= max_position]
    grouped = table.groupby("position")["entropy"]
    return pd.DataFrame(
        {
            "mean": grouped.mean(),
            "lower": grouped.quantile(0.25),
            "upper": grouped.quantile(0.75),
            "runs": grouped.size(),
        }
    )


def entropy_by_position(
    samples, *, by: str | None = "correct", max_position: int | None = None, title: str | None = None
) -> go.Figure:
    """Mean token entropy against position in the response, with the interquartile band,
    one line per value of ``by`` (as in :func:`entropy_distribution`)."""
    table = token_table(samples)
    fig = make_subplots(rows=1, cols=1)
    for label, color, rows in _splits(table, by):
        add_curve(fig, position_stats(rows, max_position), name=label, color=color, row=1, col=1, meta={"group": label})
    fig.update_layout(
        title=title or "Entropy by position", xaxis_title="position", yaxis_title="entropy (nats)", plot_bgcolor="white"
    )
    return fig


def _key_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in ("source", "step", "group", "response") if c in table.columns]


def forking_tokens(samples, top: int = 20, *, context: int = 6) -> pd.DataFrame:
    """The ``top`` highest-entropy tokens, most uncertain first, with ``context`` tokens either
    side (``context`` column: the text with the token in ⟦ ⟧) and their token-table columns."""
    table = token_table(samples)
    keys = _key_columns(table)
    chosen = table.sort_values("entropy", ascending=False, kind="stable").head(top)
    sequences = (
        {
            key: rows.sort_values("position")["token"].astype(str).tolist()
            for key, rows in table.groupby(keys, sort=False)
        }
        if len(chosen)
        else {}
    )

    def around(row) -> str:
        tokens = sequences[tuple(row[k] for k in keys)]
        t = int(row["position"])
        return "".join(tokens[max(0, t - context) : t]) + f"⟦{tokens[t]}⟧" + "".join(tokens[t + 1 : t + 1 + context])

    columns = ["entropy", "token"] + [c for c in table.columns if c not in ("entropy", "token")]
    out = chosen[columns].reset_index(drop=True)
    out.insert(2, "context", [around(row) for _, row in chosen.iterrows()])
    return out


def forking_tokens_table(samples, top: int = 20, *, context: int = 6, title: str | None = None) -> go.Figure:
    """:func:`forking_tokens` as a table figure (``samples`` may be its DataFrame already)."""
    if isinstance(samples, pd.DataFrame) and "context" in samples.columns:
        df = samples.head(top)
    else:
        df = forking_tokens(samples, top, context=context)
    cells = [
        [f"{e:.3f}" for e in df["entropy"]],
        [html.escape(repr(t), quote=False) for t in df["token"]],
        [html.escape(c, quote=False) for c in df["context"]],
        [str(s) for s in df["step"]],
        ["✓" if c else "✗" for c in df["correct"]],
    ]
    fig = go.Figure(
        go.Table(
            columnwidth=[1, 1.2, 6, 0.8, 0.8],
            header={"values": ["entropy", "token", "context", "step", "correct"], "align": "left"},
            cells={"values": cells, "align": "left"},
        )
    )
    fig.update_layout(title=title or f"Top {len(df)} forking tokens", height=120 + 28 * len(df))
    return fig


def split_first_last(samples) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Token tables of the first and the last logged step of ``samples``."""
    table = token_table(samples)
    if table.empty:
        raise ValueError("no logged tokens")
    return table[table["step"] == table["step"].min()], table[table["step"] == table["step"].max()]


def entropy_shift_figure(
    early, late=None, *, labels: tuple[str, str] | None = None, nbins: int = 40, title: str | None = None
) -> go.Figure:
    """Entropy at the start against the end of training: histograms and entropy by position.

    ``early`` and ``late`` are samples (e.g. of two checkpoints); with ``late=None`` they are
    the first and last logged steps of ``early`` (see :func:`split_first_last`).
    """
    if late is None:
        first, last = split_first_last(early)
        labels = labels or (f"step {first['step'].iloc[0]}", f"step {last['step'].iloc[0]}")
    else:
        first, last = token_table(early), token_table(late)
        labels = labels or ("early", "late")
    fig = make_subplots(rows=1, cols=2, subplot_titles=("entropy distribution", "mean entropy by position"))
    means = []
    for label, color, table in zip(labels, _SHIFT_COLORS, (first, last)):
        mean = table["entropy"].mean()
        means.append(mean)
        fig.add_trace(
            go.Histogram(
                x=table["entropy"],
                name=label,
                nbinsx=nbins,
                histnorm="probability density",
                marker_color=color,
                opacity=0.55,
                legendgroup=label,
                meta={"group": label, "mean": mean},
            ),
            row=1,
            col=1,
        )
        add_curve(
            fig, position_stats(table), name=label, color=color, row=1, col=2, meta={"group": label}, showlegend=False
        )
    fig.update_layout(
        barmode="overlay",
        plot_bgcolor="white",
        title=title or f"Entropy shift: mean {means[0]:.3f} → {means[1]:.3f} nats",
    )
    fig.update_xaxes(title_text="entropy (nats)", row=1, col=1)
    fig.update_xaxes(title_text="position", row=1, col=2)
    return fig
