"""The entropy-method family beside GTPO and GRPO-S (spec: entropy-methods.md): forking tokens,
Clip-Cov, KL-Cov, the entropy advantage, ERC, entropy-bonus schedules, surprisal, pass@k.

Each method is checked on the spec's worked example and against an independent loop/numpy
re-implementation of its reference code (TRL, verl, Kwai-Klear/ERC) on random padded batches.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import workbench
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
    explicit, _ = policy_loss(lp, lo, a, m, loss_mode="vanilla", **{**kwargs, **extra, "entropies": ent})
    assert torch.equal(explicit, l0)


# ---------------------------------------------------------------------------- the spec's worked example

SPEC_H = torch.tensor([[2.0, 4.0, 1.0], [3.0, 1.0, 0.0], [1.0, 4.0, 0.5], [3.0, 0.5, 0.0]])
SPEC_MASK = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 1, 0]], dtype=torch.bool)
SPEC_A = torch.tensor([0.866024, 0.866024, -0.866024, -0.866024])[:, None] * SPEC_MASK
SPEC_LOGP = torch.tensor([[-0.5, -1.2, -2.0], [-0.3, -0.9, 0.0], [-1.5, -0.2, -2.5], [-0.8, -1.1, 0.0]])
SPEC_LOGP_OLD = torch.tensor([[-0.6, -1.0, -2.0], [-0.35, -0.9, 0.0], [-1.4, -0.3, -2.2], [-0.8, -1.3, 0.0]])
SPEC_H_NEW = torch.tensor([[2.1, 3.9, 1.2], [3.0, 0.9, 0.0], [1.0, 4.3, 0.5], [2.8, 0.5, 0.0]])


def positions(mask: torch.Tensor) -> set[tuple[int, int]]:
    return {tuple(int(v) for v in p) for p in mask.nonzero()}


# ---------------------------------------------------------------------------- forking tokens (spec section 1)


def trl_high_entropy_mask(entropies: torch.Tensor, mask: torch.Tensor, threshold: float) -> np.ndarray:
    """TRL's ``GRPOTrainer.get_high_entropy_mask`` on one process, in numpy: ``torch.quantile``'s
    linear rule in float32 (rank ``q * (n - 1)``, lerp ``a + w (b - a)`` below w = 0.5, else
    ``b - (b - a)(1 - w)``), then ``entropies * mask >= thr & mask``."""
    h, m = entropies.numpy().astype(np.float32), mask.numpy().astype(bool)
    local = np.sort(h[m])
    if local.size == 0:
        return np.zeros_like(m)
    f = np.float32
    rank = f(f(threshold) * f(local.size - 1))
    lo, hi = int(np.floor(rank)), int(np.ceil(rank))
    w, a, b = f(rank - f(lo)), local[lo], local[hi]
    thr = f(a + w * (b - a)) if w < 0.5 else f(b - (b - a) * (f(1) - w))
    return ((h * m) >= thr) & m


def test_forking_spec_example():
    for rho, thr, kept in (
        (0.2, 3.2, {(0, 1), (2, 1)}),
        (0.5, 1.5, {(0, 0), (0, 1), (1, 0), (2, 1), (3, 0)}),
    ):
        assert float(workbench.losses.top_entropy_threshold(SPEC_H, SPEC_MASK, rho)) == pytest.approx(thr, abs=1e-6)
        assert positions(workbench.losses.top_entropy_mask(SPEC_H, SPEC_MASK, rho)) == kept


def test_forking_edge_cases():
    top = workbench.losses.top_entropy_mask
    assert torch.equal(top(SPEC_H, SPEC_MASK, 1.0), SPEC_MASK)  # rho = 1 keeps every valid token
    none = torch.zeros_like(SPEC_MASK)
    assert torch.equal(top(SPEC_H, none, 0.2), none)  # no valid token: all false
    assert float(workbench.losses.top_entropy_threshold(SPEC_H, none, 0.2)) == float("inf")
    # ties at the threshold are all kept: valid 1, 2, 2, 2, 3 with rho 0.5 -> thr 2 -> 4 of 5
    h = torch.tensor([[1.0, 2.0, 2.0], [2.0, 3.0, 9.0]])
    m = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert positions(top(h, m, 0.5)) == {(0, 1), (0, 2), (1, 0), (1, 1)}  # the padded 9.0 never
    assert positions(top(h, m, 0.2)) == {(1, 1)}  # thr = 2.2
    # padding is never kept, even with the largest entropy
    assert not top(torch.tensor([[0.1, 0.2, 50.0]]), torch.tensor([[1, 1, 0]]), 0.5)[0, 2]
    with pytest.raises(ValueError, match=r"rho must be in \(0, 1\]"):
        top(h, m, 0.0)
    with pytest.raises(ValueError, match="mask has shape"):
        top(h, m[:, :2], 0.5)
    bad = h.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="entropies contains NaN"):
        top(bad, m, 0.5)
    bad[0, 0], bad[1, 2] = 1.0, float("nan")  # NaN in padding is ignored
    assert positions(top(bad, m, 0.2)) == {(1, 1)}


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(1, 300),
    rho=st.one_of(
        st.sampled_from([0.01, 0.05, 0.1, 0.2, 0.25, 0.3, 1 / 3, 0.5, 0.7, 0.8, 0.99, 1.0]), st.floats(1e-3, 1.0)
    ),
    seed=st.integers(0, 2**31 - 1),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    grid=st.booleans(),
)
def test_threshold_is_torch_quantile_bit_for_bit(n, rho, seed, dtype, grid):
    g = torch.Generator().manual_seed(seed)
    values = torch.rand(n, generator=g, dtype=dtype) * 5
    if grid:  # many ties
        values = (values * 2).round() / 2
    thr = workbench.losses.top_entropy_threshold(values, torch.ones(n, dtype=torch.bool), rho)
    assert thr.dtype == dtype
    assert torch.equal(thr, torch.quantile(values, 1 - rho))


@pytest.mark.parametrize("seed", range(12))
def test_forking_matches_trl_on_padded_batches(seed):
    g = torch.Generator().manual_seed(seed)
    B, T = 7, 11
    h = torch.rand(B, T, generator=g) * 4
    if seed % 2:  # entropies on a grid: ties at the threshold
        h = (h * 4).round() / 4
    lengths = torch.randint(0, T + 1, (B,), generator=g)  # rows of length 0 too
    m = torch.arange(T)[None] < lengths[:, None]
    h = torch.where(m, h, torch.rand(B, T, generator=g) * 100)  # padding holds large garbage
    for rho in (0.05, 0.2, 0.5, 0.8, 1.0):
        ours = workbench.losses.top_entropy_mask(h, m, rho).numpy()
        assert np.array_equal(ours, trl_high_entropy_mask(h, m, 1 - rho) if rho < 1 else m.numpy())


def test_forking_beyond_torch_quantiles_limit():
    """torch.quantile refuses inputs over 2**24 elements ("input tensor is too large", after a few
    seconds); the threshold still comes, and matches numpy's linear quantile."""
    n = 2**24 + 1001
    g = torch.Generator().manual_seed(0)
    h = torch.rand(2, n // 2 + 1, generator=g) * 3
    m = torch.ones_like(h, dtype=torch.bool)
    m[1, -1] = False
    thr = workbench.losses.top_entropy_threshold(h, m, 0.2)
    assert float(thr) == pytest.approx(float(np.quantile(h[m].numpy().astype(np.float64), 0.8)), abs=1e-6)
    keep = workbench.losses.top_entropy_mask(h, m, 0.2)
    assert int(keep.sum()) == pytest.approx(0.2 * int(m.sum()), abs=2) and not keep[1, -1]


def test_forking_in_the_loss_multiplies_the_token_loss_and_keeps_the_denominator():
    lp, lo, a, m = padded_batch(seed=3)
    h = torch.rand(lp.shape, generator=torch.Generator().manual_seed(9)) * 3
    keep = workbench.losses.top_entropy_mask(h, m, 0.3)
    new = lp.clone().requires_grad_()
    loss, metrics = policy_loss(new, lo, a, m, eps_high=0.28, top_entropy_keep=keep)
    loss.backward()
    ratio = (lp - lo).exp()
    per_token = torch.maximum(-a * ratio, -a * ratio.clamp(0.8, 1.28))
    assert float(loss.detach()) == pytest.approx(float((per_token * keep).sum() / m.sum()), abs=1e-6)  # all valid count
    unclipped = (ratio >= 0.8) & (ratio <= 1.28) & (a != 0)
    assert torch.all(new.grad[~keep] == 0) and torch.all(new.grad[keep & unclipped] != 0)
    assert metrics["top_entropy_kept_frac"] == pytest.approx(int(keep.sum()) / int(m.sum()))
    # rho in the call: over this call's tokens, of the behaviour entropies (default) or, as TRL, the current ones
    noise = torch.rand(lp.shape)
    for scope, tensors in (("mini_batch", {"entropies_old": h, "entropies": noise}), ("micro_batch", {"entropies": h})):
        in_call, metrics2 = policy_loss(
            lp, lo, a, m, eps_high=0.28, top_entropy_quantile=0.3, top_entropy_scope=scope, **tensors
        )
        assert torch.equal(in_call, loss.detach())
        assert metrics2["top_entropy_kept_frac"] == metrics["top_entropy_kept_frac"]
    # a given mask wins over rho
    given_mask, _ = policy_loss(lp, lo, a, m, eps_high=0.28, top_entropy_quantile=0.3, top_entropy_keep=keep)
    assert torch.equal(given_mask, loss.detach())
    # a mask computed over the whole mini-batch, micro-batch by micro-batch, adds up to the whole
    parts = [
        policy_loss(lp[s], lo[s], a[s], m[s], top_entropy_keep=keep[s], denominator=float(m.sum()))[0]
        for s in (slice(0, 2), slice(2, 6))
    ]
    whole, _ = policy_loss(lp, lo, a, m, top_entropy_keep=keep)
    assert float(sum(parts)) == pytest.approx(float(whole), abs=1e-6)
    assert "top_entropy_kept_frac" not in policy_loss(lp, lo, a, m)[1]


# ---------------------------------------------------------------------------- Clip-Cov and KL-Cov (spec section 2)


def verl_clip_cov(lp, lo, adv, mask, *, eps_low, eps_high, ratio, lb, ub, seed):
    """verl's ``compute_policy_loss_clip_cov`` (token-mean), token by token in numpy float64; the
    random draw is ``torch.randperm`` from a generator seeded with ``seed``."""
    lp, lo, A, M = (x.double().numpy() for x in (lp, lo, adv, mask))
    B, T = lp.shape
    rho = np.exp(lp - lo)
    pg1, pg2 = -A * rho, -A * np.clip(rho, 1 - eps_low, 1 + eps_high)
    N = M.sum()
    mean_a, mean_l = (A * M).sum() / (N + 1e-8), (lp * M).sum() / (N + 1e-8)
    candidates = []
    for i in range(B):
        for t in range(T):
            cov = (A[i, t] - mean_a) * (lp[i, t] - mean_l)
            if M[i, t] and not pg2[i, t] > pg1[i, t] and lb < cov < ub:
                candidates.append((i, t))
    corr = np.ones((B, T))
    if candidates:
        perm = torch.randperm(len(candidates), generator=torch.Generator().manual_seed(seed)).tolist()
        for j in perm[: min(max(int(ratio * N), 1), len(candidates))]:
            corr[candidates[j]] = 0
    loss = (np.maximum(pg1, pg2) * corr * M).sum() / N
    return loss, {(i, t) for i in range(B) for t in range(T) if corr[i, t] == 0}, len(candidates)


def verl_kl_cov(lp, lo, adv, mask, *, ratio, coef):
    """verl's ``compute_policy_loss_kl_cov`` (token-mean) in numpy float64."""
    lp, lo, A, M = (x.double().numpy() for x in (lp, lo, adv, mask))
    valid = [(i, t) for i in range(lp.shape[0]) for t in range(lp.shape[1]) if M[i, t]]
    a, logp = np.array([A[p] for p in valid]), np.array([lp[p] for p in valid])
    cov = (a - a.mean()) * (logp - logp.mean())
    top = np.argsort(-cov, kind="stable")[: max(1, int(len(valid) * ratio))]
    chosen = {valid[j] for j in top}
    total = 0.0
    for p in valid:
        total += -A[p] * math.exp(lp[p] - lo[p]) + (coef * abs(lp[p] - lo[p]) if p in chosen else 0.0)
    return total / len(valid), chosen


def wide_batch(seed, dtype=torch.float64):
    """Advantages and log-probs spread enough for covariances in (1, 5); garbage at padding."""
    lp, lo, a, m = padded_batch(B=12, T=16, seed=seed, spread=0.5)
    g = torch.Generator().manual_seed(1000 + seed)
    a = a * 2
    lp = lo - torch.rand(lo.shape, generator=g) * 4
    garbage = torch.randn(lp.shape, generator=g) * 50
    lp, lo, a = (torch.where(m, x, garbage) for x in (lp, lo, a))
    return lp.to(dtype), lo.to(dtype), a.to(dtype), m


@pytest.mark.parametrize("seed", range(8))
def test_clip_cov_matches_verl(seed):
    lp, lo, a, m = wide_batch(seed)
    counts = []
    for ratio, lb, ub in ((0.05, 1.0, 5.0), (0.2, 0.5, 3.0), (1.0, 0.2, 5.0), (2e-4, 1.0, 5.0), (0.5, 50.0, 60.0)):
        kw = dict(eps_low=0.2, eps_high=0.28, clip_cov_ratio=ratio, clip_cov_lb=lb, clip_cov_ub=ub)
        ref_loss, ref_zeroed, n_candidates = verl_clip_cov(
            lp, lo, a, m, eps_low=0.2, eps_high=0.28, ratio=ratio, lb=lb, ub=ub, seed=seed
        )
        g = torch.Generator().manual_seed(seed)
        loss, metrics = policy_loss(lp, lo, a, m, loss_mode="clip_cov", generator=g, eps_high=0.28, **kw_loss(kw))
        assert float(loss) == pytest.approx(ref_loss, abs=1e-9)
        assert metrics["clip_cov_frac"] == pytest.approx(len(ref_zeroed) / int(m.sum()))
        chosen = workbench.losses.clip_cov_tokens(lp, lo, a, m, generator=torch.Generator().manual_seed(seed), **kw)
        assert positions(chosen) == ref_zeroed
        if ratio == 1.0:  # fewer candidates than asked: every candidate is zeroed
            assert len(ref_zeroed) == n_candidates < int(m.sum())
        if lb == 50.0:  # no candidate: the vanilla loss
            assert n_candidates == 0 and torch.equal(loss, policy_loss(lp, lo, a, m, eps_high=0.28)[0])
        counts.append((n_candidates, len(ref_zeroed)))
    assert counts[0][0] > counts[0][1] >= 2  # more candidates than asked: a random subset
    assert counts[3][1] == 1  # k = max(int(2e-4 * N), 1) = 1


def kw_loss(kw: dict) -> dict:
    return {k: v for k, v in kw.items() if k.startswith("clip_cov")}


def test_clip_cov_zeroes_gradients_and_is_reproducible():
    lp, lo, a, m = wide_batch(2, dtype=torch.float32)
    kw = dict(loss_mode="clip_cov", clip_cov_ratio=0.1, clip_cov_lb=0.3, clip_cov_ub=5.0)
    new = lp.clone().requires_grad_()
    loss, metrics = policy_loss(new, lo, a, m, generator=torch.Generator().manual_seed(5), **kw)
    loss.backward()
    chosen = workbench.losses.clip_cov_tokens(
        lp, lo, a, m, clip_cov_ratio=0.1, clip_cov_lb=0.3, generator=torch.Generator().manual_seed(5)
    )
    assert int(chosen.sum()) == max(int(0.1 * int(m.sum())), 1)
    ratio = (lp - lo).exp()
    unclipped = (ratio >= 0.8) & (ratio <= 1.2) & (a != 0)
    assert torch.all(new.grad[chosen] == 0) and torch.all(new.grad[m & ~chosen & unclipped] != 0)
    again, _ = policy_loss(lp, lo, a, m, generator=torch.Generator().manual_seed(5), **kw)
    assert torch.equal(again, loss.detach())
    # without a generator it draws from the global one, as verl
    torch.manual_seed(11)
    global_draw, _ = policy_loss(lp, lo, a, m, **kw)
    torch.manual_seed(11)
    ref = workbench.losses.clip_cov_tokens(lp, lo, a, m, clip_cov_ratio=0.1, clip_cov_lb=0.3)
    vanilla_terms = torch.maximum(-a * (lp - lo).exp(), -a * (lp - lo).exp().clamp(0.8, 1.2))
    assert float(global_draw) == pytest.approx(float((vanilla_terms * m * ~ref).sum() / m.sum()), abs=1e-6)
    draws = {float(policy_loss(lp, lo, a, m, generator=torch.Generator().manual_seed(s), **kw)[0]) for s in range(6)}
    assert len(draws) > 1  # the draw is random


def test_kl_cov_spec_example():
    cov = workbench.losses.token_covariance(SPEC_A, SPEC_LOGP, SPEC_MASK)
    assert float(cov[2, 2]) == pytest.approx(1.212434, abs=1e-5) and float(cov[1, 0]) == pytest.approx(
        0.69282, abs=1e-5
    )
    for ratio, loss_value, chosen in (
        (0.2, 0.034745, {(2, 2), (1, 0)}),
        (0.5, 0.054745, {(0, 0), (1, 0), (1, 1), (2, 0), (2, 2)}),
    ):
        loss, metrics = policy_loss(SPEC_LOGP, SPEC_LOGP_OLD, SPEC_A, SPEC_MASK, loss_mode="kl_cov", kl_cov_ratio=ratio)
        assert float(loss) == pytest.approx(loss_value, abs=1e-6)
        assert metrics["kl_cov_frac"] == len(chosen) / 10
        assert metrics["clip_frac"] == 0.0
        assert positions(workbench.losses.kl_cov_tokens(SPEC_A, SPEC_LOGP, SPEC_MASK, kl_cov_ratio=ratio)) == chosen
    # the unclipped loss -A rho for every valid token (token-mean) with ratio -> 0 leaves one token
    loss, _ = policy_loss(SPEC_LOGP, SPEC_LOGP_OLD, SPEC_A, SPEC_MASK, loss_mode="kl_cov", ppo_kl_coef=0.0)
    plain = -(SPEC_A * (SPEC_LOGP - SPEC_LOGP_OLD).exp())[SPEC_MASK].mean()
    assert float(loss) == pytest.approx(float(plain), abs=1e-7)


@pytest.mark.parametrize("seed", range(8))
def test_kl_cov_matches_verl(seed):
    lp, lo, a, m = wide_batch(seed)
    for ratio, coef in ((2e-4, 1.0), (0.002, 1.0), (0.1, 0.5), (0.3, 2.0), (1.0, 1.0)):
        ref_loss, ref_chosen = verl_kl_cov(lp, lo, a, m, ratio=ratio, coef=coef)
        loss, metrics = policy_loss(lp, lo, a, m, loss_mode="kl_cov", kl_cov_ratio=ratio, ppo_kl_coef=coef)
        assert float(loss) == pytest.approx(ref_loss, abs=1e-9)
        assert positions(workbench.losses.kl_cov_tokens(a, lp, m, kl_cov_ratio=ratio)) == ref_chosen
        assert metrics["kl_cov_frac"] == pytest.approx(len(ref_chosen) / int(m.sum()))


def test_kl_cov_ties_go_to_the_earlier_token_and_on_policy_changes_nothing():
    a = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    lp = torch.tensor([[-1.0, -1.0, -3.0, -3.0]])  # cov 1, 1, 1, 1 (all tied)
    m = torch.ones(1, 4, dtype=torch.bool)
    assert positions(workbench.losses.kl_cov_tokens(a, lp, m, kl_cov_ratio=0.5)) == {(0, 0), (0, 1)}
    on_policy, _ = policy_loss(lp, lp, a, m, loss_mode="kl_cov", kl_cov_ratio=0.5)
    assert float(on_policy) == pytest.approx(float(-a.mean()))  # |logp - logp_old| = 0: the plain loss
    new = lp.clone().requires_grad_()
    policy_loss(new, lp, a, m, loss_mode="kl_cov", kl_cov_ratio=0.5)[0].backward()
    assert torch.allclose(new.grad, -a / 4)  # no gradient from |0| either


# ---------------------------------------------------------------------------- ERC (spec section 4)


def erc_reference(lp, lo, adv, mask, h_new, h_old, *, eps_low, eps_high, c, low, high):
    """Kwai-Klear/ERC's ``compute_policy_loss_grpo_erc`` (token-mean), token by token in float64:
    (loss, the tokens that keep their gradient)."""
    lp, lo, A, M, Hn, Ho = (x.double().numpy() for x in (lp, lo, adv, mask, h_new, h_old))
    total, kept = 0.0, set()
    for i in range(lp.shape[0]):
        for t in range(lp.shape[1]):
            if not M[i, t]:
                continue
            r = math.exp(max(min(lp[i, t] - lo[i, t], 20.0), -20.0))
            clip1 = max(-A[i, t] * r, -A[i, t] * min(max(r, 1 - eps_low), 1 + eps_high))
            total += min(-A[i, t] * c, clip1) if A[i, t] < 0 else clip1
            if low < (Hn[i, t] + 1e-8) / (Ho[i, t] + 1e-8) < high:
                kept.add((i, t))
    return total / M.sum(), kept


def test_erc_bounds_are_strict():
    h_old, h_new, m = torch.tensor([[1.0, 1.0]]), torch.tensor([[0.5, 2.0]]), torch.ones(1, 2, dtype=torch.bool)
    low, high = (0.5 + 1e-8) / (1.0 + 1e-8), (2.0 + 1e-8) / (1.0 + 1e-8)  # the two ratios, exactly
    assert not workbench.losses.erc_keep(h_new, h_old, m, erc_low=low, erc_high=high).any()
    assert workbench.losses.erc_keep(h_new, h_old, m, erc_low=low * 0.999, erc_high=high * 1.001).all()


def test_erc_spec_example():
    keep = workbench.losses.erc_keep(SPEC_H_NEW, SPEC_H, SPEC_MASK)
    assert positions(keep) == {(0, 0), (0, 1), (1, 0), (2, 0), (2, 2), (3, 1)}
    _, metrics = policy_loss(
        SPEC_LOGP, SPEC_LOGP_OLD, SPEC_A, SPEC_MASK, loss_mode="erc", entropies=SPEC_H_NEW, entropies_old=SPEC_H
    )
    assert metrics["erc_kept_frac"] == 0.6


@pytest.mark.parametrize("seed", range(6))
def test_erc_matches_the_reference(seed):
    lp, lo, a, m = wide_batch(seed)
    lp = lo + torch.randn(lo.shape, generator=torch.Generator().manual_seed(seed), dtype=lo.dtype) * 0.8
    g = torch.Generator().manual_seed(50 + seed)
    h_old = torch.rand(lp.shape, generator=g, dtype=lp.dtype) * 3
    h_new = h_old * (1 + (torch.rand(lp.shape, generator=g, dtype=lp.dtype) - 0.5) * 0.25)
    if seed == 0:
        h_old[0, 0] = h_new[0, 0] = 0.0  # zero entropy: ratio 1, kept
    ref_loss, ref_kept = erc_reference(
        lp, lo, a, m, h_new, h_old, eps_low=0.2, eps_high=0.28, c=3.0, low=0.95, high=1.05
    )
    kw = dict(eps_high=0.28, clip_ratio_c=3.0, entropies_old=h_old)
    new, h = lp.clone().requires_grad_(), h_new.clone().requires_grad_()
    loss, metrics = policy_loss(new, lo, a, m, loss_mode="erc", entropies=h, **kw)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(ref_loss, abs=1e-9)
    assert positions(workbench.losses.erc_keep(h_new, h_old, m)) == ref_kept
    assert metrics["erc_kept_frac"] == pytest.approx(len(ref_kept) / int(m.sum()))
    assert 0 < len(ref_kept) < int(m.sum())
    # the loss value is the vanilla one; the dropped tokens only lose their gradient
    plain = lp.clone().requires_grad_()
    vanilla, _ = policy_loss(plain, lo, a, m, **kw)
    vanilla.backward()
    assert torch.equal(loss.detach(), vanilla.detach())
    keep = workbench.losses.erc_keep(h_new, h_old, m)
    assert torch.equal(new.grad[keep], plain.grad[keep]) and torch.all(new.grad[~keep] == 0)
    assert h.grad is None  # ERC's entropies are a mask, never differentiated


# ---------------------------------------------------------------------------- loss-mode plumbing


def test_loss_mode_errors_and_registry():
    lp, lo, a, m = padded_batch()
    h = torch.rand(lp.shape)
    with pytest.raises(ValueError, match="loss_mode must be one of .*'clip_cov'.*'erc'"):
        policy_loss(lp, lo, a, m, loss_mode="cov")
    with pytest.raises(ValueError, match=r"loss_mode='erc' needs entropies_old \(the behaviour policy"):
        policy_loss(lp, lo, a, m, loss_mode="erc", entropies=h)
    with pytest.raises(ValueError, match=r"loss_mode='erc' needs entropies \(the current policy"):
        policy_loss(lp, lo, a, m, loss_mode="erc", entropies_old=h)
    with pytest.raises(ValueError, match="level='sequence'"):
        policy_loss(lp, lo, a, m, loss_mode="clip_cov", level="sequence")
    with pytest.raises(ValueError, match="level='sequence'"):
        policy_loss(lp, lo, a, m, top_entropy_keep=m, level="sequence")
    with pytest.raises(ValueError, match="no ratio clip"):
        policy_loss(lp, lo, a, m, loss_mode="kl_cov", clip_ratio_c=3.0)
    with pytest.raises(ValueError, match=r"kl_cov_ratio must be in \(0, 1\]"):
        policy_loss(lp, lo, a, m, loss_mode="kl_cov", kl_cov_ratio=0.0)
    with pytest.raises(ValueError, match="clip_cov_lb must be < clip_cov_ub"):
        policy_loss(lp, lo, a, m, loss_mode="clip_cov", clip_cov_lb=5.0, clip_cov_ub=1.0)
    with pytest.raises(ValueError, match="erc_low must be < erc_high"):
        policy_loss(lp, lo, a, m, loss_mode="erc", entropies=h, entropies_old=h, erc_low=1.1)
    with pytest.raises(ValueError, match="entropies_old has shape"):
        policy_loss(lp, lo, a, m, loss_mode="erc", entropies=h, entropies_old=h[:, :-1])
    with pytest.raises(ValueError, match="entropies_old must be >= 0"):
        policy_loss(lp, lo, a, m, loss_mode="erc", entropies=h, entropies_old=-h)
    with pytest.raises(ValueError, match="top_entropy_scope='mini_batch' needs top_entropy_keep .* or entropies_old"):
        policy_loss(lp, lo, a, m, top_entropy_quantile=0.2, entropies=h)
    with pytest.raises(ValueError, match="top_entropy_scope='micro_batch' needs top_entropy_keep .* or entropies "):
        policy_loss(lp, lo, a, m, top_entropy_quantile=0.2, top_entropy_scope="micro_batch", entropies_old=h)
    with pytest.raises(ValueError, match="top_entropy_scope must be one of"):
        policy_loss(lp, lo, a, m, top_entropy_quantile=0.2, top_entropy_scope="batch", entropies_old=h)
    with pytest.raises(ValueError, match=r"top_entropy_quantile must be in \(0, 1\]"):
        policy_loss(lp, lo, a, m, top_entropy_quantile=1.5, entropies=h)
    with pytest.raises(ValueError, match="top_entropy_keep has shape"):
        policy_loss(lp, lo, a, m, top_entropy_keep=m[:, :2])
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        policy_loss(lp, lo, a, m, loss_mode="clip_cov", generator=3)
    assert {"vanilla", "clip_cov", "kl_cov", "erc"} <= set(workbench.losses.LOSS_MODES)
    with pytest.raises(ValueError, match="'clip_cov' is already registered"):
        workbench.losses.register_policy_loss("clip_cov")(lambda x: None)
    with pytest.raises(ValueError, match="not a loss-mode keyword"):
        workbench.losses.register_policy_loss("test_new", options=("alpha",))


def test_a_new_loss_mode_is_one_function_and_one_line():
    losses = workbench.losses

    @losses.register_policy_loss("test_half")
    def half(x):
        loss, low, high, dual = losses._clipped(x.ratio, x.advantages, x.eps_low, x.eps_high, x.clip_ratio_c)
        return losses.ModeOutput(loss / 2, low, high, dual, {"half": 1.0})

    try:
        lp, lo, a, m = padded_batch()
        loss, metrics = policy_loss(lp, lo, a, m, loss_mode="test_half")
        assert float(loss) == pytest.approx(float(policy_loss(lp, lo, a, m)[0]) / 2) and metrics["half"] == 1.0
    finally:
        del losses.LOSS_MODES["test_half"]


# ---------------------------------------------------------------------------- entropy-bonus schedules (spec section 5)


def test_adaptive_entropy_controller_spec_example():
    coef, seen = 0.0, []
    for e in (0.10, 0.15, 0.30, 0.25):
        coef, active = workbench.losses.adaptive_entropy_coef(coef, e)
        seen.append((coef, active))
    assert [c for c, _ in seen] == pytest.approx([0.005, 0.010, 0.005, 0.0], abs=1e-12)
    assert [a for _, a in seen] == [True, True, False, False]


def test_adaptive_entropy_controller_bounds_match_trl():
    step = workbench.losses.adaptive_entropy_coef
    assert step(0.999, 0.1, delta=0.005) == (1.0, True)  # min(coef + delta, coef_max)
    assert step(0.002, 0.5, delta=0.005, coef_min=0.001) == (0.001, False)  # max(coef - delta, coef_min)
    assert step(0.01, 0.2) == (0.015, True)  # e == target counts as low (TRL: <=)
    assert step(0.3, 2.0, target=1.5, delta=0.1, coef_max=0.5) == pytest.approx((0.2, False))
    with pytest.raises(ValueError, match="coef_min must be <= coef_max"):
        step(0.0, 0.1, coef_min=0.5, coef_max=0.1)
    with pytest.raises(TypeError, match="entropy must be a finite number"):
        step(0.0, float("nan"))


def test_linear_entropy_schedule():
    sched = workbench.losses.linear_entropy_coef
    assert sched(0, 11, 0.01, 0.0) == 0.01
    assert sched(5, 11, 0.01, 0.0) == pytest.approx(0.005)
    assert sched(10, 11, 0.01, 0.0) == 0.0
    assert sched(20, 11, 0.01, 0.0) == 0.0  # past the end: the final value
    assert sched(3, 5, 0.0, 0.004) == pytest.approx(0.003)
    assert sched(0, 1, 0.02, 0.0) == 0.02
    with pytest.raises(ValueError, match="steps >= 1"):
        sched(0, 0, 0.01, 0.0)
    with pytest.raises(TypeError, match="step must be an int"):
        sched(1.5, 10, 0.01, 0.0)


# ---------------------------------------------------------------------------- entropy advantage (spec section 3)

SPEC_EXPECTED_ENTROPY_ADV = [
    [1.299036, 1.299036, 1.266024],
    [1.299036, 1.266024, 0.0],
    [-0.466024, -0.433012, -0.666024],
    [-0.433012, -0.666024, 0.0],
]


def entropy_advantage_loop(adv, h, mask, alpha, kappa):
    """The paper's formula, token by token."""
    out = np.zeros(adv.shape)
    for idx in np.ndindex(*adv.shape):
        if mask[idx]:
            a = float(adv[idx])
            out[idx] = a + min(alpha * float(h[idx]), abs(a) / kappa)
    return out


def test_entropy_advantage_spec_example():
    from workbench.examples import spec_example

    ex = spec_example()
    grpo = workbench.grpo(ex["rewards"], ex["mask"])
    out = workbench.advantages.entropy_advantage(grpo, ex["entropies"], ex["mask"])
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), SPEC_EXPECTED_ENTROPY_ADV, atol=1e-5)
    registry = workbench.advantages.grpo_entropy_advantage(ex["rewards"], ex["entropies"], ex["mask"])
    assert torch.equal(registry, out)


