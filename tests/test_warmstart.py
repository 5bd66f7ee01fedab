"""The supervised warm start: resumable, continuable from a checkpoint, refusing bad input."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import workbench.training.warmstart as ws
from workbench.training.config import DEFAULT_INIT

SMALL = dict(
    task="addition",
    max_steps=6,
    min_steps=1,
    eval_every=2,
    eval_size=4,
    batch_size=8,
    target_accuracy=1.0,
    progress=False,
)


def weights(path):
    return load_file(str(path / "model.safetensors"))


def test_interrupted_warm_start_resumes_to_the_same_model(tmp_path, monkeypatch):
    whole = ws.warm_start(out=tmp_path / "whole", **SMALL)
    assert [c["step"] for c in whole["curve"]] == [2, 4, 6] and whole["steps"] == 6

    real, calls = ws.accuracy, []

    def killed_at_second_check(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # stopped at step 4, after the step-2 progress was saved
        return real(*args, **kwargs)

    monkeypatch.setattr(ws, "accuracy", killed_at_second_check)
    with pytest.raises(KeyboardInterrupt):
        ws.warm_start(out=tmp_path / "part", **SMALL)
    progress = tmp_path / ".part.progress"
    assert json.loads((progress / "state.json").read_text())["step"] == 2
    assert not (tmp_path / "part").exists()

    monkeypatch.setattr(ws, "accuracy", real)
    resumed = ws.warm_start(out=tmp_path / "part", **SMALL)
    assert not progress.exists()
    assert resumed["curve"] == whole["curve"] and resumed["steps"] == 6
    a, b = weights(tmp_path / "whole"), weights(tmp_path / "part")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_other_settings_is_refused(tmp_path, monkeypatch):
    real_save = ws._save_progress

    def save_then_stop(*args):
        real_save(*args)
        raise KeyboardInterrupt

    monkeypatch.setattr(ws, "_save_progress", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        ws.warm_start(out=tmp_path / "w", **SMALL)
    monkeypatch.setattr(ws, "_save_progress", real_save)
    with pytest.raises(ValueError, match=r"other settings \(lr\)"):
        ws.warm_start(out=tmp_path / "w", **{**SMALL, "lr": 5e-4})


def test_init_continues_from_a_checkpoint(tmp_path):
    # with a zero learning rate the continued model is exactly the one it started from
    summary = ws.warm_start(out=tmp_path / "w", init=DEFAULT_INIT, lr=0.0, **{**SMALL, "max_steps": 2})
    start, end = weights(Path(DEFAULT_INIT)), weights(tmp_path / "w")
    assert all(torch.equal(start[k], end[k]) for k in start)
    assert summary["init"] == DEFAULT_INIT and f"--init {DEFAULT_INIT}" in summary["command"]
    # and it is already partly right, unlike a fresh model
    assert summary["curve"][-1]["greedy_accuracy"] > 0


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(target_accuracy=0.0), "target_accuracy"),
        (dict(max_steps=0), "max_steps"),
        (dict(eval_every=0), "eval_every"),
        (dict(init=DEFAULT_INIT, model_params={"hidden_size": 64}), "model_params"),
    ],
)
def test_bad_arguments_are_named(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        ws.warm_start(out=tmp_path / "w", **{**SMALL, **bad})


def test_missing_init_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ws.warm_start(out=tmp_path / "w", init=tmp_path / "nowhere", **SMALL)


def test_command_line_passes_every_option_and_records_the_command(tmp_path, capsys):
    from workbench.cli import main

    out = tmp_path / "w"
    assert (
        main(
            [
                "warmstart",
                "--task",
                "chain",
                "--task-params",
                '{"steps": 2}',
                "--max-steps",
                "3",
                "--batch-size",
                "4",
                "--lr",
                "0.0005",
                "--eval-every",
                "1",
                "--eval-size",
                "2",
                "--target-accuracy",
                "1.0",
                "--init",
                DEFAULT_INIT,
                "--out",
                str(out),
            ]
        )
        == 0
    )
    summary = json.loads((out / "warmstart.json").read_text())
    assert summary["batch_size"] == 4 and summary["lr"] == 0.0005 and summary["steps"] == 3
    assert summary["task_params"] == {"steps": 2} and summary["curve"] == []  # min_steps 100: no check yet
    for part in (
        "--max-steps 3",
        "--batch-size 4",
        "--lr 0.0005",
        "--eval-every 1",
        "--eval-size 2",
        f"--init {DEFAULT_INIT}",
        f"--out {out}",
    ):
        assert part in summary["command"]
    assert json.loads(capsys.readouterr().out)["steps"] == 3
