"""Entropy analysis of logged rollouts: distributions, positions, forking tokens, shifts.

Every function takes anything :func:`~workbench.viz.sources.token_table` reads: a Run, a
run path, ``samples.jsonl`` records, a token table, a list of runs or ``{label: samples}``.
Histograms that are compared share their bins; entropy-by-position figures show how many tokens
each position holds and leave out positions with fewer than ``min_tokens``.
"""

from __future__ import annotations

import html
import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .curves import add_curve
from .sources import token_table
from .style import CORRECT_COLOR, WRONG_COLOR, algorithm_color, display_name, styled

__all__ = [
    "entropy_distribution",
    "entropy_by_position",
    "position_stats",
    "shared_bins",
    "forking_tokens",
    "forking_tokens_table",
    "split_first_last",
    "entropy_shift_figure",
]

_SHIFT_COLORS = ("#7F7F7F", "#FF7F0E")
HISTNORM_AXIS = {
    "probability": "share of tokens",
    "percent": "% of tokens",
    "": "tokens",
    "probability density": "density (per nat)",
}


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
    return [(display_name(str(value)), algorithm_color(str(value)), rows) for value, rows in table.groupby(by)]


def shared_bins(*tables: pd.DataFrame, nbins: int = 40) -> dict:
    """One set of histogram bins (``xbins``) over the entropies of every table, from 0."""
    values = np.concatenate([t["entropy"].to_numpy(dtype=float) for t in tables]) if tables else np.zeros(1)
    top = float(np.nanmax(values)) if values.size and np.isfinite(values).any() else 1.0
    size = (top or 1.0) / nbins
    return {"start": 0.0, "end": top + size, "size": size}


def _histogram(rows: pd.DataFrame, name: str, color: str, bins: dict, histnorm: str, **kwargs) -> go.Histogram:
    return go.Histogram(
        x=rows["entropy"],
        name=name,
        xbins=bins,
        autobinx=False,
        histnorm=histnorm,
        marker_color=color,
        opacity=0.55,
        **kwargs,
    )


def entropy_distribution(
    samples,
    *,
    by: str | None = "correct",
    nbins: int = 40,
    histnorm: str = "probability",
    log_y: bool = False,
    title: str | None = None,
) -> go.Figure:
    """Histogram of token entropies, one overlaid histogram per value of ``by`` (a token-table
    column: ``"correct"``, ``"algorithm"``, ``"source"``, ``"step"``; None for all tokens), all on
    the same bins. ``histnorm``: ``"probability"`` (share of each split's tokens, default),
    ``"percent"``, ``""`` (counts) or ``"probability density"``; ``log_y`` shows the rare high-entropy tail."""
    table = token_table(samples)
    splits = _splits(table, by)
    bins = shared_bins(*(rows for _, _, rows in splits), nbins=nbins)
    fig = go.Figure()
    for label, color, rows in splits:
        name = f"{label}: {len(rows):,} tokens, mean {rows['entropy'].mean():.3f} nats"
        fig.add_trace(_histogram(rows, name, color, bins, histnorm, meta={"group": label, "tokens": len(rows)}))
    fig.update_layout(
        barmode="overlay",
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0},  # above the plot: full width for the bins
        xaxis_title="entropy (nats)",
        yaxis_title=HISTNORM_AXIS.get(histnorm, histnorm) + (" (log scale)" if log_y else ""),
    )
    if log_y:
        fig.update_yaxes(type="log", dtick=1)
    return styled(fig, title=title or "Token entropy distribution", height=420)


def position_stats(table: pd.DataFrame, max_position: int | None = None, min_tokens: int = 1) -> pd.DataFrame:
    """Per position: ``mean`` entropy, ``lower``/``upper`` quartiles and ``runs`` (token count);
    positions with fewer than ``min_tokens`` tokens are left out."""
    if max_position is not None:
        table = table[table["position"] <= max_position]
    grouped = table.groupby("position")["entropy"]
    stats = pd.DataFrame(
        {
            "mean": grouped.mean(),
            "lower": grouped.quantile(0.25),
            "upper": grouped.quantile(0.75),
            "runs": grouped.size(),
        }
    )
    return stats[stats["runs"] >= min_tokens]


def _position_panels(fig: go.Figure, splits, max_position, min_tokens, showlegend=True, col: int = 1) -> None:
    for label, color, rows in splits:
        stats = position_stats(rows, max_position, min_tokens)
        add_curve(fig, stats, name=label, color=color, row=1, col=col, meta={"group": label}, showlegend=showlegend)
        fig.add_trace(
            go.Scatter(
                x=list(stats.index),
                y=stats["runs"],
                mode="lines+markers",
                line={"color": color},
                marker={"size": 4},
                name=f"{label}: tokens",
                showlegend=False,
                legendgroup=label,
                meta={"group": label, "kind": "tokens"},
            ),
            row=2,
            col=col,
        )