@settings(max_examples=100, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    alpha=st.floats(0.0, 3.0),
    kappa=st.floats(1.01, 10.0),
)
def test_entropy_advantage_never_flips_a_sign_and_matches_the_formula(seed, alpha, kappa):
    g = torch.Generator().manual_seed(seed)
    adv = torch.randn(3, 4, 7, generator=g)
    adv[0, 0] = 0.0  # a zero-variance group's advantage stays 0
    h = torch.rand(3, 4, 7, generator=g) * 5
    m = torch.rand(3, 4, 7, generator=g) < 0.8
    out = workbench.advantages.entropy_advantage(adv, h, m, alpha=alpha, kappa=kappa)
    np.testing.assert_allclose(
        out.numpy(), entropy_advantage_loop(adv.numpy(), h.numpy(), m.numpy(), alpha, kappa), atol=1e-6
    )
    assert torch.all(torch.sign(out[m]) == torch.sign(adv[m]))
    assert torch.all(out[~m] == 0) and torch.all(out[0, 0] == 0)
    assert torch.all(out[m].abs() <= adv[m].abs() * (1 + 1 / kappa) + 1e-6)


def test_entropy_advantage_errors_and_no_gradient():
    adv, h, m = torch.ones(2, 3), torch.ones(2, 3, requires_grad=True), torch.ones(2, 3, dtype=torch.bool)
    assert not workbench.advantages.entropy_advantage(adv, h, m).requires_grad
    with pytest.raises(ValueError, match="kappa must be > 1"):
        workbench.advantages.entropy_advantage(adv, h, m, kappa=1.0)
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        workbench.advantages.entropy_advantage(adv, h, m, alpha=-0.1)
    with pytest.raises(ValueError, match="entropies has shape"):
        workbench.advantages.entropy_advantage(adv, h[:, :2], m)
    with pytest.raises(ValueError, match="entropies must be >= 0"):
        workbench.advantages.entropy_advantage(adv, -h.detach(), m)


