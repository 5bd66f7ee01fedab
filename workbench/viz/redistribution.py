"""How each algorithm spreads one group's rewards over its tokens, next to the entropies that drive it.

GRPO and DAPO give every token of a response the same advantage; GTPO moves credit towards
high-entropy tokens of correct responses and confident tokens of wrong ones; GRPO-S reweights
whole responses by their mean entropy. The figure shows, for one group: the token entropies,
each algorithm's advantages (algorithms whose advantages are identical share one panel, e.g.
"GRPO = DAPO"), and below each entropy-shaped algorithm its difference from GRPO on its own
symmetric colour scale, so a shift of a few hundredths is as visible as the advantages themselves.
Panels are titled by algorithm alone; the colour bars name the quantity and its unit, so the
titles stay short enough to read side by side at a README's width (about 700 px).
"""

from __future__ import annotations

import html
import inspect
import textwrap
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from ..algorithms import ALGORITHMS, get_algorithm
from .sources import Group, as_group
from .style import display_name, styled

__all__ = [
    "DEFAULT_ALGORITHMS",
    "algorithm_advantages",
    "colour_ranges",
    "redistribution_figure",
    "redistribution_from_sample",
    "synthetic_group",
]

DEFAULT_ALGORITHMS = ("grpo", "dapo", "gtpo", "grpo_s")
BASELINE = "grpo"
ENTROPY_SCALE = [[0, "#ffffff"], [0.5, "#fdae61"], [1, "#e4572e"]]  # the token-highlight view's scale
DIFFERENCE_SCALE = "PuOr_r"  # orange: more credit than GRPO gives, purple: less
TITLE_CHARS = 56  # characters of panel titles side by side in one line of a figure about 700 px wide
LINE_PX = 18  # px per extra line of a wrapped panel title
MARGIN_TOP, MARGIN_BOTTOM, ROW_GAP = 70, 110, 70  # px; the bottom margin holds the lowest row's flat colour bars
BAR_BELOW = {"ticks": 30, "axis title": 62}  # px from a panel's bottom edge to its flat colour bar's top
_NAMED = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _takes(name: str) -> set[str]:
    """The keyword arguments the advantage function of ``name`` names in its signature."""
    params = inspect.signature(get_algorithm(name).advantage_fn).parameters
    return {key for key, p in params.items() if p.kind in _NAMED}


def algorithm_advantages(group, algorithms=DEFAULT_ALGORITHMS, **algo_kwargs) -> dict[str, np.ndarray]:
    """Each algorithm's advantages for one group: ``{name: [n, T]}``, NaN at masked positions.

    A keyword named after an algorithm (``gtpo={"alpha2": 0.3}``) goes to that algorithm
    alone; any other (``alpha2=0.3``, ``normalize="per_polarity"``) goes to every algorithm
    whose advantage function names it (so ``alpha2`` reaches GTPO and not GRPO), except
    where the algorithm fixes it itself (``gtpo_per_polarity`` keeps its ``normalize``).
    """
    group = as_group(group)
    per_algorithm = {k: v for k, v in algo_kwargs.items() if k in ALGORITHMS}
    shared = {k: v for k, v in algo_kwargs.items() if k not in ALGORITHMS}
    rewards, entropies, mask = group.tensors()
    out = {}
    for name in algorithms:
        algorithm = get_algorithm(name)
        kwargs = {k: v for k, v in shared.items() if k in _takes(name) and k not in algorithm.advantage_kwargs}
        kwargs.update(per_algorithm.get(name, {}))
        advantages = algorithm.advantages(rewards, entropies, mask, **kwargs)
        out[name] = np.where(group.mask, advantages.numpy().astype(float), np.nan)
    return out


@dataclass
class Panel:
    """One heatmap of the figure: ``kind`` is ``entropy``, ``advantage`` or ``difference``; ``title`` is
    what the panel says above it (the algorithms), ``label`` what a tooltip calls its values."""

    kind: str
    title: str
    label: str
    values: np.ndarray
    algorithms: tuple[str, ...] = ()


