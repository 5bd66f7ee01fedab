"""nbval settings for the tutorial notebooks.

Every notebook runs top to bottom in CI (``make test`` sets ``WORKBENCH_FAST=1``, so each runs
the same code at its fast size). With ``--nbval-lax`` only cells marked ``# NBVAL_CHECK_OUTPUT``
have their output compared: those print hand-checkable numbers (the spec's worked example,
task examples). Figures and widgets are rendered output, never compared byte for byte.
"""

import os

os.environ.setdefault("WORKBENCH_FAST", "1")
os.environ.setdefault("PLOTLY_RENDERER", "plotly_mimetype")


def pytest_collectstart(collector):
    skip = getattr(collector, "skip_compare", None)
    if skip is not None:
        collector.skip_compare = tuple(skip) + (
            "text/html",
            "application/javascript",
            "application/vnd.plotly.v1+json",
            "application/vnd.jupyter.widget-view+json",
            "image/png",
        )
