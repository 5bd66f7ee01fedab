"""JupyterLab in headless Chromium, shared by the browser checks.

``lab`` starts one ``jupyter lab`` on 127.0.0.1 (random port, token) for the session, serving a
temporary copy of ``notebooks/`` (autosave never touches the repository) with ``WORKBENCH_FAST=1``.
``browser`` is Debian's chromium driven by Playwright (never a downloaded browser;
``scripts/install_browser.sh`` installs it, and without it the checks skip with the reason).
:class:`Notebook` opens one notebook in a fresh page, runs it from JupyterLab's Run menu command,
collects console errors and page errors, and saves what renders under ``runs/browser/``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTEFACTS = ROOT / "runs" / "browser"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-dev-shm-usage",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Console messages of JupyterLab itself that say nothing about the notebook (no internet here).
BENIGN_CONSOLE = (re.compile(r"Failed to load resource.*(favicon|lab/api/(news|update))", re.I),)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _user_settings(root: Path) -> None:
    """Render every cell (no windowing: a figure scrolled out of view is still drawn at its size) and
    ask for no news (no internet here; its pop-up would cover figures in the screenshots)."""
    settings = {
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
            "fetchNews": "false",
            "checkForUpdates": False,
        },
    }
    for name, value in settings.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(json.dumps(value))


def _require_browser() -> None:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (scripts/install_browser.sh installs it)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (dev extra)")


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    """``(url, token, directory)`` of a JupyterLab serving a copy of the notebooks."""
    _require_browser()
    home = tmp_path_factory.mktemp("lab")
    for nb in (ROOT / "notebooks").glob("*.ipynb"):
        shutil.copy(nb, home / nb.name)
    _user_settings(home / ".jupyter" / "lab" / "user-settings")
    port, token = _free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "WORKBENCH_FAST": "1",
        "JUPYTER_CONFIG_DIR": str(home / ".jupyter"),
        "JUPYTER_RUNTIME_DIR": str(home / ".runtime"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    log = open(home / "lab.log", "w")
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
            f"--ServerApp.root_dir={home}",
            "--ServerApp.open_browser=False",
            "--LabApp.news_url=",
            "--LabApp.expose_app_in_browser=True",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ],
        cwd=home,
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
                raise RuntimeError(f"JupyterLab did not start:\n{(home / 'lab.log').read_text()[-3000:]}") from None
            time.sleep(0.5)
    yield url, token, home
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="session")
def browser():
    """Headless chromium (no JupyterLab needed: :func:`lab` starts that)."""
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


class Notebook:
    """One notebook open in a JupyterLab page: run it, read its outputs, watch the console."""

    def __init__(self, browser, lab, name: str, *, width: int = 1400, height: int = 1000):
        from playwright.sync_api import TimeoutError

        self.name, self.url, self.token, self.home = name, *lab
        self.page = browser.new_page(viewport={"width": width, "height": height})
        self.errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        self.page.on("console", self._console)
        # a fresh workspace per page: JupyterLab would otherwise reopen the notebooks of earlier pages
        workspace = f"check-{secrets.token_hex(4)}"
        self.page.goto(
            f"{self.url}/lab/workspaces/{workspace}/tree/{name}?token={self.token}&reset", wait_until="domcontentloaded"
        )
        self.page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-Cell", timeout=60_000)
        try:  # JupyterLab asks for a kernel when it cannot match the notebook's kernelspec
            self.page.locator(".jp-Dialog button.jp-mod-accept", has_text="Select").click(timeout=3_000)
        except TimeoutError:
            pass
        self.page.wait_for_function(
            "() => window.jupyterapp && window.jupyterapp.commands.isEnabled('notebook:run-all-cells')", timeout=90_000
        )
        self.page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000)
        if self.page.locator("#jp-left-stack").is_visible():  # the file browser: give the notebook the width
            self.command("application:toggle-left-area")

    def _console(self, msg) -> None:
        if msg.type == "error" and not any(p.search(msg.text) for p in BENIGN_CONSOLE):
            self.errors.append(f"console error: {msg.text}")

    def command(self, name: str) -> None:
        self.page.evaluate(f"() => {{ window.jupyterapp.commands.execute('{name}'); return true; }}")

    def run_all(self, timeout: float = 300) -> None:
        """Run > Run All Cells, then wait until every code cell has an execution count."""
        self.command("notebook:run-all-cells")
        self.wait_done(timeout)

    def wait_done(self, timeout: float = 300) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            prompts = [p.strip() for p in self.page.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()]
            if prompts and all(re.fullmatch(r"\[\d+\]:", p) for p in prompts):
                self.page.wait_for_timeout(1500)  # let the last outputs render
                return
            if self.tracebacks():
                return
            self.page.wait_for_timeout(1000)
        self.screenshot("timeout")
        pytest.fail(f"{self.name} did not finish within {timeout:.0f} s (screenshot in {ARTEFACTS})")

    def tracebacks(self) -> list[str]:
        return [
            t
            for t in self.page.locator(".jp-OutputArea-output").all_inner_texts()
            if "Traceback (most recent call last)" in t or re.search(r"\w+Error: ", t)
        ]

    def warnings(self) -> list[str]:
        """Text of stderr outputs (the red blocks): warnings a reader sees above a figure."""
        return self.page.locator(
            ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
        ).all_inner_texts()

    def screenshot(self, stem: str, locator=None) -> Path:
        out = ARTEFACTS / Path(self.name).stem
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{stem}.png"
        (locator or self.page).screenshot(path=str(path), **({} if locator else {"full_page": True}))
        return path

    def close(self) -> None:
        self.page.close()


@pytest.fixture
def open_notebook(browser, lab):
    opened = []

    def _open(name: str, **kwargs) -> Notebook:
        nb = Notebook(browser, lab, name, **kwargs)
        opened.append(nb)
        return nb

    yield _open
    for nb in opened:
        nb.close()
