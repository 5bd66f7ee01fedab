"""How each algorithm spreads one group's rewards over its tokens.

GRPO and DAPO give every token of a response the same advantage; GTPO moves credit
towards high-entropy tokens of correct responses and confident tokens of wrong ones;
GRPO-S reweights whole responses by their mean entropy.
"""

from __future__ import annotations

import inspect

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from ..algorithms import ALGORITHMS, get_algorithm
from .sources import Group, as_group
from .tokens import response_label, token_hover

__all__ = [
    "DEFAULT_ALGORITHMS",
    "algorithm_advantages",
    "redistribution_figure",
    "redistribution_from_sample",
    "redistribution_traces",
    "synthetic_group",
]

DEFAULT_ALGORITHMS = ("grpo", "dapo", "gtpo", "grpo_s")
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


def redistribution_traces(
    group: Group, algorithms=DEFAULT_ALGORITHMS, *, annotate: bool | None = None, **algo_kwargs
) -> list[go.Heatmap]:
    """One heatmap trace per algorithm (responses × positions), sharing one diverging colour axis."""
    n, T = group.mask.shape
    annotate = n * T <= 240 if annotate is None else annotate
    labels = [response_label(group, i) for i in range(n)]
    traces = []
    for name, adv in algorithm_advantages(group, algorithms, **algo_kwargs).items():
        hover = [
            [token_hover(group, i, t, **{f"A ({name})": adv[i, t]}) if group.mask[i, t] else "" for t in range(T)]
            for i in range(n)
        ]
        text = None
        if annotate:
            text = [[f"{adv[i, t]:+.2f}" if group.mask[i, t] else "" for t in range(T)] for i in range(n)]
        traces.append(
            go.Heatmap(
                z=adv,
                x=list(range(T)),
                y=labels,
                text=text,
                texttemplate="%{text}" if annotate else None,
                hovertext=hover,
                hovertemplate="%{hovertext}<extra></extra>",
                coloraxis="coloraxis",
                xgap=1,
                ygap=1,
                name=name,
                meta={"algorithm": name},
            )
        )
    return traces


def _figure(group: Group, algorithms, annotate, title, algo_kwargs) -> go.Figure:
    algorithms = tuple(algorithms)
    fig = make_subplots(
        rows=1, cols=len(algorithms), shared_yaxes=True, subplot_titles=algorithms, horizontal_spacing=0.02
    )
    for col, trace in enumerate(redistribution_traces(group, algorithms, annotate=annotate, **algo_kwargs), start=1):
        fig.add_trace(trace, row=1, col=col)
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(title="position")
    fig.update_layout(
        title=title or "Per-token advantages",
        coloraxis={"colorscale": "RdBu", "cmid": 0, "colorbar": {"title": {"text": "advantage"}}},
        height=200 + 28 * group.n,
        plot_bgcolor="white",
    )
    return fig


def redistribution_figure(
    rewards,
    entropies,
    mask=None,
    algorithms=DEFAULT_ALGORITHMS,
    *,
    tokens=None,
    annotate: bool | None = None,
    title: str | None = None,
    **algo_kwargs,
) -> go.Figure:
    """Per-token advantages of one group, one heatmap per algorithm, colour centred at 0.

    ``rewards [n]``, ``entropies [n, T]``, ``mask [n, T]`` (default: all valid), ``tokens``
    (optional list of token lists, for the hover). Keyword arguments are routed as in
    :func:`algorithm_advantages`. ``annotate`` writes the values in the cells (default:
    when the group has at most 240 cells).
    """
    group = as_group(
        {
            "rewards": rewards,
            "entropies": entropies,
            "mask": mask if mask is not None else np.ones(np.shape(entropies), dtype=bool),
            "tokens": tokens,
        }
    )
    return _figure(group, algorithms, annotate, title, algo_kwargs)


def redistribution_from_sample(
    group, algorithms=DEFAULT_ALGORITHMS, *, annotate: bool | None = None, title: str | None = None, **algo_kwargs
) -> go.Figure:
    """:func:`redistribution_figure` of a ``samples.jsonl`` record (or any group
    :func:`~workbench.viz.sources.as_group` reads): its rewards, entropies and tokens, each
    algorithm's advantages recomputed."""
    if title is None and isinstance(group, dict) and "step" in group:
        title = f"Per-token advantages — step {group['step']}, group {group.get('group', 0)}"
    return _figure(as_group(group), algorithms, annotate, title, algo_kwargs)


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
