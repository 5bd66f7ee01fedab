"""Helpers for the tutorial notebooks: one switch for a fast (CI) size, and plotly set-up.

``WORKBENCH_FAST=1`` (set by ``make test``; CI's ``CI=true`` also turns it on) makes every
notebook run the same code at a small size: ``size(full=200, fast=5)`` returns the right one.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["FAST", "PROJECT_ROOT", "size", "runs_root", "setup_plotly"]


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


#: True when notebooks should run at their fast size.
FAST: bool = _flag(os.environ.get("WORKBENCH_FAST")) or _flag(os.environ.get("CI"))


def size(full, fast):
    """``fast`` when :data:`FAST`, else ``full``."""
    return fast if FAST else full


#: The checkout the package runs from (``make install`` installs it editable), when there is one.
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def runs_root(name: str = "") -> Path:
    """Where notebooks write their runs: ``<project>/runs/notebooks/<name>`` (``runs/ci/...`` at
    fast size); ``WORKBENCH_RUNS`` moves the whole tree."""
    base = os.environ.get("WORKBENCH_RUNS") or (
        PROJECT_ROOT / "runs" if (PROJECT_ROOT / "pyproject.toml").is_file() else Path("runs")
    )
    root = Path(base) / ("ci" if FAST else "notebooks")
    return root / name if name else root


def setup_plotly() -> None:
    """Render plotly figures in JupyterLab and in executed notebooks alike, and show tables whole
    (pandas' limits on columns and line width lifted, so no column hides behind "...")."""
    import pandas as pd
    import plotly.io as pio

    pd.set_option("display.max_columns", None, "display.width", None, "display.max_colwidth", 80)
    pio.renderers.default = "plotly_mimetype"
