"""Several processes (``torchrun`` / ``accelerate launch``): what the trainer needs, as plain functions.

Each function takes the ``accelerate.Accelerator`` and is the identity for one process, so the
training loop reads the same whatever the process count:

- :func:`check_config`: the settings several processes support;
- :func:`share` / :func:`my_groups`: a process's contiguous share of prompts or groups;
- :func:`any_process`, :func:`sum_over_processes`, :func:`sum_by_name`, :func:`gather_values`,
  :func:`max_over_processes`,
  :func:`main_decides`, :func:`all_finite`, :func:`reduce_metrics`: decisions and statistics
  taken together;
- :func:`shard_fsdp`, :func:`full_state`, :func:`load_full_state`: FSDP (parameters, gradients
  and optimizer state sharded over the processes) and its full state for checkpoints.
"""

from __future__ import annotations

import torch

__all__ = [
    "check_config",
    "share",
    "my_groups",
    "any_process",
    "sum_over_processes",
    "sum_by_name",
    "gather_values",
    "max_over_processes",
    "main_decides",
    "all_finite",
    "reduce_metrics",
    "shard_fsdp",
    "full_state",
    "load_full_state",
    "SUMMED_METRICS",
    "needs_whole_batch",
]

#: Loss terms: each process's value is its share of a global sum, so they add up over processes.
SUMMED_METRICS = ("loss", "policy_loss", "kl_ref", "entropy")


def needs_whole_batch(advantage_kwargs: dict) -> bool:
    """Whether advantages with these options depend on every group of the batch, not only on
    each group (``scale="batch"``, ``normalize="per_polarity_batch"``)."""
    return advantage_kwargs.get("scale") == "batch" or advantage_kwargs.get("normalize") == "per_polarity_batch"


def check_config(config, world: int, advantage_kwargs: dict) -> None:
    """Raise ``ValueError`` naming the setting when ``config`` does not suit ``world`` processes."""
    if world == 1:
        return
    for name, ok in (("minibatches", config.minibatches == 1), ("micro_batch_size", config.micro_batch_size == 0)):
        if not ok:
            raise ValueError(
                f"{name}: multi-process training ({world} processes) supports one mini-batch and no "
                "micro-batches per update (each process updates on its share of the groups); set "
                "minibatches=1 and micro_batch_size=0"
            )
    if config.drop_finished and config.parallel == "fsdp":
        raise ValueError(
            "drop_finished with parallel='fsdp': every forward of FSDP is collective, so generation keeps every "
            "process stepping (synced_gpus); set drop_finished=false"
        )
    if config.lora_rank and config.parallel == "fsdp":
        raise ValueError(
            f"lora_rank={config.lora_rank} with parallel='fsdp': LoRA trains with a model replica per process; "
            "set parallel='ddp' (the adapter is small, its base frozen)"
        )
    sharded = config.rollout == "sharded"
    if sharded and config.prompts_per_step < world:
        raise ValueError(
            f"prompts_per_step ({config.prompts_per_step}) is smaller than the number of processes "
            f"({world}): with rollout='sharded' every process samples at least one prompt; raise "
            "prompts_per_step or set rollout='replicated'"
        )
    if sharded and needs_whole_batch(advantage_kwargs):
        raise ValueError(
            f"advantage_kwargs {advantage_kwargs}: these advantages need the whole batch's rewards "
            "and entropies in every process: set rollout='replicated'"
        )


def share(total: int, rank: int, world: int) -> tuple[int, int]:
    """Process ``rank``'s contiguous slice ``[lo, hi)`` of ``total`` items, as even as possible."""
    return round(total * rank / world), round(total * (rank + 1) / world)


def my_groups(batch, scored, advantages: torch.Tensor, accelerator):
    """This process's whole groups of a batch every process holds (a replicated rollout), with
    their statistics and advantages; a process left without a group gets the first group as a
    stand-in at zero weight (``idle``), so that it still joins every collective of the update."""
    world, n = accelerator.num_processes, batch.group_size
    if world == 1:
        return batch, scored, advantages
    lo, hi = share(batch.groups, accelerator.process_index, world)
    if hi == lo:
        lo, hi, idle = 0, 1, True
    else:
        idle = False
    rows = slice(lo * n, hi * n)
    return batch.rows(lo, hi, idle=idle), scored.rows(rows), advantages[rows]


def _reduce(accelerator, tensor: torch.Tensor, op: str) -> torch.Tensor:
    return tensor if accelerator.num_processes == 1 else accelerator.reduce(tensor, op)


