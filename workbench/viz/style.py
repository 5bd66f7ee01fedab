"""One colour per algorithm, shared by every figure and widget."""

from __future__ import annotations

import plotly.colors

__all__ = ["PALETTE", "algorithm_color", "rgba", "CORRECT_COLOR", "WRONG_COLOR"]

#: Fixed colours of the registered algorithms (variants share their parent's hue family).
PALETTE: dict[str, str] = {
    "grpo": "#636EFA",
    "dr_grpo": "#19D3F3",
    "dapo": "#EF553B",
    "gtpo": "#00CC96",
    "gtpo_per_polarity": "#B6E880",
    "grpo_s": "#AB63FA",
    "grpo_s_token": "#FF97FF",
}
_EXTRA = plotly.colors.qualitative.Dark24
_OTHERS: dict[str, str] = {}
CORRECT_COLOR = "#2CA02C"
WRONG_COLOR = "#D62728"


def algorithm_color(name: str) -> str:
    """The palette colour of ``name``; other names (runs, seeds) get an extra colour, fixed on first use."""
    if name in PALETTE:
        return PALETTE[name]
    return _OTHERS.setdefault(name, _EXTRA[len(_OTHERS) % len(_EXTRA)])


def rgba(color: str, alpha: float) -> str:
    """``"#RRGGBB"`` as an ``rgba(...)`` string with opacity ``alpha`` (for shaded bands)."""
    r, g, b = plotly.colors.hex_to_rgb(color)
    return f"rgba({r},{g},{b},{alpha})"
