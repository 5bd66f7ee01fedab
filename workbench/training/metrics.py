"""The metrics of a training step (``metrics.jsonl``, one row per RL step): names, meanings, sums.

Statistics of what was sampled cover **every** sampled group of the step, in every round, so that
algorithms with and without dynamic sampling are measured on the same population; the ``*_kept``
columns cover the groups the update used (the same ones without dynamic sampling). A step that kept
no group still has a row: ``updated`` is false and the update's columns (loss, grad norm, clip
fractions, advantages, ``*_kept``) are absent.
"""

from __future__ import annotations

import torch

from ..runs import response_record

__all__ = ["METRICS", "METRIC_COLUMNS", "step_sums", "step_row", "sample_records"]

#: Every column of ``metrics.jsonl`` and what it means.
METRICS: dict[str, str] = {
    "step": "RL step (1, 2, ...)",
    "updated": "whether the step made an optimizer update (false: no group kept, or every update non-finite)",
    "reward": "mean reward (every term: task score, format, overlong, GROP) over all sampled responses",
    "accuracy": "fraction of all sampled responses with a correct final answer",
    "response_len_mean": "mean response length in tokens (end token included), all sampled responses",
    "response_len_max": "longest sampled response, in tokens",
    "truncated_frac": "fraction of all sampled responses cut at max_new_tokens (no end token)",
    "entropy": "mean token entropy (nats, at the sampling temperature) over all sampled responses",
    "reward_kept": "mean reward over the responses of the groups the update used",
    "accuracy_kept": "accuracy over the responses of the groups the update used",
    "response_len_mean_kept": "mean response length over the groups the update used",
    "entropy_kept": "mean token entropy over the groups the update used",
    "advantage_abs_mean": "mean |advantage| over the update's tokens",
    "groups": "groups the update used",
    "groups_sampled": "groups sampled in all rounds of the step",
    "frac_zero_std": "fraction of sampled groups whose rewards were all equal (no correctness signal)",
    "sampling_rounds": "rounds of sampling (more than 1 only with dynamic sampling)",
    "generated_tokens": "response tokens sampled in the step",
    "reward_timeouts": "reward checks that ran out of time (scored 0)",
    "policy_loss": "clipped surrogate loss (mean over optimizer steps)",
    "loss": "total loss: policy, KL and entropy terms",
    "kl_ref": "k3 KL to the reference model (with beta_kl > 0)",
    "clip_frac_low": "fraction of tokens with ratio < 1 - eps_low and negative advantage",
    "clip_frac_high": "fraction of tokens with ratio > 1 + eps_high and positive advantage",
    "clip_frac": "clip_frac_low + clip_frac_high (0 with one on-policy update per batch: the ratio is 1)",
    "clip_frac_dual": "fraction of losses capped by the dual clip (with clip_ratio_c)",
    "ratio_mean": "mean importance ratio (1 with one on-policy update per batch)",
    "approx_kl": "k3 estimate of KL(old || new) (0 with one on-policy update per batch)",
    "policy_entropy": "the current policy's entropy aggregated like the loss (with an entropy bonus, or ERC)",
    "entropy_coef": "the entropy bonus's weight of the step (with an entropy bonus: constant, scheduled or adaptive)",
    "top_entropy_kept_frac": "fraction of valid tokens trained on as forking tokens (top_entropy_quantile < 1)",
    "clip_cov_frac": "fraction of valid tokens whose gradient Clip-Cov detached",
    "kl_cov_frac": "fraction of valid tokens KL-Cov penalised with |logp - logp_old|",
    "erc_kept_frac": "fraction of valid tokens ERC kept the gradient of (entropy ratio within its bounds)",
    "grad_norm": "gradient norm before clipping (mean over optimizer steps)",
    "lr": "learning rate of the step",
    "skipped_updates": "non-finite updates skipped so far in the run",
    "time_rollout": "seconds sampling responses",
    "time_reward": "seconds computing rewards",
    "time_score": "seconds of the no-grad scoring passes (old log-probs, entropies, reference log-probs)",
    "time_advantage": "seconds computing advantages",
    "time_update": "seconds of the update (forward, backward, optimizer), the fused update's forward included",
    "time_step": "seconds of the whole step",
    "tokens_per_s": "generated_tokens / time_rollout",
}
#: The column names, in order.
METRIC_COLUMNS = tuple(METRICS)


def _response_sums(rewards, correct, lengths, truncated) -> dict[str, float]:
    """Sums over a set of responses (``[B]`` tensors), by name."""
    return {
        "reward": float(rewards.sum()),
        "correct": float(correct.float().sum()),
        "length": float(lengths.float().sum()),
        "truncated": float(truncated.float().sum()),
        "responses": float(len(lengths)),
    }


