"""Re-execute the tutorial notebooks at the fast (CI) size and store them lean.

    .venv/bin/python scripts/refresh_notebooks.py [notebooks/0X_name.ipynb ...]

Outputs are kept only for cells marked ``# NBVAL_CHECK_OUTPUT`` (the numbers nbval compares in
``make test``); every other output, the execution counts and widget state are dropped, so the
repository holds no heavy figure JSON and a changed number shows up as a diff.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent


def refresh(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    os.environ["WORKBENCH_FAST"] = "1"
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    checked = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.metadata.pop("execution", None)
        if "NBVAL_CHECK_OUTPUT" not in cell.source:
            cell.execution_count, cell.outputs = None, []
            continue
        checked += 1  # nbval compares only cells whose reference was run (has an execution count)
        cell.execution_count = checked
        for out in cell.outputs:
            if "execution_count" in out:
                out["execution_count"] = checked
    nb.metadata.pop("widgets", None)
    nbformat.write(nb, path)
    print("refreshed", path.relative_to(ROOT))


if __name__ == "__main__":
    paths = [Path(p).resolve() for p in sys.argv[1:]] or sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
    for p in paths:
        refresh(p)
