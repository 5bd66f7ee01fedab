"""Policy losses: the clipped surrogate of GRPO, DAPO, GTPO and GRPO-S.

Per token, with ``rho = exp(logp_new - logp_old)``::

    L[i,t] = -min(rho * A[i,t], clip(rho, 1 - eps_low, 1 + eps_high) * A[i,t])
             + beta_kl * k3(ref, new) - entropy_coef * H_new[i,t]

with ``k3 = exp(ref - new) - (ref - new) - 1``. ``level="sequence"`` is GRPO-S's own objective
(Eq. 10-11): the importance weight of a response is the arithmetic mean of its token ratios,
``w_i = mean_t rho[i,t]``, and ``L = -(1/G) sum_i min(w_i A_i, clip(w_i) A_i)``.

``clip_ratio_c`` (off by default) adds verl's dual clip: where ``A < 0`` the clipped loss is
capped at ``-A * clip_ratio_c`` (verl's default policy loss uses ``clip_ratio_c = 3``), so that
a token whose ratio has grown far above 1 cannot dominate a negative update.

Aggregation (``agg``), names as in verl:

- ``"token-mean"``: sum over all valid tokens / number of valid tokens (DAPO, GTPO);
- ``"seq-mean-token-mean"``: mean over each response's tokens, then over responses (GRPO);
- ``"seq-mean-token-sum"``: sum over each response's tokens, mean over responses;
- ``"seq-mean-token-sum-norm"``: sum over all tokens / (responses * ``norm_len``) (Dr. GRPO), a
  constant length: TRL divides by ``max_completion_length``, verl by a configured constant; the
  trainer passes ``max_new_tokens``. Without ``norm_len`` the padded width of ``values`` is used,
  which changes from batch to batch.

``denominator`` replaces the local count (valid tokens for ``token-mean``, responses for the
``seq-mean-*`` modes) so that the losses of micro-batches add up to the mean over the whole
batch, as TRL's ``num_items_in_batch`` does.

Comparing numbers with TRL and verl: the KL and entropy terms are aggregated with ``agg``, as in
verl; TRL averages its entropy term over tokens whatever its loss type, so the two agree with
TRL only for ``agg="token-mean"``.
"""

from __future__ import annotations

import torch

from . import _checks

AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
LEVELS = ("token", "sequence")
LOG_RATIO_CLAMP = 20.0  # exp(20) ~ 5e8: keeps a wild ratio finite; irrelevant in normal ranges

__all__ = ["policy_loss", "aggregate", "AGGREGATIONS", "LEVELS"]


def aggregate(
    values: torch.Tensor, mask: torch.Tensor, agg: str, denominator: float | None = None, norm_len: int | None = None
) -> torch.Tensor:
    """Reduce per-token ``values [B, T]`` to a scalar with one of :data:`AGGREGATIONS`.

    ``norm_len``: the constant length of ``"seq-mean-token-sum-norm"`` (default: ``T``, the
    padded width); ``denominator``: see the module docstring.
    """
    _checks.choice("agg", agg, AGGREGATIONS)
    if norm_len is not None:
        _checks.positive("norm_len", norm_len)
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
        per_seq = (values * w).sum(-1) / (values.shape[-1] if norm_len is None else norm_len)
    return per_seq.sum() / n_seq


def _check_inputs(
    logp_new,
    logp_old,
    advantages,
    mask,
    *,
    eps_low,
    eps_high,
    agg,
    level,
    logp_ref,
    beta_kl,
    entropies,
    entropy_coef,
    denominator,
    clip_ratio_c,
    norm_len,
) -> torch.Tensor:
    """Validate :func:`policy_loss`'s arguments; return the bool mask."""
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
    if norm_len is not None:
        _checks.positive("norm_len", norm_len)
    if clip_ratio_c is not None:
        _checks.number("clip_ratio_c", clip_ratio_c)
        if clip_ratio_c <= 1:
            raise ValueError(f"clip_ratio_c must be > 1 (verl's dual-clip bound; e.g. 3.0), got {clip_ratio_c}")
    if beta_kl > 0 and logp_ref is None:
        raise ValueError("beta_kl > 0 needs logp_ref (log-probabilities of the reference model)")
    if entropy_coef > 0 and entropies is None:
        raise ValueError("entropy_coef > 0 needs entropies (current-policy entropies with gradient)")
    return m


