"""Policy losses against direct re-implementations written from the spec's formulas."""

import pytest
import torch

from workbench.losses import aggregate, policy_loss


def batch(B=4, T=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    logp_old = -torch.rand(B, T, generator=g) * 3
    logp_new = logp_old + torch.randn(B, T, generator=g) * 0.3  # ratios spread around the clip range
    adv = torch.randn(B, T, generator=g)
    lengths = torch.tensor([6, 3, 1, 5])[:B]
    mask = torch.arange(T)[None] < lengths[:, None]
    return logp_new, logp_old, adv, mask


def per_token_surrogate(logp_new, logp_old, adv, eps_low, eps_high):
    out = torch.zeros_like(logp_new)
    for i in range(logp_new.shape[0]):
        for t in range(logp_new.shape[1]):
            rho = torch.exp(logp_new[i, t] - logp_old[i, t])
            clipped = min(max(float(rho), 1 - eps_low), 1 + eps_high)
            out[i, t] = -min(float(rho) * float(adv[i, t]), clipped * float(adv[i, t]))
    return out


def test_grpo_seq_mean_token_mean_matches_direct():
    lp, lo, a, m = batch()
    loss, metrics = policy_loss(lp, lo, a, m, eps_low=0.2, eps_high=0.2, agg="seq-mean-token-mean")
    L = per_token_surrogate(lp, lo, a, 0.2, 0.2)
    per_seq = [sum(float(L[i, t]) for t in range(6) if m[i, t]) / int(m[i].sum()) for i in range(4)]
    assert abs(float(loss) - sum(per_seq) / 4) < 1e-6
    assert abs(metrics["policy_loss"] - sum(per_seq) / 4) < 1e-6


def test_dapo_token_mean_matches_direct():
    lp, lo, a, m = batch(seed=1)
    loss, _ = policy_loss(lp, lo, a, m, eps_low=0.2, eps_high=0.28, agg="token-mean")
    L = per_token_surrogate(lp, lo, a, 0.2, 0.28)
    vals = [float(L[i, t]) for i in range(4) for t in range(6) if m[i, t]]
    assert abs(float(loss) - sum(vals) / len(vals)) < 1e-6


def test_grpo_s_sequence_level_matches_direct():
    lp, lo, _, m = batch(seed=2)
    seq_adv = torch.tensor([0.9, -0.4, 1.3, -1.1])
    adv = seq_adv[:, None] * m
    loss, metrics = policy_loss(lp, lo, adv, m, eps_low=0.2, eps_high=0.28, level="sequence")
    terms = []
    for i in range(4):
        ratios = [float(torch.exp(lp[i, t] - lo[i, t])) for t in range(6) if m[i, t]]
        w = sum(ratios) / len(ratios)  # arithmetic mean (not GSPO's geometric mean)
        A = float(seq_adv[i])
        terms.append(-min(w * A, min(max(w, 0.8), 1.28) * A))
    assert abs(float(loss) - sum(terms) / 4) < 1e-6
    assert 0.0 <= metrics["clip_frac"] <= 1.0


def test_kl_k3_and_entropy_bonus():
    lp, lo, a, m = batch(seed=3)
    ref = lo + 0.1
    ent = torch.rand(lp.shape)
    base, _ = policy_loss(lp, lo, a, m, agg="token-mean")
    loss, metrics = policy_loss(
        lp, lo, a, m, agg="token-mean", logp_ref=ref, beta_kl=0.05, entropies=ent, entropy_coef=0.01
    )
    d = ref - lp
    k3 = (d.exp() - d - 1)[m].mean()
    h = ent[m].mean()
    assert abs(float(loss) - (float(base) + 0.05 * float(k3) - 0.01 * float(h))) < 1e-6
    assert abs(metrics["kl_ref"] - float(k3)) < 1e-6 and abs(metrics["entropy"] - float(h)) < 1e-6


def test_ratio_one_gives_minus_mean_advantage_and_no_clipping():
    _, lo, a, m = batch(seed=4)
    loss, metrics = policy_loss(lo.clone(), lo, a, m, agg="token-mean")
    assert abs(float(loss) + float(a[m].mean())) < 1e-6
    assert metrics["clip_frac"] == 0.0 and abs(metrics["ratio_mean"] - 1) < 1e-7 and abs(metrics["approx_kl"]) < 1e-9


def test_clip_fractions_count_the_right_tokens():
    logp_old = torch.zeros(1, 4)
    logp_new = torch.log(torch.tensor([[0.5, 1.5, 0.5, 1.5]]))
    adv = torch.tensor([[-1.0, 1.0, 1.0, -1.0]])
    m = torch.ones(1, 4, dtype=torch.bool)
    loss, metrics = policy_loss(logp_new, logp_old, adv, m, eps_low=0.2, eps_high=0.28)
    assert metrics["clip_frac_low"] == 0.25 and metrics["clip_frac_high"] == 0.25 and metrics["clip_frac"] == 0.5
    # Clipped tokens give no gradient; unclipped ones do.
    lp = logp_new.clone().requires_grad_()
    policy_loss(lp, logp_old, adv, m, eps_low=0.2, eps_high=0.28)[0].backward()
    assert lp.grad[0, 0] == 0 and lp.grad[0, 1] == 0 and lp.grad[0, 2] != 0 and lp.grad[0, 3] != 0


def test_denominator_makes_microbatches_sum_to_full_batch():
    lp, lo, a, m = batch(seed=5)
    for agg in ("token-mean", "seq-mean-token-mean"):
        full, _ = policy_loss(lp, lo, a, m, agg=agg)
        denom = float(m.sum()) if agg == "token-mean" else 4.0
        parts = [
            policy_loss(lp[s], lo[s], a[s], m[s], agg=agg, denominator=denom)[0] for s in (slice(0, 2), slice(2, 4))
        ]
        assert abs(float(full) - float(sum(parts))) < 1e-6


def test_aggregate_modes():
    v = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    m = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    assert float(aggregate(v, m, "token-mean")) == pytest.approx(10 / 4)
    assert float(aggregate(v, m, "seq-mean-token-mean")) == pytest.approx((2 + 4) / 2)
    assert float(aggregate(v, m, "seq-mean-token-sum")) == pytest.approx((6 + 4) / 2)
    assert float(aggregate(v, m, "seq-mean-token-sum-norm")) == pytest.approx(10 / (2 * 3))


def test_errors():
    lp, lo, a, m = batch()
    with pytest.raises(ValueError, match="logp_old has shape"):
        policy_loss(lp, lo[:, :-1], a, m)
    with pytest.raises(ValueError, match="agg must be one of"):
        policy_loss(lp, lo, a, m, agg="sum")
    with pytest.raises(ValueError, match="level must be one of"):
        policy_loss(lp, lo, a, m, level="group")
    with pytest.raises(ValueError, match="eps_low must be >= 0"):
        policy_loss(lp, lo, a, m, eps_low=-0.1)
    with pytest.raises(ValueError, match="eps_low must be < 1"):
        policy_loss(lp, lo, a, m, eps_low=1.0)
    with pytest.raises(ValueError, match="beta_kl > 0 needs logp_ref"):
        policy_loss(lp, lo, a, m, beta_kl=0.1)
    with pytest.raises(ValueError, match="empty row"):
        policy_loss(lp, lo, a, torch.zeros_like(m))
    bad = a.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="advantages contains NaN"):
        policy_loss(lp, lo, bad, m)


