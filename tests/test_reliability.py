"""Reliability: crashes at any point (SIGKILL), corrupt checkpoints, unsafe pickles,
non-finite steps and determinism."""

import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import workbench.training.trainer as trainer_mod
from workbench._files import sha256
from workbench.models.load import load_model
from workbench.runs import load_run
from workbench.training.config import DEFAULT_INIT
from workbench.training.trainer import Trainer, resume, train, verify_checkpoint

TINY_PARAMS = {
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "intermediate_size": 64,
}
BASE = dict(
    model="tiny",
    model_params=TINY_PARAMS,
    prompts_per_step=2,
    group_size=2,
    max_new_tokens=8,
    eval_size=4,
    eval_every=100,
    save_every=1,
    log_samples_every=1,
    algorithm="gtpo",
    dynamic_sampling=False,
    keep_checkpoints=3,
)
TIME_COLUMNS = {"time_rollout", "time_score", "time_update", "time_step", "tokens_per_s"}


def _run_cmd(out: Path, steps: int) -> list[str]:
    config = {**BASE, "steps": steps, "output_dir": str(out)}
    # a run killed after its first evaluation but before its first metrics row is resumed too
    code = (
        "import sys, json; from workbench.training.trainer import train, resume; from workbench.runs import holds_run\n"
        "c = json.loads(sys.argv[1]); p = c['output_dir']\n"
        "(resume(p, progress=False) if holds_run(p) else train(c, progress=False))"
    )
    return [sys.executable, "-c", code, json.dumps(config)]


def _steps(run) -> list[int]:
    return [int(s) for s in run.metrics["step"]]


@pytest.mark.parametrize("point", ["eval@0", "checkpoint@2", "metrics@3"])
def test_fault_injected_mid_checkpoint_then_resume(tmp_path, point):
    out = tmp_path / "run"
    env = {**os.environ, "WORKBENCH_FAULT": point}
    res = subprocess.run(_run_cmd(out, 4), env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == -signal.SIGKILL, res.stderr[-1000:]
    env.pop("WORKBENCH_FAULT")
    res = subprocess.run(_run_cmd(out, 4), env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    run = load_run(out)
    assert _steps(run) == [1, 2, 3, 4]  # nothing lost, nothing duplicated
    assert all(verify_checkpoint(c) is None for c in run.checkpoints())


def test_sigkill_at_random_times_then_resume(tmp_path):
    """Kill the training process at random moments (seeded), resume each time, until done."""
    out = tmp_path / "run"
    rng = random.Random(0)
    for attempt in range(3):
        proc = subprocess.Popen(_run_cmd(out, 6), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(3.0, 6.0))  # start-up (imports) takes ~3 s, a step ~0.1 s
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        if (out / "metrics.jsonl").exists():
            rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
            steps = [r["step"] for r in rows]
            assert steps == sorted(set(steps)), f"duplicated or unordered rows after kill {attempt}: {steps}"
    res = subprocess.run(_run_cmd(out, 6), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert _steps(load_run(out)) == [1, 2, 3, 4, 5, 6]


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path):
    run = train({**BASE, "steps": 3, "output_dir": str(tmp_path / "run")}, progress=False)
    latest = run.latest_checkpoint()
    weights = latest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated
    assert "checksum" in verify_checkpoint(latest)
    with pytest.warns(UserWarning, match="skipping checkpoint .*step_000003.*checksum"):
        t = Trainer({**BASE, "steps": 3, "output_dir": str(run.path)}, resume=True, progress=False)
    assert t.step == 2
    t.train()
    assert _steps(load_run(run.path)) == [1, 2, 3]


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _malicious_pickle(path: Path, marker: Path) -> None:
    payload = _Payload()
    payload.marker = marker
    with open(path, "wb") as f:
        pickle.dump(payload, f)


def test_malicious_trainer_state_is_refused_and_not_executed(tmp_path):
    run = train({**BASE, "steps": 2, "output_dir": str(tmp_path / "run")}, progress=False)
    marker = tmp_path / "pwned"
    latest = run.latest_checkpoint()
    _malicious_pickle(latest / "trainer_state.pt", marker)
    meta = json.loads((latest / "checkpoint.json").read_text())  # an attacker also fixes the checksum
    meta["files"]["trainer_state.pt"] = sha256(latest / "trainer_state.pt")
    (latest / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="refusing checkpoint .*not a plain tensor file"):
        t = Trainer({**BASE, "steps": 2, "output_dir": str(run.path)}, resume=True, progress=False)
    assert not marker.exists()
    assert t.step == 1  # fell back to the previous, intact checkpoint


def test_pickle_weights_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    _malicious_pickle(model_dir / "pytorch_model.bin", marker)
    with pytest.raises(ValueError, match="no .safetensors weights; pickle-based weights"):
        load_model(model_dir)
    assert not marker.exists()


def test_trust_remote_code_warns(tmp_path):
    with pytest.warns(UserWarning, match="trust_remote_code=True"):
        load_model(Path(DEFAULT_INIT), trust_remote_code=True)


def test_non_finite_steps_are_skipped_then_the_run_stops(tmp_path, monkeypatch):
    real = trainer_mod.policy_loss
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        loss, metrics = real(*args, **kwargs)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] in (2,) or calls["n"] >= 4 else loss), metrics

    monkeypatch.setattr(trainer_mod, "policy_loss", flaky)
    config = {**BASE, "steps": 10, "max_bad_steps": 3, "output_dir": str(tmp_path / "run")}
    t = Trainer(config, progress=False)
    with pytest.raises(FloatingPointError, match="3 consecutive updates had a non-finite loss"):
        t.train()
    m = load_run(tmp_path / "run").metrics
    assert list(m["skipped_updates"])[:3] == [0, 1, 1]
    assert t.skipped_updates == 4
    assert all(torch.isfinite(p).all() for p in t.unwrapped.parameters())
    assert load_run(tmp_path / "run").latest_checkpoint() is not None


