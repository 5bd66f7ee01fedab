"""The RL trainer: one loop for every algorithm in the registry.

Each step (:meth:`Trainer.train_step`) reads as the algorithm and hands its values on::

    sample (rollout -> rewards) -> collate -> score -> advantages -> update -> metrics row

Dynamic sampling repeats rollout and rewards until enough groups have differing rewards. What
lives beside the loop: sampling and token statistics (:mod:`workbench.training.runner`), groups,
rewards and batches (:mod:`workbench.training.rollout`), several processes
(:mod:`workbench.training.distributed`), checkpoint files (:mod:`workbench.training.checkpoints`),
metrics (:mod:`workbench.training.metrics`), timing (:mod:`workbench.training.timing`).
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import re
import signal
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import runs
from ..exploration import k_values, mean_pass_at_k
from ..losses import policy_loss, top_entropy_threshold
from ..models.lora import is_lora
from ..tasks import get_task
from . import distributed, metrics, trackers
from .checkpoints import restore_training, save_training, verify_checkpoint
from .config import TrainConfig
from .entropy_bonus import EntropyBonus
from .loading import load_policy, make_accelerator
from .metrics import METRIC_COLUMNS
from .rollout import Batch, Group, Scored, check_overlong_budget, collate, compute_rewards, groups_from
from .runner import ModelRunner
from .timing import PhaseTimer
from .trackers import Trackers

__all__ = ["Trainer", "train", "resume", "METRIC_COLUMNS", "verify_checkpoint"]

EVAL_SEED = 1234  # the held-out set is the same for every run of a task


def _seed_for(*parts: int) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little")


class Trainer:
    """Train a causal LM with one of :data:`workbench.ALGORITHMS` on a verifiable task."""

    def __init__(
        self,
        config: TrainConfig | dict,
        *,
        resume: bool = False,
        overwrite: bool = False,
        callback: Callable[[int, dict], None] | None = None,
        progress: bool = True,
    ):
        c = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
        self.config = c
        trackers.check_installed(trackers.report_to_names(c.report_to))  # named before anything loads
        self.callback = callback
        self.progress = progress
        self.run_dir = Path(c.output_dir)
        self.algorithm = c.resolved_algorithm()
        self.accelerator = make_accelerator(c)
        self.world = self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process
        self.fsdp = self.world > 1 and c.parallel == "fsdp"
        self.sharded_rollout = self.world > 1 and c.rollout == "sharded"
        self.fused_update = _fused_update(c, replicated=self.world > 1 and not self.sharded_rollout)
        distributed.check_config(c, self.world, self.algorithm.advantage_kwargs)
        self.loss_kwargs = {
            **self.algorithm.loss_kwargs(),
            "beta_kl": self.algorithm.beta_kl,
            "norm_len": c.max_new_tokens,
        }
        self.entropy_bonus = EntropyBonus(c)
        self.task = get_task(c.task, **c.task_params)
        self.model, self.tokenizer = load_policy(c)
        self.runner = ModelRunner(c, self.tokenizer, self.accelerator, fsdp=self.fsdp)
        info = self.task.describe()
        self._lock = runs.open_run_dir(  # only once the task and the model loaded
            self.run_dir,
            resume=resume,
            overwrite=overwrite,
            config=c.to_dict(),
            task=info,
            main=self.is_main,
            agree=lambda ok: distributed.main_decides(self.accelerator, ok),
            barrier=self.accelerator.wait_for_everyone,
        )
        try:
            self._set_up(resume)
        except BaseException:
            self.close()
            raise

    def _set_up(self, resume: bool) -> None:
        c, acc = self.config, self.accelerator
        if self.algorithm.overlong_shaping and self.is_main:
            check_overlong_budget(self.task, self.tokenizer, c.max_new_tokens, c.overlong_cache)
        self.ref_model = None
        if self.algorithm.beta_kl > 0 and not is_lora(self.model):  # a LoRA model's reference: adapter off
            self.ref_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        if self.fsdp:  # shard first: the optimizer holds the sharded parameters
            self.model = distributed.shard_fsdp(self.model, acc)
            if self.ref_model is not None:
                self.ref_model = distributed.shard_fsdp(self.ref_model, acc)
        trainable = [p for p in self.model.parameters() if p.requires_grad]  # a LoRA model: the adapter's
        self.optimizer = torch.optim.AdamW(trainable, lr=c.lr, weight_decay=c.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, c.lr_factor)
        if not self.fsdp:
            self.model, self.optimizer = acc.prepare(self.model, self.optimizer)
            if self.ref_model is not None:
                self.ref_model.to(acc.device)
        self.eval_examples = self.task.held_out(c.eval_size, EVAL_SEED)
        self.step = 0
        self.bad_steps = 0  # consecutive non-finite updates
        self.skipped_updates = 0
        self.trackers, self.resumed_from, self.rows_before = Trackers(), None, -1  # see _open_trackers
        if resume:
            self._resume()

    def close(self) -> None:
        """Release the run directory's lock (done when training ends; a later ``train()`` takes it again)."""
        if self._lock is not None:
            self._lock.release(force=True)
            self._lock = None

    @property
    def unwrapped(self):
        return self.accelerator.unwrap_model(self.model)

    # ------------------------------------------------------------------ one step

    def train_step(self, step: int) -> dict:
        """One RL step: sample (rollout -> rewards, repeated while dynamic sampling keeps too few
        groups) -> collate -> score -> advantages -> update; returns the step's metrics row."""
        timer = PhaseTimer(torch.cuda.synchronize if self.accelerator.device.type == "cuda" else None)
        lr = self.scheduler.get_last_lr()[0]
        timeouts = self.task.timeouts
        scored, advantages, update = None, None, {}
        with timer("step"):
            torch.manual_seed(self._rollout_seed(step))
            sampled, kept, rounds = self.sample(step, timer)
            with timer("score"):  # the entropies of the sampled groups the update will not use, before it
                unused = self.runner.entropy_sums(self.unwrapped, _others(sampled, kept), sampled[0])
            batch = self.collate(kept, sampled)
            if batch is not None:
                with timer("update" if self.fused_update else "score"):  # the fused update's forward is update time
                    scored = self.score(batch)
                with timer("advantage"):
                    advantages = self.advantages(batch, scored)
                with timer("update"):
                    update = self.update(batch, scored, advantages, step)
            self._scheduler_step()
        sums = metrics.step_sums(sampled, kept, batch, scored, advantages, unused, self.task.timeouts - timeouts)
        row = self.metrics_row(step, sums, sampled, rounds, update, lr=lr, timer=timer)
        if batch is not None and not batch.idle:
            self.log_samples(step, batch, scored, advantages)
        return row

    def _rollout_seed(self, step: int) -> int:
        """The step's sampling seed: the same on every process, or one per process that samples its own prompts."""
        if self.sharded_rollout:
            return _seed_for(self.config.seed, step, self.accelerator.process_index)
        return _seed_for(self.config.seed, step)

    def sample(self, step: int, timer: PhaseTimer) -> tuple[list[Group], list[Group], int]:
        """Rollout and rewards, repeated while dynamic sampling keeps fewer groups than this
        process's prompts: ``(every sampled group, the kept ones, rounds)``."""
        lo, hi = self._prompt_range()
        dynamic = self.algorithm.dynamic_sampling
        sampled, kept, rounds = [], [], 0
        while rounds < (self.config.max_sampling_rounds if dynamic else 1) and self._any(len(kept) < hi - lo):
            with timer("rollout"):  # a process with enough groups samples along when every forward is collective
                groups = self.rollout(step, rounds) if len(kept) < hi - lo or self.fsdp else []
            with timer("reward"):
                groups = self.compute_rewards(groups)
            sampled += groups
            rounds += 1
            kept += [g for g in groups if g.informative or not dynamic]
        return sampled, kept[: hi - lo], rounds

    def _prompt_range(self) -> tuple[int, int]:
        """This process's prompts of a round: its contiguous share with a sharded rollout, else all."""
        total = self.config.prompts_per_step
        if self.sharded_rollout:
            return distributed.share(total, self.accelerator.process_index, self.world)
        return 0, total

    def _any(self, flag: bool) -> bool:
        return distributed.any_process(self.accelerator, flag) if self.sharded_rollout else flag

    def rollout(self, step: int, round_: int) -> list[Group]:
        """Sample round ``round_`` of ``step``: ``group_size`` responses to each of this process's
        prompts. Every round draws new prompts; every process draws the same ones."""
        c = self.config
        lo, hi = self._prompt_range()
        examples = self.task.generate("train", c.prompts_per_step, _seed_for(c.seed, step, round_))[lo:hi]
        gen = self.runner.generate(self.unwrapped, [e.prompt for e in examples], c.group_size, do_sample=True)
        return groups_from(gen, examples)

    def compute_rewards(self, groups: list[Group]) -> list[Group]:
        """``groups`` with their rewards: every response scored once by the task, plus the
        configured terms (format, overlong, GROP)."""
        c = self.config
        overlong = (c.max_new_tokens, c.overlong_cache) if self.algorithm.overlong_shaping else None
        return compute_rewards(self.task, groups, format_reward=c.format_reward, overlong=overlong, grop=c.grop)

    def collate(self, kept: list[Group], sampled: list[Group]) -> Batch | None:
        """The kept groups as one batch; ``None`` when no process kept one. A process of a sharded
        rollout that kept none stands in with a sampled group at zero weight (``idle``)."""
        total = distributed.sum_over_processes(self.accelerator, len(kept))[0] if self.sharded_rollout else len(kept)
        if not total:
            return None
        return collate(kept or sampled[:1], self.tokenizer.pad_token_id, self.accelerator.device, idle=not kept)

    def score(self, batch: Batch) -> Scored:
        """The behaviour policy's log-probs and entropies of ``batch`` (and the reference model's
        log-probs with a KL term): a no-grad pass, or the fused update's own forward."""
        if self.fused_update:  # each group's prompt computed once (workbench.models.scoring.token_stats_from_model)
            self.model.train()
            logp, ent = self.runner.batch_stats(self.model, batch, grad=True)
            scored = Scored(logp.detach(), ent.detach(), logp=logp, entropies_grad=ent)
        else:
            scored = Scored(*self.runner.batch_stats(self.unwrapped, batch, grad=False))
        if self.algorithm.beta_kl > 0:
            scored.ref_logp = self.reference_logp(batch)
        return scored

    def reference_logp(self, batch: Batch) -> torch.Tensor:
        """The frozen reference model's log-probs of ``batch``: the initial weights' copy, or for a
        LoRA model, the model with its adapter switched off (the frozen base, as in TRL)."""
        if self.ref_model is not None:
            return self.runner.batch_stats(self.ref_model, batch, grad=False)[0]
        with self.unwrapped.disable_adapter():
            return self.runner.batch_stats(self.unwrapped, batch, grad=False)[0]

    def advantages(self, batch: Batch, scored: Scored) -> torch.Tensor:
        """``[B, T]`` advantages of the batch's groups from their rewards and entropies."""
        n, G, T = batch.group_size, batch.groups, batch.response_mask.shape[1]
        rewards, entropies, logp_old = batch.rewards.view(G, n), scored.entropies.view(G, n, T), scored.old_logp
        mask = batch.response_mask.view(G, n, T)
        return self.algorithm.advantages(rewards, entropies, mask, logp_old=logp_old.view(G, n, T)).view(G * n, T)

    def metrics_row(self, step: int, sums: dict, sampled: list[Group], rounds: int, update: dict, *, lr, timer) -> dict:
        """The step's row of ``metrics.jsonl`` (see :data:`workbench.training.metrics.METRICS`)
        from this process's named sums (added up over the processes of a sharded rollout)."""
        longest = max(int(g.lengths.max()) for g in sampled)
        if self.sharded_rollout:
            sums = distributed.sum_by_name(self.accelerator, sums)
            longest = distributed.max_over_processes(self.accelerator, longest)
        row = {"step": step, "updated": math.isfinite(update.get("grad_norm", math.nan))}
        row.update(metrics.step_row(sums, longest=longest, rounds=rounds, kept=sums["count.groups"] > 0))
        row.update(update, lr=lr, skipped_updates=self.skipped_updates, **timer.metrics())
        row["tokens_per_s"] = row["generated_tokens"] / max(timer.seconds.get("rollout", 0.0), 1e-9)
        return row

    def log_samples(self, step: int, batch: Batch, scored: Scored, advantages: torch.Tensor) -> None:
        """Per-token records of the first ``log_groups`` groups to ``samples.jsonl`` (the main
        process, at step 1 and every ``log_samples_every`` steps)."""
        c = self.config
        if not self.is_main or (step != 1 and step % c.log_samples_every):
            return
        for record in metrics.sample_records(self.tokenizer, batch, scored, advantages, c.log_groups):
            runs.append_jsonl(self.run_dir / "samples.jsonl", {"step": step, **record, "algorithm": c.algorithm})

    # ------------------------------------------------------------------ update

    def update(self, batch: Batch, scored: Scored, advantages: torch.Tensor, step: int) -> dict:
        """PPO-style epochs over mini-batches of ``batch`` (the fused update: one, in row order);
        returns the update metrics, reduced over the processes. With a replicated rollout each
        process updates on its share of the groups."""
        c = self.config
        if not self.sharded_rollout:
            batch, scored, advantages = distributed.my_groups(batch, scored, advantages, self.accelerator)
        gen = torch.Generator().manual_seed(_seed_for(c.seed, step, 7))  # mini-batch order, Clip-Cov's draw
        coef = self.entropy_bonus.value(step)
        sums, grad_norms = {}, []
        self.model.train()
        for _ in range(c.ppo_epochs):
            order = torch.randperm(advantages.shape[0], generator=gen).to(advantages.device)
            if self.fused_update:  # one mini-batch in row order, matching the scored rows
                order = torch.arange(advantages.shape[0], device=advantages.device)
            for mb in order.chunk(c.minibatches):
                terms, grad_norm = self._optimizer_step(batch, scored, advantages, mb, coef=coef, generator=gen)
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + v
                grad_norms += [] if grad_norm is None else [grad_norm]
        out = {k: v / (c.ppo_epochs * c.minibatches) for k, v in sums.items()}
        out["grad_norm"] = sum(grad_norms) / len(grad_norms) if grad_norms else math.nan
        weight = 0.0 if batch.idle else float(batch.response_mask.sum())
        out = distributed.reduce_metrics(self.accelerator, out, weight)
        if "entropy" in out:  # the loss's aggregate of the current entropies, not the row's sampled entropy
            out["policy_entropy"] = out.pop("entropy")
        if c.entropy_bonus():
            out["entropy_coef"] = coef
            self.entropy_bonus.observe(self._mean_entropy(batch, scored))
        return out

    def _mean_entropy(self, batch: Batch, scored: Scored) -> float:
        """The token-mean behaviour entropy of the batch the step updated on, over every process."""
        m = batch.response_mask & (not batch.idle)
        total, tokens = float(scored.entropies[m].sum()), float(m.sum())
        if self.world > 1:
            total, tokens = distributed.sum_over_processes(self.accelerator, total, tokens)
        return total / max(tokens, 1.0)

    def _forking_keep(self, batch: Batch, scored: Scored, mb: torch.Tensor) -> torch.Tensor | None:
        """The forking tokens of the optimizer step's rows ``mb`` (``[B, T]``, false outside them):
        valid tokens whose behaviour entropy reaches the ``1 - top_entropy_quantile`` quantile of
        the step's valid tokens on every process (``None`` when off or done per loss call)."""
        algo = self.algorithm
        if algo.top_entropy_quantile == 1 or algo.top_entropy_scope != "mini_batch":
            return None
        mask = batch.response_mask[mb] & (not batch.idle)
        values = scored.entropies[mb][mask]
        if self.world > 1:
            values = distributed.gather_values(self.accelerator, values)
        threshold = top_entropy_threshold(
            values[None], torch.ones_like(values[None], dtype=torch.bool), algo.top_entropy_quantile
        )
        keep = torch.zeros_like(batch.response_mask)
        keep[mb] = mask & (scored.entropies[mb] >= threshold)
        return keep

    def _optimizer_step(
        self, batch: Batch, scored: Scored, advantages: torch.Tensor, mb: torch.Tensor, *, coef: float, generator
    ) -> tuple[dict, float | None]:
        """One optimizer step on the rows ``mb``, micro-batch by micro-batch. Its loss normaliser
        is its own (all processes') token or sequence count, shared by its micro-batches, so their
        losses add up to the mini-batch's mean; DDP averages gradients over the processes, so each
        process's loss (its share of the global sum) is scaled by their number (0 when idle). The
        forking tokens, when trained on alone, are chosen over the whole step's rows."""
        c = self.config
        keep = self._forking_keep(batch, scored, mb)
        local = 0.0 if batch.idle else self._loss_denominator(batch.response_mask[mb])
        denominator = distributed.sum_over_processes(self.accelerator, local)[0] if self.world > 1 else local
        micro = c.micro_batch_size or len(mb)
        n_micro = math.ceil(len(mb) / micro)
        sums, finite = {}, True
        for idx in mb.split(micro):
            loss, terms = self._loss(
                batch, scored, advantages, idx, denominator, coef=coef, keep=keep, generator=generator
            )
            if not distributed.all_finite(self.accelerator, loss):
                finite = False
                break
            self.accelerator.backward(loss * (0.0 if batch.idle else float(self.world)))
            for k, v in terms.items():  # loss terms add up over micro-batches; rates average
                sums[k] = sums.get(k, 0.0) + (v if k in distributed.SUMMED_METRICS else v / n_micro)
        grad_norm = self._clip_gradients() if finite else None
        if grad_norm is None or not torch.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_updates += 1
            self.bad_steps += 1
            if self.bad_steps >= c.max_bad_steps:
                raise FloatingPointError(
                    f"{self.bad_steps} consecutive updates had a non-finite loss or gradient; the run stops here "
                    f"(last good checkpoint: {runs.Run(self.run_dir).latest_checkpoint()})"
                )
            return sums, None
        self.bad_steps = 0
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return sums, float(grad_norm)

    def _loss(self, batch: Batch, scored: Scored, advantages, idx, denominator: float, *, coef: float, keep, generator):
        """The policy loss of rows ``idx`` (cut to their longest response), with the tensors the
        algorithm's loss needs: the current entropies (an entropy bonus; ERC), the behaviour ones
        (Clip-Cov, KL-Cov and ERC read them from the loss call), the forking tokens."""
        s, T = scored, int(batch.response_mask[idx].sum(-1).max())
        cut = lambda x: None if x is None else x[idx][:, :T]  # noqa: E731
        ids = batch.input_ids[idx][:, : batch.input_ids.shape[1] - batch.response_mask.shape[1] + T]
        attn, mask = batch.attention_mask[idx][:, : ids.shape[1]], cut(batch.response_mask)
        if s.logp is not None:  # the fused update's forward: the whole batch, already scored
            logp, ent = cut(s.logp), cut(s.entropies_grad)
        else:
            logp, ent = self.runner.token_stats(self.model, ids, attn, mask, grad=True)
        needs = self.algorithm.loss_tensors
        terms = {
            "logp_ref": cut(s.ref_logp),
            "entropies": ent if coef > 0 or "entropies" in needs else None,
            "entropies_old": cut(s.entropies) if "entropies_old" in needs else None,
            "top_entropy_keep": cut(keep),
            "entropy_coef": coef,
        }
        if self.algorithm.loss_mode == "clip_cov":
            terms["generator"] = generator
        return policy_loss(
            logp, cut(s.old_logp), cut(advantages), mask, denominator=denominator, **terms, **self.loss_kwargs
        )

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

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Held-out greedy accuracy, sampled accuracy over ``eval_samples`` replies per problem (at
        the training temperature) and pass@k from them (k = 1, 2, 4, ... up to ``eval_samples``:
        the unbiased estimator, averaged over problems), the sampled replies' mean token entropy,
        the number of problems and of reward timeouts."""
        exs, timeouts, n = self.eval_examples, self.task.timeouts, self.config.eval_samples
        out = {}
        with torch.random.fork_rng(devices=[] if self.accelerator.device.type == "cpu" else None):
            torch.manual_seed(EVAL_SEED)
            for name, sample, replies in (("greedy", False, 1), ("sampled", True, n)):
                gen = self.runner.generate(self.unwrapped, [e.prompt for e in exs], replies, do_sample=sample)
                right = [
                    self.task.reward(e, t) > 0.5 for e, t in zip((e for e in exs for _ in range(replies)), gen.texts)
                ]
                out[f"{name}_accuracy"] = sum(right) / len(right)
                out.update(_accuracy_by_phrasing(name, exs, right, replies))
        if n > 1:
            correct = [sum(right[i * n : (i + 1) * n]) for i in range(len(exs))]
            out.update({f"pass@{k}": mean_pass_at_k([n] * len(exs), correct, k) for k in k_values(n)})
        T = int(gen.response_mask.sum(-1).max())  # the sampled responses
        ids = torch.cat([gen.prompt_ids, gen.response_ids[:, :T]], 1)
        attn = torch.cat([gen.prompt_mask, gen.response_mask[:, :T].long()], 1)
        _, ent = self.runner.token_stats(self.unwrapped, ids, attn, gen.response_mask[:, :T], grad=False)
        out["entropy"] = float(ent.sum() / gen.response_mask.sum())
        return {**out, "problems": len(exs), "reward_timeouts": self.task.timeouts - timeouts}

    # ------------------------------------------------------------------ checkpoints and the loop

    def save_checkpoint(self) -> Path | None:
        """Write model, tokenizer, optimizer, scheduler and RNG state atomically. Call it on every
        process: under FSDP they gather the full state together; the main process writes it."""
        return save_training(
            self.run_dir,
            self.step,
            model=self.model,
            tokenizer=self.tokenizer,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            meta={
                "skipped_updates": self.skipped_updates,
                "bad_steps": self.bad_steps,
                **self.entropy_bonus.state_dict(),
            },
            keep=self.config.keep_checkpoints,
            fsdp=self.fsdp,
            is_main=self.is_main,
            fault=lambda step: _fault_point("checkpoint", step),
        )

    def _resume(self) -> None:
        """Continue from the newest intact checkpoint (none saved yet: from the start), dropping
        the history rows of the steps after it."""
        parts = {"model": self.model, "optimizer": self.optimizer, "scheduler": self.scheduler}
        meta = restore_training(self.run_dir, **parts, fsdp=self.fsdp)
        if meta is not None:
            self.step, self.skipped_updates = meta["step"], meta["skipped_updates"]
            self.entropy_bonus.load_state_dict(meta)
        self.resumed_from = self.step
        if self.is_main:
            self.rows_before = trackers.last_step(self.run_dir)  # what a tracker may hold already
            if meta is not None:
                runs.check_history(self.run_dir, self.step, self.config.eval_every)
            for f in ("metrics.jsonl", "eval.jsonl", "samples.jsonl"):
                runs.truncate_jsonl(self.run_dir / f, self.step)
        self.accelerator.wait_for_everyone()

    def train(self) -> runs.Run:
        """Train until ``config.steps`` (evaluating and saving as configured); return the run."""
        if self.is_main and self._lock is None:  # trained before: the directory is locked again
            self._lock = runs.lock_run_dir(self.run_dir)
        try:
            self.trackers = self._open_trackers()
            return self._train()
        finally:
            self.trackers.close()
            self.close()

    def _open_trackers(self) -> Trackers:
        """The trackers of ``report_to`` (the main process's; the others report to none)."""
        c = self.config
        if not self.is_main:
            return Trackers()
        names = trackers.report_to_names(c.report_to)
        return Trackers(names, self.run_dir, c.to_dict(), resume_step=self.resumed_from, last_row=self.rows_before)

    def _train(self) -> runs.Run:
        c, main = self.config, self.is_main  # with several processes, the main one writes and reports
        bar = tqdm(total=c.steps, initial=self.step, desc=f"{c.algorithm}", disable=not (self.progress and main))
        first = self.step == 0 and not (self.run_dir / "eval.jsonl").exists()
        if distributed.main_decides(self.accelerator, first):
            self._evaluate_and_log(0)
            _fault_point("eval", 0)
            self.accelerator.wait_for_everyone()
        while self.step < c.steps:
            step = self.step + 1
            row = self.train_step(step)
            self.step = step
            if main:
                runs.append_jsonl(self.run_dir / "metrics.jsonl", row)
                self.trackers.log("train", row, step)  # after the run directory, which stays the record
            _fault_point("metrics", step)
            if step % c.eval_every == 0 or step == c.steps:
                row.update({f"eval_{k}": v for k, v in self._evaluate_and_log(step).items()})
            if c.save_every and (step % c.save_every == 0 or step == c.steps):
                self.save_checkpoint()
                self.accelerator.wait_for_everyone()
            bar.update(1)
            bar.set_postfix({k: f"{row.get(k, math.nan):.2f}" for k in ("reward", "accuracy", "entropy")})
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
            self.trackers.log("eval", ev, step)
        return ev


def _fused_update(config: TrainConfig, *, replicated: bool) -> bool:
    """One on-policy update over the whole batch (one epoch and mini-batch, no micro-batches):
    the old log-probs and entropies come from the update's own forward, with no scoring pass
    (not with a replicated rollout: each process scores the whole batch, then updates its share)."""
    c = config
    return c.ppo_epochs == 1 and c.minibatches == 1 and c.micro_batch_size == 0 and not replicated


def _accuracy_by_phrasing(name: str, examples, right: list[bool], replies: int) -> dict:
    """``{name}_accuracy_phrasing_<group>`` for each phrasing group of held-out problems that carry
    one (``meta["phrasing"]``: ``word_arithmetic(phrasings="varied")`` holds some phrasings out of
    training entirely); nothing for tasks without phrasing groups."""
    groups: dict[str, list[bool]] = {}
    for j, example in enumerate(examples):
        if "phrasing" in example.meta:
            groups.setdefault(example.meta["phrasing"], []).extend(right[j * replies : (j + 1) * replies])
    return {f"{name}_accuracy_phrasing_{group}": sum(r) / len(r) for group, r in sorted(groups.items())}


def _others(sampled: list[Group], kept: list[Group]) -> list[Group]:
    """The sampled groups that are not among ``kept``."""
    return [g for g in sampled if not any(g is k for k in kept)]


def _fault_point(point: str, step: int) -> None:
    """Fault injection for the crash-safety tests: ``WORKBENCH_FAULT=point@step`` kills the
    process here with SIGKILL (no clean-up, as a power cut or the OOM killer would)."""
    if os.environ.get("WORKBENCH_FAULT") == f"{point}@{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def train(
    config: TrainConfig | dict | None = None,
    *,
    callback=None,
    progress: bool = True,
    overwrite: bool = False,
    **overrides,
) -> runs.Run:
    """Train with ``config`` (a :class:`TrainConfig`, a dict, or keyword overrides); return the run."""
    if isinstance(config, TrainConfig):
        config = config.replace(**overrides)
    else:
        config = TrainConfig.from_dict({**(config or {}), **overrides})
    return Trainer(config, overwrite=overwrite, callback=callback, progress=progress).train()


def resume(run_dir, *, callback=None, progress: bool = True, **overrides) -> runs.Run:
    """Continue a run from its last intact checkpoint (``overrides`` may raise ``steps``)."""
    run = runs.load_run(run_dir)
    if run.config.get("save_every") == 0 and not run.checkpoints():
        raise ValueError(f"run {str(run_dir)!r} was trained with save_every=0 (no checkpoint): it cannot be resumed")
    data = {**run.config, "output_dir": str(run_dir), **overrides}
    return Trainer(TrainConfig.from_dict(data), resume=True, callback=callback, progress=progress).train()
