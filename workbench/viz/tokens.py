"""Responses as coloured tokens: where in a response the policy was uncertain."""

from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go

from .sources import Group, as_group

__all__ = ["token_entropy_figure", "group_heatmap", "display_token", "token_hover", "response_label"]

_VALUES = {
    "entropy": ("entropies", "Viridis", "entropy (nats)"),
    "logprob": ("logprobs", "Viridis", "log-prob"),
    "advantage": ("advantages", "RdBu", "advantage"),
}


def display_token(token: str) -> str:
    """A token made visible in a cell: spaces as ``·``, newlines as ``↵``, HTML escaped."""
    return html.escape(token.replace(" ", "·").replace("\n", "↵").replace("\t", "⇥"), quote=False)


def token_hover(group: Group, i: int, t: int, **extra: float) -> str:
    """Hover text of token ``t`` of response ``i``: token, entropy, log-prob, advantage, reward (+ ``extra``)."""
    lines = [f"response {i}, position {t}"]
    token = group.token(i, t)
    if token is not None:
        lines.append(f"token: {html.escape(repr(token), quote=False)}")
    lines.append(f"entropy: {group.entropies[i, t]:.3f}")
    if group.logprobs is not None:
        lines.append(f"log-prob: {group.logprobs[i, t]:.3f}")
    if group.advantages is not None:
        lines.append(f"advantage: {group.advantages[i, t]:+.3f}")
    lines += [f"{name}: {value:+.3f}" for name, value in extra.items()]
    lines.append(f"reward: {group.rewards[i]:g} {'✓' if group.correct[i] else '✗'}")
    return "<br>".join(lines)


def response_label(group: Group, i: int) -> str:
    """Row label of response ``i``: index, ✓ or ✗, reward."""
    return f"#{i} {'✓' if group.correct[i] else '✗'} r={group.rewards[i]:g}"


def token_entropy_figure(
    response_or_group,
    *,
    wrap: int = 20,
    colorscale: str = "Viridis",
    zmax: float | None = None,
    title: str | None = None,
) -> go.Figure:
    """Responses as text, each token's cell coloured by its entropy.

    ``response_or_group``: one response dict, a list of them, a ``samples.jsonl`` record or
    a :class:`~workbench.viz.sources.Group`. Each response is wrapped into lines of
    ``wrap`` tokens; hovering a token shows its entropy, log-prob, advantage and reward.
    """
    group = as_group(response_or_group)
    lengths = group.mask.sum(1)
    z, text, hover, labels = [], [], [], []
    for i in range(group.n):
        for start in range(0, int(lengths[i]), wrap):
            positions = range(start, min(start + wrap, int(lengths[i])))
            pad = wrap - len(positions)
            z.append([group.entropies[i, t] for t in positions] + [np.nan] * pad)
            text.append([display_token(group.token(i, t) or "") for t in positions] + [""] * pad)
            hover.append([token_hover(group, i, t) for t in positions] + [""] * pad)
            labels.append(response_label(group, i) if start == 0 else "")
    rows = list(range(len(z)))
    fig = go.Figure(
        go.Heatmap(
            z=np.array(z, dtype=float),
            y=rows,
            text=text,
            texttemplate="%{text}",
            hovertext=hover,
            hovertemplate="%{hovertext}<extra></extra>",
            colorscale=colorscale,
            zmin=0,
            zmax=zmax,
            xgap=1,
            ygap=3,
            colorbar={"title": {"text": "entropy (nats)"}},
            name="entropy",
        )
    )
    fig.update_yaxes(tickvals=rows, ticktext=labels, autorange="reversed")
    fig.update_xaxes(showticklabels=False)
    fig.update_layout(
        title=title or "Token entropies", height=120 + 30 * len(rows), plot_bgcolor="white", margin={"l": 110}
    )
    return fig


def group_heatmap(group, *, value: str = "entropy", title: str | None = None) -> go.Figure:
    """Responses × positions heatmap of one group; rows labelled ✓ (correct) / ✗, padding blank.

    ``value``: ``"entropy"`` (default), ``"logprob"`` or ``"advantage"`` (the logged ones).
    """
    if value not in _VALUES:
        raise ValueError(f"value must be one of {sorted(_VALUES)}, got {value!r}")
    group = as_group(group)
    attr, colorscale, label = _VALUES[value]
    values = getattr(group, attr)
    if values is None:
        raise ValueError(f"this group has no {attr}")
    n, T = group.mask.shape
    z = np.where(group.mask, values, np.nan)
    hover = [[token_hover(group, i, t) if group.mask[i, t] else "" for t in range(T)] for i in range(n)]
    labels = [response_label(group, i) for i in range(n)]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(range(T)),
            y=labels,
            hovertext=hover,
            hovertemplate="%{hovertext}<extra></extra>",
            colorscale=colorscale,
            zmid=0 if value == "advantage" else None,
            xgap=1,
            ygap=1,
            colorbar={"title": {"text": label}},
            name=value,
        )
    )
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(title="position")
    fig.update_layout(title=title or f"{label} per token", height=160 + 26 * n, plot_bgcolor="white")
    return fig
