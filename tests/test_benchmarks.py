"""Every benchmark runs at a tiny size, so none of them rots (their real sizes are in benchmarks/README.md)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def run(*args, timeout=600, env=None):
    out = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_token_stats_smoke():
    out = run(BENCH / "token_stats.py", "--grid", "smoke", "--repeats", "1")
    for method in ("naive", "chunked", "hidden"):
        assert method in out
    assert "time_vs_naive" in out and "memory_vs_naive" in out  # ratios against naive, same run


def test_scaling_smoke():
    out = run(BENCH / "scaling.py", "--grid", "smoke", "--steps", "2", "--generation-cache", "both")
    assert "rollout_per_token_vs_first" in out and "update_per_token_vs_first" in out
    assert "rollout_static_vs_dynamic" in out and "static" in out and "dynamic" in out
    assert "error" not in out  # every case ran
    assert out.count("length") >= 2 and out.count("group") >= 2  # both sweeps, live rows and the table


def test_learning_smoke(tmp_path):
    out = run(
        BENCH / "learning.py",
        "--algorithms",
        "grpo",
        "--steps",
        "1",
        "--prompts-per-step",
        "2",
        "--group-size",
        "2",
        "--eval-size",
        "4",
        "--out",
        tmp_path,
    )
    assert "grpo" in out


def test_step_vs_trl_smoke():
    pytest.importorskip("trl", reason="TRL is the benchmark-only extra: pip install -e '.[bench]'")
    out = run(BENCH / "step_vs_trl.py", "--smoke")
    assert "ratio TRL/ours" in out and "ours" in out and "trl" in out


def test_kernel_resources_compiles_for_an_h100():
    """The fused kernels pass Triton's compiler and ptxas for sm_90, and none spills registers."""
    pytest.importorskip("triton.backends.nvidia", reason="needs triton with its NVIDIA backend (Linux)")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # conftest sets it without a GPU
    out = run(BENCH / "kernel_resources.py", "--arch", "90", env=env)
    assert "12 kernels compiled; 0 spill registers to local memory" in out
    for kernel in ("forward", "backward(logp)", "backward(logp+entropy)", "backward(entropy)"):
        assert out.count(f"sm_90 {kernel:>22}") == 3, kernel  # float32, bfloat16, float16


def test_step_vs_trl_lora_gives_both_trainers_the_same_adapter(tmp_path):
    """``--lora`` parses, and our config and TRL's peft_config name the same rank, alpha and modules
    (without it: full fine-tuning, no peft_config); the configs are built, nothing is run."""
    import importlib.util

    from workbench.models.lora import DEFAULT_TARGET_MODULES
    from workbench.training.config import TrainConfig

    spec = importlib.util.spec_from_file_location("step_vs_trl", BENCH / "step_vs_trl.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    a = bench.parse_args(["--smoke", "--lora", "--lora-rank", "4", "--lora-alpha", "8"])
    config = TrainConfig.from_dict(bench.our_config(a, str(tmp_path / "ours")))
    assert (config.lora_rank, config.lora_alpha, config.lora_targets()) == (4, 8.0, list(DEFAULT_TARGET_MODULES))
    peft = bench.peft_config(a)
    assert (peft.r, peft.lora_alpha, peft.lora_dropout) == (4, 8.0, 0.0)
    assert set(peft.target_modules) == set(DEFAULT_TARGET_MODULES)
    full = bench.parse_args(["--smoke"])
    assert (
        bench.peft_config(full) is None and TrainConfig.from_dict(bench.our_config(full, str(tmp_path))).lora_rank == 0
    )
    assert not config.drop_finished
    dropping = bench.parse_args(["--smoke", "--drop-finished"])
    assert TrainConfig.from_dict(bench.our_config(dropping, str(tmp_path))).drop_finished
