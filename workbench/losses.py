"""Policy losses: the clipped surrogate of GRPO, DAPO, GTPO and GRPO-S.

Per token, with ``rho = exp(logp_new - logp_old)``::

    L[i,t] = -min(rho * A[i,t], clip(rho, 1 - eps_low, 1 + eps_high) * A[i,t])
             + beta_kl * k3(ref, new) - entropy_coef * H_new[i,t]

with ``k3 = exp(ref - new) - (ref - new) - 1``. ``level="sequence"`` is GRPO-S's own objective
(Eq. 10-11): the importance weight of a response is the arithmetic mean of its token ratios,
``w_i = mean_t rho[i,t]``, and ``L = -(1/G) sum_i min(w_i A_i, clip(w_i) A_i)``.

Aggregation (``agg``), names as in verl:

- ``"token-mean"``: sum over all valid tokens / number of valid tokens (DAPO, GTPO);
- ``"seq-mean-token-mean"``: mean over each response's tokens, then over responses (GRPO);
- ``"seq-mean-token-sum"``: sum over each response's tokens, mean over responses;
- ``"seq-mean-token-sum-norm"``: sum over all tokens / (responses * T) (Dr. GRPO).

``denominator`` replaces the local count (valid tokens for ``token-mean``, responses for the
``seq-mean-*`` modes) so that the losses of micro-batches add up to the mean over the whole
batch, as TRL's ``num_items_in_batch`` does.
"""

from __future__ import annotations

import torch

from . import _checks

AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
LEVELS = ("token", "sequence")
LOG_RATIO_CLAMP = 20.0  # exp(20) ~ 5e8: keeps a wild ratio finite; irrelevant in normal ranges

__all__ = ["policy_loss", "aggregate", "AGGREGATIONS", "LEVELS"]


def aggregate(values: torch.Tensor, mask: torch.Tensor, agg: str, denominator: float | None = None) -> torch.Tensor:
    """Reduce per-token ``values [B, T]`` to a scalar with one of :data:`AGGREGATIONS`."""
    _checks.choice("agg", agg, AGGREGATIONS)
    w = mask.to(values.dtype)
    if agg == "token-mean":
        total = (values * w).sum()
        return total / (denominator if denominator is not None else w.sum().clamp(min=1))
    n_seq = denominator if denominator is not None else values.shape[0]
    if agg == "seq-mean-token-mean":
        per_seq = (values * w).sum(-1) / w.sum(-1).clamp(min=1)
    elif agg == "seq-mean-token-sum":
        per_seq = (values * w).sum(-1)
    else:  # seq-mean-token-sum-norm
        per_seq = (values * w).sum(-1) / values.shape[-1]
    return per_seq.sum() / n_seq


