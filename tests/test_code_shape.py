"""The code's shape: the layout in wings and its import directions, short functions, a training
step that reads like the algorithm, lint and format clean.

Function length counts the lines of a ``def`` as the file holds it (formatted with ruff format);
a step's statements are counted with ``ast`` (every statement, nested ones included).
"""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 80
MAX_TRAIN_STEP_STATEMENTS = 28
MAX_TOP_LEVEL_MODULES = 14  #: modules beside the wings in workbench/
WINGS = ("training", "models", "analysis", "tasks", "viz", "integrations")
FORMULAS = ("advantages", "losses", "rewards", "entropy", "algorithms")
#: (importer, what it must not import): the directions of ../shared/notes/architecture.md.
FORBIDDEN = [
    *((f, w) for f in FORMULAS for w in ("training", "models", "analysis", "viz")),
    ("training", "analysis"),
    ("training", "viz"),
    ("models", "training"),
    ("models", "runs"),
    ("models", "analysis"),
    ("models", "viz"),
    ("tasks", "training"),
    ("integrations", "training"),
]
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


def statements(function: ast.FunctionDef) -> int:
    """Statements of a function's body (nested ones included), its docstring not counted."""
    body = function.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return sum(isinstance(node, ast.stmt) for top in body for node in ast.walk(top))


def test_the_training_step_reads_like_the_algorithm():
    tree = ast.parse((ROOT / "workbench" / "training" / "trainer.py").read_text(encoding="utf-8"))
    (step,) = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "train_step"]
    assert statements(step) <= MAX_TRAIN_STEP_STATEMENTS, statements(step)
    calls = [n for n in ast.walk(step) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)]
    called = [n.func.attr for n in sorted(calls, key=lambda n: (n.lineno, n.col_offset))]
    phases = ["sample", "collate", "score", "advantages", "update", "metrics_row"]
    assert [c for c in called if c in phases] == phases  # each phase once, in the algorithm's order


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """The ``workbench`` modules (of ``modules``) that ``module`` imports, relative imports
    resolved, at any depth of the file (imports inside functions count too); ``from . import
    runs`` imports the module ``runs``, ``from .runs import Run`` the module ``runs`` too."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            submodules = {f"{target}.{a.name}" for a in node.names} & modules
            found |= submodules if submodules else {target}
    return found & modules


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """``workbench`` module -> the ``workbench`` modules it imports."""
    files = {module_name(p, root): p for p in sorted((root / "workbench").rglob("*.py"))}
    graph = {}
    for name, path in files.items():
        found = imports_of(path.read_text(encoding="utf-8"), name, path.name == "__init__.py", set(files))
        graph[name] = found - {name}
    return graph


def forbidden_imports(graph: dict[str, set[str]]) -> list[str]:
    def part(module):  # workbench.training.trainer -> training; workbench.losses -> losses
        return module.split(".")[1] if module.count(".") else ""

    return sorted(
        f"{a} -> {b}"
        for a, targets in graph.items()
        for b in targets
        for src, dst in FORBIDDEN
        if part(a) == src and part(b) == dst
    )


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Cycles among the modules, leaving out the edges into a package's own ``__init__``
    (a wing's ``__init__`` re-exports its modules; importing a module runs it first)."""
    edges = {a: {b for b in bs if not a.startswith(b + ".")} for a, bs in graph.items()}
    cycles, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return cycles


def test_the_layout_is_the_wings():
    top = sorted(p.name for p in (ROOT / "workbench").glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top
    for wing in WINGS:
        assert (ROOT / "workbench" / wing / "__init__.py").exists(), wing
    for formula in FORMULAS:
        assert (ROOT / "workbench" / f"{formula}.py").exists(), formula


def test_the_imports_go_the_intended_directions():
    graph = import_graph()
    assert forbidden_imports(graph) == []
    assert graph["workbench.entropy"] <= {"workbench._checks"}  # the formula imports only the checks
    assert import_cycles(graph) == []


def test_the_structure_checks_catch_a_wrong_import(tmp_path):
    """The checks above fail on a deliberately wrong import: a formula importing the trainer, a
    model module importing the run directory, and a circle."""
    shutil.copytree(ROOT / "workbench", tmp_path / "workbench", ignore=shutil.ignore_patterns("__pycache__"))
    with open(tmp_path / "workbench" / "losses.py", "a", encoding="utf-8") as f:
        f.write("\nfrom .training.trainer import Trainer  # noqa\n")
    with open(tmp_path / "workbench" / "models" / "load.py", "a", encoding="utf-8") as f:
        f.write("\nfrom .. import runs  # noqa\n")
    with open(tmp_path / "workbench" / "runs.py", "a", encoding="utf-8") as f:
        f.write("\nfrom .viz import sources  # noqa\n")
    graph = import_graph(tmp_path)
    wrong = forbidden_imports(graph)
    assert "workbench.losses -> workbench.training.trainer" in wrong
    assert "workbench.models.load -> workbench.runs" in wrong
    assert any("workbench.runs" in c and "workbench.viz.sources" in c for c in import_cycles(graph))


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
