"""Responses as readable text, every token coloured by a per-token value (CircuitsVis' ``colored_tokens``).

``token_highlight(source)`` shows one rollout group: a header with the prompt, the gold answer and
how many responses are right, then each response as its own line of text, ✓/✗ and reward in front,
each token's background coloured by its entropy, advantage or log-prob (switch with the buttons
above the text: plain HTML and CSS, so it works in JupyterLab, in a notebook stored without a
kernel and in an exported page). Hovering a token shows its text, entropy, log-prob, advantage
and the response's reward. Multi-character BPE tokens keep their leading spaces, newlines break
the line; a token that is only whitespace gets a visible marker (``·`` space, ``↵`` newline).
"""

from __future__ import annotations

import html
import uuid
from dataclasses import dataclass

import numpy as np
import plotly.colors

from .sources import Group, one_group

__all__ = ["VALUES", "TokenHighlight", "token_highlight", "token_markup", "value_color"]

#: value name -> (Group attribute, label with unit, colour scale, diverging around 0)
VALUES = {
    "entropy": ("entropies", "entropy (nats)", [[0, "#ffffff"], [0.5, "#fdae61"], [1, "#e4572e"]], False),
    "advantage": ("advantages", "advantage (logged)", [[0, "#d6604d"], [0.5, "#ffffff"], [1, "#4393c3"]], True),
    "logprob": ("logprobs", "log-prob (nats)", [[0, "#9e9ac8"], [1, "#ffffff"]], False),
}
_MARKERS = {" ": "·", "\n": "↵", "\t": "→", "\r": "␍"}


def value_color(value: str, x: float, low: float, high: float) -> str:
    """The background colour of ``x`` on the scale of ``value`` from ``low`` to ``high`` (clipped)."""
    scale = VALUES[value][2]
    if not np.isfinite(x) or high <= low:
        return "#ffffff"
    return plotly.colors.sample_colorscale(scale, [float(np.clip((x - low) / (high - low), 0, 1))])[0]


def token_markup(token: str) -> str:
    """HTML of one token, whitespace kept as it is: a token that is only whitespace shows a marker
    for each character (newlines also break the line); other tokens are escaped text (their
    spaces and newlines render as such under ``white-space: pre-wrap``)."""
    if token == "":
        return '<span class="wb-ws">∅</span>'
    if token.strip() == "":
        marks = "".join(_MARKERS.get(c, "·") + ("\n" if c == "\n" else "") for c in token)
        return f'<span class="wb-ws">{html.escape(marks)}</span>'
    return html.escape(token)


