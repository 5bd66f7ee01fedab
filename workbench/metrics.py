"""The metrics of a training step (``metrics.jsonl``, one row per RL step): names, meanings, sums.

Statistics of what was sampled cover **every** sampled group of the step, in every round, so that
algorithms with and without dynamic sampling are measured on the same population; the ``*_kept``
columns cover the groups the update used (the same ones without dynamic sampling). A step that kept
no group still has a row: ``updated`` is false and the update's columns (loss, grad norm, clip
fractions, advantages, ``*_kept``) are absent.
"""

from __future__ import annotations

import torch

from .analysis import response_record

__all__ = ["METRICS", "METRIC_COLUMNS", "kept_sums", "step_sums", "step_row", "sample_records"]

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


_KEPT = 8  # the length of kept_sums()


def _response_sums(rewards, correct, lengths, truncated) -> list[float]:
    """Sums over a set of responses (``[B]`` tensors): reward, correct, length, truncated, count."""
    return [
        float(rewards.sum()),
        float(correct.float().sum()),
        float(lengths.float().sum()),
        float(truncated.float().sum()),
        float(len(lengths)),
    ]


def _means(sums: list[float], entropy: float, tokens: float) -> dict:
    reward, correct, length, truncated, count = sums
    count = max(count, 1.0)
    return {
        "reward": reward / count,
        "accuracy": correct / count,
        "response_len_mean": length / count,
        "truncated_frac": truncated / count,
        "entropy": entropy / max(tokens, 1.0),
    }


def kept_sums(batch, advantages: torch.Tensor) -> list[float]:
    """This process's sums over the groups its update uses (a scored :class:`workbench.rollout.Batch`):
    reward, correct, length, truncated, count, entropy, tokens, |advantage| (0 for an idle stand-in)."""
    m = batch.response_mask & (not batch.idle)
    sums = [
        0.0 if batch.idle else x for x in _response_sums(batch.rewards, batch.correct, batch.lengths, batch.truncated)
    ]
    return sums + [float(batch.scored.entropies[m].sum()), float(m.sum()), float(advantages[m].abs().sum())]


def step_sums(
    sampled: list, used: list, kept: list[float] | None, unused_entropy: tuple[float, float], timeouts: int
) -> list[float]:
    """This process's sums for a step's row, to be added up over processes (then :func:`step_row`):
    over every sampled group (the entropy of the ``used`` ones from ``kept``, of the others from
    ``unused_entropy``), the ``kept`` sums, and the counts of groups, tokens and timeouts."""
    cat = lambda name: torch.cat([getattr(g, name) for g in sampled])  # noqa: E731
    kept = kept or [0.0] * _KEPT
    entropy = [unused_entropy[0] + kept[5], unused_entropy[1] + kept[6]]
    counts = [len(used), len(sampled), sum(not g.informative for g in sampled), float(cat("lengths").sum()), timeouts]
    return [*_response_sums(cat("rewards"), cat("correct"), cat("lengths"), cat("truncated")), *entropy, *kept, *counts]


def step_row(totals: list[float], *, longest: float, rounds: int, kept: bool) -> dict:
    """The metrics of a step from :func:`step_sums` added up over processes (see :data:`METRICS`);
    the ``*_kept`` columns and ``advantage_abs_mean`` only when some groups were ``kept``."""
    row = {**_means(totals[:5], *totals[5:7]), "response_len_max": int(longest)}
    sums = totals[7 : 7 + _KEPT]
    if kept:
        means = _means(sums[:5], sums[5], sums[6])
        row.update({f"{k}_kept": v for k, v in means.items() if k != "truncated_frac"})
        row["advantage_abs_mean"] = sums[7] / max(sums[6], 1.0)
    groups, seen, zero_std, generated, timeouts = (int(x) for x in totals[7 + _KEPT :])
    return {
        **row,
        "groups": groups,
        "groups_sampled": seen,
        "frac_zero_std": zero_std / max(1, seen),
        "sampling_rounds": rounds,
        "generated_tokens": generated,
        "reward_timeouts": timeouts,
    }


def sample_records(tokenizer, batch, advantages: torch.Tensor, groups: int) -> list[dict]:
    """Per-token records (``samples.jsonl``) of the first ``groups`` groups of a scored batch."""
    n, s, out = batch.group_size, batch.scored, []
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
