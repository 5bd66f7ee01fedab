"""The workbench's advantage-side methods for TRL users: TRL's ``GRPOTrainer`` with the workbench's advantages.

    from workbench.integrations.trl import EntropyShapedGRPOTrainer as GRPOTrainer

    trainer = GRPOTrainer(model=..., reward_funcs=..., args=GRPOConfig(...), train_dataset=...,
                          algorithm="gtpo")            # or "grpo_s", "entropy_adv", "gtpo_surprisal", ...
    trainer.train()

Everything else stays TRL's: generation (vLLM included), reward functions, the clipped loss
and its ``loss_type``, DeepSpeed/FSDP, logging. The subclass uses the narrowest hook TRL offers
for this: ``_generate_and_score_completions`` may return token-level advantages ``[B, T]``
(TRL's loss broadcasts either shape). After TRL has generated and scored a batch, it

1. takes the summed, weighted rewards of every completion (all processes; a completion every
   reward function declined scores 0, as in TRL's advantage),
2. computes each completion's per-token entropies and sampled-token log-probs under the behaviour
   policy at the sampling temperature (one no-grad forward with TRL's own
   ``_get_per_token_logps_and_entropies``; the log-probs are the surprisal variants' signal
   ``-logp_old``),
3. gathers them across processes so every group is whole, calls the workbench algorithm's
   advantage function (``workbench.ALGORITHMS[algorithm].advantages``) and keeps this
   process's rows.

What TRL's hooks can carry (``README.md``, "The entropy methods in TRL and verl"):

- advantage-side methods, any registered name whose loss is the plain clipped one: ``gtpo``,
  ``grpo_s``, ``entropy_adv``, ``gtpo_surprisal``, ``grpo_s_surprisal``, ``grpo``, ``dapo``, ...;
- forking tokens (``dapo_forking``): the algorithm's ``top_entropy_quantile`` becomes TRL's own
  (``self.top_entropy_quantile``, unless ``args.top_entropy_quantile`` is set below 1, which
  wins). TRL thresholds each loss call's valid tokens by the *current* policy's entropies
  (gathered over processes): the workbench's ``top_entropy_scope="micro_batch"``, not its default
  ``"mini_batch"`` (the optimizer step's rows, behaviour entropies); the two agree on-policy when
  one loss call covers the step. The kept fraction is logged as ``workbench/top_entropy_kept``;
- refused, with a one-line error saying what to use: a ``loss_mode`` other than ``"vanilla"``
  (``clip_cov``, ``kl_cov``, ``erc``) and verl's dual clip ``clip_ratio_c``: TRL's
  ``_compute_loss`` is one chain of ``loss_type`` branches with no hook for a per-token loss.

Differences to the workbench trainer, by design: GRPO-S (and ``grpo_s_surprisal``) runs with TRL's
token-level loss on its broadcast sequence advantage (the workbench's ``grpo_s_token`` variant;
TRL's ``importance_sampling_level="sequence"`` is GSPO's geometric mean, not GRPO-S's arithmetic
one); set ``loss_type="dapo"`` (token-mean, TRL's default) and ``epsilon_high=0.28`` for the
paper's DAPO-based settings. Supported: TRL 1.x (tested with 1.16).
"""

from __future__ import annotations

import torch

try:
    from trl import GRPOTrainer
except ImportError as e:  # pragma: no cover - the extra is missing
    raise ImportError(
        "workbench.integrations.trl needs TRL: pip install 'gtpo-workbench[bench]' (or pip install 'trl>=1.0,<2')"
    ) from e

from ..algorithms import Algorithm, get_algorithm

__all__ = ["EntropyShapedGRPOTrainer", "check_trl_algorithm"]

#: loss modes verl implements natively (workbench.integrations.verl.verl_overrides)
_VERL_NATIVE_MODES = ("clip_cov", "kl_cov")


def check_trl_algorithm(name: str) -> Algorithm:
    """The registered algorithm ``name`` if TRL's ``GRPOTrainer`` can carry it, else a one-line
    ``ValueError`` naming the method and what to use instead."""
    algo = get_algorithm(name)
    instead = f"train it with the workbench trainer (python -m workbench train --algorithm {name})"
    if algo.loss_mode in _VERL_NATIVE_MODES:
        instead += f" or with verl's native loss_mode (workbench.integrations.verl.verl_overrides({name!r}))"
    if algo.loss_mode != "vanilla":
        raise ValueError(
            f"{name}: loss_mode {algo.loss_mode!r} changes the per-token loss, and TRL's GRPOTrainer has no hook "
            f"for a loss mode (its _compute_loss branches on loss_type only); {instead}"
        )
    if algo.clip_ratio_c is not None:
        raise ValueError(
            f"{name}: clip_ratio_c (verl's dual clip) has no TRL counterpart (TRL's delta caps the ratio of every "
            f"token, not the loss of negative-advantage ones); {instead}"
        )
    return algo