def any_process(accelerator, flag: bool) -> bool:
    """``flag`` on any process (processes sampling their own prompts decide together)."""
    if accelerator.num_processes == 1:
        return flag
    return bool(_reduce(accelerator, torch.tensor([float(flag)], device=accelerator.device), "max") > 0)


def sum_over_processes(accelerator, *values: float) -> list[float]:
    total = torch.tensor([float(v) for v in values], dtype=torch.float64, device=accelerator.device)
    return _reduce(accelerator, total, "sum").tolist()


def sum_by_name(accelerator, sums: dict[str, float]) -> dict[str, float]:
    """Named sums added up over the processes (every process holds the same names)."""
    names = sorted(sums)
    return dict(zip(names, sum_over_processes(accelerator, *(sums[k] for k in names))))


def gather_values(accelerator, values: torch.Tensor) -> torch.Tensor:
    """Every process's 1-D ``values`` (of any length, also none) in one tensor, process by process."""
    if accelerator.num_processes == 1:
        return values
    count = torch.tensor([values.numel()], device=accelerator.device)
    counts = accelerator.gather(count).tolist()
    padded = torch.zeros(max(counts), dtype=values.dtype, device=accelerator.device)
    padded[: values.numel()] = values
    gathered = accelerator.gather(padded).view(len(counts), -1)
    return torch.cat([row[:n] for row, n in zip(gathered, counts)])


def max_over_processes(accelerator, value: float) -> float:
    return float(_reduce(accelerator, torch.tensor([float(value)], device=accelerator.device), "max").item())


def main_decides(accelerator, flag: bool) -> bool:
    """The main process's ``flag`` on every process (a decision that reads files it writes)."""
    if accelerator.num_processes == 1:
        return flag
    from accelerate.utils import broadcast_object_list

    return bool(broadcast_object_list([flag], from_process=0)[0])


def all_finite(accelerator, loss: torch.Tensor) -> bool:
    """Finite on every process (they skip an update together, or DDP would wait for ever)."""
    finite = torch.isfinite(loss.detach()).float().reshape(1)
    return bool(_reduce(accelerator, finite, "sum").item() == accelerator.num_processes)


def reduce_metrics(accelerator, metrics: dict, weight: float) -> dict:
    """Update metrics of the whole batch: loss terms (each process's share of a global sum) add up;
    rates (token means over each process's share) average weighted by ``weight`` (its valid
    tokens; 0 for an idle process)."""
    if accelerator.num_processes == 1:
        return metrics
    names = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)))
    values = [float(metrics[k]) if k in SUMMED_METRICS else float(metrics[k]) * weight for k in names]
    summed = accelerator.reduce(torch.tensor(values + [weight], dtype=torch.float64, device=accelerator.device), "sum")
    out = dict(metrics)
    for i, k in enumerate(names):
        out[k] = float(summed[i]) if k in SUMMED_METRICS else float(summed[i] / summed[-1].clamp(min=1e-12))
    return out


def shard_fsdp(model, accelerator):
    """FSDP (PyTorch's ``fully_shard``): every transformer block is sharded over the processes,
    then the rest (embeddings, final norm, LM head) as one unit. Parameters live sharded; each
    block gathers its parameters for its forward and backward and frees them after."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    model.to(accelerator.device)
    blocks = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in blocks]
    if not layers:
        raise ValueError(
            f"parallel='fsdp': {type(model).__name__} names no transformer block classes "
            "(_no_split_modules) to shard by"
        )
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(str(accelerator.mixed_precision))
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) if dtype else MixedPrecisionPolicy()
    for layer in layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def full_state(model, optimizer, tied_keys=()) -> tuple[dict, dict]:
    """The full (unsharded) weights and optimizer state of an FSDP model, on the CPU (call it on
    every process: they gather together); tied weights (``tied_keys``) saved once."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    model_state, optim_state = get_state_dict(
        model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    return {k: v for k, v in model_state.items() if k not in tied_keys}, optim_state


def load_full_state(model, optimizer, weights: dict, optim_state: dict):
    """Load full weights and optimizer state into an FSDP model (every process keeps its shards);
    returns ``(missing, unexpected)`` keys."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    return set_state_dict(
        model,
        optimizer,
        model_state_dict=weights,
        optim_state_dict=optim_state,
        options=StateDictOptions(full_state_dict=True, strict=False),
    )