def policy_loss(
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    agg: str = "token-mean",
    level: str = "token",
    logp_ref: torch.Tensor | None = None,
    beta_kl: float = 0.0,
    entropies: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
    denominator: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped policy-gradient loss over ``[B, T]`` tensors; returns ``(loss, metrics)``.

    ``logp_old`` and ``advantages`` are treated as constants. With ``level="sequence"`` the
    advantage of a response is the mean of ``advantages`` over its valid tokens (GRPO-S
    broadcasts one value per response) and ``agg`` applies only to the KL and entropy terms.

    ``metrics`` (floats): ``policy_loss``, ``clip_frac_low`` (ratio below ``1 - eps_low``
    with negative advantage), ``clip_frac_high`` (above ``1 + eps_high`` with positive
    advantage), ``clip_frac``, ``ratio_mean``, ``approx_kl`` (k3 of the new policy from the
    old one), and ``kl_ref`` / ``entropy`` when those terms are given.
    """
    names = ("logp_new", "logp_old", "advantages")
    tensors = [_checks.tensor(n, v) for n, v in zip(names, (logp_new, logp_old, advantages))]
    if logp_new.dim() != 2:
        raise ValueError(f"logp_new must have shape [B, T], got {tuple(logp_new.shape)}")
    _checks.same_shape(names, tensors)
    m = _checks.mask("mask", mask, logp_new.shape).to(logp_new.device)
    _checks.no_empty_rows("mask", m)
    for n, v in zip(names, tensors):
        _checks.finite(n, v.detach(), where=m)
    _checks.choice("agg", agg, AGGREGATIONS)
    _checks.choice("level", level, LEVELS)
    _checks.positive("eps_low", eps_low, allow_zero=True)
    _checks.positive("eps_high", eps_high, allow_zero=True)
    if eps_low >= 1:
        raise ValueError(f"eps_low must be < 1 (the lower clip bound 1 - eps_low must stay positive), got {eps_low}")
    _checks.positive("beta_kl", beta_kl, allow_zero=True)
    _checks.positive("entropy_coef", entropy_coef, allow_zero=True)
    if denominator is not None:
        _checks.positive("denominator", denominator)
    if beta_kl > 0 and logp_ref is None:
        raise ValueError("beta_kl > 0 needs logp_ref (log-probabilities of the reference model)")
    if entropy_coef > 0 and entropies is None:
        raise ValueError("entropy_coef > 0 needs entropies (current-policy entropies with gradient)")

    zero = torch.zeros((), dtype=logp_new.dtype, device=logp_new.device)
    w = m.to(logp_new.dtype)
    adv = torch.where(m, advantages.detach().to(logp_new.dtype), zero)
    log_ratio = torch.where(m, logp_new - logp_old.detach(), zero).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = log_ratio.exp()
    metrics: dict[str, float] = {}

    if level == "token":
        clipped = ratio.clamp(1 - eps_low, 1 + eps_high)
        per_token = -torch.minimum(ratio * adv, clipped * adv)
        policy = aggregate(per_token, m, agg, denominator)
        low = (ratio < 1 - eps_low) & (adv < 0) & m
        high = (ratio > 1 + eps_high) & (adv > 0) & m
        n_items = w.sum()
    else:
        n_tok = w.sum(-1)
        weight = (ratio * w).sum(-1) / n_tok
        seq_adv = (adv * w).sum(-1) / n_tok
        clipped = weight.clamp(1 - eps_low, 1 + eps_high)
        per_seq = -torch.minimum(weight * seq_adv, clipped * seq_adv)
        policy = per_seq.sum() / (denominator if denominator is not None else per_seq.shape[0])
        low = (weight < 1 - eps_low) & (seq_adv < 0)
        high = (weight > 1 + eps_high) & (seq_adv > 0)
        n_items = torch.tensor(float(per_seq.shape[0]))
    loss = policy

    with torch.no_grad():
        metrics["policy_loss"] = float(policy)
        metrics["clip_frac_low"] = float(low.sum() / n_items)
        metrics["clip_frac_high"] = float(high.sum() / n_items)
        metrics["clip_frac"] = float((low | high).sum() / n_items)
        metrics["ratio_mean"] = float((ratio * w).sum() / w.sum())
        old_minus_new = -log_ratio
        metrics["approx_kl"] = float(((old_minus_new.exp() - old_minus_new - 1) * w).sum() / w.sum())

    if logp_ref is not None:
        logp_ref = _checks.tensor("logp_ref", logp_ref)
        _checks.same_shape(("logp_new", "logp_ref"), (logp_new, logp_ref))
        _checks.finite("logp_ref", logp_ref.detach(), where=m)
        diff = torch.where(m, logp_ref.detach() - logp_new, zero).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        k3 = diff.exp() - diff - 1
        kl = aggregate(k3, m, agg, denominator)
        metrics["kl_ref"] = float(kl.detach())
        if beta_kl > 0:
            loss = loss + beta_kl * kl
    if entropies is not None:
        entropies = _checks.tensor("entropies", entropies)
        _checks.same_shape(("logp_new", "entropies"), (logp_new, entropies))
        _checks.finite("entropies", entropies.detach(), where=m)
        ent = aggregate(torch.where(m, entropies, zero), m, agg, denominator)
        metrics["entropy"] = float(ent.detach())
        if entropy_coef > 0:
            loss = loss - entropy_coef * ent
    metrics["loss"] = float(loss.detach())
    return loss, metrics