def _means(sums: dict[str, float]) -> dict[str, float]:
    """The per-response and per-token means of a set's sums."""
    responses = max(sums["responses"], 1.0)
    return {
        "reward": sums["reward"] / responses,
        "accuracy": sums["correct"] / responses,
        "response_len_mean": sums["length"] / responses,
        "truncated_frac": sums["truncated"] / responses,
        "entropy": sums["entropy"] / max(sums["tokens"], 1.0),
    }


def _kept_sums(batch, scored, advantages: torch.Tensor | None) -> dict[str, float]:
    """Sums over the groups the update used (zeros without a batch, or for an idle stand-in)."""
    if batch is None or batch.idle:
        names = ("reward", "correct", "length", "truncated", "responses", "entropy", "tokens", "advantage_abs")
        return dict.fromkeys(names, 0.0)
    m = batch.response_mask
    return {
        **_response_sums(batch.rewards, batch.correct, batch.lengths, batch.truncated),
        "entropy": float(scored.entropies[m].sum()),
        "tokens": float(m.sum()),
        "advantage_abs": float(advantages[m].abs().sum()),
    }


def step_sums(
    sampled: list, kept: list, batch, scored, advantages, unused_entropy: tuple[float, float], timeouts: int
) -> dict[str, float]:
    """This process's sums for a step's row, by name, to be added up over processes (then
    :func:`step_row`): ``sampled.*`` over every sampled group (the entropy of the ``kept`` ones
    from the scored ``batch``, of the others from ``unused_entropy``), ``kept.*`` over the
    ``batch`` the update used (the whole batch, also where each process updates on a share),
    and the counts of groups, tokens and timeouts."""
    cat = lambda name: torch.cat([getattr(g, name) for g in sampled])  # noqa: E731
    used = _kept_sums(batch, scored, advantages)
    every = _response_sums(cat("rewards"), cat("correct"), cat("lengths"), cat("truncated"))
    every["entropy"] = unused_entropy[0] + used["entropy"]
    every["tokens"] = unused_entropy[1] + used["tokens"]
    counts = {
        "groups": len(kept),
        "groups_sampled": len(sampled),
        "zero_std": sum(not g.informative for g in sampled),
        "generated_tokens": float(cat("lengths").sum()),
        "reward_timeouts": timeouts,
    }
    return {
        **{f"sampled.{k}": v for k, v in every.items()},
        **{f"kept.{k}": v for k, v in used.items()},
        **{f"count.{k}": float(v) for k, v in counts.items()},
    }


def _part(sums: dict[str, float], prefix: str) -> dict[str, float]:
    return {k.removeprefix(prefix): v for k, v in sums.items() if k.startswith(prefix)}


def step_row(totals: dict[str, float], *, longest: float, rounds: int, kept: bool) -> dict:
    """The metrics of a step from :func:`step_sums` added up over processes (see :data:`METRICS`);
    the ``*_kept`` columns and ``advantage_abs_mean`` only when some groups were ``kept``."""
    row = {**_means(_part(totals, "sampled.")), "response_len_max": int(longest)}
    if kept:
        used = _part(totals, "kept.")
        row.update({f"{k}_kept": v for k, v in _means(used).items() if k != "truncated_frac"})
        row["advantage_abs_mean"] = used["advantage_abs"] / max(used["tokens"], 1.0)
    counts = {k: int(v) for k, v in _part(totals, "count.").items()}
    return {
        **row,
        "groups": counts["groups"],
        "groups_sampled": counts["groups_sampled"],
        "frac_zero_std": counts["zero_std"] / max(1, counts["groups_sampled"]),
        "sampling_rounds": rounds,
        "generated_tokens": counts["generated_tokens"],
        "reward_timeouts": counts["reward_timeouts"],
    }


def sample_records(tokenizer, batch, scored, advantages: torch.Tensor, groups: int) -> list[dict]:
    """Per-token records (``samples.jsonl``) of the first ``groups`` groups of ``batch`` with its
    behaviour-policy statistics ``scored``."""
    out = []
    n, s = batch.group_size, scored
    for g in range(min(groups, batch.groups)):
        responses = []
        for i in range(g * n, (g + 1) * n):
            m = batch.response_mask[i]
            ids = batch.input_ids[i, -m.shape[0] :][m].tolist()
            responses.append(
                response_record(
                    tokenizer,
                    ids,
                    s.entropies[i][m],
                    s.old_logp[i][m],
                    advantages[i][m],
                    text=batch.texts[i],
                    reward=float(batch.rewards[i]),
                    correct=bool(batch.correct[i]),
                )
            )
        out.append({"group": g, "prompt": batch.prompts[g], "answer": batch.answers[g], "responses": responses})
    return out