def _clipped(ratio, adv, eps_low, eps_high, clip_ratio_c):
    """The clipped surrogate loss per item and its low/high/dual clip indicators (before masking)."""
    loss = -torch.minimum(ratio * adv, ratio.clamp(1 - eps_low, 1 + eps_high) * adv)
    low, high = (ratio < 1 - eps_low) & (adv < 0), (ratio > 1 + eps_high) & (adv > 0)
    dual = torch.zeros_like(low)
    if clip_ratio_c is not None:  # verl's dual clip: negative advantages' losses capped at -A * c
        cap = -adv * clip_ratio_c
        dual = (adv < 0) & (loss > cap)
        loss = torch.where(adv < 0, torch.minimum(loss, cap), loss)
    return loss, low, high, dual


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
    clip_ratio_c: float | None = None,
    norm_len: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped policy-gradient loss over ``[B, T]`` tensors; returns ``(loss, metrics)``.

    ``logp_old`` and ``advantages`` are treated as constants. With ``level="sequence"`` the
    advantage of a response is the mean of ``advantages`` over its valid tokens (GRPO-S
    broadcasts one value per response) and ``agg`` applies only to the KL and entropy terms.
    ``clip_ratio_c``: verl's dual clip (``None``: off). ``norm_len``: the constant length of
    ``agg="seq-mean-token-sum-norm"``. The entropy term is aggregated with ``agg`` (as verl does;
    TRL averages it over tokens whatever the loss type).

    ``metrics`` (floats): ``policy_loss``, ``clip_frac_low`` (ratio below ``1 - eps_low``
    with negative advantage), ``clip_frac_high`` (above ``1 + eps_high`` with positive
    advantage), ``clip_frac``, ``clip_frac_dual`` (losses capped by the dual clip; with
    ``clip_ratio_c`` only), ``ratio_mean``, ``approx_kl`` (k3 of the new policy from the old
    one), and ``kl_ref`` / ``entropy`` when those terms are given.
    """
    args = dict(locals())  # every argument, checked together
    m = _check_inputs(**args)
    zero = torch.zeros((), dtype=logp_new.dtype, device=logp_new.device)
    w = m.to(logp_new.dtype)
    adv = torch.where(m, advantages.detach().to(logp_new.dtype), zero)
    log_ratio = torch.where(m, logp_new - logp_old.detach(), zero).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = log_ratio.exp()

    if level == "token":
        per_token, low, high, dual = _clipped(ratio, adv, eps_low, eps_high, clip_ratio_c)
        policy = aggregate(per_token, m, agg, denominator, norm_len)
        low, high, dual = low & m, high & m, dual & m
        n_items = w.sum()
    else:
        n_tok = w.sum(-1)
        weight = (ratio * w).sum(-1) / n_tok
        seq_adv = (adv * w).sum(-1) / n_tok
        per_seq, low, high, dual = _clipped(weight, seq_adv, eps_low, eps_high, clip_ratio_c)
        policy = per_seq.sum() / (denominator if denominator is not None else per_seq.shape[0])
        n_items = torch.tensor(float(per_seq.shape[0]))
    metrics = _clip_metrics(policy, low, high, dual, n_items, ratio, log_ratio, w, clip_ratio_c)
    loss = policy
    for term in _regularisers(args, m, metrics):
        loss = loss + term
    metrics["loss"] = float(loss.detach())
    return loss, metrics


def _regularisers(args: dict, m: torch.Tensor, metrics: dict) -> list[torch.Tensor]:
    """The terms ``beta_kl * k3`` and ``-entropy_coef * H`` (each aggregated with ``agg``) that
    are on; the KL and entropy values go in ``metrics`` whenever they are given."""
    logp_new, agg, denominator, norm_len = args["logp_new"], args["agg"], args["denominator"], args["norm_len"]
    zero = torch.zeros((), dtype=logp_new.dtype, device=logp_new.device)
    terms = []
    if args["logp_ref"] is not None:
        logp_ref = _checks.tensor("logp_ref", args["logp_ref"])
        _checks.same_shape(("logp_new", "logp_ref"), (logp_new, logp_ref))
        _checks.finite("logp_ref", logp_ref.detach(), where=m)
        diff = torch.where(m, logp_ref.detach() - logp_new, zero).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        kl = aggregate(diff.exp() - diff - 1, m, agg, denominator, norm_len)
        metrics["kl_ref"] = float(kl.detach())
        if args["beta_kl"] > 0:
            terms.append(args["beta_kl"] * kl)
    if args["entropies"] is not None:
        entropies = _checks.tensor("entropies", args["entropies"])
        _checks.same_shape(("logp_new", "entropies"), (logp_new, entropies))
        _checks.finite("entropies", entropies.detach(), where=m)
        ent = aggregate(torch.where(m, entropies, zero), m, agg, denominator, norm_len)
        metrics["entropy"] = float(ent.detach())
        if args["entropy_coef"] > 0:
            terms.append(-(args["entropy_coef"] * ent))
    return terms


@torch.no_grad()
def _clip_metrics(policy, low, high, dual, n_items, ratio, log_ratio, w, clip_ratio_c) -> dict[str, float]:
    metrics = {
        "policy_loss": float(policy),
        "clip_frac_low": float(low.sum() / n_items),
        "clip_frac_high": float(high.sum() / n_items),
        "clip_frac": float((low | high).sum() / n_items),
    }
    if clip_ratio_c is not None:
        metrics["clip_frac_dual"] = float(dual.sum() / n_items)
    metrics["ratio_mean"] = float((ratio * w).sum() / w.sum())
    old_minus_new = -log_ratio
    metrics["approx_kl"] = float(((old_minus_new.exp() - old_minus_new - 1) * w).sum() / w.sum())
    return metrics
