"""Two processes (torchrun, gloo on CPU) train like one: same global batch, same seed.

Every process samples the same rollout batch (same seed and weights), updates on its share of
whole groups with the global loss normaliser, and DDP averages the gradients; so the logged
metrics (gradient norm included) and the final weights match a one-process run.
"""

import json
import socket
import subprocess
import sys

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")

ARGS = ["train", "--algorithm", "gtpo", "--steps", "3", "--prompts-per-step", "4", "--group-size", "4",
        "--max-new-tokens", "16", "--eval-every", "3", "--eval-size", "8", "--save-every", "3", "--lr", "1e-3",
        "--seed", "0"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
    one = subprocess.run([sys.executable, "-m", "workbench", *ARGS, "--output-dir", str(tmp_path / "one")],
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_addr", "127.0.0.1", "--master_port", str(_port()),
                          "-m", "workbench", *ARGS, "--output-dir", str(tmp_path / "two")],
                         capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    a = pd.read_json(tmp_path / "one" / "metrics.jsonl", lines=True)
    b = pd.read_json(tmp_path / "two" / "metrics.jsonl", lines=True)
    assert len(a) == len(b) == 3  # one writer: no duplicated rows
    assert a["groups"].tolist() == b["groups"].tolist()
    updated = a["grad_norm"].notna()
    assert updated.any(), "no step updated the model: the comparison would be vacuous"
    for col in ("reward", "accuracy", "entropy", "advantage_abs_mean", "grad_norm", "clip_frac", "ratio_mean"):
        pd.testing.assert_series_equal(a.loc[updated, col], b.loc[updated, col], check_exact=False, rtol=1e-5,
                                       atol=1e-6, obj=col)
    wa = load_file(tmp_path / "one" / "checkpoints" / "step_000003" / "model.safetensors")
    wb = load_file(tmp_path / "two" / "checkpoints" / "step_000003" / "model.safetensors")
    for name in wa:  # Adam's first steps amplify float-order differences of near-zero gradients
        torch.testing.assert_close(wa[name], wb[name], atol=1e-4, rtol=0, msg=name)
    assert json.loads((tmp_path / "two" / "config.json").read_text())["algorithm"] == "gtpo"
    assert (tmp_path / "two" / "eval.jsonl").read_text().count("\n") == 2  # steps 0 and 3, written once
