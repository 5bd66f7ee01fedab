"""Several processes (gloo on CPU) train like one: DDP and FSDP, replicated and sharded rollouts.

With ``rollout="replicated"`` every process samples the same batch (same seed and weights) and
updates on its share of whole groups with the global loss normaliser; DDP averages the
gradients, FSDP reduce-scatters them; so the logged metrics (gradient norm included) and the
weights match a one-process run. With ``rollout="sharded"`` (the default) each process samples
its share of the prompts: the samples differ from a one-process run, so the tests check the
split itself and the bookkeeping of a real two-process run.
"""

import json
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from workbench.models.load import load_model
from workbench.training.config import TrainConfig
from workbench.training.trainer import Trainer

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")

ARGS = [
    "train",
    "--prompts-per-step",
    "4",
    "--group-size",
    "4",
    "--max-new-tokens",
    "16",
    "--eval-every",
    "3",
    "--eval-size",
    "8",
    "--lr",
    "1e-3",
    "--seed",
    "0",
]
COMPARED = ("reward", "accuracy", "entropy", "advantage_abs_mean", "grad_norm", "clip_frac", "ratio_mean")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str]) -> None:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]


def one_process(*args) -> list[str]:
    return [sys.executable, "-m", "workbench", *args]


ACCELERATE_CONFIGS = Path(__file__).resolve().parents[1] / "data" / "accelerate"


def accelerate_launch(*args) -> list[str]:
    """The shipped one-node accelerate config, with two processes and no mixed precision; on a
    machine without GPUs they run on CPU with gloo (accelerate's ``--cpu`` flag with several
    processes expects MPI instead)."""
    return [
        str(Path(sys.executable).parent / "accelerate"),
        "launch",
        "--config_file",
        str(ACCELERATE_CONFIGS / "one_node.yaml"),
        "--num_processes",
        "2",
        "--mixed_precision",
        "no",
        "--main_process_port",
        str(_port()),
        "-m",
        "workbench",
        *args,
    ]


def torchrun(*args) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_port()),
        "-m",
        "workbench",
        *args,
    ]


def assert_same_run(a_dir: Path, b_dir: Path, step: int) -> pd.DataFrame:
    a = pd.read_json(a_dir / "metrics.jsonl", lines=True)
    b = pd.read_json(b_dir / "metrics.jsonl", lines=True)
    assert len(a) == len(b) == step  # one writer: no duplicated rows
    assert a["groups"].tolist() == b["groups"].tolist()
    updated = a["grad_norm"].notna()
    assert updated.any(), "no step updated the model: the comparison would be vacuous"
    for col in COMPARED:
        pd.testing.assert_series_equal(
            a.loc[updated, col], b.loc[updated, col], check_exact=False, rtol=1e-5, atol=1e-6, obj=col
        )
    name = f"step_{step:06d}"
    wa = load_file(a_dir / "checkpoints" / name / "model.safetensors")
    wb = load_file(b_dir / "checkpoints" / name / "model.safetensors")
    assert sorted(wa) == sorted(wb)
    for key in wa:  # Adam's first steps amplify float-order differences of near-zero gradients
        torch.testing.assert_close(wa[key], wb[key], atol=1e-4, rtol=0, msg=key)
    return a


def test_ddp_two_processes_match_one(tmp_path):
    args = [*ARGS, "--steps", "3", "--algorithm", "gtpo", "--save-every", "3", "--rollout", "replicated"]
    _run(one_process(*args, "--output-dir", str(tmp_path / "one")))
    _run(accelerate_launch(*args, "--output-dir", str(tmp_path / "two")))
    assert_same_run(tmp_path / "one", tmp_path / "two", 3)
    assert json.loads((tmp_path / "two" / "config.json").read_text())["algorithm"] == "gtpo"
    assert (tmp_path / "two" / "eval.jsonl").read_text().count("\n") == 2  # steps 0 and 3, written once


def test_fsdp_two_processes_match_one_and_resume(tmp_path):
    """FSDP shards parameters, gradients and optimizer state; a run stopped after its step-2
    checkpoint and resumed (full state gathered, saved, re-sharded) ends where one process does."""
    args = [*ARGS, "--algorithm", "grpo", "--save-every", "2", "--rollout", "replicated"]
    _run(one_process(*args, "--steps", "3", "--output-dir", str(tmp_path / "one")))
    _run(torchrun(*args, "--steps", "2", "--parallel", "fsdp", "--output-dir", str(tmp_path / "fsdp")))
    assert (tmp_path / "fsdp" / "checkpoints" / "latest").read_text() == "step_000002"
    _run(torchrun("train", "--resume", str(tmp_path / "fsdp"), "--steps", "3"))
    metrics = assert_same_run(tmp_path / "one", tmp_path / "fsdp", 3)
    assert metrics["grad_norm"].notna().sum() >= 2  # the comparison spans updates before and after the resume
    model, _ = load_model(tmp_path / "fsdp" / "checkpoints" / "step_000003")  # an ordinary checkpoint
    assert sum(p.numel() for p in model.parameters()) > 0