class EntropyShapedGRPOTrainer(GRPOTrainer):
    """``trl.GRPOTrainer`` whose advantages come from a workbench algorithm (default GTPO).

    ``algorithm``: a registry name TRL can carry (``"gtpo"``, ``"grpo_s"``, ``"entropy_adv"``,
    ``"gtpo_surprisal"``, ``"grpo_s_surprisal"``, ``"dapo_forking"``, ...; see
    :func:`check_trl_algorithm`); ``advantage_kwargs``: passed to its advantage function (e.g.
    ``{"alpha2": 0.2}``). The last batch's per-token entropies, log-probs and advantages stay in
    ``self.last_entropies``, ``self.last_logps`` and ``self.last_advantages`` (this process's
    rows) for inspection.
    """

    def __init__(self, *args, algorithm: str = "gtpo", advantage_kwargs: dict | None = None, **kwargs):
        self.workbench_algorithm = check_trl_algorithm(algorithm)
        self.workbench_algorithm_name = algorithm
        self.advantage_kwargs = dict(advantage_kwargs or {})
        self._all_rewards = None
        self.last_entropies = self.last_logps = self.last_advantages = None
        super().__init__(*args, **kwargs)
        if getattr(self, "multi_objective_aggregation", "sum_then_normalize") != "sum_then_normalize":
            raise ValueError(
                "EntropyShapedGRPOTrainer needs multi_objective_aggregation='sum_then_normalize' "
                "(the workbench shapes one summed reward per completion)"
            )
        if self.workbench_algorithm.top_entropy_quantile < 1 and self.args.top_entropy_quantile == 1.0:
            self.top_entropy_quantile = self.workbench_algorithm.top_entropy_quantile  # TRL's forking-token mask

    def get_high_entropy_mask(self, entropies, mask, threshold):
        keep = super().get_high_entropy_mask(entropies, mask, threshold)
        mode = "train" if self.model.training else "eval"
        counts = self.accelerator.gather(torch.stack([keep.sum(), mask.bool().sum()]).float().view(1, 2)).sum(0)
        self._metrics[mode]["workbench/top_entropy_kept"].append((counts[0] / counts[1].clamp(min=1)).item())
        return keep

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._all_rewards = rewards_per_func  # [completions of all processes, reward functions]
        return rewards_per_func

    def _behaviour_stats(self, output):
        """Per-token log-probs and entropies of the completions under the behaviour policy, masked."""
        completion_ids, completion_mask = output["completion_ids"], output["completion_mask"]
        input_ids = torch.cat([output["prompt_ids"], completion_ids], dim=1)
        attention_mask = torch.cat([output["prompt_mask"], completion_mask], dim=1)
        with torch.no_grad():
            stats = self._get_per_token_logps_and_entropies(
                self.model,
                input_ids,
                attention_mask,
                completion_ids.shape[1],
                batch_size=self.args.per_device_train_batch_size,
                compute_entropy=True,
            )
        # (logps, entropies) or, in newer TRL, (logps, entropies, aux_loss)
        return stats[0].float() * completion_mask, stats[1].float() * completion_mask

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if not self.model.training:  # evaluation: TRL's advantages are only logged
            return output
        acc = self.accelerator
        n = self.num_generations
        completion_ids, completion_mask = output["completion_ids"], output["completion_mask"]
        T = completion_ids.shape[1]
        logps, entropies = self._behaviour_stats(output)

        def gathered(x):
            return acc.gather(acc.pad_across_processes(x, dim=1, pad_index=0))

        all_logps, all_entropies, all_mask = gathered(logps), gathered(entropies), gathered(completion_mask).bool()
        weights = self.reward_weights.to(self._all_rewards.device).unsqueeze(0)
        rewards = torch.nan_to_num((self._all_rewards * weights).nansum(dim=1), nan=0.0)
        if rewards.numel() % n:
            raise ValueError(f"{rewards.numel()} completions do not form whole groups of num_generations={n}")
        Tg = all_mask.shape[1]
        advantages = self.workbench_algorithm.advantages(
            rewards.view(-1, n).float().cpu(),
            all_entropies.view(-1, n, Tg).cpu(),
            all_mask.view(-1, n, Tg).cpu(),
            logp_old=all_logps.view(-1, n, Tg).cpu(),
            **self.advantage_kwargs,
        ).view(-1, Tg)
        rows = slice(acc.process_index * len(completion_ids), (acc.process_index + 1) * len(completion_ids))
        local = advantages[rows, :T].to(completion_ids.device) * completion_mask
        output["advantages"] = local
        self.last_entropies, self.last_logps, self.last_advantages = entropies, logps, local
        valid = completion_mask.bool()
        metrics = self._metrics["train"]
        metrics["workbench/entropy"].append(acc.gather(entropies[valid].mean()).nanmean().item())
        if self.workbench_algorithm.entropy_signal == "surprisal":
            metrics["workbench/surprisal"].append(acc.gather(-logps[valid].mean()).nanmean().item())
        metrics["workbench/advantage_abs_mean"].append(acc.gather(local[valid].abs().mean()).nanmean().item())
        return output