def _panels(group: Group, algorithms, algo_kwargs) -> tuple[list[Panel], list[Panel | None]]:
    """The entropy and advantage panels (identical advantages merged), and under each its difference
    from GRPO (None where there is none: the entropies, GRPO itself, algorithms equal to GRPO)."""
    wanted = tuple(dict.fromkeys(algorithms))
    advantages = algorithm_advantages(group, tuple(dict.fromkeys((BASELINE, *wanted))), **algo_kwargs)
    merged: list[tuple[list[str], np.ndarray]] = []
    for name in wanted:
        same = next((m for m in merged if np.allclose(m[1], advantages[name], atol=1e-6, equal_nan=True)), None)
        if same is None:
            merged.append(([name], advantages[name]))
        else:
            same[0].append(name)
    top = [Panel("entropy", "token entropy", "entropy", np.where(group.mask, group.entropies, np.nan))]
    below: list[Panel | None] = [None]
    base = advantages[BASELINE]
    for names, values in merged:
        title = " = ".join(display_name(n) for n in names)
        top.append(Panel("advantage", title, f"{title} advantage", values, tuple(names)))
        differs = not np.allclose(values, base, atol=1e-6, equal_nan=True)
        difference = f"{title} − GRPO"
        below.append(Panel("difference", difference, difference, values - base, tuple(names)) if differs else None)
    return top, below