def test_same_seed_same_metrics_bitwise(tmp_path):
    a = train({**BASE, "steps": 3, "output_dir": str(tmp_path / "a")}, progress=False).metrics
    b = train({**BASE, "steps": 3, "output_dir": str(tmp_path / "b")}, progress=False).metrics
    cols = [c for c in a.columns if not c.startswith("time_") and c not in TIME_COLUMNS]
    assert a[cols].equals(b[cols])


def test_a_live_run_directory_refuses_a_second_run_resume_or_overwrite(tmp_path):
    from workbench.runs import RunInUseError

    config = {**BASE, "steps": 2, "output_dir": str(tmp_path / "run")}
    first = Trainer(config, progress=False)  # holds the directory's lock from here on
    for kwargs in ({}, {"overwrite": True}, {"resume": True}):
        with pytest.raises(RunInUseError, match="in use by another run"):
            Trainer({**config, "seed": 1}, progress=False, **kwargs)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["seed"] == 0  # nothing of the second run
    first.train()  # the lock is released when training ends
    assert _steps(resume(tmp_path / "run", steps=3, progress=False)) == [1, 2, 3]
    assert len(train({**config, "seed": 1}, overwrite=True, progress=False).metrics) == 2


def test_overwrite_of_a_running_process_is_refused_and_the_run_finishes_intact(tmp_path):
    """Another process runs in the directory: an overwrite is refused with a message, and the
    running one finishes with its own rows only (no interleaved rows, no deleted files)."""
    from workbench.runs import RunInUseError

    out = tmp_path / "run"
    proc = subprocess.Popen(_run_cmd(out, 40), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be disturbed"
    with pytest.raises(RunInUseError, match="in use by another run"):
        train({**BASE, "steps": 3, "seed": 5, "output_dir": str(out)}, overwrite=True, progress=False)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()[-2000:]
    run = load_run(out)
    assert _steps(run) == list(range(1, 41)) and run.config["seed"] == 0


@pytest.mark.parametrize("pointer", ["../../other/checkpoints/step_000002", "ABSOLUTE", "step_000002/../../x"])
def test_resume_confines_latest_to_the_runs_own_checkpoints(tmp_path, pointer):
    """A ``checkpoints/latest`` naming something outside the run's checkpoints/ is not followed."""
    run = train({**BASE, "steps": 4, "output_dir": str(tmp_path / "run")}, progress=False)
    other = train({**BASE, "steps": 2, "seed": 3, "output_dir": str(tmp_path / "other")}, progress=False)
    if pointer == "ABSOLUTE":
        pointer = str(other.path / "checkpoints" / "step_000002")
    (run.path / "checkpoints" / "latest").write_text(pointer)
    with pytest.warns(UserWarning, match="not one of this run's checkpoints.*using step_000004"):
        t = Trainer({**BASE, "steps": 4, "output_dir": str(run.path)}, resume=True, progress=False)
    assert t.step == 4 and _steps(load_run(run.path)) == [1, 2, 3, 4]  # nothing truncated
    t.close()


def test_resume_warns_when_history_is_shorter_than_the_checkpoint(tmp_path):
    run = train({**BASE, "steps": 3, "eval_every": 1, "output_dir": str(tmp_path / "run")}, progress=False)
    metrics = run.path / "metrics.jsonl"
    metrics.write_text(metrics.read_text().splitlines()[0] + "\n")  # rows 2 and 3 lost
    (run.path / "eval.jsonl").unlink()
    config = {**BASE, "steps": 3, "eval_every": 1, "output_dir": str(run.path)}
    with pytest.warns(UserWarning) as record:
        Trainer(config, resume=True, progress=False).close()
    messages = " | ".join(str(w.message) for w in record)
    assert "metrics.jsonl has rows up to step 1, but the checkpoint is at step 3" in messages
    assert "eval.jsonl is missing" in messages


def test_a_full_disk_while_saving_a_checkpoint_says_so(tmp_path, monkeypatch):
    """The disk fills while trainer_state.pt is written (writes go to /dev/full, which fails them
    with ENOSPC as a full disk does): the error says that the disk is full and where, the
    half-written checkpoint is removed, and the previous one stays the run's latest."""
    real_save = torch.save
    calls = {"n": 0}

    def save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] < 2:
            return real_save(obj, f, *args, **kwargs)
        if isinstance(f, (str, os.PathLike)):  # torch's own file writer, as torch.save(obj, path) uses
            return real_save(obj, "/dev/full", *args, **kwargs)
        with open("/dev/full", "wb") as full:
            return real_save(obj, full, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    config = {**BASE, "steps": 3, "output_dir": str(tmp_path / "run")}
    with pytest.raises(OSError, match=r"disk full while writing checkpoint step_000002 .*resume"):
        train(config, progress=False)
    run = load_run(tmp_path / "run")
    assert [p.name for p in run.checkpoints()] == ["step_000001"] and run.latest_checkpoint().name == "step_000001"
    assert not list((run.path / "checkpoints").glob(".*"))  # no half-written checkpoint left
    monkeypatch.setattr(torch, "save", real_save)
    assert _steps(resume(run.path, progress=False)) == [1, 2, 3]