# ---------------------------------------------------------------------------- surprisal (spec section 6)


def test_shaping_signal():
    logp_old = torch.tensor([[-0.5, -2.0, 3e-8], [-1.0, float("nan"), -7.0]])
    m = torch.tensor([[1, 1, 1], [1, 0, 1]], dtype=torch.bool)
    s = workbench.advantages.shaping_signal(None, logp_old, m, signal="surprisal")
    assert torch.equal(s, torch.tensor([[0.5, 2.0, 0.0], [1.0, 0.0, 7.0]]))  # padding 0, rounded above 0 -> 0
    h = torch.rand(2, 3)
    assert workbench.advantages.shaping_signal(h, logp_old, m) is h
    with pytest.raises(ValueError, match="signal='surprisal' needs logp_old"):
        workbench.advantages.shaping_signal(h, None, m, signal="surprisal")
    with pytest.raises(ValueError, match="signal must be one of 'entropy', 'surprisal'"):
        workbench.advantages.shaping_signal(h, logp_old, m, signal="nll")


# ---------------------------------------------------------------------------- the registry lines


def spec_group():
    from workbench.examples import spec_example

    ex = spec_example()
    return ex["rewards"], ex["entropies"], ex["mask"]


def test_registry_lines_carry_each_papers_defaults():
    A = workbench.ALGORITHMS
    base = lambda a: (a.eps_low, a.eps_high, a.agg, a.level)  # noqa: E731
    assert base(A["dapo_forking"]) == base(A["dapo"]) and A["dapo_forking"].dynamic_sampling
    assert A["dapo_forking"].loss_kwargs() == {
        **A["dapo"].loss_kwargs(),
        "top_entropy_quantile": 0.2,
        "top_entropy_scope": "mini_batch",
    }
    assert A["dapo_forking"].loss_tensors == ("top_entropy_keep",)
    assert A["clip_cov"].loss_kwargs() == {
        "eps_low": 0.2,
        "eps_high": 0.2,
        "agg": "token-mean",
        "level": "token",
        "loss_mode": "clip_cov",
        "clip_cov_ratio": 2e-4,
        "clip_cov_lb": 1.0,
        "clip_cov_ub": 5.0,
    }
    assert A["clip_cov"].dynamic_sampling and not A["kl_cov"].dynamic_sampling  # as the paper's recipes
    assert A["kl_cov"].loss_kwargs() == {
        "eps_low": 0.2,
        "eps_high": 0.2,
        "agg": "token-mean",
        "level": "token",
        "loss_mode": "kl_cov",
        "kl_cov_ratio": 0.002,
        "ppo_kl_coef": 1.0,
    }
    assert A["erc"].loss_kwargs() == {
        **A["dapo"].loss_kwargs(),
        "loss_mode": "erc",
        "erc_low": 0.95,
        "erc_high": 1.05,
        "clip_ratio_c": 3.0,
    }
    assert A["erc"].loss_tensors == ("entropies", "entropies_old") and A["erc"].dynamic_sampling
    assert A["entropy_adv"].loss_kwargs() == A["grpo"].loss_kwargs() and A["entropy_adv"].uses_entropy
    for name, plain in (("gtpo_surprisal", "gtpo"), ("grpo_s_surprisal", "grpo_s")):
        assert A[name].entropy_signal == "surprisal" and A[plain].entropy_signal == "entropy"
        assert A[name].loss_kwargs() == A[plain].loss_kwargs() and A[name].uses_entropy
    for name in ("grpo", "dapo", "gtpo", "grpo_s"):  # the existing lines are unchanged
        assert (A[name].loss_mode, A[name].top_entropy_quantile, A[name].clip_ratio_c) == ("vanilla", 1.0, None)
        assert A[name].loss_tensors == ()


