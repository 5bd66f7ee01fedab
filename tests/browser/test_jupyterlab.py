"""The real-browser check: JupyterLab on localhost, a tutorial notebook run in headless Chromium.

Starts ``jupyter lab`` on 127.0.0.1 with a token in a temporary directory holding a copy of
``notebooks/05_explore.ipynb`` (so autosave never touches the repository), opens it in Debian's
chromium driven by Playwright, runs all cells from JupyterLab's Run menu, and asserts that
plotly figures and ipywidgets rendered in the page (DOM present) and that no cell raised. A
screenshot is saved to ``runs/browser/`` as an artefact.

``scripts/install_browser.sh`` (run by ``make test``) installs chromium; without it the test
skips with the reason.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = "05_explore.ipynb"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTEFACTS = ROOT / "runs" / "browser"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    shutil.copy(ROOT / "notebooks" / NOTEBOOK, tmp_path / NOTEBOOK)
    port, token = _free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "WORKBENCH_FAST": "1",
        "JUPYTER_CONFIG_DIR": str(tmp_path / ".jupyter"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / ".runtime"),
    }
    log = open(tmp_path / "lab.log", "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyter",
            "lab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={port}",
            f"--IdentityProvider.token={token}",
            "--allow-root",
            f"--ServerApp.root_dir={tmp_path}",
            "--ServerApp.open_browser=False",
            "--LabApp.news_url=",
            "--LabApp.expose_app_in_browser=True",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RuntimeError(f"JupyterLab did not start:\n{(tmp_path / 'lab.log').read_text()[-3000:]}") from None
            time.sleep(0.5)
    yield url, token
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/install_browser.sh installs it)")
def test_notebook_runs_in_jupyterlab_and_renders_figures_and_widgets(lab):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (dev extra)")
    url, token = lab
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-dev-shm-usage",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{url}/lab/tree/{NOTEBOOK}?token={token}", wait_until="domcontentloaded")
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
        select = page.locator(".jp-Dialog button.jp-mod-accept", has_text="Select")
        try:  # JupyterLab asks for a kernel when it cannot match the notebook's kernelspec
            select.click(timeout=5_000)
        except sync_api.TimeoutError:
            pass
        # wait for the kernel, then Run > Run All Cells (the menu's command, through the app object)
        page.wait_for_function(
            "() => window.jupyterapp && window.jupyterapp.commands.isEnabled('notebook:run-all-cells')", timeout=90_000
        )
        page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000)
        page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); return true; }")
        # the last cell runs a short training run from the launcher widget
        last = page.locator(".jp-Notebook .jp-CodeCell").last
        deadline = time.time() + 300
        while time.time() < deadline:
            prompt = last.locator(".jp-InputPrompt").inner_text()
            if prompt.strip() not in ("[ ]:", "[*]:", "[]:", ""):
                break
            if any(
                "Traceback (most recent call last)" in t
                for t in page.locator(".jp-OutputArea-output").all_inner_texts()
            ):
                break  # a cell raised: the assertions below report it
            page.wait_for_timeout(1000)
        else:
            page.screenshot(path=str(ARTEFACTS / "timeout.png"), full_page=True)
            pytest.fail(f"the notebook did not finish within 300 s (screenshot in {ARTEFACTS})")
        page.screenshot(path=str(ARTEFACTS / "05_explore.png"), full_page=True)
        page.wait_for_selector(".js-plotly-plot", timeout=30_000)
        page.wait_for_selector(".widget-slider", timeout=30_000)
        page.screenshot(path=str(ARTEFACTS / "05_explore.png"), full_page=True)
        outputs = page.locator(".jp-OutputArea-output").all_inner_texts()
        plots = page.locator(".js-plotly-plot").count()
        sliders = page.locator(".widget-slider").count()
        buttons = page.locator(".jupyter-widgets.widget-button, button.jupyter-button").count()
        browser.close()
    assert not any("Traceback (most recent call last)" in text for text in outputs), "\n".join(outputs)[-3000:]
    assert plots >= 3, f"expected the explorers' and launcher's plotly figures, found {plots}"
    assert sliders >= 5, f"expected the explorer's sliders, found {sliders}"
    assert buttons >= 1, "the run launcher's button did not render"
    assert any("finished" in text for text in outputs), "the run launcher did not report a finished run"
    assert not errors, f"JavaScript errors in the page: {errors}"
