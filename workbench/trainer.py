"""The RL trainer: one loop for every algorithm in the registry.

Each step (:meth:`Trainer.train_step`) reads as the algorithm::

    rollout -> rewards -> (keep informative groups) -> score -> advantages -> update -> log

It samples ``prompts_per_step`` prompts, ``group_size`` responses each, with ``transformers``
generation (KV cache, temperature sampling, stop at end-of-sequence); scores every response
once (:func:`workbench.rollout.compute_rewards`); with DAPO's dynamic sampling, samples more
rounds until enough groups have differing rewards; records the behaviour policy's
log-probabilities and entropies (one no-grad pass, or the update's own forward when there is
one on-policy update per batch); turns rewards into advantages with the chosen algorithm; and
runs PPO-style epochs over mini-batches. Several processes, checkpoint files and timing live in
:mod:`workbench.distributed`, :mod:`workbench.checkpoints` and :mod:`workbench.timing`.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import random
import re
import signal
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from . import distributed as dist
from . import runs
from .algorithms import ALGORITHMS, Algorithm
from .analysis import response_record
from .checkpoints import TIED_KEYS, intact_checkpoints, save_checkpoint, verify_checkpoint
from .config import DEFAULT_INIT, TrainConfig
from .entropy import token_stats_from_model
from .generation import Generated, format_prompts, generate
from .losses import policy_loss
from .models import build_tiny_model, load_model
from .rollout import Batch, Group, Scored, collate, compute_rewards, groups_from
from .tasks import get_task
from .timing import PhaseTimer

__all__ = ["Trainer", "train", "resume", "METRIC_COLUMNS", "verify_checkpoint"]

#: The columns of ``metrics.jsonl``, one row per RL step (see the README's run directory section).
METRIC_COLUMNS = (
    "step", "reward", "accuracy", "response_len_mean", "response_len_max", "truncated_frac", "entropy",
    "clip_frac_low", "clip_frac_high", "clip_frac", "ratio_mean", "approx_kl", "kl_ref", "grad_norm", "loss",
    "advantage_abs_mean", "lr", "groups", "frac_zero_std", "sampling_rounds", "generated_tokens", "skipped_updates",
    "reward_timeouts", "time_rollout", "time_reward", "time_score", "time_advantage", "time_update", "time_step",
    "tokens_per_s",
)
EVAL_SEED = 1234  # the held-out set is the same for every run of a task


def _seed_for(*parts: int) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little")


def _resolved_algorithm(config: TrainConfig) -> Algorithm:
    """The registry entry with this config's loss settings and advantage options."""
    algo = ALGORITHMS[config.algorithm]
    names = ("eps_low", "eps_high", "agg", "level", "beta_kl", "dynamic_sampling", "overlong_shaping")
    return algo.replace(**{k: config.resolved(k) for k in names},
                        advantage_kwargs={**algo.advantage_kwargs, **config.advantage_kwargs})


