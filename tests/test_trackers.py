"""report_to: a run's metrics and evaluations copied to TensorBoard, trackio and wandb (offline),
read back with each tool's own reader; resumes that neither duplicate nor lose a step."""

import importlib.machinery
import json
import shutil
import sqlite3
import sys
import types

import numpy as np
import pytest

from workbench.training.config import TrainConfig
from workbench.training.trackers import report_to_names
from workbench.training.trainer import resume, train

RUN = dict(
    model="default",  # the shipped warm start: rewards and accuracies that are not all zero
    algorithm="gtpo",
    dynamic_sampling=False,
    prompts_per_step=3,
    group_size=4,
    max_new_tokens=16,
    eval_size=8,
    eval_every=2,
    save_every=2,
    log_samples_every=10,
    lr=1e-3,
)


def config(tmp_path, **kw):
    return {**RUN, "output_dir": str(tmp_path / "run"), **kw}


def scalars(run_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def crash_after_last_step(run):
    """As a kill after the last step's rows but before its checkpoint: the resume redoes that step."""
    last = run.latest_checkpoint()
    shutil.rmtree(last)
    (run.path / "checkpoints" / "latest").write_text(last.name)


def test_report_to_takes_none_a_name_a_list_or_comma_separated_names():
    assert report_to_names("none") == [] and report_to_names([]) == []
    assert report_to_names("tensorboard") == ["tensorboard"]
    assert report_to_names("wandb, TensorBoard,wandb") == ["wandb", "tensorboard"]
    assert report_to_names(["trackio", "none"]) == ["trackio"]
    with pytest.raises(ValueError, match="report_to: unknown tracker 'tb'; choose from none, tensorboard"):
        TrainConfig(report_to="tb")
    with pytest.raises(TypeError, match="report_to"):
        TrainConfig(report_to=1)
    assert "(default: none)" in TrainConfig.describe("report_to")


def test_tensorboard_events_hold_every_column_at_its_step(tmp_path):
    run = train(config(tmp_path, steps=2, report_to="tensorboard"), progress=False)
    m, ev = run.metrics, run.evals
    for column in ("reward", "entropy", "accuracy", "loss", "grad_norm", "response_len_mean"):
        steps, values = zip(*scalars(run.path, f"train/{column}"))
        assert list(steps) == list(m["step"]), column
        np.testing.assert_allclose(values, m[column], rtol=1e-6, err_msg=column)  # float32 in the event file
    for column in ("greedy_accuracy", "sampled_accuracy", "entropy"):
        steps, values = zip(*scalars(run.path, f"eval/{column}"))
        assert list(steps) == [0, 2] == list(ev["step"]), column
        np.testing.assert_allclose(values, ev[column], rtol=1e-6, err_msg=column)
    assert m["reward"].abs().sum() > 0 and ev["greedy_accuracy"].sum() > 0  # not a file of zeros
    assert json.loads((run.path / "trackers.json").read_text()) == {"tensorboard": {"logdir": "tensorboard"}}


def test_a_resume_replaces_the_redone_steps_in_tensorboard_and_a_late_tracker_gets_the_history(tmp_path):
    run = train(config(tmp_path, steps=3, eval_every=10, report_to="tensorboard"), progress=False)
    crash_after_last_step(run)  # step 3 is redone from the checkpoint at step 2
    run = resume(run.path, steps=4, progress=False)
    steps, values = zip(*scalars(run.path, "train/reward"))
    assert list(steps) == [1, 2, 3, 4] == list(run.metrics["step"])  # step 3 once: the old one is purged
    np.testing.assert_allclose(values, run.metrics["reward"], rtol=1e-6)
    assert [s for s, _ in scalars(run.path, "eval/greedy_accuracy")] == [0, 4]

    late = train(config(tmp_path / "late", steps=2), progress=False)  # no tracker at first
    late = resume(late.path, steps=3, report_to="tensorboard", progress=False)
    assert [s for s, _ in scalars(late.path, "train/entropy")] == [1, 2, 3]
    np.testing.assert_allclose([v for _, v in scalars(late.path, "train/entropy")], late.metrics["entropy"], rtol=1e-6)


def test_a_missing_tracker_package_is_one_line_naming_the_pip_command(tmp_path, monkeypatch, capsys):
    import importlib.util

    from workbench.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"report_to='wandb' needs the wandb package.*\[wandb\]"):
        train(config(tmp_path, steps=1, report_to="wandb"), progress=False)
    assert not (tmp_path / "run").exists()  # refused before the run directory is made
    assert main(["train", "--output-dir", str(tmp_path / "cli"), "--report-to", "tensorboard,wandb"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pip install 'gtpo-workbench[wandb]'" in err, err


class _FakeRun:
    def __init__(self, calls, kwargs):
        self.calls, self.kwargs = calls, kwargs
        calls.append(("init", kwargs))

    def log(self, values, step):
        self.calls.append(("log", step, dict(values)))

    def finish(self):
        self.calls.append(("finish",))


def _fake_module(name, monkeypatch, calls):
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    module.init = lambda **kwargs: _FakeRun(calls, kwargs)
    module.Settings = lambda **kwargs: kwargs
    monkeypatch.setitem(sys.modules, name, module)


@pytest.mark.parametrize("name", ["wandb", "trackio"])
def test_wandb_and_trackio_get_each_step_once_across_a_resume(tmp_path, monkeypatch, name):
    """Through stand-ins that record the calls (the real packages: the tests below)."""
    calls = []
    _fake_module(name, monkeypatch, calls)
    run = train(config(tmp_path, steps=3, eval_every=10, report_to=name), progress=False)
    crash_after_last_step(run)
    run = resume(run.path, steps=4, progress=False)
    inits = [c[1] for c in calls if c[0] == "init"]
    assert len(inits) == 2 and [c[0] for c in calls].count("finish") == 2
    if name == "wandb":
        assert all(i["mode"] == "offline" and i["dir"] == str(run.path) for i in inits)
        assert inits[0]["id"] == inits[1]["id"] and inits[1]["resume"] == "allow"
    else:
        assert inits[0]["name"] == inits[1]["name"] and (inits[0]["resume"], inits[1]["resume"]) == ("never", "allow")
    train_steps = [c[1] for c in calls if c[0] == "log" and "train/reward" in c[2]]
    assert train_steps == [1, 2, 3, 4]  # step 3, which it holds already, is not sent again
    # the evaluation at step 3 came before the kill; the redone step 3 has none (these trackers cannot delete it)
    assert [c[1] for c in calls if c[0] == "log" and "eval/greedy_accuracy" in c[2]] == [0, 3, 4]
    sent = {c[1]: c[2]["train/entropy"] for c in calls if c[0] == "log" and "train/entropy" in c[2]}
    assert [sent[s] for s in (1, 2, 4)] == [float(v) for v in run.metrics.set_index("step")["entropy"][[1, 2, 4]]]


def test_wandb_offline_writes_its_run_inside_the_run_directory(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is optional: pip install 'gtpo-workbench[wandb]'")
    monkeypatch.setenv("WANDB_MODE", "online")  # offline all the same: report_to never uses the network
    run = train(config(tmp_path, steps=1, eval_every=1, report_to="wandb"), progress=False)
    (record,) = (run.path / "wandb").glob("offline-run-*/run-*.wandb")
    state = json.loads((run.path / "trackers.json").read_text())["wandb"]
    assert record.name == f"run-{state['id']}.wandb" and b"train/reward" in record.read_bytes()


def test_trackio_logs_each_step_to_its_local_store(tmp_path, monkeypatch):
    if "trackio" not in sys.modules:
        monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))  # read when trackio is imported
    trackio = pytest.importorskip("trackio", reason="trackio is optional: pip install 'gtpo-workbench[trackio]'")
    from trackio.utils import TRACKIO_DIR

    run = train(config(tmp_path, steps=2, report_to="trackio"), progress=False)
    state = json.loads((run.path / "trackers.json").read_text())["trackio"]
    with sqlite3.connect(TRACKIO_DIR / f"{state['project']}.db") as db:
        rows = db.execute("SELECT step, metrics FROM metrics WHERE run_name = ?", (state["name"],)).fetchall()
    logged = {
        step: values["train/reward"]
        for step, values in ((s, json.loads(t)) for s, t in rows)
        if "train/reward" in values
    }
    assert trackio.__name__ == "trackio" and logged == pytest.approx(
        dict(zip(run.metrics["step"], run.metrics["reward"]))
    )