def _range(value: str, values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if value == "advantage":
        top = float(np.abs(finite).max()) if finite.size else 1.0
        return -(top or 1.0), top or 1.0
    if value == "logprob":
        return (float(finite.min()) if finite.size else -1.0) or -1.0, 0.0
    return 0.0, (float(finite.max()) if finite.size else 1.0) or 1.0


def _tooltip(group: Group, i: int, t: int) -> str:
    lines = [f"token {group.token(i, t)!r} (response #{i}, position {t})", f"entropy {group.entropies[i, t]:.3f} nats"]
    if group.logprobs is not None:
        lines.append(f"log-prob {group.logprobs[i, t]:.3f} (p = {np.exp(group.logprobs[i, t]):.3f})")
    if group.advantages is not None:
        lines.append(f"advantage {group.advantages[i, t]:+.3f} (logged{_by(group)})")
    lines.append(f"reward {group.rewards[i]:g} {'✓' if group.correct[i] else '✗'}")
    return "\n".join(lines)


def _by(group: Group) -> str:
    return f", {group.info['algorithm']}" if group.info.get("algorithm") else ""


def _view(group: Group, value: str, rows: list[int]) -> str:
    attr, label, _, _ = VALUES[value]
    values = np.where(group.mask, getattr(group, attr), np.nan)
    low, high = _range(value, values[rows])
    stops = ", ".join(value_color(value, low + (high - low) * k / 8, low, high) for k in range(9))
    legend = (
        f'<div class="wb-legend">{html.escape(label)}: {low:.2f} <span class="wb-bar" '
        f'style="background: linear-gradient(to right, {stops})"></span> {high:.2f}</div>'
    )
    lines = []
    for i in rows:
        spans = "".join(
            f'<span class="wb-tok" style="background:{value_color(value, values[i, t], low, high)}" '
            f'title="{html.escape(_tooltip(group, i, t))}">{token_markup(group.token(i, t) or "")}</span>'
            for t in range(int(group.mask[i].sum()))
        )
        mark = '<b class="wb-ok">✓</b>' if group.correct[i] else '<b class="wb-bad">✗</b>'
        lines.append(
            f'<div class="wb-row"><span class="wb-label">#{i} {mark} r={group.rewards[i]:g}</span>'
            f'<span class="wb-text">{spans}</span></div>'
        )
    return f'<div class="wb-view wb-view-{value}">{legend}{"".join(lines)}</div>'


def _shown(group: Group, max_responses: int | None) -> list[int]:
    """Responses to show: all, or ``max_responses`` of them taking right and wrong ones in turn."""
    if max_responses is None or max_responses >= group.n:
        return list(range(group.n))
    right = [i for i in range(group.n) if group.correct[i]]
    wrong = [i for i in range(group.n) if not group.correct[i]]
    taken = [i for pair in zip(right, wrong) for i in pair] + right[len(wrong) :] + wrong[len(right) :]
    return sorted(taken[: max(1, max_responses)])


_CSS = """
#{id} {{font-family: var(--jp-content-font-family, sans-serif); font-size: 13px; color: #222; max-width: 100%}}
#{id} .wb-head {{margin-bottom: 6px; line-height: 1.5}}
#{id} code, #{id} .wb-text {{font-family: var(--jp-code-font-family, monospace)}}
#{id} .wb-row {{display: flex; align-items: baseline; gap: 8px; padding: 2px 0; border-top: 1px solid #eee}}
#{id} .wb-label {{flex: 0 0 88px; color: #555; font-size: 12px; white-space: nowrap}}
#{id} .wb-text {{white-space: pre-wrap; word-break: break-word; line-height: 1.9; font-size: 15px}}
#{id} .wb-tok {{border-radius: 2px; box-shadow: inset -1px 0 0 rgba(255,255,255,0.9); cursor: default}}
#{id} .wb-tok:hover {{outline: 1.5px solid #222}}
#{id} .wb-ws {{color: #999}}
#{id} .wb-ok {{color: #2ca02c}} #{id} .wb-bad {{color: #d62728}}
#{id} .wb-legend {{font-size: 12px; color: #555; margin: 4px 0}}
#{id} .wb-bar {{display: inline-block; width: 160px; height: 10px; vertical-align: middle; border: 1px solid #ccc}}
#{id} .wb-switch label {{margin-right: 10px; cursor: pointer}}
#{id} .wb-view {{display: none}}
{checked}
"""


@dataclass
class TokenHighlight:
    """One group rendered as coloured text; displays itself in a notebook (``_repr_html_``)."""

    group: Group
    value: str = "entropy"
    title: str | None = None
    max_responses: int | None = None

    def values(self) -> list[str]:
        """The values this group can be coloured by (those it holds)."""
        return [v for v, (attr, *_) in VALUES.items() if getattr(self.group, attr) is not None]

    def _header(self, rows: list[int]) -> str:
        g = self.group
        info = g.info
        where = ", ".join(
            f"{name} {info[k]}"
            for k, name in (("source", "from"), ("step", "step"), ("group", "group"))
            if info.get(k) not in (None, "")
        )
        title = self.title or ("Sampled group" + (f" ({where})" if where else ""))
        right = int(g.correct.sum())
        parts = [f"<b>{html.escape(title)}</b>"]
        if g.prompt:
            parts.append(f"prompt <code>{token_markup(g.prompt)}</code>")
        if g.answer:
            parts.append(f"gold answer <code>{html.escape(g.answer)}</code>")
        parts.append(f"{right} of {g.n} right" + ("" if len(rows) == g.n else f", {len(rows)} shown"))
        return '<div class="wb-head">' + " · ".join(parts) + "</div>"

    def to_html(self) -> str:
        """The view as one self-contained HTML fragment (inline styles, no script)."""
        values = self.values()
        if self.value not in values:
            raise ValueError(f"this group has no {self.value!r} values; it can show {values}")
        rows = _shown(self.group, self.max_responses)
        uid = f"wb-th-{uuid.uuid4().hex[:10]}"
        ordered = [self.value] + [v for v in values if v != self.value]
        checked = "\n".join(f"#{uid} #{uid}-{v}:checked ~ .wb-views .wb-view-{v} {{display: block}}" for v in values)
        switch = "".join(
            f'<input type="radio" name="{uid}" id="{uid}-{v}"{" checked" if v == self.value else ""}>'
            f'<label for="{uid}-{v}">{html.escape(VALUES[v][1])}</label>'
            for v in values
        )
        views = "".join(_view(self.group, v, rows) for v in ordered)
        return (
            f'<div id="{uid}" class="wb-highlight"><style>{_CSS.format(id=uid, checked=checked)}</style>'
            f'{self._header(rows)}<div class="wb-switch">colour by: {switch}'
            f'<div class="wb-views">{views}</div></div></div>'
        )

    def _repr_html_(self) -> str:
        return self.to_html()


def token_highlight(
    source, *, value: str = "entropy", title: str | None = None, max_responses: int | None = None
) -> TokenHighlight:
    """One rollout group as text with every token coloured by ``value`` (``"entropy"``,
    ``"advantage"`` or ``"logprob"``; the others one click away).

    ``source``: a ``samples.jsonl`` group record, a :class:`~workbench.viz.Group`, a list of
    response dicts, the list of group records of :func:`workbench.analysis.rollout_records`, a
    ``Run`` or a run path; from several groups the last one with both right and wrong answers is
    shown. ``max_responses`` shows that many responses, right and wrong ones in turn.
    """
    if value not in VALUES:
        raise ValueError(f"value must be one of {list(VALUES)}, got {value!r}")
    return TokenHighlight(one_group(source), value, title, max_responses)
