"""The entropy-method family beside GTPO and GRPO-S (spec: entropy-methods.md): forking tokens,
Clip-Cov, KL-Cov, the entropy advantage, ERC, entropy-bonus schedules, surprisal, pass@k.

Each method is checked on the spec's worked example and against an independent loop/numpy
re-implementation of its reference code (TRL, verl, Kwai-Klear/ERC) on random padded batches.
"""

import pytest
import torch

from workbench import _checks
from workbench.losses import policy_loss

# ---------------------------------------------------------------------------- today's loss, verbatim
# policy_loss as it was before the loss modes were added (commit f3a10ff), the reference that
# loss_mode="vanilla" must equal bit for bit.

AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
LEVELS = ("token", "sequence")
LOG_RATIO_CLAMP = 20.0


def _ref_aggregate(
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


def _ref__check_inputs(
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


def _ref__clipped(ratio, adv, eps_low, eps_high, clip_ratio_c):
    """The clipped surrogate loss per item and its low/high/dual clip indicators (before masking)."""
    loss = -torch.minimum(ratio * adv, ratio.clamp(1 - eps_low, 1 + eps_high) * adv)
    low, high = (ratio < 1 - eps_low) & (adv < 0), (ratio > 1 + eps_high) & (adv > 0)
    dual = torch.zeros_like(low)
    if clip_ratio_c is not None:  # verl's dual clip: negative advantages' losses capped at -A * c
        cap = -adv * clip_ratio_c
        dual = (adv < 0) & (loss > cap)
        loss = torch.where(adv < 0, torch.minimum(loss, cap), loss)
    return loss, low, high, dual


def _ref_policy_loss(
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
    m = _ref__check_inputs(**args)
    zero = torch.zeros((), dtype=logp_new.dtype, device=logp_new.device)
    w = m.to(logp_new.dtype)
    adv = torch.where(m, advantages.detach().to(logp_new.dtype), zero)
    log_ratio = torch.where(m, logp_new - logp_old.detach(), zero).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = log_ratio.exp()

    if level == "token":
        per_token, low, high, dual = _ref__clipped(ratio, adv, eps_low, eps_high, clip_ratio_c)
        policy = _ref_aggregate(per_token, m, agg, denominator, norm_len)
        low, high, dual = low & m, high & m, dual & m
        n_items = w.sum()
    else:
        n_tok = w.sum(-1)
        weight = (ratio * w).sum(-1) / n_tok
        seq_adv = (adv * w).sum(-1) / n_tok
        per_seq, low, high, dual = _ref__clipped(weight, seq_adv, eps_low, eps_high, clip_ratio_c)
        policy = per_seq.sum() / (denominator if denominator is not None else per_seq.shape[0])
        n_items = torch.tensor(float(per_seq.shape[0]))
    metrics = _ref__clip_metrics(policy, low, high, dual, n_items, ratio, log_ratio, w, clip_ratio_c)
    loss = policy
    for term in _ref__regularisers(args, m, metrics):
        loss = loss + term
    metrics["loss"] = float(loss.detach())
    return loss, metrics


def _ref__regularisers(args: dict, m: torch.Tensor, metrics: dict) -> list[torch.Tensor]:
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
        kl = _ref_aggregate(diff.exp() - diff - 1, m, agg, denominator, norm_len)
        metrics["kl_ref"] = float(kl.detach())
        if args["beta_kl"] > 0:
            terms.append(args["beta_kl"] * kl)
    if args["entropies"] is not None:
        entropies = _checks.tensor("entropies", args["entropies"])
        _checks.same_shape(("logp_new", "entropies"), (logp_new, entropies))
        _checks.finite("entropies", entropies.detach(), where=m)
        ent = _ref_aggregate(torch.where(m, entropies, zero), m, agg, denominator, norm_len)
        metrics["entropy"] = float(ent.detach())
        if args["entropy_coef"] > 0:
            terms.append(-(args["entropy_coef"] * ent))
    return terms


@torch.no_grad()
def _ref__clip_metrics(policy, low, high, dual, n_items, ratio, log_ratio, w, clip_ratio_c) -> dict[str, float]:
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


# ---------------------------------------------------------------------------- helpers


def padded_batch(B=6, T=9, seed=0, spread=0.4):
    """Random ``[B, T]`` logp_new, logp_old, advantages and a padded mask (every row >= 1 token)."""
    g = torch.Generator().manual_seed(seed)
    logp_old = -torch.rand(B, T, generator=g) * 3
    logp_new = logp_old + torch.randn(B, T, generator=g) * spread
    adv = torch.randn(B, T, generator=g)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = torch.arange(T)[None] < lengths[:, None]
    return logp_new, logp_old, adv, mask


def vanilla_cases():
    """(kwargs) covering every branch of today's loss."""
    for agg in AGGREGATIONS:
        for level in LEVELS:
            for clip_ratio_c in (None, 3.0):
                yield dict(agg=agg, level=level, clip_ratio_c=clip_ratio_c)
    yield dict(agg="token-mean", eps_high=0.28, denominator=17.0, beta_kl=0.05, entropy_coef=0.01)
    yield dict(agg="seq-mean-token-sum-norm", norm_len=12, beta_kl=0.1)
    yield dict(agg="seq-mean-token-mean", entropy_coef=0.003, denominator=3.0, clip_ratio_c=2.5)
    yield dict(level="sequence", eps_high=0.28, entropy_coef=0.02, beta_kl=0.01)


# ---------------------------------------------------------------------------- vanilla = today, bit for bit


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kwargs", list(vanilla_cases()), ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
def test_vanilla_equals_todays_loss_bit_for_bit(kwargs, seed):
    lp, lo, a, m = padded_batch(seed=seed, spread=0.6)
    g = torch.Generator().manual_seed(100 + seed)
    ref_logp = lo + torch.randn(lo.shape, generator=g) * 0.2
    ent = torch.rand(lo.shape, generator=g) * 2
    extra = {"logp_ref": ref_logp, "entropies": None}
    results = []
    for fn in (_ref_policy_loss, policy_loss):
        new, h = lp.clone().requires_grad_(), ent.clone().requires_grad_()
        loss, metrics = fn(new, lo, a, m, **{**kwargs, **extra, "entropies": h})
        loss.backward()
        results.append((loss.detach(), metrics, new.grad, h.grad))
    (l0, m0, g0, h0), (l1, m1, g1, h1) = results
    assert torch.equal(l0, l1)
    assert m0 == m1  # same keys, same floats
    assert torch.equal(g0, g1)
    assert (h0 is None and h1 is None) or torch.equal(h0, h1)