def test_registry_advantages():
    r, h, m = spec_group()
    A = workbench.ALGORITHMS
    grpo = workbench.grpo(r, m)
    for name in ("clip_cov", "kl_cov"):
        assert torch.equal(A[name].advantages(r, h, m), grpo)
    for name in ("dapo_forking", "erc"):
        assert torch.equal(A[name].advantages(r, h, m), workbench.dapo(r, m))
    np.testing.assert_allclose(A["entropy_adv"].advantages(r, h, m).numpy(), SPEC_EXPECTED_ENTROPY_ADV, atol=1e-5)
    assert not torch.equal(A["entropy_adv"].advantages(r, h, m, alpha=0.1), A["entropy_adv"].advantages(r, h, m))
    # surprisal: the same formulas with entropies := -logp_old
    logp_old = torch.where(m, -h * 0.7 - 0.1, torch.zeros(()))
    assert torch.equal(A["gtpo_surprisal"].advantages(r, h, m, logp_old=logp_old), workbench.gtpo(r, -logp_old, m))
    assert torch.equal(
        A["grpo_s_surprisal"].advantages(r, None, m, logp_old=logp_old), workbench.grpo_s(r, -logp_old, m)
    )
    assert not torch.allclose(A["gtpo_surprisal"].advantages(r, h, m, logp_old=logp_old), workbench.gtpo(r, h, m))
    with pytest.raises(ValueError, match="signal='surprisal' needs logp_old"):
        A["gtpo_surprisal"].advantages(r, h, m)
    assert torch.equal(A["gtpo"].advantages(r, h, m, logp_old=logp_old), workbench.gtpo(r, h, m))  # ignored


