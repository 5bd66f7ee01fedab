"""The RL trainer: one loop for every algorithm in the registry.

    rollout -> score (old log-probs, entropies) -> rewards -> advantages -> update -> log

Each step samples ``prompts_per_step`` prompts, ``group_size`` responses each, with
``transformers`` generation (KV cache, temperature sampling, stop at end-of-sequence),
records the behaviour policy's log-probabilities and entropies in one no-grad forward pass,
turns rewards into advantages with the chosen algorithm, and runs PPO-style epochs over
mini-batches. ``accelerate`` places the model (CUDA when present, CPU otherwise) and handles
mixed precision.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import random
import re
import shutil
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from . import runs
from .checkpoints import TIED_KEYS, intact_checkpoints, save_checkpoint, verify_checkpoint
from .algorithms import ALGORITHMS
from .config import DEFAULT_INIT, TrainConfig
from .entropy import token_stats_from_model
from .analysis import response_record
from .generation import Generated, format_prompts, generate
from .losses import policy_loss
from .models import build_tiny_model, load_model, quiet_hub_bars
from .rewards import grop_penalty, overlong_penalty
from .tasks import get_task

__all__ = ["Trainer", "train", "resume", "METRIC_COLUMNS", "verify_checkpoint"]

METRIC_COLUMNS = (
    "step", "reward", "accuracy", "response_len_mean", "response_len_max", "truncated_frac", "entropy",
    "clip_frac_low", "clip_frac_high", "clip_frac", "ratio_mean", "approx_kl", "kl_ref", "grad_norm", "loss",
    "advantage_abs_mean", "lr", "groups", "frac_zero_std", "sampling_rounds", "generated_tokens", "skipped_updates",
    "time_rollout", "time_score", "time_update", "time_step", "tokens_per_s",
)
SUMMED_METRICS = ("loss", "policy_loss", "kl_ref", "entropy")
EVAL_SEED = 1234  # the held-out set is the same for every run of a task


def _seed_for(*parts: int) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little")


@dataclass
class Rollout:
    """A scored batch of ``G`` groups of ``n`` responses, flattened to ``B = G * n`` rows."""

    input_ids: torch.Tensor  # [B, P + T] left-padded prompt, then response (right-padded)
    attention_mask: torch.Tensor  # [B, P + T]
    response_mask: torch.Tensor  # [B, T] bool
    old_logp: torch.Tensor  # [B, T]
    entropies: torch.Tensor  # [B, T]
    ref_logp: torch.Tensor | None
    rewards: torch.Tensor  # [B] shaped reward used for advantages
    correct: torch.Tensor  # [B] bool
    truncated: torch.Tensor  # [B] bool
    prompts: list[str]
    texts: list[str]
    group_size: int
    idle: bool = False  # a stand-in batch at zero weight (this process has no group this step)

    @property
    def lengths(self) -> torch.Tensor:
        return self.response_mask.sum(-1)


class Trainer:
    """Train a causal LM with one of :data:`workbench.ALGORITHMS` on a verifiable task."""

    def __init__(self, config: TrainConfig | dict, *, resume: bool = False, overwrite: bool = False,
                 callback: Callable[[int, dict], None] | None = None, progress: bool = True):
        self.config = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
        c = self.config
        self.callback, self.progress = callback, progress
        self.algorithm = ALGORITHMS[c.algorithm]
        self.run_dir = Path(c.output_dir)

        use_cpu = c.device == "cpu" or not torch.cuda.is_available()
        if c.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device='cuda' but no CUDA GPU is available")
        precision = c.mixed_precision
        if precision == "auto":
            precision = "bf16" if not use_cpu and torch.cuda.is_bf16_supported() else "no"
        if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
            raise ValueError("accelerate's own FSDP (--use_fsdp or an FSDP accelerate config) is not supported: the "
                             "trainer shards the model itself, so that generation, evaluation and checkpoints work "
                             "under FSDP; launch with --multi_gpu and set parallel='fsdp' (--parallel fsdp)")
        self.accelerator = Accelerator(cpu=use_cpu, mixed_precision=precision)
        self.world, self.is_main = self.accelerator.num_processes, self.accelerator.is_main_process
        self.fsdp = self.world > 1 and c.parallel == "fsdp"
        self.sharded_rollout = self.world > 1 and c.rollout == "sharded"
        if self.world > 1:
            self._check_multi_process()

        self.task = get_task(c.task, **c.task_params)
        self.model, self.tokenizer = self._load_model()
        if c.gradient_checkpointing:
            _enable_activation_checkpointing(self.model)
        self._lock = None
        self._prepare_run_dir(resume, overwrite)  # only once the task and the model loaded
        try:
            self._set_up(resume)
        except BaseException:
            self.close()
            raise

    def _set_up(self, resume: bool) -> None:
        c = self.config
        self.ref_model = None
        if c.resolved("beta_kl") > 0:
            self.ref_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        if self.fsdp:  # shard first: the optimizer holds the sharded parameters
            self.model = self._shard(self.model)
            if self.ref_model is not None:
                self.ref_model = self._shard(self.ref_model)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        if not self.fsdp:
            self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
            if self.ref_model is not None:
                self.ref_model.to(self.accelerator.device)
        self.eval_examples = self.task.generate("eval", c.eval_size, EVAL_SEED)
        self.step = 0
        self.loss_scale = 1.0
        self.bad_steps = 0
        self.skipped_updates = 0
        if resume:
            self._load_checkpoint()

    # ------------------------------------------------------------------ set-up

    def _check_multi_process(self) -> None:
        c = self.config
        for name, ok in (("minibatches", c.minibatches == 1), ("micro_batch_size", c.micro_batch_size == 0)):
            if not ok:
                raise ValueError(f"{name}: multi-process training ({self.world} processes) supports one "
                                 "mini-batch and no micro-batches per update (each process updates on its "
                                 "share of the groups); set minibatches=1 and micro_batch_size=0")
        if self.sharded_rollout and c.prompts_per_step < self.world:
            raise ValueError(f"prompts_per_step ({c.prompts_per_step}) is smaller than the number of processes "
                             f"({self.world}): with rollout='sharded' every process samples at least one prompt; "
                             "raise prompts_per_step or set rollout='replicated'")
        if self.sharded_rollout and c.advantage_kwargs.get("scale") == "batch":
            raise ValueError("advantage_kwargs scale='batch' needs the whole batch's rewards in every process: "
                             "set rollout='replicated'")

    def _shard(self, model):
        """FSDP (PyTorch's ``fully_shard``): every transformer block is sharded over the processes,
        then the rest (embeddings, final norm, LM head) as one unit. Parameters live sharded; each
        block gathers its parameters for its forward and backward and frees them after."""
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        model.to(self.accelerator.device)
        blocks = set(getattr(model, "_no_split_modules", None) or ())
        layers = [m for m in model.modules() if type(m).__name__ in blocks]
        if not layers:
            raise ValueError(f"parallel='fsdp': {type(model).__name__} names no transformer block classes "
                             "(_no_split_modules) to shard by")
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(str(self.accelerator.mixed_precision))
        policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) if dtype else MixedPrecisionPolicy()
        for layer in layers:
            fully_shard(layer, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        return model

    def _prepare_run_dir(self, resume: bool, overwrite: bool) -> None:
        d = self.run_dir
        if resume and not d.is_dir():
            raise FileNotFoundError(f"nothing to resume in {str(d)!r}: it holds no run")
        problem = None
        if self.is_main:  # the main process holds the run directory's lock for the life of the run
            try:
                self._lock = runs.lock_run_dir(d)
            except runs.RunInUseError as e:
                problem = str(e)
        if not self._main_decides(problem is None):
            raise runs.RunInUseError(problem or f"output_dir {str(d)!r} is in use by another run")
        try:
            self._claim_run_dir(resume, overwrite)
        except BaseException:
            self.close()
            raise

    def _record_task(self) -> None:
        """``task.json``: the task's own account of its data; lines a lenient JSONL task skipped
        are also a warning, so that they are seen, not only recorded."""
        info = self.task.describe()
        runs.atomic_write_text(self.run_dir / "task.json", json.dumps(info, indent=1))
        if info.get("skipped_lines"):
            first = ", ".join(f"line {s['line']}: {s['problem']}" for s in info["skipped"][:3])
            warnings.warn(f"{info['skipped_lines']} malformed line(s) of {info.get('path')} skipped (lenient=True): "
                          f"{first}{', ...' if info['skipped_lines'] > 3 else ''} (all listed in "
                          f"{self.run_dir / 'task.json'})", stacklevel=4)

    def close(self) -> None:
        """Release the run directory's lock (done when training ends; a later ``train()`` takes it again)."""
        if self._lock is not None:
            self._lock.release(force=True)
            self._lock = None

    def _claim_run_dir(self, resume: bool, overwrite: bool) -> None:
        d = self.run_dir
        if resume and not runs.holds_run(d):
            raise FileNotFoundError(f"nothing to resume in {str(d)!r}: it holds no run")
        if runs.holds_run(d) and not resume:
            if not overwrite:
                raise FileExistsError(f"output_dir {str(d)!r} already holds a run: resume it (resume=True), "
                                      "pass overwrite=True, or choose another output_dir")
            if self.is_main:
                runs.clear_run_dir(d)
        if self.is_main:  # one writer; the other processes wait for it
            runs.remove_leftovers(d)
            self._record_task()
            (d / "checkpoints").mkdir(parents=True, exist_ok=True)
            runs.atomic_write_text(d / "config.json", json.dumps(self.config.to_dict(), indent=2))
        self.accelerator.wait_for_everyone()

    def _load_model(self):
        c = self.config
        if c.model == "tiny":
            from .tokenizer import build_char_tokenizer

            tokenizer = build_char_tokenizer()
            return build_tiny_model(tokenizer, seed=c.seed, **c.model_params), tokenizer
        path = DEFAULT_INIT if c.model == "default" else c.model
        if c.model == "default" and not Path(path).is_dir():
            raise FileNotFoundError(f"the shipped warm-start checkpoint {path} is missing; rebuild it with "
                                    "`python -m workbench warmstart`")
        return load_model(path, trust_remote_code=c.trust_remote_code)

    def _lr_factor(self, step: int) -> float:
        c = self.config
        if c.warmup_steps and step < c.warmup_steps:
            return (step + 1) / c.warmup_steps
        progress = (step - c.warmup_steps) / max(1, c.steps - c.warmup_steps)
        if c.lr_schedule == "linear":
            return max(0.0, 1.0 - progress)
        if c.lr_schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    def _scheduler_step(self) -> None:
        """The schedule follows RL steps, also those that made no optimizer step."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
            self.scheduler.step()

    @property
    def unwrapped(self):
        return self.accelerator.unwrap_model(self.model)

    # ------------------------------------------------------------------ rollout

    def _generate(self, prompts: list[str], n: int, *, do_sample: bool) -> Generated:
        c = self.config
        prompts = format_prompts(self.tokenizer, prompts, c.chat_template)
        return generate(self.unwrapped, self.tokenizer, prompts, n=n, max_new_tokens=c.max_new_tokens,
                        do_sample=do_sample, temperature=c.temperature, top_p=c.top_p,
                        autocast=self.accelerator.autocast(), synced_gpus=self.fsdp, cache=c.generation_cache)

    def _score(self, model, input_ids, attention_mask, response_mask, *, grad: bool):
        if not grad and model is self.model:
            model = self.unwrapped  # no DDP forward (and no collective) for a no-grad pass
        T = response_mask.shape[1]
        # Under FSDP the LM-head weight is sharded outside the model's forward, so the statistics
        # come from the model's own logits (only the response positions' are computed).
        with torch.set_grad_enabled(grad), self.accelerator.autocast():
            return token_stats_from_model(model, input_ids, attention_mask, response_len=T,
                                          response_mask=response_mask, temperature=self.config.temperature,
                                          entropy_grad=grad and self.config.entropy_coef > 0,
                                          method="logits" if self.fsdp else "auto")

    def rollout(self, step: int) -> tuple[Rollout | None, dict]:
        """Sample, score and reward one batch of groups (with DAPO's dynamic sampling if on).

        With several processes and ``rollout="sharded"``, each process samples its contiguous share
        of every round's prompts and keeps its share of the groups; the processes decide together
        whether another round is needed, so they all run the same number of rounds. The batch is
        then this process's groups (``batch.idle``: it kept none and stands in with a discarded
        group at zero weight). Otherwise every process samples the whole batch.
        """
        c = self.config
        n = c.group_size
        dynamic = c.resolved("dynamic_sampling")
        lo, hi = self._my_share(c.prompts_per_step) if self.sharded_rollout else (0, c.prompts_per_step)
        kept: list[tuple] = []  # per group: (prompt, prompt ids/mask rows, response rows, ...)
        spare = None  # the first group sampled, kept or not: an idle process's stand-in
        rounds, zero_std, seen, generated = 0, 0, 0, 0
        timeouts_before = self.task.timeouts
        t0 = time.perf_counter()
        while rounds < (c.max_sampling_rounds if dynamic else 1) and self._any_process(len(kept) < hi - lo):
            # a process with enough groups samples along only when every forward is collective (FSDP)
            if len(kept) < hi - lo or self.fsdp:
                examples = self.task.generate("train", c.prompts_per_step, _seed_for(c.seed, step, rounds))[lo:hi]
                gen = self._generate([e.prompt for e in examples], n, do_sample=True)
                generated += int(gen.response_mask.sum())
                for g, ex in enumerate(examples):
                    rows = slice(g * n, (g + 1) * n)
                    texts = gen.texts[rows]
                    scores = [self.task.reward(ex, t) for t in texts]  # each response scored once
                    group = (ex.prompt, gen.prompt_ids[rows], gen.prompt_mask[rows], gen.response_ids[rows],
                             gen.response_mask[rows], gen.truncated[rows], texts, [r > 0.5 for r in scores],
                             [r + c.format_reward * self.task.format_reward(t) for r, t in zip(scores, texts)])
                    spare = spare or group
                    seen += 1
                    if len(set(group[8])) == 1:
                        zero_std += 1
                        if dynamic:
                            continue
                    kept.append(group)
            rounds += 1
        time_rollout = time.perf_counter() - t0
        kept = kept[: hi - lo]
        groups = len(kept)
        timeouts = self.task.timeouts - timeouts_before
        if self.sharded_rollout:  # the whole batch's counts
            groups, zero_std, seen, generated, timeouts = map(
                int, self._sum_over_processes(groups, zero_std, seen, generated, timeouts))
        stats = {"groups": groups, "frac_zero_std": zero_std / max(1, seen), "sampling_rounds": rounds,
                 "reward_timeouts": timeouts,
                 "generated_tokens": generated, "time_rollout": time_rollout}
        if not groups:
            return None, stats
        batch = self._collate(kept or [spare])
        batch.idle = not kept
        t1 = time.perf_counter()
        if not self.fused_update:
            batch.old_logp, batch.entropies = self._score(self.model, batch.input_ids, batch.attention_mask,
                                                          batch.response_mask, grad=False)
        if self.ref_model is not None:
            batch.ref_logp, _ = self._score(self.ref_model, batch.input_ids, batch.attention_mask,
                                            batch.response_mask, grad=False)
        stats["time_score"] = time.perf_counter() - t1
        return batch, stats

    def _my_share(self, total: int) -> tuple[int, int]:
        """This process's contiguous slice of ``total`` items (prompts or groups), as even as possible."""
        r = self.accelerator.process_index
        return round(total * r / self.world), round(total * (r + 1) / self.world)

    def _any_process(self, flag: bool) -> bool:
        """``flag`` on any process (sharded rollouts decide together; replicated ones agree anyway)."""
        if not self.sharded_rollout:
            return flag
        return bool(self.accelerator.reduce(torch.tensor([float(flag)], device=self.accelerator.device), "max") > 0)

    def _sum_over_processes(self, *values: float) -> list[float]:
        total = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.accelerator.device)
        if self.world > 1:
            total = self.accelerator.reduce(total, "sum")
        return total.tolist()

    def _collate(self, kept: list[tuple]) -> Rollout:
        c, pad = self.config, self.tokenizer.pad_token_id
        P = max(k[1].shape[1] for k in kept)
        T = max(int(k[4].sum(-1).max()) for k in kept)
        dev = self.accelerator.device

        def left(x, width, value):
            return torch.nn.functional.pad(x, (width - x.shape[1], 0), value=value)

        def right(x, width, value):
            x = x[:, :width]
            return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=value)

        p_ids = torch.cat([left(k[1], P, pad) for k in kept])
        p_mask = torch.cat([left(k[2], P, 0) for k in kept])
        resp = torch.cat([right(k[3], T, pad) for k in kept])
        r_mask = torch.cat([right(k[4].long(), T, 0) for k in kept]).bool()
        trunc = torch.cat([k[5] for k in kept])
        texts = [t for k in kept for t in k[6]]
        correct = torch.tensor([x for k in kept for x in k[7]], device=dev)
        base = torch.tensor([x for k in kept for x in k[8]], dtype=torch.float32, device=dev)
        rewards = base.clone()
        lengths = r_mask.sum(-1)
        if c.resolved("overlong_shaping"):
            rewards = rewards + overlong_penalty(lengths, max_len=c.max_new_tokens, cache_len=c.overlong_cache)
        if c.grop:
            rewards = rewards + grop_penalty(base.view(-1, c.group_size), lengths.view(-1, c.group_size)).view(-1)
        return Rollout(
            input_ids=torch.cat([p_ids, resp], 1), attention_mask=torch.cat([p_mask, r_mask.long()], 1),
            response_mask=r_mask, old_logp=None, entropies=None, ref_logp=None, rewards=rewards, correct=correct,
            truncated=trunc, prompts=[k[0] for k in kept], texts=texts, group_size=c.group_size)

    # ------------------------------------------------------------------ update

    def advantages(self, batch: Rollout) -> torch.Tensor:
        n = batch.group_size
        G = batch.rewards.shape[0] // n
        T = batch.response_mask.shape[1]
        adv = self.algorithm.advantages(batch.rewards.view(G, n), batch.entropies.view(G, n, T),
                                        batch.response_mask.view(G, n, T), **self.config.advantage_kwargs)
        return adv.view(G * n, T)

    def _loss_denominator(self, response_mask: torch.Tensor) -> float:
        """The loss normaliser of the rows of ``response_mask``: their valid tokens for a
        token-level token-mean loss, else their number of sequences."""
        c = self.config
        if c.resolved("agg") == "token-mean" and c.resolved("level") == "token":
            return float(response_mask.sum())
        return float(response_mask.shape[0])

    def _all_finite(self, loss: torch.Tensor) -> bool:
        """Finite on every process (they skip an update together, or DDP would wait forever)."""
        finite = torch.isfinite(loss.detach()).float().reshape(1)
        if self.world > 1:
            finite = self.accelerator.reduce(finite, "sum") / self.world
        return bool(finite.item() == 1)

    def _share(self, batch: Rollout, rows: slice | None = None) -> tuple[Rollout, slice]:
        """This process's whole groups of a replicated rollout batch (contiguous, as even as possible)."""
        n, G = batch.group_size, batch.rewards.shape[0] // batch.group_size
        if rows is None:
            lo, hi = self._my_share(G)
            rows = slice(lo * n, hi * n)
        pick = {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}
        for name, value in pick.items():
            if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == G * n:
                pick[name] = value[rows]
            elif isinstance(value, list) and len(value) == G * n:
                pick[name] = value[rows]
            elif isinstance(value, list) and len(value) == G:
                pick[name] = value[rows.start // n: rows.stop // n]
        return Rollout(**pick), rows

    def _reduce_metrics(self, metrics: dict, weight: float) -> dict:
        """Loss terms (each process's share of a global sum) add up; rates (token means over each
        process's share) average weighted by its ``weight`` (its valid tokens; 0 when idle)."""
        names = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)))
        values = [float(metrics[k]) if k in SUMMED_METRICS else float(metrics[k]) * weight for k in names]
        values = torch.tensor(values + [weight], dtype=torch.float64, device=self.accelerator.device)
        summed = self.accelerator.reduce(values, "sum")
        out = dict(metrics)
        for i, k in enumerate(names):
            out[k] = float(summed[i]) if k in SUMMED_METRICS else float(summed[i] / summed[-1].clamp(min=1e-12))
        return out

    def _global_mean(self, values: torch.Tensor) -> float:
        total = torch.stack([values.sum().float(), torch.tensor(float(values.numel()), device=values.device)])
        if self.world > 1:
            total = self.accelerator.reduce(total, "sum")
        return float(total[0] / total[1].clamp(min=1))

    @property
    def fused_update(self) -> bool:
        """One on-policy update over the whole batch (one epoch, one mini-batch, no micro-batches):
        the behaviour policy is the current one, so its log-probs and entropies come from the
        update's own forward pass (detached) instead of a separate scoring pass."""
        c = self.config
        return c.ppo_epochs == 1 and c.minibatches == 1 and c.micro_batch_size == 0

    def fused_update_step(self, batch: Rollout, step: int, denominator: float | None = None):
        """Forward once with gradients, take old log-probs and entropies from it, compute the
        advantages, then the loss on the same forward; returns ``(advantages, metrics)``."""
        self.model.train()
        logp, ent = self._score(self.model, batch.input_ids, batch.attention_mask, batch.response_mask, grad=True)
        batch.old_logp, batch.entropies = logp.detach(), ent.detach()
        advantages = self.advantages(batch)
        return advantages, self.update(batch, advantages, step, scored=(logp, ent), denominator=denominator)

    def update(self, batch: Rollout, advantages: torch.Tensor, step: int, scored=None,
               denominator: float | None = None) -> dict:
        """PPO-style epochs over mini-batches of ``batch``. ``denominator``: the loss normaliser of
        the whole (all-process) batch when ``batch`` is this process's share of it."""
        c = self.config
        B = advantages.shape[0]
        loss_kwargs = dict(eps_low=c.resolved("eps_low"), eps_high=c.resolved("eps_high"), agg=c.resolved("agg"),
                           level=c.resolved("level"), beta_kl=c.resolved("beta_kl"), entropy_coef=c.entropy_coef,
                           clip_ratio_c=c.clip_ratio_c, norm_len=c.max_new_tokens)
        gen = torch.Generator().manual_seed(_seed_for(c.seed, step, 7))
        sums: dict[str, float] = {}
        count = 0
        grad_norms = []
        self.model.train()
        for _ in range(c.ppo_epochs):
            order = torch.randperm(B, generator=gen).to(advantages.device)
            if scored is not None:  # fused: one mini-batch in row order, matching the scored rows
                order = torch.arange(B, device=advantages.device)
            for mb in order.chunk(c.minibatches):
                # each optimizer step's own normaliser (the global one when this is a process's share)
                mb_denominator = self._loss_denominator(batch.response_mask[mb]) if denominator is None else denominator
                micro = c.micro_batch_size or len(mb)
                n_micro = math.ceil(len(mb) / micro)
                finite = True
                for idx in mb.split(micro):
                    T = int(batch.response_mask[idx].sum(-1).max())
                    ids = batch.input_ids[idx][:, : batch.input_ids.shape[1] - batch.response_mask.shape[1] + T]
                    attn = batch.attention_mask[idx][:, : ids.shape[1]]
                    mask = batch.response_mask[idx][:, :T]
                    if scored is not None:  # the fused update's forward: the whole batch, already scored
                        logp, ent = scored[0][idx][:, :T], scored[1][idx][:, :T]
                    else:
                        logp, ent = self._score(self.model, ids, attn, mask, grad=True)
                    loss, metrics = policy_loss(
                        logp, batch.old_logp[idx][:, :T], advantages[idx][:, :T], mask,
                        logp_ref=None if batch.ref_logp is None else batch.ref_logp[idx][:, :T],
                        entropies=ent if c.entropy_coef > 0 else None, denominator=mb_denominator, **loss_kwargs)
                    if not self._all_finite(loss):
                        finite = False
                        break
                    # DDP averages gradients over processes; each process's loss is its share of
                    # the global sum over the global denominator, so scale by the process count
                    self.accelerator.backward(loss * self.loss_scale)
                    for k, v in metrics.items():  # loss terms add up over micro-batches; rates average
                        sums[k] = sums.get(k, 0.0) + (v if k in SUMMED_METRICS else v / n_micro)
                grad_norm = self._clip_gradients() if finite else None
                if not finite or not torch.isfinite(grad_norm):
                    self.optimizer.zero_grad(set_to_none=True)
                    self.skipped_updates += 1
                    self.bad_steps += 1
                    if self.bad_steps >= c.max_bad_steps:
                        raise FloatingPointError(
                            f"{self.bad_steps} consecutive updates had a non-finite loss or gradient; the run "
                            f"stops here (last good checkpoint: {runs.Run(self.run_dir).latest_checkpoint()})")
                    continue
                self.bad_steps = 0
                grad_norms.append(float(grad_norm))
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                count += 1
        self._scheduler_step()
        n_mb = max(1, c.ppo_epochs * c.minibatches)
        out = {k: v / n_mb for k, v in sums.items()}
        out["grad_norm"] = sum(grad_norms) / len(grad_norms) if grad_norms else float("nan")
        return out

    def _clip_gradients(self) -> torch.Tensor:
        norm = self.accelerator.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP: a distributed tensor

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Greedy and sampled (one sample, at the training temperature) held-out accuracy."""
        exs = self.eval_examples
        prompts = [e.prompt for e in exs]
        out, timeouts_before = {}, self.task.timeouts
        with torch.random.fork_rng(devices=[] if self.accelerator.device.type == "cpu" else None):
            torch.manual_seed(EVAL_SEED)
            for name, sample in (("greedy", False), ("sampled", True)):
                gen = self._generate(prompts, 1, do_sample=sample)
                out[f"{name}_accuracy"] = sum(self.task.reward(e, t) > 0.5 for e, t in zip(exs, gen.texts)) / len(exs)
                if sample:
                    T = int(gen.response_mask.sum(-1).max())
                    ids = torch.cat([gen.prompt_ids, gen.response_ids[:, :T]], 1)
                    attn = torch.cat([gen.prompt_mask, gen.response_mask[:, :T].long()], 1)
                    _, ent = self._score(self.model, ids, attn, gen.response_mask[:, :T], grad=False)
                    out["entropy"] = float(ent.sum() / gen.response_mask.sum())
        out["reward_timeouts"] = self.task.timeouts - timeouts_before
        return out

    # ------------------------------------------------------------------ logging and checkpoints

    def _log_samples(self, step: int, batch: Rollout, advantages: torch.Tensor) -> None:
        n = batch.group_size
        for g in range(min(self.config.log_groups, batch.rewards.shape[0] // n)):
            responses = []
            for i in range(g * n, (g + 1) * n):
                m = batch.response_mask[i]
                ids = batch.input_ids[i, -m.shape[0]:][m].tolist()
                responses.append(response_record(
                    self.tokenizer, ids, batch.entropies[i][m], batch.old_logp[i][m], advantages[i][m],
                    text=batch.texts[i], reward=float(batch.rewards[i]), correct=bool(batch.correct[i])))
            runs.append_jsonl(self.run_dir / "samples.jsonl", {
                "step": step, "group": g, "prompt": batch.prompts[g], "algorithm": self.config.algorithm,
                "responses": responses})

    def save_checkpoint(self) -> Path | None:
        """Write model, tokenizer, optimizer, scheduler and RNG state atomically. Call it on every
        process: under FSDP they gather the full state together; the main process writes it."""
        model_state = optim_state = None
        if self.fsdp:  # full (unsharded) weights and optimizer state, on the main process's CPU
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

            model_state, optim_state = get_state_dict(self.model, self.optimizer,
                                                      options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            if getattr(self.unwrapped.config, "tie_word_embeddings", False):  # saved once, as without FSDP
                model_state = {k: v for k, v in model_state.items() if k not in TIED_KEYS}
        if not self.is_main:
            return None
        state = {
            "optimizer": optim_state if self.fsdp else self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(), "python_rng": random.getstate(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
        meta = {"skipped_updates": self.skipped_updates, "bad_steps": self.bad_steps}
        return save_checkpoint(self.run_dir, self.step, model=self.unwrapped, tokenizer=self.tokenizer,
                               trainer_state=state, meta=meta, keep=self.config.keep_checkpoints,
                               model_state=model_state, fault=lambda step: _fault_point("checkpoint", step))

    def _load_checkpoint(self) -> None:
        found = False
        for ckpt, weights, state, meta in intact_checkpoints(self.run_dir):
            if self.fsdp:  # every process reads the full state and keeps its shards
                from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

                missing, unexpected = set_state_dict(self.model, self.optimizer, model_state_dict=weights,
                                                     optim_state_dict=state["optimizer"],
                                                     options=StateDictOptions(full_state_dict=True, strict=False))
            else:
                missing, unexpected = self.unwrapped.load_state_dict(weights, strict=False)
            if unexpected or set(missing) - TIED_KEYS:
                raise RuntimeError(f"checkpoint {ckpt} does not fit the model: missing {missing}, "
                                   f"unexpected {unexpected}")
            if not self.fsdp:
                self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["torch_rng"])
            random.setstate(state["python_rng"])
            self.step, self.skipped_updates = meta["step"], meta["skipped_updates"]
            found = True
            break
        if not found and runs.Run(self.run_dir).checkpoints():
            raise RuntimeError(f"no intact checkpoint in {self.run_dir / 'checkpoints'} to resume from")
        # resumed, or nothing saved yet (start from scratch): drop rows of the steps after it
        if self.is_main:
            if found:
                self._check_history()
            for f in ("metrics.jsonl", "eval.jsonl", "samples.jsonl"):
                runs.truncate_jsonl(self.run_dir / f, self.step)
        self.accelerator.wait_for_everyone()

    def _check_history(self) -> None:
        """Warn when the run's history ends before the checkpoint being resumed (rows lost or the
        files removed): the resumed run then has a gap there."""
        c = self.config
        expected = {"metrics.jsonl": self.step, "eval.jsonl": self.step // c.eval_every * c.eval_every}
        for name, needed in expected.items():
            path = self.run_dir / name
            if not path.exists():
                warnings.warn(f"{path} is missing; the checkpoint is at step {self.step}: the resumed run's "
                              f"{name} starts after it", stacklevel=3)
                continue
            last = max((r.get("step", 0) for r in runs.read_jsonl(path)), default=None)
            if last is None or last < needed:
                warnings.warn(f"{name} has rows up to step {last}, but the checkpoint is at step {self.step}: "
                              f"the rows in between are lost (the resumed run continues after step {self.step})",
                              stacklevel=3)

    # ------------------------------------------------------------------ the loop

    def _main_decides(self, flag: bool) -> bool:
        """The main process's ``flag`` on every process (a decision that reads files it writes)."""
        if self.world == 1:
            return flag
        from accelerate.utils import broadcast_object_list

        return bool(broadcast_object_list([flag], from_process=0)[0])

    def train_step(self, step: int) -> dict:
        c = self.config
        t0 = time.perf_counter()
        torch.manual_seed(_seed_for(c.seed, step, self.accelerator.process_index) if self.sharded_rollout
                          else _seed_for(c.seed, step))
        batch, stats = self.rollout(step)
        row = {"step": step, **stats, "lr": self.scheduler.get_last_lr()[0]}
        if batch is None:  # dynamic sampling found no informative group
            self._scheduler_step()
            row.update(skipped_updates=self.skipped_updates, time_step=time.perf_counter() - t0)
            return row
        t1 = time.perf_counter()
        row.update(self._rollout_stats(batch))  # of the whole batch, before a replicated one is shared out
        denominator, adv = None, None
        if self.world > 1:  # each process updates on its whole groups, normalised by the global batch
            if self.sharded_rollout:
                denominator = self._sum_over_processes(0 if batch.idle else self._loss_denominator(batch.response_mask))[0]
            else:  # every process sampled the same batch
                denominator = self._loss_denominator(batch.response_mask)
                full = batch
                batch, rows = self._share(full)
                if rows.start == rows.stop:  # fewer groups than processes: join the collectives at zero weight
                    rows = slice(0, full.group_size)
                    batch = dataclasses.replace(self._share(full, rows)[0], idle=True)
                if not self.fused_update:  # from the whole batch (advantage_kwargs scale="batch" needs it)
                    adv = self.advantages(full)[rows]
        idle = batch.idle
        self.loss_scale = 0.0 if idle else float(self.world)
        if self.fused_update:
            adv, metrics = self.fused_update_step(batch, step, denominator)
        else:
            adv = self.advantages(batch) if adv is None else adv
            metrics = self.update(batch, adv, step, denominator=denominator)
        if self.world > 1:
            metrics = self._reduce_metrics(metrics, 0.0 if idle else float(batch.response_mask.sum()))
        row["time_update"] = time.perf_counter() - t1
        m = torch.zeros_like(batch.response_mask) if idle else batch.response_mask
        row.update(  # update statistics, reduced over processes
            entropy=self._global_mean(batch.entropies[m]), advantage_abs_mean=self._global_mean(adv[m].abs()),
            skipped_updates=self.skipped_updates, **{k: v for k, v in metrics.items() if k != "entropy"},
        )
        row["tokens_per_s"] = stats["generated_tokens"] / stats["time_rollout"]
        if self.is_main and not idle and (step == 1 or step % c.log_samples_every == 0):
            self._log_samples(step, batch, adv)
        row["time_step"] = time.perf_counter() - t0
        return row

    def _rollout_stats(self, batch: Rollout) -> dict:
        """Reward, accuracy and length statistics of the step's whole batch (summed over the
        processes' shares when the rollout is sharded)."""
        w = 0.0 if batch.idle else 1.0
        lengths = batch.lengths.float()
        sums = [w * float(x) for x in (batch.rewards.sum(), batch.correct.float().sum(), lengths.sum(),
                                        batch.truncated.float().sum(), len(lengths))]
        longest = torch.tensor([w * float(lengths.max())], device=self.accelerator.device)
        if self.sharded_rollout:
            sums = self._sum_over_processes(*sums)
            longest = self.accelerator.reduce(longest, "max")
        reward, correct, length, truncated, count = sums
        return {"reward": reward / count, "accuracy": correct / count, "response_len_mean": length / count,
                "response_len_max": int(longest.item()), "truncated_frac": truncated / count}

    def train(self) -> runs.Run:
        if self.is_main and self._lock is None:  # trained before: the directory is locked again
            self._lock = runs.lock_run_dir(self.run_dir)
        try:
            return self._train()
        finally:
            self.close()

    def _train(self) -> runs.Run:
        c = self.config
        main = self.is_main  # with several processes, the main one writes and reports
        bar = tqdm(total=c.steps, initial=self.step, desc=f"{c.algorithm}", disable=not (self.progress and main))
        if self._main_decides(self.step == 0 and not (self.run_dir / "eval.jsonl").exists()):
            ev = self.evaluate() if main or self.fsdp else None  # FSDP: every forward is collective
            if main:
                runs.append_jsonl(self.run_dir / "eval.jsonl", {"step": 0, **ev})
            _fault_point("eval", 0)
            self.accelerator.wait_for_everyone()
        while self.step < c.steps:
            step = self.step + 1
            row = self.train_step(step)
            self.step = step
            if main:
                runs.append_jsonl(self.run_dir / "metrics.jsonl", row)
            _fault_point("metrics", step)
            if (step % c.eval_every == 0 or step == c.steps) and (main or self.fsdp):
                ev = self.evaluate()
                if main:
                    runs.append_jsonl(self.run_dir / "eval.jsonl", {"step": step, **ev})
                row = {**row, **{f"eval_{k}": v for k, v in ev.items()}}
            if step % c.save_every == 0 or step == c.steps:
                self.save_checkpoint()
                self.accelerator.wait_for_everyone()
            bar.update(1)
            bar.set_postfix(reward=f"{row.get('reward', float('nan')):.2f}", acc=f"{row.get('accuracy', float('nan')):.2f}",
                            H=f"{row.get('entropy', float('nan')):.2f}")
            if self.callback is not None and main:
                self.callback(step, row)
        bar.close()
        return runs.Run(self.run_dir)