class Trainer:
    """Train a causal LM with one of :data:`workbench.ALGORITHMS` on a verifiable task."""

    def __init__(self, config: TrainConfig | dict, *, resume: bool = False, overwrite: bool = False,
                 callback: Callable[[int, dict], None] | None = None, progress: bool = True):
        self.config = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
        c = self.config
        self.callback, self.progress = callback, progress
        self.algorithm = _resolved_algorithm(c)
        self.run_dir = Path(c.output_dir)
        self.accelerator = _accelerator(c)
        self.world, self.is_main = self.accelerator.num_processes, self.accelerator.is_main_process
        self.fsdp = self.world > 1 and c.parallel == "fsdp"
        self.sharded_rollout = self.world > 1 and c.rollout == "sharded"
        dist.check_config(c, self.world, self.algorithm.advantage_kwargs)
        self.loss_kwargs = {**self.algorithm.loss_kwargs(), "beta_kl": self.algorithm.beta_kl,
                            "entropy_coef": c.entropy_coef, "clip_ratio_c": c.clip_ratio_c, "norm_len": c.max_new_tokens}
        self.task = get_task(c.task, **c.task_params)
        self.model, self.tokenizer = self._load_model()
        if c.gradient_checkpointing:
            _enable_activation_checkpointing(self.model)
        self._lock = None
        self._open_run_dir(resume, overwrite)  # only once the task and the model loaded
        try:
            self._set_up(resume)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ set-up

    def _set_up(self, resume: bool) -> None:
        c = self.config
        self.ref_model = None
        if self.algorithm.beta_kl > 0:
            self.ref_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        if self.fsdp:  # shard first: the optimizer holds the sharded parameters
            self.model = dist.shard_fsdp(self.model, self.accelerator)
            if self.ref_model is not None:
                self.ref_model = dist.shard_fsdp(self.ref_model, self.accelerator)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        if not self.fsdp:
            self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
            if self.ref_model is not None:
                self.ref_model.to(self.accelerator.device)
        self.eval_examples = self.task.generate("eval", c.eval_size, EVAL_SEED)
        self.step, self.bad_steps, self.skipped_updates = 0, 0, 0
        if resume:
            self._load_checkpoint()

    def _open_run_dir(self, resume: bool, overwrite: bool) -> None:
        """Take the run directory's lock (the main process, for the life of the run), then check
        and prepare the directory; refused at once while another run holds it."""
        d = self.run_dir
        if resume and not d.is_dir():
            raise FileNotFoundError(f"nothing to resume in {str(d)!r}: it holds no run")
        problem = None
        if self.is_main:
            try:
                self._lock = runs.lock_run_dir(d)
            except runs.RunInUseError as e:
                problem = str(e)
        if not dist.main_decides(self.accelerator, problem is None):
            raise runs.RunInUseError(problem or f"output_dir {str(d)!r} is in use by another run")
        try:
            runs.check_run_dir(d, resume=resume, overwrite=overwrite)
            info = self.task.describe()
            if self.is_main:  # one writer; the other processes wait for it
                runs.prepare_run_dir(d, clear=overwrite and not resume, config=self.config.to_dict(), task=info)
            self.accelerator.wait_for_everyone()
        except BaseException:
            self.close()
            raise
        if info.get("skipped_lines") and self.is_main:
            first = ", ".join(f"line {s['line']}: {s['problem']}" for s in info["skipped"][:3])
            warnings.warn(f"{info['skipped_lines']} malformed line(s) of {info.get('path')} skipped (lenient=True): "
                          f"{first}{', ...' if info['skipped_lines'] > 3 else ''} (all listed in {d / 'task.json'})",
                          stacklevel=3)

    def close(self) -> None:
        """Release the run directory's lock (done when training ends; a later ``train()`` takes it again)."""
        if self._lock is not None:
            self._lock.release(force=True)
            self._lock = None

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

    @property
    def unwrapped(self):
        return self.accelerator.unwrap_model(self.model)

    @property
    def fused_update(self) -> bool:
        """One on-policy update over the whole batch (one epoch, one mini-batch, no micro-batches):
        the behaviour policy is the current one, so its log-probs and entropies come from the
        update's own forward pass (detached) instead of a separate scoring pass. Not with a
        replicated rollout over several processes: there each process scores the whole batch
        (for advantages over it), then updates on its share."""
        c = self.config
        replicated = self.world > 1 and not self.sharded_rollout
        return c.ppo_epochs == 1 and c.minibatches == 1 and c.micro_batch_size == 0 and not replicated

    # ------------------------------------------------------------------ one step

    def train_step(self, step: int) -> dict:
        """One RL step: rollout -> rewards (rounds of both repeat while dynamic sampling keeps too
        few groups) -> score -> advantages -> update -> the metrics row."""
        c, timer = self.config, PhaseTimer(torch.cuda.synchronize if self.accelerator.device.type == "cuda" else None)
        timeouts, lr, (lo, hi) = self.task.timeouts, self.scheduler.get_last_lr()[0], self._prompt_range()
        with timer("step"):
            torch.manual_seed(_seed_for(c.seed, step, self.accelerator.process_index) if self.sharded_rollout
                              else _seed_for(c.seed, step))
            sampled, kept, rounds = [], [], 0
            while rounds < (c.max_sampling_rounds if self.algorithm.dynamic_sampling else 1) and self._any(
                    len(kept) < hi - lo):
                with timer("rollout"):  # a process with enough groups samples along when every forward is collective
                    groups = self.rollout(step, rounds) if len(kept) < hi - lo or self.fsdp else []
                with timer("reward"):
                    self.compute_rewards(groups)
                sampled += groups
                kept += [g for g in groups if g.informative or not self.algorithm.dynamic_sampling]
                rounds += 1
            batch, advantages, metrics, stats = self._batch(kept[: hi - lo], sampled), None, {}, {}
            if batch is not None:
                with timer("update" if self.fused_update else "score"):  # the fused update's forward is update time
                    batch.scored = self.score(batch)
                with timer("advantage"):
                    advantages = self.advantages(batch)
                stats = self._batch_stats(batch, advantages)  # of the whole batch, before a replicated one is shared
                if not self.sharded_rollout:
                    batch, advantages = self._my_share(batch, advantages)
                with timer("update"):
                    metrics = self.update(batch, advantages, step)
            self._scheduler_step()
        row = {"step": step, **self._sampling_stats(sampled, kept[: hi - lo], rounds, self.task.timeouts - timeouts),
               "lr": lr, **stats, **metrics, "skipped_updates": self.skipped_updates}
        row.update(timer.metrics(), tokens_per_s=row["generated_tokens"] / max(timer.seconds.get("rollout", 0), 1e-9))
        if self.is_main and batch is not None and not batch.idle and (step == 1 or step % c.log_samples_every == 0):
            self._log_samples(step, batch, advantages)
        return row

    def _prompt_range(self) -> tuple[int, int]:
        """This process's prompts of a round: its contiguous share with a sharded rollout, else all."""
        total = self.config.prompts_per_step
        return dist.share(total, self.accelerator.process_index, self.world) if self.sharded_rollout else (0, total)

    def _any(self, flag: bool) -> bool:
        return dist.any_process(self.accelerator, flag) if self.sharded_rollout else flag

    def _total(self, *values: float) -> list[float]:
        """Sums over the processes of a sharded rollout (each holds its own groups); else the values."""
        return dist.sum_over_processes(self.accelerator, *values) if self.sharded_rollout else list(values)

    def _generate(self, prompts: list[str], n: int, *, do_sample: bool) -> Generated:
        c = self.config
        prompts = format_prompts(self.tokenizer, prompts, c.chat_template)
        return generate(self.unwrapped, self.tokenizer, prompts, n=n, max_new_tokens=c.max_new_tokens,
                        do_sample=do_sample, temperature=c.temperature, top_p=c.top_p,
                        autocast=self.accelerator.autocast(), synced_gpus=self.fsdp, cache=c.generation_cache)

    def rollout(self, step: int, round_: int) -> list[Group]:
        """Sample round ``round_`` of ``step``: ``group_size`` responses to each of this process's
        prompts (its contiguous share with a sharded rollout over several processes; all of them
        otherwise). Every round draws new prompts; every process draws the same ones."""
        c, (lo, hi) = self.config, self._prompt_range()
        examples = self.task.generate("train", c.prompts_per_step, _seed_for(c.seed, step, round_))[lo:hi]
        return groups_from(self._generate([e.prompt for e in examples], c.group_size, do_sample=True), examples)

    def compute_rewards(self, groups: list[Group]) -> None:
        """Every response scored once by the task, plus the configured terms (format, overlong, GROP)."""
        c = self.config
        overlong = (c.max_new_tokens, c.overlong_cache) if self.algorithm.overlong_shaping else None
        compute_rewards(self.task, groups, format_reward=c.format_reward, overlong=overlong, grop=c.grop)

    def _batch(self, kept: list[Group], sampled: list[Group]) -> Batch | None:
        """The kept groups as one batch; ``None`` when no process kept one. A process of a sharded
        rollout that kept none stands in with a sampled group at zero weight (``idle``)."""
        if not self._total(len(kept))[0]:
            return None
        batch = collate(kept or sampled[:1], self.tokenizer.pad_token_id, self.accelerator.device)
        batch.idle = not kept
        return batch

    def _my_share(self, batch: Batch, advantages: torch.Tensor) -> tuple[Batch, torch.Tensor]:
        """This process's whole groups of a replicated batch, and their advantages."""
        mine = dist.my_groups(batch, self.accelerator)
        if mine is batch:
            return batch, advantages
        n = batch.group_size
        lo, hi = dist.share(batch.groups, self.accelerator.process_index, self.world)
        return mine, advantages[: n] if mine.idle else advantages[lo * n: hi * n]

    def _token_stats(self, model, input_ids, attention_mask, response_mask, *, grad: bool):
        if not grad and model is self.model:
            model = self.unwrapped  # no DDP forward (and no collective) for a no-grad pass
        # Under FSDP the LM-head weight is sharded outside the model's forward, so the statistics
        # come from the model's own logits (only the response positions' are computed).
        with torch.set_grad_enabled(grad), self.accelerator.autocast():
            return token_stats_from_model(model, input_ids, attention_mask, response_len=response_mask.shape[1],
                                          response_mask=response_mask, temperature=self.config.temperature,
                                          entropy_grad=grad and self.config.entropy_coef > 0,
                                          method="logits" if self.fsdp else "auto")

    def score(self, batch: Batch) -> Scored:
        """The behaviour policy's log-probs and entropies of ``batch`` (and the reference model's
        log-probs with a KL term): a no-grad pass, or the fused update's own forward."""
        args = (batch.input_ids, batch.attention_mask, batch.response_mask)
        if self.fused_update:
            self.model.train()
            logp, ent = self._token_stats(self.model, *args, grad=True)
            scored = Scored(logp.detach(), ent.detach(), logp=logp, entropies_grad=ent)
        else:
            scored = Scored(*self._token_stats(self.model, *args, grad=False))
        if self.ref_model is not None:
            scored.ref_logp = self._token_stats(self.ref_model, *args, grad=False)[0]
        return scored

    def advantages(self, batch: Batch) -> torch.Tensor:
        """``[B, T]`` advantages of the batch's groups from their rewards and entropies."""
        n, G, T = batch.group_size, batch.groups, batch.response_mask.shape[1]
        adv = self.algorithm.advantages(batch.rewards.view(G, n), batch.scored.entropies.view(G, n, T),
                                        batch.response_mask.view(G, n, T))
        return adv.view(G * n, T)

    # ------------------------------------------------------------------ update

    def update(self, batch: Batch, advantages: torch.Tensor, step: int) -> dict:
        """PPO-style epochs over mini-batches of ``batch`` (the fused update: one, in row order);
        returns the update metrics, reduced over the processes."""
        c = self.config
        gen = torch.Generator().manual_seed(_seed_for(c.seed, step, 7))
        sums, grad_norms = {}, []
        self.model.train()
        for _ in range(c.ppo_epochs):
            order = torch.randperm(advantages.shape[0], generator=gen).to(advantages.device)
            if self.fused_update:  # one mini-batch in row order, matching the scored rows
                order = torch.arange(advantages.shape[0], device=advantages.device)
            for mb in order.chunk(c.minibatches):
                metrics, grad_norm = self._optimizer_step(batch, advantages, mb)
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + v
                if grad_norm is not None:
                    grad_norms.append(grad_norm)
        n_mb = max(1, c.ppo_epochs * c.minibatches)
        out = {k: v / n_mb for k, v in sums.items()}
        out["grad_norm"] = sum(grad_norms) / len(grad_norms) if grad_norms else float("nan")
        return dist.reduce_metrics(self.accelerator, out, 0.0 if batch.idle else float(batch.response_mask.sum()))

    def _optimizer_step(self, batch: Batch, advantages: torch.Tensor, mb: torch.Tensor) -> tuple[dict, float | None]:
        """One optimizer step on the rows ``mb``, micro-batch by micro-batch. Its loss normaliser
        is its own (all processes') token or sequence count, shared by its micro-batches, so their
        losses add up to the mini-batch's mean; DDP averages gradients over the processes, so each
        process's loss (its share of the global sum) is scaled by their number (0 when idle)."""
        c = self.config
        local = 0.0 if batch.idle else self._loss_denominator(batch.response_mask[mb])
        denominator = dist.sum_over_processes(self.accelerator, local)[0] if self.world > 1 else local
        scale = 0.0 if batch.idle else float(self.world)
        micro = c.micro_batch_size or len(mb)
        n_micro, sums, finite = math.ceil(len(mb) / micro), {}, True
        for idx in mb.split(micro):
            loss, metrics = self._loss(batch, advantages, idx, denominator)
            if not dist.all_finite(self.accelerator, loss):
                finite = False
                break
            self.accelerator.backward(loss * scale)
            for k, v in metrics.items():  # loss terms add up over micro-batches; rates average
                sums[k] = sums.get(k, 0.0) + (v if k in dist.SUMMED_METRICS else v / n_micro)
        grad_norm = self._clip_gradients() if finite else None
        if grad_norm is None or not torch.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_updates += 1
            self.bad_steps += 1
            if self.bad_steps >= c.max_bad_steps:
                raise FloatingPointError(
                    f"{self.bad_steps} consecutive updates had a non-finite loss or gradient; the run stops here "
                    f"(last good checkpoint: {runs.Run(self.run_dir).latest_checkpoint()})")
            return sums, None
        self.bad_steps = 0
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return sums, float(grad_norm)

    def _loss(self, batch: Batch, advantages: torch.Tensor, idx: torch.Tensor, denominator: float):
        """The policy loss of rows ``idx`` (cut to their longest response)."""
        s, T = batch.scored, int(batch.response_mask[idx].sum(-1).max())
        ids = batch.input_ids[idx][:, : batch.input_ids.shape[1] - batch.response_mask.shape[1] + T]
        attn, mask = batch.attention_mask[idx][:, : ids.shape[1]], batch.response_mask[idx][:, :T]
        if s.logp is not None:  # the fused update's forward: the whole batch, already scored
            logp, ent = s.logp[idx][:, :T], s.entropies_grad[idx][:, :T]
        else:
            logp, ent = self._token_stats(self.model, ids, attn, mask, grad=True)
        return policy_loss(logp, s.old_logp[idx][:, :T], advantages[idx][:, :T], mask,
                           logp_ref=None if s.ref_logp is None else s.ref_logp[idx][:, :T],
                           entropies=ent if self.config.entropy_coef > 0 else None, denominator=denominator,
                           **self.loss_kwargs)

    def _loss_denominator(self, response_mask: torch.Tensor) -> float:
        """The loss normaliser of the rows of ``response_mask``: their valid tokens for a
        token-level token-mean loss, else their number of sequences."""
        if self.algorithm.agg == "token-mean" and self.algorithm.level == "token":
            return float(response_mask.sum())
        return float(response_mask.shape[0])

    def _clip_gradients(self) -> torch.Tensor:
        norm = self.accelerator.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP: a distributed tensor

    def _scheduler_step(self) -> None:
        """The schedule follows RL steps, also those that made no optimizer step."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
            self.scheduler.step()

    # ------------------------------------------------------------------ metrics, samples, evaluation

    def _sampling_stats(self, sampled: list[Group], kept: list[Group], rounds: int, timeouts: int) -> dict:
        """What the step sampled: groups kept, the fraction with equal rewards, rounds, tokens, timeouts."""
        zero_std = sum(not g.informative for g in sampled)
        generated = sum(int(g.lengths.sum()) for g in sampled)
        groups, zero_std, seen, generated, timeouts = map(int, self._total(len(kept), zero_std, len(sampled),
                                                                           generated, timeouts))
        return {"groups": groups, "frac_zero_std": zero_std / max(1, seen), "sampling_rounds": rounds,
                "reward_timeouts": timeouts, "generated_tokens": generated}

    def _batch_stats(self, batch: Batch, advantages: torch.Tensor) -> dict:
        """Reward, accuracy, length, entropy and advantage statistics of the step's batch (summed
        over the processes' batches when the rollout is sharded)."""
        w = 0.0 if batch.idle else 1.0
        lengths, m = batch.lengths.float(), batch.response_mask & (not batch.idle)
        sums = [w * float(x) for x in (batch.rewards.sum(), batch.correct.float().sum(), lengths.sum(),
                                        batch.truncated.float().sum(), len(lengths))]
        sums += [float(batch.scored.entropies[m].sum()), float(advantages[m].abs().sum()), float(m.sum())]
        reward, correct, length, truncated, count, entropy, adv_abs, tokens = self._total(*sums)
        longest = w * float(lengths.max())
        if self.sharded_rollout:
            longest = dist.max_over_processes(self.accelerator, longest)
        return {"reward": reward / count, "accuracy": correct / count, "response_len_mean": length / count,
                "response_len_max": int(longest), "truncated_frac": truncated / count,
                "entropy": entropy / max(tokens, 1), "advantage_abs_mean": adv_abs / max(tokens, 1)}

    def _log_samples(self, step: int, batch: Batch, advantages: torch.Tensor) -> None:
        n, s = batch.group_size, batch.scored
        for g in range(min(self.config.log_groups, batch.groups)):
            responses = []
            for i in range(g * n, (g + 1) * n):
                m = batch.response_mask[i]
                ids = batch.input_ids[i, -m.shape[0]:][m].tolist()
                responses.append(response_record(
                    self.tokenizer, ids, s.entropies[i][m], s.old_logp[i][m], advantages[i][m],
                    text=batch.texts[i], reward=float(batch.rewards[i]), correct=bool(batch.correct[i])))
            runs.append_jsonl(self.run_dir / "samples.jsonl", {
                "step": step, "group": g, "prompt": batch.prompts[g], "algorithm": self.config.algorithm,
                "responses": responses})

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
                    _, ent = self._token_stats(self.model, ids, attn, gen.response_mask[:, :T], grad=False)
                    out["entropy"] = float(ent.sum() / gen.response_mask.sum())
        out["reward_timeouts"] = self.task.timeouts - timeouts_before
        return out

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self) -> Path | None:
        """Write model, tokenizer, optimizer, scheduler and RNG state atomically. Call it on every
        process: under FSDP they gather the full state together; the main process writes it."""
        model_state = optim_state = None
        if self.fsdp:  # full (unsharded) weights and optimizer state, on the main process's CPU
            tied = TIED_KEYS if getattr(self.unwrapped.config, "tie_word_embeddings", False) else ()
            model_state, optim_state = dist.full_state(self.model, self.optimizer, tied)
        if not self.is_main:
            return None
        state = {"optimizer": optim_state if self.fsdp else self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "torch_rng": torch.get_rng_state(),
                 "python_rng": random.getstate(),
                 "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
        meta = {"skipped_updates": self.skipped_updates, "bad_steps": self.bad_steps}
        return save_checkpoint(self.run_dir, self.step, model=self.unwrapped, tokenizer=self.tokenizer,
                               trainer_state=state, meta=meta, keep=self.config.keep_checkpoints,
                               model_state=model_state, fault=lambda step: _fault_point("checkpoint", step))

    def _load_checkpoint(self) -> None:
        """Resume from the newest intact checkpoint (none saved yet: start over); drop the rows of
        the steps after it."""
        found = next(intact_checkpoints(self.run_dir), None)
        if found is None and runs.Run(self.run_dir).checkpoints():
            raise RuntimeError(f"no intact checkpoint in {self.run_dir / 'checkpoints'} to resume from")
        if found is not None:
            ckpt, weights, state, meta = found
            if self.fsdp:  # every process reads the full state and keeps its shards
                missing, unexpected = dist.load_full_state(self.model, self.optimizer, weights, state["optimizer"])
            else:
                missing, unexpected = self.unwrapped.load_state_dict(weights, strict=False)
                self.optimizer.load_state_dict(state["optimizer"])
            if unexpected or set(missing) - TIED_KEYS:
                raise RuntimeError(f"checkpoint {ckpt} does not fit the model: missing {missing}, "
                                   f"unexpected {unexpected}")
            self.scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["torch_rng"])
            random.setstate(state["python_rng"])
            self.step, self.skipped_updates = meta["step"], meta["skipped_updates"]
        if self.is_main:
            if found is not None:
                runs.check_history(self.run_dir, self.step, self.config.eval_every)
            for f in ("metrics.jsonl", "eval.jsonl", "samples.jsonl"):
                runs.truncate_jsonl(self.run_dir / f, self.step)
        self.accelerator.wait_for_everyone()

    # ------------------------------------------------------------------ the loop

    def train(self) -> runs.Run:
        """Train until ``config.steps`` (evaluating and saving as configured); return the run."""
        if self.is_main and self._lock is None:  # trained before: the directory is locked again
            self._lock = runs.lock_run_dir(self.run_dir)
        try:
            return self._train()
        finally:
            self.close()

    def _train(self) -> runs.Run:
        c, main = self.config, self.is_main  # with several processes, the main one writes and reports
        bar = tqdm(total=c.steps, initial=self.step, desc=f"{c.algorithm}", disable=not (self.progress and main))
        if dist.main_decides(self.accelerator, self.step == 0 and not (self.run_dir / "eval.jsonl").exists()):
            self._evaluate_and_log(0)
            _fault_point("eval", 0)
            self.accelerator.wait_for_everyone()
        while self.step < c.steps:
            step = self.step + 1
            row = self.train_step(step)
            self.step = step
            if main:
                runs.append_jsonl(self.run_dir / "metrics.jsonl", row)
            _fault_point("metrics", step)
            if step % c.eval_every == 0 or step == c.steps:
                row.update({f"eval_{k}": v for k, v in self._evaluate_and_log(step).items()})
            if step % c.save_every == 0 or step == c.steps:
                self.save_checkpoint()
                self.accelerator.wait_for_everyone()
            bar.update(1)
            bar.set_postfix(reward=f"{row.get('reward', math.nan):.2f}", acc=f"{row.get('accuracy', math.nan):.2f}",
                            H=f"{row.get('entropy', math.nan):.2f}")
            if self.callback is not None and main:
                self.callback(step, row)
        bar.close()
        return runs.Run(self.run_dir)

    def _evaluate_and_log(self, step: int) -> dict:
        """Evaluate (the main process; every process under FSDP, whose forwards are collective)
        and append the row to ``eval.jsonl``."""
        ev = self.evaluate() if self.is_main or self.fsdp else {}
        if self.is_main:
            runs.append_jsonl(self.run_dir / "eval.jsonl", {"step": step, **ev})
        return ev


def _accelerator(c: TrainConfig) -> Accelerator:
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
    return Accelerator(cpu=use_cpu, mixed_precision=precision)


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
    if isinstance(config, TrainConfig):
        config = config.replace(**overrides)
    else:
        config = TrainConfig.from_dict({**(config or {}), **overrides})
    return Trainer(config, overwrite=overwrite, callback=callback, progress=progress).train()


def resume(run_dir, *, callback=None, progress: bool = True, **overrides) -> runs.Run:
    """Continue a run from its last intact checkpoint (``overrides`` may raise ``steps``)."""
    run = runs.load_run(run_dir)
    data = {**run.config, "output_dir": str(run_dir), **overrides}
    return Trainer(TrainConfig.from_dict(data), resume=True, callback=callback, progress=progress).train()