def test_sharded_rollout_two_processes(tmp_path):
    """Each process samples half of the prompts; the logged row is the whole batch's."""
    args = [*ARGS, "--steps", "3", "--algorithm", "grpo", "--save-every", "3", "--report-to", "tensorboard"]
    _run(torchrun(*args, "--output-dir", str(tmp_path / "two")))
    m = pd.read_json(tmp_path / "two" / "metrics.jsonl", lines=True)
    (events,) = (tmp_path / "two" / "tensorboard").glob("events.out.tfevents.*")  # the main process's only
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    reader = EventAccumulator(str(events))
    reader.Reload()
    assert [(e.step, round(e.value, 5)) for e in reader.Scalars("train/accuracy")] == [
        (s, round(a, 5)) for s, a in zip(m["step"], m["accuracy"])
    ]
    assert len(m) == 3
    assert m["groups"].tolist() == [4, 4, 4]  # GRPO keeps every group: 2 per process, summed
    assert (m["accuracy"] * 16).round(6).apply(float.is_integer).all()  # means over all 16 responses
    assert m["grad_norm"].notna().all() and m["response_len_max"].le(16).all()
    samples = [json.loads(line) for line in (tmp_path / "two" / "samples.jsonl").read_text().splitlines()]
    # the main process logs its own groups: the first half of the step's prompts
    assert [s["prompt"] for s in samples if s["step"] == 1] == _round_prompts("addition", step=1)[:2]
    assert (tmp_path / "two" / "checkpoints" / "latest").read_text() == "step_000003"


def _round_prompts(task_name: str, step: int, round_: int = 0, n: int = 4) -> list[str]:
    from workbench.tasks import get_task
    from workbench.training.trainer import _seed_for

    return [e.prompt for e in get_task(task_name).generate("train", n, _seed_for(0, step, round_))]


def test_sharded_rollout_splits_every_round_between_processes(tmp_path, monkeypatch):
    """In one process, pretend to be each of two processes: their prompts are disjoint, in
    order, and together the one-process batch, in every round of dynamic sampling."""
    config = TrainConfig(
        algorithm="dapo",
        prompts_per_step=5,
        group_size=4,
        max_new_tokens=16,
        steps=1,
        max_sampling_rounds=2,
        output_dir=str(tmp_path / "run"),
    )
    trainer = Trainer(config, progress=False)
    shares = {}
    for rank in (0, 1):
        monkeypatch.setattr(type(trainer.accelerator), "process_index", property(lambda self, r=rank: r))
        trainer.world, trainer.sharded_rollout = 2, True
        torch.manual_seed(0)
        shares[rank] = []
        for round_ in (0, 1):
            groups = trainer.rollout(1, round_)
            assert all(g.size == 4 and len(g.texts) == 4 for g in groups)
            shares[rank].append([g.example.prompt for g in groups])
    assert len(shares[0][0]) == 2 and len(shares[1][0]) == 3  # bounds round(5 * r / 2) = 0, 2, 5
    for round_, (a, b) in enumerate(zip(shares[0], shares[1])):
        assert a + b == _round_prompts("addition", 1, round_, n=5)
    trainer.close()


def test_shipped_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    one = load_config_from_file(str(ACCELERATE_CONFIGS / "one_node.yaml"))
    multi = load_config_from_file(str(ACCELERATE_CONFIGS / "multi_node.yaml"))
    assert (one.num_machines, one.distributed_type.value) == (1, "MULTI_GPU")
    assert multi.num_machines == 2 and multi.num_processes == 16 and multi.main_process_port == 29500


def test_accelerate_fsdp_is_refused_with_the_way_to_shard(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ValueError, match="--parallel fsdp"):
        Trainer(TrainConfig(output_dir=str(tmp_path / "run")), progress=False)


def test_batch_wide_advantages_need_a_replicated_rollout():
    """Advantages over the whole batch (scale="batch", normalize="per_polarity_batch") need every
    group in every process: a sharded rollout over several processes is refused, naming the fix."""
    from workbench.training.distributed import check_config, needs_whole_batch

    sharded = TrainConfig(algorithm="gtpo_per_polarity_batch")
    kwargs = sharded.resolved_algorithm().advantage_kwargs
    assert needs_whole_batch(kwargs) and not needs_whole_batch({"normalize": "per_polarity"})
    with pytest.raises(ValueError, match="rollout='replicated'"):
        check_config(sharded, 2, kwargs)
    check_config(sharded, 1, kwargs)  # one process holds the whole batch
    check_config(sharded.replace(rollout="replicated"), 2, kwargs)
    with pytest.raises(ValueError, match="rollout='replicated'"):
        check_config(TrainConfig(algorithm="grpo", advantage_kwargs={"scale": "batch"}), 2, {"scale": "batch"})


def test_lora_ddp_two_processes_match_one(tmp_path):
    """A LoRA run under DDP (two processes, replicated rollout) is the one-process run: metrics,
    and the adapter in the checkpoint; with parallel='fsdp' LoRA is refused, naming the fix."""
    from workbench.training import distributed

    args = [*ARGS, "--steps", "2", "--algorithm", "gtpo", "--save-every", "2", "--rollout", "replicated"]
    args += ["--lora-rank", "4", "--lr", "5e-3"]
    _run(one_process(*args, "--output-dir", str(tmp_path / "one")))
    _run(torchrun(*args, "--output-dir", str(tmp_path / "two")))
    a = pd.read_json(tmp_path / "one" / "metrics.jsonl", lines=True)
    b = pd.read_json(tmp_path / "two" / "metrics.jsonl", lines=True)
    assert len(a) == len(b) == 2 and a["grad_norm"].gt(0).any()
    for col in COMPARED:
        pd.testing.assert_series_equal(
            a[col], b[col], check_exact=False, check_dtype=False, rtol=1e-5, atol=1e-6, obj=col
        )
    wa, wb = (
        load_file(d / "checkpoints" / "step_000002" / "adapter_model.safetensors")
        for d in (tmp_path / "one", tmp_path / "two")
    )
    assert sorted(wa) == sorted(wb) and all("lora_" in k for k in wa)
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=1e-4, rtol=0, msg=key)
    with pytest.raises(ValueError, match="LoRA trains with a model replica per process; set parallel='ddp'"):
        distributed.check_config(TrainConfig(lora_rank=4, parallel="fsdp"), 2, {})
