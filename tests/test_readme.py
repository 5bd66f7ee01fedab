"""The README's first screen: what the workbench is, the two commands and a runnable example."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIRST_SCREEN = 60  #: lines


def first_screen() -> str:
    return "\n".join((ROOT / "README.md").read_text(encoding="utf-8").splitlines()[:FIRST_SCREEN])


def test_the_first_screen_has_the_two_commands_a_figure_and_an_example():
    top = first_screen()
    assert "make run " in top and "make test " in top
    assert re.search(r"!\[[^\]]+\]\(data/figures/\w+\.png\)", top)
    (example,) = re.findall(r"```python\n(.*?)```", top, re.S)
    assert len(example.strip().splitlines()) <= 12


def test_the_first_screen_example_runs(tmp_path):
    """The example as a user pastes it, in an empty directory: the advantages it prints are the
    spec's, and the short run it trains evaluates at step 0 and at its end."""
    (example,) = re.findall(r"```python\n(.*?)```", first_screen(), re.S)
    out = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    grpo = next(line for line in lines if line.startswith("grpo "))
    assert grpo.startswith("grpo [0.866") and next(line for line in lines if line.startswith("gtpo ")) != grpo
    assert (tmp_path / "runs" / "first" / "eval.jsonl").exists()
    assert re.search(r"^\s*\d+\s+10\s+[\d.]+\s+[\d.]+$", out.stdout, re.M)  # the evaluation after step 10


def test_the_readme_figures_were_rendered_from_the_data_they_show():
    """Each README image records the digest of the files its numbers come from when the browser
    check rendered it (``WORKBENCH_README_FIGURES=1``); data changed since then means a stale image."""
    import json

    from workbench import _files

    record = json.loads((ROOT / "data" / "figures" / "sources.json").read_text())
    shown = set(re.findall(r"\(data/figures/(\w+\.png)\)", (ROOT / "README.md").read_text(encoding="utf-8")))
    assert shown <= set(record), f"README images without a recorded source: {sorted(shown - set(record))}"
    for image, entry in record.items():
        assert _files.files_digest(ROOT, entry["sources"]) == entry["sha256"], (
            f"data/figures/{image} is older than its data ({entry['sources']}): regenerate it with "
            "WORKBENCH_README_FIGURES=1 .venv/bin/python -m pytest tests/browser/test_notebooks.py"
        )