def _enable_activation_checkpointing(model) -> None:
    """Recompute each block's activations in the backward (non-reentrant checkpoints), under
    transformers' current name for it or, before 5.x, its older one."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _fault_point(point: str, step: int) -> None:
    """Fault injection for the crash-safety tests: ``WORKBENCH_FAULT=point@step`` kills the
    process here with SIGKILL (no clean-up, as a power cut or the OOM killer would)."""
    if os.environ.get("WORKBENCH_FAULT") == f"{point}@{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def train(config: TrainConfig | dict | None = None, *, callback=None, progress: bool = True,
          overwrite: bool = False, **overrides) -> runs.Run:
    """Train with ``config`` (a :class:`TrainConfig`, a dict, or keyword overrides); return the run."""
    if config is None:
        config = {}
    if isinstance(config, TrainConfig):
        config = config.replace(**overrides)
    else:
        config = TrainConfig.from_dict({**config, **overrides})
    return Trainer(config, overwrite=overwrite, callback=callback, progress=progress).train()


def resume(run_dir, *, callback=None, progress: bool = True, **overrides) -> runs.Run:
    """Continue a run from its last intact checkpoint (``overrides`` may raise ``steps``)."""
    run = runs.load_run(run_dir)
    data = {**run.config, "output_dir": str(run_dir), **overrides}
    return Trainer(TrainConfig.from_dict(data), resume=True, callback=callback, progress=progress).train()
