"""How each algorithm spreads one group's rewards over its tokens, next to the entropies that drive it.

GRPO and DAPO give every token of a response the same advantage; GTPO moves credit towards
high-entropy tokens of correct responses and confident tokens of wrong ones; GRPO-S reweights
whole responses by their mean entropy. The figure shows, for one group: the token entropies,
each algorithm's advantages (algorithms whose advantages are identical share one panel, e.g.
"GRPO = DAPO"), and below each entropy-shaped algorithm its difference from GRPO on its own
symmetric colour scale, so a shift of a few hundredths is as visible as the advantages themselves.
"""

from __future__ import annotations

import html
import inspect
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
    """One heatmap of the figure: ``kind`` is ``entropy``, ``advantage`` or ``difference``."""

    kind: str
    title: str
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
    top = [Panel("entropy", "token entropy", np.where(group.mask, group.entropies, np.nan))]
    below: list[Panel | None] = [None]
    base = advantages[BASELINE]
    for names, values in merged:
        title = " = ".join(display_name(n) for n in names)
        top.append(Panel("advantage", f"{title} advantage", values, tuple(names)))
        differs = not np.allclose(values, base, atol=1e-6, equal_nan=True)
        below.append(Panel("difference", f"{title} − GRPO", values - base, tuple(names)) if differs else None)
    return top, below


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
        lines.append(f"{panel.title}: {panel.values[i, t]:+.3f}")
    lines.append(f"reward {group.rewards[i]:g} {'✓' if group.correct[i] else '✗'}")
    return "<br>".join(lines)


def _cell_text(group: Group, panel: Panel, annotate: bool) -> list[list[str]] | None:
    n, T = group.mask.shape
    if panel.kind == "entropy" and group.tokens is not None and T <= 24:
        return [[(group.token(i, t) or "") if group.mask[i, t] else "" for t in range(T)] for i in range(n)]
    if not annotate:
        return None
    fmt = "{:.2f}" if panel.kind == "entropy" else "{:+.2f}"
    return [[fmt.format(panel.values[i, t]) if group.mask[i, t] else "" for t in range(T)] for i in range(n)]


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
        name=panel.title,
        hovertext=[[_hover(group, panel, i, t) if group.mask[i, t] else "" for t in range(T)] for i in range(n)],
        hovertemplate="%{hovertext}<extra></extra>",
        meta={"kind": panel.kind, "algorithms": list(panel.algorithms), "title": panel.title},
    )


def _difference_axis(fig: go.Figure, trace: go.Heatmap, panel: Panel, advantage_range: float, below: float) -> dict:
    """The colour axis of one difference panel, its colour bar laid flat ``below`` (paper fraction) the panel."""
    xaxis = fig.layout["xaxis" + trace.xaxis[1:]]
    yaxis = fig.layout["yaxis" + trace.yaxis[1:]]
    top = _difference_range(panel, advantage_range)
    bar = {
        "orientation": "h",
        "thickness": 8,
        "len": xaxis.domain[1] - xaxis.domain[0],
        "lenmode": "fraction",
        "x": sum(xaxis.domain) / 2,
        "xanchor": "center",
        "y": yaxis.domain[0] - below,
        "yanchor": "top",
        "title": {"text": "difference", "side": "right"},
        "tickvals": [-top, 0, top],
        "tickformat": "+.2f",
    }
    return {"colorscale": DIFFERENCE_SCALE, "cmid": 0, "cmin": -top, "cmax": top, "colorbar": bar}


def _height(group: Group, rows: int) -> int:
    return 130 + rows * (110 + 24 * group.n)


def _layout(fig: go.Figure, group: Group, ranges: dict, rows: int, title: str) -> None:
    top_entropy = float(np.nanmax(np.where(group.mask, group.entropies, np.nan))) or 1.0
    bar = {"len": 0.42 if rows > 1 else 0.45, "thickness": 12, "x": 1.01}
    fig.update_layout(
        coloraxis={
            "colorscale": ENTROPY_SCALE,
            "cmin": 0,
            "cmax": top_entropy,
            "colorbar": {**bar, "title": {"text": "entropy<br>(nats)"}, "y": 1.0, "yanchor": "top"},
        },
        coloraxis2={
            "colorscale": "RdBu",
            "cmid": 0,
            "cmin": -ranges["advantage"],
            "cmax": ranges["advantage"],
            "colorbar": {
                **bar,
                "title": {"text": "advantage"},
                "y": 0.5 if rows > 1 else 0.0,
                "yanchor": "top" if rows > 1 else "bottom",
            },
        },
    )
    T = group.mask.shape[1]
    fig.update_yaxes(autorange="reversed", type="category", showgrid=False)
    fig.update_xaxes(dtick=1 if T <= 16 else None, showgrid=False)
    fig.update_xaxes(title_text="position", title_standoff=2, row=1)
    styled(fig, title=title, height=_height(group, rows))
    fig.update_layout(plot_bgcolor="#f4f4f4", margin={"b": 90})


def _figure(group: Group, algorithms, annotate, title, ranges, algo_kwargs) -> go.Figure:
    top, below = _panels(group, algorithms, algo_kwargs)
    ranges = {**colour_ranges(group, algorithms, **algo_kwargs), **(ranges or {})}
    n, T = group.mask.shape
    annotate = T <= 8 and n <= 12 if annotate is None else annotate
    rows = 2 if any(p is not None for p in below) else 1
    titles = [p.title for p in top] + [p.title for p in below if p is not None]
    specs = [[{} for _ in top]] + [[{} if p else None for p in below]] * (rows - 1)
    fig = make_subplots(
        rows=rows,
        cols=len(top),
        shared_yaxes="all",
        subplot_titles=titles,
        specs=specs,
        horizontal_spacing=0.015,
        vertical_spacing=0.5 / (group.n**0.5 + 1),
    )
    labels = [f"#{i} {'✓' if group.correct[i] else '✗'} r={group.rewards[i]:g}" for i in range(n)]
    axes = {}
    for col, (upper, lower) in enumerate(zip(top, below), start=1):
        fig.add_trace(
            _heatmap(group, upper, labels, annotate, "coloraxis2" if col > 1 else "coloraxis"), row=1, col=col
        )
        if lower is not None:
            name = f"coloraxis{3 + len(axes)}"
            fig.add_trace(_heatmap(group, lower, labels, annotate, name), row=2, col=col)
            below_px = 32 / (_height(group, rows) - 160)  # under the tick labels (160: top and bottom margins)
            axes[name] = _difference_axis(fig, fig.data[-1], lower, ranges["advantage"], below_px)
            fig.update_yaxes(showticklabels=len(axes) == 1, row=2, col=col)  # row labels on the first one
    _layout(fig, group, ranges, rows, title)
    fig.update_layout(**axes)
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
