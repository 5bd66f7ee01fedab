"""Every tutorial notebook opened in JupyterLab and run there, as a reader does (fast size).

``WORKBENCH_README_FIGURES=1`` also writes the README's figures (``README_FIGURES``, found by their
title) to ``data/figures/``: the images the README shows are what this check rendered, stored as
palette PNGs of their 256 most frequent colours (``palette_png``: a third of the size, the same look).

Each notebook is run from JupyterLab's Run All command in headless Chromium; the check asserts
that no cell shows an error or a warning block and that the browser console stayed clean, then
saves a PNG of every figure, table and widget it rendered under ``runs/browser/<notebook>/`` for
a person to look at. The executed notebook is saved as a reader would save it, and its size is
checked (plotly figures are JSON rendered by JupyterLab's plotly extension, never plotly.js).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import palette_png  # tests/browser/palette_png.py (pytest puts this folder on sys.path)
import pytest

from workbench import _files

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
ARTEFACTS = ROOT / "runs" / "browser"
NOTEBOOKS = sorted(p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
#: what renders as a figure: plotly plots, token-highlight views, tables of DataFrames, widgets
FIGURES = (
    ".jp-RenderedPlotly, .js-plotly-plot, .wb-highlight, .jp-RenderedHTMLCommon table, .jupyter-widgets.widget-vbox"
)
MAX_SAVED_BYTES = 5_000_000
FIGURES_DIR = ROOT / "data" / "figures"
README_FIGURE_ERROR = 1.0  # most a README copy's pixels may differ from the screenshot's, on average (0-255 levels)
#: README image -> (notebook, text the figure shows): the key figures, taken from this check
README_FIGURES = {
    "redistribution.png": ("01_token_level_credit.ipynb", "Spec example: entropies, advantages"),
    "token_highlight.png": ("01_token_level_credit.ipynb", "Sampled group (from gtpo-s0"),
    "training_curves.png": ("07_reproduction.ipynb", "Accuracy study: 5 seeds per algorithm"),
    "long_cot.png": ("04_long_cot_stability.ipynb", "Shipped long-CoT study"),
}
#: README image -> the files its numbers come from (globs under the project root); a copy records
#: their digest in data/figures/sources.json, and tests/test_readme.py fails when the data moved on
README_SOURCES = {
    "redistribution.png": ["workbench/examples.py"],
    "token_highlight.png": ["data/results/accuracy/runs/default/gtpo-s0/samples.jsonl"],
    "training_curves.png": [
        "data/results/accuracy/runs/*/*/metrics.jsonl",
        "data/results/accuracy/runs/*/*/eval.jsonl",
    ],
    "long_cot.png": ["data/results/long_cot/runs/*/*/metrics.jsonl", "data/results/long_cot/runs/*/*/eval.jsonl"],
}


#: what a notebook must show besides figures: (CSS selector, least count, what it is)
EXPECTED = {
    "05_explore.ipynb": [
        (".widget-slider", 5, "the explorer's sliders"),
        (".widget-button", 1, "the launcher's button"),
    ],
}


def _save_figures(nb) -> list[Path]:
    saved = []
    cells = nb.page.locator(".jp-Notebook .jp-CodeCell")
    for i in range(cells.count()):
        outputs = cells.nth(i).locator(".jp-OutputArea-output")
        for j in range(outputs.count()):
            output = outputs.nth(j)
            if not output.is_visible():  # a widget's static copy, hidden while the widget runs
                continue
            if not output.evaluate("(e, sel) => e.matches(sel) || !!e.querySelector(sel)", FIGURES):
                continue
            output.scroll_into_view_if_needed()
            nb.page.wait_for_timeout(200)
            saved.append(nb.screenshot(f"cell{i + 1:02d}-{j + 1}", output))
            _readme_copy(nb, output.evaluate("e => e.textContent"), saved[-1])
    return saved


def _readme_copy(nb, text: str, png: Path) -> None:
    """With ``WORKBENCH_README_FIGURES=1``, the screenshot ``png`` as the README image whose title ``text`` shows."""
    if os.environ.get("WORKBENCH_README_FIGURES") != "1":
        return
    for image, (source, title) in README_FIGURES.items():
        if source == nb.name and title in text:
            blank = nb.page.context.browser.new_page()  # decodes the PNGs; the notebook page is left alone
            try:
                compact, error = palette_png.compact(blank, png.read_bytes())
            finally:
                blank.close()
            assert error < README_FIGURE_ERROR, f"{image}: the palette copy differs by {error:.2f} levels on average"
            FIGURES_DIR.mkdir(parents=True, exist_ok=True)
            (FIGURES_DIR / image).write_bytes(compact)
            record = FIGURES_DIR / "sources.json"
            sources = json.loads(record.read_text()) if record.exists() else {}
            sources[image] = {
                "sources": README_SOURCES[image],
                "sha256": _files.files_digest(ROOT, README_SOURCES[image]),
            }
            record.write_text(json.dumps(dict(sorted(sources.items())), indent=2) + "\n")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_jupyterlab(open_notebook, lab, name):
    nb = open_notebook(name, width=960, height=2200)
    nb.run_all(timeout=600)
    tracebacks, warnings = nb.tracebacks(), nb.warnings()
    saved = _save_figures(nb)
    nb.command("docmanager:save")
    nb.page.wait_for_timeout(1500)
    nb.screenshot("page")
    assert not tracebacks, "\n".join(tracebacks)[-3000:]
    assert not warnings, f"warning blocks in {name}:\n" + "\n".join(warnings)[-3000:]
    assert not nb.errors, f"browser console errors in {name}: {nb.errors}"
    assert saved, f"no figure rendered in {name}"
    for selector, least, what in EXPECTED.get(name, []):
        assert nb.page.locator(selector).count() >= least, f"{what} did not render in {name}"
    if name == "05_explore.ipynb":
        assert any("finished" in t for t in nb.page.locator(".jp-OutputArea-output").all_inner_texts())
    stored = Path(lab[2]) / name
    size = stored.stat().st_size
    (ARTEFACTS / Path(name).stem / "saved_size.json").write_text(json.dumps({"bytes": size}))
    assert size < MAX_SAVED_BYTES, f"{name} saved after Run All weighs {size / 1e6:.1f} MB"
