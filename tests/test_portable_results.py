"""Portable results: what the project ships under data/ names no machine's path, and a study
copied to another directory (read from yet another one) loads, summarises and draws."""

import io
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from workbench import viz
from workbench.analysis import equal_budget, load_results, load_study, study_accuracy
from workbench.runs import load_run

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
#: As ``grep -rIlE '(^|[",: ])/(work|home|root|tmp|Users|mnt)/' data``: an absolute path of a machine.
ABSOLUTE = re.compile(rb'(^|[",: ])/(work|home|root|tmp|Users|mnt)/', re.M)


def test_no_file_under_data_holds_an_absolute_path():
    found = []
    for path in sorted(p for p in DATA.rglob("*") if p.is_file()):
        content = path.read_bytes()
        if b"\0" in content[:32768]:  # a binary file (grep -I leaves it out too)
            continue
        match = ABSOLUTE.search(content)
        if match:
            found.append(f"{path.relative_to(ROOT)}: {content[match.start() : match.start() + 80]!r}")
    assert not found, "\n".join(found)


def test_stored_tables_name_their_runs_relative_to_the_study_root():
    for table in sorted((DATA / "results").glob("*/results.csv")):
        runs = pd.read_csv(table)["run"]
        assert all(r.startswith("runs/") and (table.parent / r / "config.json").is_file() for r in runs), table


@pytest.mark.parametrize("name", ["smollm2", "ablations_level"])
def test_a_study_copied_elsewhere_loads_from_another_directory(tmp_path, monkeypatch, name):
    copy = tmp_path / "moved" / name
    shutil.copytree(DATA / "results" / name, copy)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    study = load_study(Path("..") / "moved" / name)
    table = study.results()
    assert len(table) == len(study.run_dirs()) > 0
    for run in table["run"]:
        assert Path(run).resolve().is_relative_to(copy.resolve()) and load_run(run).metrics["step"].iloc[-1] > 0
    # the stored numbers are what the copied run directories give
    summary = pd.read_csv(io.StringIO(study.summary().to_csv(index=False))).drop(columns="run")  # as stored
    stored = load_results(study.root).drop(columns="run")
    # over the stored columns: a table written before a column was added lacks it
    pd.testing.assert_frame_equal(summary[stored.columns], stored, check_dtype=False, rtol=1e-9)
    assert [r.config["algorithm"] for r in study.runs()] == list(table["algorithm"])
    # what the notebooks do with them (07, 08): interval tables, an equal-token budget, the curves
    accuracy = study_accuracy(table["run"])
    assert len(accuracy) == len(table) and accuracy["greedy_before_95%"].str.endswith("%").all()
    assert equal_budget(table)["budget_accuracy"].notna().all()
    assert {Path(r).parts[-2] for r in table["run"]} == {p.parent.name for p in study.run_dirs()}
    figure = viz.training_curves([load_run(r) for r in table["run"]], metrics=("entropy",), evals=("greedy_accuracy",))
    assert len(figure.data) > 0