def _wrapped(title: str, cols: int) -> list[str]:
    """The lines of a panel title among ``cols`` side by side, broken at spaces (about 700 px in all)."""
    return textwrap.wrap(title, max(8, TITLE_CHARS // cols), break_long_words=False, break_on_hyphens=False)


def colour_ranges(group, algorithms=DEFAULT_ALGORITHMS, **algo_kwargs) -> dict[str, float]:
    """The symmetric range of the advantage colour scale for ``group`` at these settings (the largest
    absolute advantage): ``{"advantage": value}``. Pass it back as ``ranges`` to keep the advantage
    colours fixed while settings move (the shaping explorer does)."""
    top, _ = _panels(as_group(group), algorithms, algo_kwargs)
    values = [float(np.nanmax(np.abs(p.values))) for p in top[1:] if np.isfinite(p.values).any()]
    return {"advantage": max(values, default=1.0) or 1.0}


def _difference_range(panel: Panel, advantage_range: float) -> float:
    """A difference panel's own symmetric range: its largest absolute value, at least a twentieth of the
    advantage range (so rounding noise stays white). Its own, so a panel that did not change keeps its colours."""
    finite = np.abs(panel.values[np.isfinite(panel.values)])
    return max(float(finite.max()) if finite.size else 0.0, advantage_range / 20)


def _hover(group: Group, panel: Panel, i: int, t: int) -> str:
    lines = [f"response #{i}, position {t}"]
    token = group.token(i, t)
    if token is not None:
        lines.append(f"token {html.escape(repr(token), quote=False)}")
    lines.append(f"entropy {group.entropies[i, t]:.3f} nats")
    if panel.kind != "entropy":
        lines.append(f"{panel.label}: {panel.values[i, t]:+.3f}")
    lines.append(f"reward {group.rewards[i]:g} {'✓' if group.correct[i] else '✗'}")
    return "<br>".join(lines)


#: Characters of token text the entropy panel's row holds (all its cells together).
_TOKEN_CHARS = 24


def _fit(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[: max(chars - 1, 1)] + "…"


def _cell_text(group: Group, panel: Panel, annotate: bool) -> list[list[str]] | None:
    n, T = group.mask.shape
    if panel.kind == "entropy" and group.tokens is not None and T <= 24:
        fits = max(1, _TOKEN_CHARS // T)  # a real model's BPE strings are cut to the cell (hover: whole)
        return [[_fit(group.token(i, t) or "", fits) if group.mask[i, t] else "" for t in range(T)] for i in range(n)]
    if not annotate:
        return None
    fmt = "{:.2f}" if panel.kind == "entropy" else "{:+.2f}"

    def cell(value: float) -> str:
        return "0.00" if round(value, 2) == 0 else fmt.format(value)  # no "-0.00" beside "+0.00"

    return [[cell(panel.values[i, t]) if group.mask[i, t] else "" for t in range(T)] for i in range(n)]


def _heatmap(group: Group, panel: Panel, labels: list[str], annotate: bool, axis: str) -> go.Heatmap:
    n, T = group.mask.shape
    text = _cell_text(group, panel, annotate)
    return go.Heatmap(
        z=panel.values,
        x=list(range(T)),
        y=labels,
        text=text,
        texttemplate="%{text}" if text else None,
        textfont={"size": 11},
        coloraxis=axis,
        xgap=1,
        ygap=1,
        name=panel.label,
        hovertext=[[_hover(group, panel, i, t) if group.mask[i, t] else "" for t in range(T)] for i in range(n)],
        hovertemplate="%{hovertext}<extra></extra>",
        meta={"kind": panel.kind, "algorithms": list(panel.algorithms), "title": panel.label},
    )


def _signed(value: float) -> str:
    return "0" if value == 0 else f"{value:+.2f}".replace("-", "−")


def _flat_bar(fig: go.Figure, trace: go.Heatmap, title: str, below_px: float, ticks: list[float]) -> dict:
    """A colour bar laid flat under the panel of ``trace``, ``below_px`` under its bottom edge: three quarters of
    the panel's width (so the end labels of neighbouring bars do not meet), its title above it and level tick
    labels at ``ticks``."""
    xaxis = fig.layout["xaxis" + trace.xaxis[1:]]
    yaxis = fig.layout["yaxis" + trace.yaxis[1:]]
    plot_height = fig.layout.height - fig.layout.margin.t - fig.layout.margin.b
    return {
        "orientation": "h",
        "thickness": 10,
        "len": 0.75 * (xaxis.domain[1] - xaxis.domain[0]),
        "lenmode": "fraction",
        "x": sum(xaxis.domain) / 2,
        "xanchor": "center",
        "xpad": 0,
        "y": yaxis.domain[0] - below_px / plot_height,
        "yanchor": "top",
        "title": {"text": title, "side": "top", "font": {"size": 12}},
        "tickvals": ticks,
        "ticktext": [_signed(t) if ticks[0] < 0 else f"{t:.3g}" for t in ticks],
        "tickangle": 0,
        "tickfont": {"size": 11},
    }


def _colour_axes(fig: go.Figure, group: Group, panels: list[tuple[go.Heatmap, Panel]], ranges: dict) -> None:
    """The colour scales: the entropies' flat under their panel, the advantages' upright beside the top row
    (one scale for every algorithm), and each difference panel's own symmetric scale flat under it."""
    top_entropy = float(np.nanmax(np.where(group.mask, group.entropies, np.nan))) or 1.0
    entropy_trace = fig.data[0]
    yaxis = fig.layout["yaxis" + entropy_trace.yaxis[1:]]
    axes = {
        "coloraxis": {
            "colorscale": ENTROPY_SCALE,
            "cmin": 0,
            "cmax": top_entropy,
            "colorbar": _flat_bar(
                fig, entropy_trace, "token entropy (nats)", BAR_BELOW["axis title"], [0, top_entropy / 2, top_entropy]
            ),
        },
        "coloraxis2": {
            "colorscale": "RdBu",
            "cmid": 0,
            "cmin": -ranges["advantage"],
            "cmax": ranges["advantage"],
            "colorbar": {
                "title": {"text": "advantage"},
                "thickness": 12,
                "x": 1.01,
                "y": yaxis.domain[1],
                "yanchor": "top",
                "len": yaxis.domain[1] - yaxis.domain[0],
            },
        },
    }
    for trace, panel in panels:
        top = _difference_range(panel, ranges["advantage"])
        bar = _flat_bar(fig, trace, "difference", BAR_BELOW["ticks"], [-top, 0, top])
        axes[trace.coloraxis] = {"colorscale": DIFFERENCE_SCALE, "cmid": 0, "cmin": -top, "cmax": top, "colorbar": bar}
    fig.update_layout(**axes)


def _figure(group: Group, algorithms, annotate, title, ranges, algo_kwargs) -> go.Figure:
    top, below = _panels(group, algorithms, algo_kwargs)
    ranges = {**colour_ranges(group, algorithms, **algo_kwargs), **(ranges or {})}
    n, T = group.mask.shape
    annotate = T <= 8 and n <= 12 if annotate is None else annotate
    rows = 2 if any(p is not None for p in below) else 1
    titles = [_wrapped(p.title, len(top)) for p in top] + [_wrapped(p.title, len(top)) for p in below if p]
    extra = [max(len(t) for t in titles[: len(top)]) - 1, max((len(t) for t in titles[len(top) :]), default=1) - 1]
    panel_px, gap_px = 40 + 24 * group.n, ROW_GAP + LINE_PX * extra[1]  # extra lines of the titles above a row
    plot_px = rows * panel_px + (rows - 1) * gap_px
    specs = [[{} for _ in top]] + [[{} if p else None for p in below]] * (rows - 1)
    fig = make_subplots(
        rows=rows,
        cols=len(top),
        shared_yaxes="all",
        subplot_titles=["<br>".join(t) for t in titles],
        specs=specs,
        horizontal_spacing=0.015,
        vertical_spacing=gap_px / plot_px,
    )
    labels = [f"#{i} {'✓' if group.correct[i] else '✗'} r={group.rewards[i]:g}" for i in range(n)]
    differences = []
    for col, (upper, lower) in enumerate(zip(top, below), start=1):
        fig.add_trace(
            _heatmap(group, upper, labels, annotate, "coloraxis2" if col > 1 else "coloraxis"), row=1, col=col
        )
        if lower is not None:
            axis = f"coloraxis{3 + len(differences)}"
            fig.add_trace(_heatmap(group, lower, labels, annotate, axis), row=2, col=col)
            differences.append((fig.data[-1], lower))
            fig.update_yaxes(showticklabels=len(differences) == 1, row=2, col=col)  # row labels on the first one
    fig.update_yaxes(autorange="reversed", type="category", showgrid=False)
    fig.update_xaxes(dtick=1 if T <= 8 else 2 if T <= 16 else None, tickangle=0, showgrid=False)
    fig.update_xaxes(title_text="position", title_standoff=2, row=1)
    top_px = MARGIN_TOP + LINE_PX * extra[0]
    styled(fig, title=title, height=top_px + plot_px + MARGIN_BOTTOM)
    fig.update_layout(plot_bgcolor="#f4f4f4", margin={"t": top_px, "b": MARGIN_BOTTOM})
    fig.update_annotations(font={"size": 14})  # the panel titles
    _colour_axes(fig, group, differences, ranges)
    return fig


def _settings(algo_kwargs: dict) -> str:
    shown = {"alpha1": "α1", "alpha2": "α2", "beta1": "β1", "beta2": "β2"}
    parts = [f"{shown.get(k, k)} = {v}" for k, v in algo_kwargs.items() if not isinstance(v, dict)]
    return f" ({', '.join(parts)})" if parts else ""


def redistribution_figure(
    rewards,
    entropies,
    mask=None,
    algorithms=DEFAULT_ALGORITHMS,
    *,
    tokens=None,
    annotate: bool | None = None,
    title: str | None = None,
    ranges: dict | None = None,
    **algo_kwargs,
) -> go.Figure:
    """Token entropies, each algorithm's per-token advantages and their differences from GRPO, for one group.

    ``rewards [n]``, ``entropies [n, T]``, ``mask [n, T]`` (default: all valid), ``tokens``
    (optional list of token lists: shown in the entropy panel and on hover). Keyword arguments
    are routed as in :func:`algorithm_advantages`. ``annotate`` writes the values in the cells
    (default: groups of at most 8 positions and 12 responses). ``ranges`` fixes the colour
    scales (see :func:`colour_ranges`); by default they fit this group. Rows are labelled with
    ✓/✗ and the reward; each trace's ``meta`` has its ``kind`` and ``algorithms``.
    """
    group = as_group(
        {
            "rewards": rewards,
            "entropies": entropies,
            "mask": mask if mask is not None else np.ones(np.shape(entropies), dtype=bool),
            "tokens": tokens,
        }
    )
    title = title or "Per-token advantages" + _settings(algo_kwargs)
    return _figure(group, algorithms, annotate, title, ranges, algo_kwargs)


def redistribution_from_sample(
    group,
    algorithms=DEFAULT_ALGORITHMS,
    *,
    annotate: bool | None = None,
    title: str | None = None,
    ranges: dict | None = None,
    **algo_kwargs,
) -> go.Figure:
    """:func:`redistribution_figure` of a ``samples.jsonl`` record (or any group
    :func:`~workbench.viz.sources.as_group` reads): its rewards, entropies and tokens, each
    algorithm's advantages recomputed from them (the logged advantages are not shown, so a
    tooltip has one advantage: the panel's)."""
    group = as_group(group)
    if title is None:
        where = ", ".join(
            f"{name} {group.info[k]}"
            for k, name in (("source", "from"), ("step", "step"), ("group", "group"))
            if group.info.get(k) not in (None, "")
        )
        title = "Per-token advantages" + (f" of a logged group ({where})" if where else "") + _settings(algo_kwargs)
    return _figure(group, algorithms, annotate, title, ranges, algo_kwargs)


def synthetic_group(n: int = 8, T: int = 12, seed: int = 0) -> Group:
    """A seeded random group: ``n`` responses of 1..T tokens, exponential entropies, first half correct."""
    if n < 2 or T < 1:
        raise ValueError(f"a group needs n >= 2 and T >= 1, got n={n}, T={T}")
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(max(1, T // 3), T + 1, (n,), generator=gen)
    entropies = -torch.log1p(-torch.rand(n, T, generator=gen) * 0.999)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    rewards = (torch.arange(n) < (n + 1) // 2).double()
    return as_group({"rewards": rewards.numpy(), "entropies": entropies.numpy(), "mask": mask.numpy()})