def test_every_registry_line_runs_its_loss():
    """policy_loss(**algorithm.loss_kwargs(), the tensors of loss_tensors) on one padded batch."""
    lp, lo, a, m = padded_batch(seed=4, spread=0.3)
    g = torch.Generator().manual_seed(4)
    h_old = torch.rand(lp.shape, generator=g) * 2
    h_new = h_old * (1 + (torch.rand(lp.shape, generator=g) - 0.5) * 0.2)
    for name, algo in workbench.ALGORITHMS.items():
        keep = algo.top_entropy_keep(h_old, m)
        tensors = {"entropies": h_new, "entropies_old": h_old, "top_entropy_keep": keep}
        loss, metrics = policy_loss(lp, lo, a, m, **algo.loss_kwargs(), **{k: tensors[k] for k in algo.loss_tensors})
        assert math.isfinite(float(loss)), name
        expected_metric = {"clip_cov": "clip_cov_frac", "kl_cov": "kl_cov_frac", "erc": "erc_kept_frac"}
        if name in expected_metric:
            assert expected_metric[name] in metrics
    keep = workbench.ALGORITHMS["dapo_forking"].top_entropy_keep(h_old, m)
    assert torch.equal(keep, workbench.losses.top_entropy_mask(h_old, m, 0.2))
    assert workbench.ALGORITHMS["dapo"].top_entropy_keep(h_old, m) is None
    direct, _ = policy_loss(lp, lo, a, m, loss_mode="kl_cov", kl_cov_ratio=0.002)
    assert torch.equal(policy_loss(lp, lo, a, m, **workbench.ALGORITHMS["kl_cov"].loss_kwargs())[0], direct)


