"""One look for every figure and widget: a colour and a readable name per algorithm, one plotly template.

``TEMPLATE`` (registered in plotly as ``"workbench"``) is plotly's white template with the
algorithm colours, grid lines, hover labels and margins the figures share; every figure function
and widget of :mod:`workbench.viz` sets it, so a figure looks the same in a notebook, in the run
launcher and in an exported page.
"""

from __future__ import annotations

import plotly.colors
import plotly.graph_objects as go
import plotly.io as pio

__all__ = [
    "PALETTE",
    "NAMES",
    "TEMPLATE",
    "algorithm_color",
    "display_name",
    "rgba",
    "styled",
    "CORRECT_COLOR",
    "WRONG_COLOR",
]

#: Fixed colours of the registered algorithms (variants share their parent's hue family).
PALETTE: dict[str, str] = {
    "grpo": "#636EFA",
    "dr_grpo": "#19D3F3",
    "dapo": "#EF553B",
    "gtpo": "#00CC96",
    "gtpo_per_polarity": "#B6E880",
    "grpo_s": "#AB63FA",
    "grpo_s_token": "#FF97FF",
    "gtpo_per_polarity_batch": "#6B8E23",
    "dapo_forking": "#FFA15A",
    "clip_cov": "#1F77B4",
    "kl_cov": "#8C564B",
    "entropy_adv": "#E377C2",
    "erc": "#7F7F7F",
    "gtpo_surprisal": "#17BECF",
    "grpo_s_surprisal": "#BCBD22",
}
#: Names as the paper and the README write them.
NAMES: dict[str, str] = {
    "grpo": "GRPO",
    "dr_grpo": "Dr. GRPO",
    "dapo": "DAPO",
    "gtpo": "GTPO",
    "gtpo_per_polarity": "GTPO (per polarity)",
    "gtpo_per_polarity_batch": "GTPO (per polarity, batch)",
    "grpo_s": "GRPO-S",
    "grpo_s_token": "GRPO-S (token loss)",
    "dapo_forking": "DAPO (forking tokens)",
    "clip_cov": "Clip-Cov",
    "kl_cov": "KL-Cov",
    "entropy_adv": "Entropy advantage",
    "erc": "ERC",
    "gtpo_surprisal": "GTPO (surprisal)",
    "grpo_s_surprisal": "GRPO-S (surprisal)",
}
_BY_DISPLAY_NAME = {shown: name for name, shown in NAMES.items()}
_EXTRA = plotly.colors.qualitative.Dark24
_OTHERS: dict[str, str] = {}
CORRECT_COLOR = "#2CA02C"
WRONG_COLOR = "#D62728"


def algorithm_color(name: str) -> str:
    """The palette colour of ``name`` (a registry name or its display name, e.g. a named group of
    runs ``"GRPO-S"``); other names (runs, seeds) get an extra colour, fixed on first use."""
    name = _BY_DISPLAY_NAME.get(name, name)
    if name in PALETTE:
        return PALETTE[name]
    return _OTHERS.setdefault(name, _EXTRA[len(_OTHERS) % len(_EXTRA)])


def rgba(color: str, alpha: float) -> str:
    """``"#RRGGBB"`` as an ``rgba(...)`` string with opacity ``alpha`` (for shaded bands)."""
    r, g, b = plotly.colors.hex_to_rgb(color)
    return f"rgba({r},{g},{b},{alpha})"


def display_name(name: str) -> str:
    """``"grpo_s"`` -> ``"GRPO-S"``, ``"dapo (adaptive bonus)"`` -> ``"DAPO (adaptive bonus)"`` (a
    study's method under a setting); names outside the registry are returned as they are."""
    name = str(name)
    head, sep, tail = name.partition(" (")
    return NAMES[name] if name in NAMES else NAMES.get(head, head) + sep + tail


TEMPLATE = go.layout.Template(pio.templates["plotly_white"])
TEMPLATE.layout.update(
    font={"size": 13},
    title={"font": {"size": 16}, "x": 0.01, "xanchor": "left"},
    colorway=list(PALETTE.values()),
    hoverlabel={"font": {"family": "monospace", "size": 12}},
    margin={"l": 70, "r": 30, "t": 70, "b": 60},
    legend={"title": {"text": ""}},
)
TEMPLATE.layout.xaxis.update(gridcolor="#eee", zeroline=False, automargin=True)
TEMPLATE.layout.yaxis.update(gridcolor="#eee", zerolinecolor="#ccc", automargin=True)
pio.templates["workbench"] = TEMPLATE


def styled(fig: go.Figure, *, title: str | None = None, height: int | None = None) -> go.Figure:
    """``fig`` with the workbench template (and ``title``/``height`` when given), full width."""
    fig.update_layout(template="workbench", autosize=True)
    if title is not None:
        fig.update_layout(title={"text": title})
    if height is not None:
        fig.update_layout(height=height)
    return fig
