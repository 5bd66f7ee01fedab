"""GTPO and GRPO-S for TRL users: TRL's ``GRPOTrainer`` with the workbench's advantages.

    from workbench.integrations.trl import EntropyShapedGRPOTrainer as GRPOTrainer

    trainer = GRPOTrainer(model=..., reward_funcs=..., args=GRPOConfig(...), train_dataset=...,
                          algorithm="gtpo")            # or "grpo_s", or any registered name
    trainer.train()

Everything else stays TRL's: generation (vLLM included), reward functions, the clipped loss
and its ``loss_type``, DeepSpeed/FSDP, logging. The subclass uses the narrowest hook TRL offers
for this: ``_generate_and_score_completions`` may return token-level advantages ``[B, T]``
(TRL's loss broadcasts either shape). After TRL has generated and scored a batch, it

1. takes the summed, weighted rewards of every completion (all processes; a completion every
   reward function declined scores 0, as in TRL's advantage),
2. computes each completion's per-token entropies under the behaviour policy at the sampling
   temperature (one no-grad forward with TRL's own ``_get_per_token_logps_and_entropies``),
3. gathers them across processes so every group is whole, calls the workbench algorithm's
   advantage function (``workbench.ALGORITHMS[algorithm].advantages``) and keeps this
   process's rows.

Differences to the workbench trainer, by design: GRPO-S runs with TRL's token-level loss on
its broadcast sequence advantage (the workbench's ``grpo_s_token`` variant; TRL's
``importance_sampling_level="sequence"`` is GSPO's geometric mean, not GRPO-S's arithmetic
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

from ..algorithms import get_algorithm

__all__ = ["EntropyShapedGRPOTrainer"]


class EntropyShapedGRPOTrainer(GRPOTrainer):
    """``trl.GRPOTrainer`` whose advantages come from a workbench algorithm (default GTPO).

    ``algorithm``: a registry name (``"gtpo"``, ``"grpo_s"``, ``"gtpo_per_polarity"``, ...);
    ``advantage_kwargs``: passed to its advantage function (e.g. ``{"alpha2": 0.2}``).
    The last batch's per-token entropies and advantages stay in ``self.last_entropies`` and
    ``self.last_advantages`` (this process's rows) for inspection.
    """

    def __init__(self, *args, algorithm: str = "gtpo", advantage_kwargs: dict | None = None, **kwargs):
        self.workbench_algorithm = get_algorithm(algorithm)
        self.workbench_algorithm_name = algorithm
        self.advantage_kwargs = dict(advantage_kwargs or {})
        self._all_rewards = None
        self.last_entropies = self.last_advantages = None
        super().__init__(*args, **kwargs)
        if getattr(self, "multi_objective_aggregation", "sum_then_normalize") != "sum_then_normalize":
            raise ValueError(
                "EntropyShapedGRPOTrainer needs multi_objective_aggregation='sum_then_normalize' "
                "(the workbench shapes one summed reward per completion)"
            )

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._all_rewards = rewards_per_func  # [completions of all processes, reward functions]
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if not self.model.training:  # evaluation: TRL's advantages are only logged
            return output
        acc = self.accelerator
        n = self.num_generations
        completion_ids, completion_mask = output["completion_ids"], output["completion_mask"]
        T = completion_ids.shape[1]
        input_ids = torch.cat([output["prompt_ids"], completion_ids], dim=1)
        attention_mask = torch.cat([output["prompt_mask"], completion_mask], dim=1)
        with torch.no_grad():
            stats = self._get_per_token_logps_and_entropies(
                self.model,
                input_ids,
                attention_mask,
                T,
                batch_size=self.args.per_device_train_batch_size,
                compute_entropy=True,
            )
        entropies = stats[1]  # (logps, entropies) or, in newer TRL, (logps, entropies, aux_loss)
        entropies = entropies.float() * completion_mask
        all_entropies = acc.gather(acc.pad_across_processes(entropies, dim=1, pad_index=0))
        all_mask = acc.gather(acc.pad_across_processes(completion_mask, dim=1, pad_index=0)).bool()
        weights = self.reward_weights.to(self._all_rewards.device).unsqueeze(0)
        rewards = torch.nan_to_num((self._all_rewards * weights).nansum(dim=1), nan=0.0)
        if rewards.numel() % n:
            raise ValueError(f"{rewards.numel()} completions do not form whole groups of num_generations={n}")
        Tg = all_mask.shape[1]
        advantages = self.workbench_algorithm.advantages(
            rewards.view(-1, n).float().cpu(),
            all_entropies.view(-1, n, Tg).cpu(),
            all_mask.view(-1, n, Tg).cpu(),
            **self.advantage_kwargs,
        ).view(-1, Tg)
        rows = slice(acc.process_index * len(completion_ids), (acc.process_index + 1) * len(completion_ids))
        local = advantages[rows, :T].to(completion_ids.device) * completion_mask
        output["advantages"] = local
        self.last_entropies, self.last_advantages = entropies, local
        valid = completion_mask.bool()
        self._metrics["train"]["workbench/entropy"].append(acc.gather(entropies[valid].mean()).nanmean().item())
        self._metrics["train"]["workbench/advantage_abs_mean"].append(
            acc.gather(local[valid].abs().mean()).nanmean().item()
        )
        return output