def test_algorithm_validates_its_method_fields():
    Algorithm, grpo = workbench.Algorithm, workbench.ALGORITHMS["grpo"].advantage_fn
    with pytest.raises(ValueError, match="loss_mode must be one of"):
        Algorithm("bad", grpo, loss_mode="cov")
    with pytest.raises(ValueError, match="'kl_cov_ratio' is not an option of loss_mode 'clip_cov'; it takes: clip_cov"):
        Algorithm("bad", grpo, loss_mode="clip_cov", loss_mode_kwargs={"kl_cov_ratio": 0.1})
    with pytest.raises(ValueError, match="clip_cov_lb must be < clip_cov_ub"):
        Algorithm("bad", grpo, loss_mode="clip_cov", loss_mode_kwargs={"clip_cov_lb": 6.0})
    with pytest.raises(ValueError, match="algorithm 'bad': loss_mode='kl_cov' has no ratio clip"):
        Algorithm("bad", grpo, loss_mode="kl_cov", clip_ratio_c=3.0)
    with pytest.raises(ValueError, match="level='sequence'"):
        Algorithm("bad", grpo, level="sequence", top_entropy_quantile=0.2)
    with pytest.raises(ValueError, match=r"top_entropy_quantile must be in \(0, 1\]"):
        Algorithm("bad", grpo, top_entropy_quantile=0.0)
    with pytest.raises(ValueError, match="top_entropy_scope must be one of 'mini_batch', 'micro_batch'"):
        Algorithm("bad", grpo, top_entropy_quantile=0.2, top_entropy_scope="batch")
    with pytest.raises(ValueError, match="entropy_signal must be one of 'entropy', 'surprisal'"):
        Algorithm("bad", grpo, entropy_signal="nll")
    trl = workbench.ALGORITHMS["dapo_forking"].replace(top_entropy_scope="micro_batch")
    assert trl.loss_tensors == ("entropies",) and trl.top_entropy_keep(torch.ones(1, 2), torch.ones(1, 2)) is None


def test_configs_of_the_new_algorithms_resolve():
    from workbench.training.config import TrainConfig

    erc = TrainConfig(algorithm="erc").resolved_algorithm()
    assert (erc.loss_mode, erc.clip_ratio_c, erc.loss_mode_kwargs["erc_high"]) == ("erc", 3.0, 1.05)
    assert TrainConfig(algorithm="dapo_forking").resolved_algorithm().top_entropy_quantile == 0.2
    TrainConfig(algorithm="gtpo_surprisal", advantage_kwargs={"alpha2": 0.2})
    TrainConfig(algorithm="entropy_adv", advantage_kwargs={"alpha": 0.2, "kappa": 3.0})
    with pytest.raises(ValueError, match="kappa must be > 1"):
        TrainConfig(algorithm="entropy_adv", advantage_kwargs={"kappa": 1.0})
