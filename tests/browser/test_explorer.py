"""The shaping explorer moved through its controls in the browser: the rendered figure must follow;
then saved and reopened without its kernel: a static figure must show.

A widget updated in place can be right in Python and frozen in the page (plotly's FigureWidget
lost every redraw once the number of rows changed). This check types new values into the
sliders' readouts and clicks the toggle buttons, as a user does, and reads back what plotly drew
in the page: the number of row labels and the cell values.
"""

from __future__ import annotations

import json
import urllib.request

import nbformat
import pytest

pytestmark = pytest.mark.browser

CELLS = [
    "from workbench import viz\nfrom workbench.notebook import setup_plotly\n\nsetup_plotly()",
    "explorer = viz.shaping_explorer()\nexplorer",
]
# what plotly drew: row labels of the first panel and the z values of every heatmap
READ_FIGURE = """(cell) => {
  const gd = cell.querySelector('.widget-output .js-plotly-plot');
  if (!gd || !gd.data) return null;
  const ticks = gd.querySelector('.subplot.xy .yaxislayer-above');
  return {rows: ticks ? ticks.querySelectorAll('.ytick').length : 0,
          z: JSON.stringify(gd.data.filter(t => t.type === 'heatmap').map(t => t.z))};
}"""


def _write_notebook(home, name: str = "explorer_check.ipynb") -> str:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, home / name)
    return name


def _shut_down_kernels(lab, name: str) -> None:
    """End the kernel sessions of notebook ``name`` through JupyterLab's REST API."""
    url, token, _ = lab
    with urllib.request.urlopen(f"{url}/api/sessions?token={token}") as response:
        sessions = json.load(response)
    for session in sessions:
        if session["path"].endswith(name):
            request = urllib.request.Request(f"{url}/api/sessions/{session['id']}?token={token}", method="DELETE")
            urllib.request.urlopen(request).close()


def _set_slider(cell, description: str, value) -> None:
    """Type ``value`` into the readout of the slider labelled ``description`` and press Enter."""
    slider = cell.locator(".widget-slider").filter(has=cell.page.locator(f"label:text-is('{description}')"))
    readout = slider.locator(".widget-readout")
    readout.click()
    readout.press("Control+A")
    readout.type(str(value))
    readout.press("Enter")


def _figure_after(cell, before, timeout_ms: int = 15_000):
    """Wait until the drawn figure differs from ``before``; return it (``before`` on timeout)."""
    page = cell.page
    deadline = timeout_ms
    while deadline > 0:
        now = cell.evaluate(READ_FIGURE)
        if now is not None and now != before:
            page.wait_for_timeout(300)
            return cell.evaluate(READ_FIGURE)
        page.wait_for_timeout(250)
        deadline -= 250
    return before


def test_explorer_redraws_when_every_control_moves_and_saves_small(open_notebook, lab):
    name = _write_notebook(lab[2])
    nb = open_notebook(name, height=1600)
    nb.run_all(timeout=120)
    cell = nb.page.locator(".jp-CodeCell").nth(1)
    cell.locator(".widget-output .js-plotly-plot").wait_for(timeout=30_000)
    first = cell.evaluate(READ_FIGURE)
    assert first["rows"] == 8, first  # the default group size
    assert cell.locator(".jp-RenderedPlotly:visible").count() == 1  # the live figure; its static copy is hidden

    steps = [
        ("n", lambda: _set_slider(cell, "n", 5), {"rows": 5}),
        ("T", lambda: _set_slider(cell, "T", 20), {"rows": 5}),
        ("n again", lambda: _set_slider(cell, "n", 12), {"rows": 12}),
        ("alpha2", lambda: _set_slider(cell, "alpha2", 0.5), {"rows": 12}),
        ("normalize", lambda: cell.locator("button[data-value='per_polarity']").click(), {"rows": 12}),
    ]
    seen = first
    for what, move, expected in steps:
        move()
        now = _figure_after(cell, seen)
        assert now != seen, f"the figure did not redraw after moving {what}"
        assert now["rows"] == expected["rows"], f"after moving {what}: {now['rows']} row labels, expected {expected}"
        assert json.loads(now["z"]) != json.loads(seen["z"]), f"cell values unchanged after moving {what}"
        seen = now
    nb.screenshot("explorer-after-moves", cell)
    assert not nb.tracebacks() and not nb.warnings(), nb.tracebacks() + nb.warnings()
    assert not nb.errors, nb.errors

    # what a reader of the saved notebook sees: JupyterLab cannot render a widget whose kernel is gone
    nb.command("docmanager:save")
    nb.page.wait_for_timeout(1500)
    nb.close()
    _shut_down_kernels(lab, name)
    size = (lab[2] / name).stat().st_size
    assert size < 1_000_000, f"the saved notebook weighs {size} bytes"
    reopened = open_notebook(name)
    cell = reopened.page.locator(".jp-CodeCell").nth(1)
    cell.locator(".jp-RenderedPlotly").first.wait_for(state="visible", timeout=30_000)
    assert cell.locator(".widget-output").count() == 0  # the widget did not render: its kernel is gone
    assert "children=" not in cell.locator(".jp-OutputArea").inner_text()
    reopened.screenshot("explorer-reopened-without-kernel", cell)
