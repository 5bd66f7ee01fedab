"""The code's shape: short functions, a trainer that fits on a few screens, lint and format clean.

Function length counts the lines of a ``def`` as the file holds it (formatted with ruff format).
"""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 80
MAX_TRAINER_LINES = 450
#: Known longer functions, to be split; the test fails when one is gone, so that the list shrinks.
KNOWN_LONG: set[str] = set()


def long_functions() -> dict[str, int]:
    out = {}
    for path in sorted((ROOT / "workbench").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    out[f"{path.relative_to(ROOT)}::{node.name}"] = lines
    return out


def test_no_function_in_workbench_is_longer_than_80_lines():
    found = long_functions()
    assert set(found) - KNOWN_LONG == set(), {k: v for k, v in found.items() if k not in KNOWN_LONG}
    assert KNOWN_LONG - set(found) == set(), "split now: remove it from KNOWN_LONG"


def test_the_trainer_fits_in_450_lines():
    lines = len((ROOT / "workbench" / "trainer.py").read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_TRAINER_LINES, lines


@pytest.mark.skipif(
    shutil.which("ruff") is None and not (Path(sys.executable).parent / "ruff").exists(),
    reason="ruff is not installed (pip install -e '.[dev]')",
)
def test_the_repository_is_lint_and_format_clean():
    """``ruff check`` and ``ruff format --check`` over every Python file and notebook (pyproject.toml)."""
    ruff = str(Path(sys.executable).parent / "ruff") if (Path(sys.executable).parent / "ruff").exists() else "ruff"
    lint = subprocess.run([ruff, "check", "."], capture_output=True, text=True, cwd=ROOT)
    assert lint.returncode == 0, lint.stdout[-3000:]
    fmt = subprocess.run([ruff, "format", "--check", "."], capture_output=True, text=True, cwd=ROOT)
    assert fmt.returncode == 0, fmt.stdout[-3000:]