def entropy_by_position(
    samples,
    *,
    by: str | None = "correct",
    max_position: int | None = None,
    min_tokens: int = 10,
    title: str | None = None,
) -> go.Figure:
    """Mean token entropy against position in the response, with the interquartile band, one line
    per value of ``by`` (as in :func:`entropy_distribution`); below, how many tokens each position
    holds. Positions with fewer than ``min_tokens`` tokens (the tail of the longest responses) are cut."""
    table = token_table(samples)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.72, 0.28], vertical_spacing=0.06)
    _position_panels(fig, _splits(table, by), max_position, min_tokens)
    fig.update_yaxes(title_text="entropy (nats per token)", row=1, col=1)
    fig.update_yaxes(title_text="tokens", row=2, col=1)
    fig.update_xaxes(title_text="position in the response (tokens)", row=2, col=1)
    fig.update_yaxes(rangemode="tozero", row=2, col=1)
    note = f"; positions with fewer than {min_tokens} tokens left out" if min_tokens > 1 else ""
    return styled(fig, title=title or "Entropy by position", height=480).update_layout(
        annotations=[
            {
                "text": f"line: mean, band: interquartile range{note}",
                "showarrow": False,
                "xref": "paper",
                "yref": "paper",
                "x": 0,
                "y": 1.02,
                "xanchor": "left",
                "yanchor": "bottom",
                "font": {"size": 11, "color": "#666"},
            }
        ]
    )


def _key_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in ("source", "record", "step", "group", "response") if c in table.columns]


def forking_tokens(samples, top: int = 20, *, context: int = 6) -> pd.DataFrame:
    """The ``top`` highest-entropy tokens, most uncertain first, with ``context`` tokens either
    side (``context`` column: the text of that same response with the token in ⟦ ⟧) and their
    token-table columns (``source``: the run a token came from)."""
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
    source = df["source"] if "source" in df.columns else [""] * len(df)
    text = [
        [f"{e:.3f}" for e in df["entropy"]],
        [repr(t) for t in df["token"]],
        list(df["context"]),
        [f"{s} · step {st}" if s else f"step {st}" for s, st in zip(source, df["step"])],
        ["✓" if c else "✗" for c in df["correct"]],
    ]
    cells = [[html.escape(v, quote=False) for v in column] for column in text]
    fig = go.Figure(
        go.Table(
            columnwidth=[1, 1, 5, 2, 0.8],
            header={
                "values": ["entropy (nats)", "token", "context (token in ⟦ ⟧)", "run · step", "correct"],
                "align": "left",
                "font": {"size": 13},
            },
            cells={"values": cells, "align": "left", "font": {"size": 13, "family": "monospace"}, "height": 26},
        )
    )
    # a row is as tall as its most wrapped cell (a long context, a run's name with its step): size the
    # figure to the wrapped rows, so none is hidden
    lines = [max(math.ceil(len(v) / chars) or 1 for v, chars in zip(row, _COLUMN_CHARS)) for row in zip(*text)]
    return styled(fig, title=title or f"Top {len(df)} forking tokens", height=170 + sum(8 + 22 * n for n in lines))


#: Characters each column holds per line before it wraps (monospace 13 px in its share of a
#: notebook-wide table: column widths 1, 1, 5, 2, 0.8, less the cell padding).
_COLUMN_CHARS = (6, 6, 42, 15, 4)


def split_first_last(samples) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Token tables of the first and the last logged step of ``samples``."""
    table = token_table(samples)
    if table.empty:
        raise ValueError("no logged tokens")
    return table[table["step"] == table["step"].min()], table[table["step"] == table["step"].max()]


def entropy_shift_figure(
    early,
    late=None,
    *,
    labels: tuple[str, str] | None = None,
    nbins: int = 40,
    log_y: bool = False,
    min_tokens: int = 10,
    title: str | None = None,
) -> go.Figure:
    """Entropy at the start against the end of training: histograms on shared bins (share of tokens)
    and entropy by position with token counts.

    ``early`` and ``late`` are samples (e.g. of two checkpoints); with ``late=None`` they are
    the first and last logged steps of ``early`` (see :func:`split_first_last`).
    """
    if late is None:
        first, last = split_first_last(early)
        labels = labels or (f"step {first['step'].iloc[0]}", f"step {last['step'].iloc[0]}")
    else:
        first, last = token_table(early), token_table(late)
        labels = labels or ("early", "late")
    fig = make_subplots(
        rows=2,
        cols=2,
        specs=[[{"rowspan": 2}, {}], [None, {}]],
        row_heights=[0.72, 0.28],
        column_widths=[0.45, 0.55],
        horizontal_spacing=0.1,
        vertical_spacing=0.06,
        subplot_titles=("distribution (shared bins)", "mean entropy by position (band: interquartile range)", ""),
    )
    bins, means = shared_bins(first, last, nbins=nbins), []
    for label, color, table in zip(labels, _SHIFT_COLORS, (first, last)):
        means.append(table["entropy"].mean())
        fig.add_trace(
            _histogram(
                table,
                f"{label}: {len(table):,} tokens, mean {means[-1]:.3f}",
                color,
                bins,
                "probability",
                legendgroup=label,
                meta={"group": label, "mean": means[-1]},
            ),
            row=1,
            col=1,
        )
    _position_panels(
        fig,
        [(lab, c, t) for lab, c, t in zip(labels, _SHIFT_COLORS, (first, last))],
        None,
        min_tokens,
        showlegend=False,
        col=2,
    )
    fig.update_layout(barmode="overlay")
    fig.update_xaxes(title_text="entropy (nats)", row=1, col=1)
    fig.update_yaxes(
        title_text="share of tokens" + (" (log scale)" if log_y else ""),
        type="log" if log_y else None,
        dtick=1 if log_y else None,
        row=1,
        col=1,
    )
    fig.update_yaxes(title_text="entropy (nats per token)", row=1, col=2)
    fig.update_yaxes(title_text="tokens", rangemode="tozero", row=2, col=2)
    fig.update_xaxes(title_text="position (tokens)", row=2, col=2)
    fig.update_xaxes(matches="x2", row=2, col=2)
    title = title or f"Entropy shift: mean {means[0]:.3f} → {means[1]:.3f} nats"
    return styled(fig, title=title, height=480)