def test_seq_mean_token_sum_norm_divides_by_a_constant_length():
    """Dr. GRPO's normaliser is a constant (TRL: max_completion_length, verl: a configured one),
    not the padded width of the batch, which changes from batch to batch."""
    v = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    m = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    assert float(aggregate(v, m, "seq-mean-token-sum-norm", norm_len=16)) == pytest.approx(10 / (2 * 16))
    wider = torch.nn.functional.pad(v, (0, 5))
    wider_mask = torch.nn.functional.pad(m, (0, 5))
    assert float(aggregate(wider, wider_mask, "seq-mean-token-sum-norm", norm_len=16)) == pytest.approx(10 / 32)
    lp, lo, a, mask = batch(seed=6)
    loss, _ = policy_loss(lp, lo, a, mask, agg="seq-mean-token-sum-norm", norm_len=20)
    L = per_token_surrogate(lp, lo, a, 0.2, 0.2)
    assert float(loss) == pytest.approx(float((L * mask).sum()) / (4 * 20), abs=1e-6)
    with pytest.raises(ValueError, match="norm_len must be > 0"):
        aggregate(v, m, "seq-mean-token-sum-norm", norm_len=0)


def test_dual_clip_caps_negative_advantage_losses_as_verl():
    """verl's dual clip: for A < 0 the per-token loss max(-A rho, -A clip(rho)) is capped at -A c."""
    logp_old = torch.zeros(1, 4)
    logp_new = torch.log(torch.tensor([[5.0, 0.5, 5.0, 1.0]]))
    adv = torch.tensor([[-1.0, -1.0, 1.0, -2.0]])
    m = torch.ones(1, 4, dtype=torch.bool)
    loss, metrics = policy_loss(logp_new, logp_old, adv, m, eps_low=0.2, eps_high=0.28, clip_ratio_c=3.0)
    # token 0: max(5, 1.28) = 5 -> min(5, 3) = 3; token 1: max(0.5, 0.8) = 0.8; token 2 (A > 0):
    # max(-5, -1.28) = -1.28; token 3: max(2, 2) = 2 -> min(2, 6) = 2
    assert float(loss) == pytest.approx((3 + 0.8 - 1.28 + 2) / 4, abs=1e-6)
    assert metrics["clip_frac_dual"] == 0.25
    off, _ = policy_loss(logp_new, logp_old, adv, m, eps_low=0.2, eps_high=0.28)
    assert float(off) == pytest.approx((5 + 0.8 - 1.28 + 2) / 4, abs=1e-6)  # off by default
    lp = logp_new.clone().requires_grad_()
    policy_loss(lp, logp_old, adv, m, eps_low=0.2, eps_high=0.28, clip_ratio_c=3.0)[0].backward()
    assert lp.grad[0, 0] == 0 and lp.grad[0, 3] != 0  # the capped token gives no gradient
    # against verl's formula on random tensors
    lp, lo, a, mask = batch(seed=7)
    lp = lo + torch.randn(lo.shape, generator=torch.Generator().manual_seed(1)) * 1.5  # wide ratios
    ratio = (lp - lo).exp()
    loss1 = torch.maximum(-a * ratio, -a * ratio.clamp(0.8, 1.28))
    expected = torch.where(a < 0, torch.minimum(-a * 3.0, loss1), loss1)
    loss, metrics = policy_loss(lp, lo, a, mask, eps_low=0.2, eps_high=0.28, clip_ratio_c=3.0)
    assert float(loss) == pytest.approx(float(expected[mask].mean()), abs=1e-6)
    assert metrics["clip_frac_dual"] == pytest.approx(float(((loss1 > -a * 3.0) & (a < 0))[mask].float().mean()))
    with pytest.raises(ValueError, match="clip_ratio_c must be > 1"):
        policy_loss(lp, lo, a, mask, clip_ratio_c=1.0)
