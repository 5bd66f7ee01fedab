"""Advantages: the spec's worked example, invariants, degenerate cases and errors."""

import pytest
import torch

from workbench import advantages as adv
from workbench.examples import spec_example

ATOL = 1e-6


@pytest.fixture
def ex():
    return spec_example()


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


# ---------------------------------------------------------------- worked example (spec)


def test_gtpo_shaped_rewards_worked_example(ex):
    R = adv.shaped_rewards_gtpo(ex["rewards"], ex["entropies"], ex["mask"])
    expected = t(
        [
            [1.08, 1.16, 1.1],
            [1.12, 1.04, 0.0],
            [-1.15, -1 - 0.1 * (0.25 / 2.25) * 2, -1.1],
            [-1.05, -1 - 0.1 * (2 / 2.25) * 2, 0.0],
        ]
    )
    torch.testing.assert_close(R, expected, atol=ATOL, rtol=0)
    assert abs(float(R[2, 1]) - (-1.0222222)) < 1e-6
    assert abs(float(R[3, 1]) - (-1.1777778)) < 1e-6


def test_grpo_s_shaped_rewards_worked_example(ex):
    R = adv.shaped_rewards_grpo_s(ex["rewards"], ex["entropies"], ex["mask"])
    expected = t(
        [
            1 + 0.1 * ((7 / 3) / (13 / 3)) * 2,
            1 + 0.1 * (2 / (13 / 3)) * 2,
            -1 - 0.1 * ((6 / 11) / (86 / 77)) * 2,
            -1 - 0.1 * ((4 / 7) / (86 / 77)) * 2,
        ]
    )
    torch.testing.assert_close(R, expected, atol=1e-9, rtol=0)
    torch.testing.assert_close(R, t([1.1076923, 1.0923077, -1.0976744, -1.1023256]), atol=1e-6, rtol=0)


def test_grpo_worked_example(ex):
    A = adv.grpo(ex["rewards"], ex["mask"])
    a = 0.5 / (0.5773502691896258 + 1e-6)
    expected = torch.tensor([[a, a, a], [a, a, 0], [-a, -a, -a], [-a, -a, 0]], dtype=torch.float32)
    torch.testing.assert_close(A, expected, atol=ATOL, rtol=0)
    assert abs(float(A[0, 0]) - 0.866024) < 1e-6
    assert A.dtype == torch.float32


def test_dapo_equals_grpo(ex):
    torch.testing.assert_close(adv.dapo(ex["rewards"], ex["mask"]), adv.grpo(ex["rewards"], ex["mask"]))


def test_gtpo_joint_worked_example(ex):
    A = adv.gtpo(ex["rewards"], ex["entropies"], ex["mask"])
    expected = torch.tensor(
        [
            [0.930469, 0.999393, 0.947700],
            [0.964931, 0.896007, 0.0],
            [-0.990777, -0.880691, -0.947700],
            [-0.904623, -1.014709, 0.0],
        ]
    )
    torch.testing.assert_close(A, expected, atol=1e-5, rtol=0)


def test_grpo_s_joint_worked_example(ex):
    A = adv.grpo_s(ex["rewards"], ex["entropies"], ex["mask"])
    per_seq = torch.tensor([0.872069, 0.859957, -0.864182, -0.867844])
    expected = per_seq[:, None] * ex["mask"].float()
    torch.testing.assert_close(A, expected, atol=1e-5, rtol=0)


def test_gtpo_per_polarity_worked_example(ex):
    A = adv.gtpo(ex["rewards"], ex["entropies"], ex["mask"], normalize="per_polarity")
    expected = torch.tensor(
        [
            [-0.447204, 1.341611, 0.0],
            [0.447204, -1.341611, 0.0],
            [-0.764735, 1.189588, 0.0],
            [0.764735, -1.189588, 0.0],
        ]
    )
    torch.testing.assert_close(A, expected, atol=1e-5, rtol=0)


def test_gtpo_joint_equals_independent_reimplementation(ex):
    """Joint z-score over the 10 valid tokens, written out by hand from the shaped rewards."""
    R = adv.shaped_rewards_gtpo(ex["rewards"], ex["entropies"], ex["mask"])
    vals = R[ex["mask"]]
    mean = vals.sum() / len(vals)
    std = (((vals - mean) ** 2).sum() / (len(vals) - 1)).sqrt()
    expected = torch.where(ex["mask"], (R - mean) / (std + 1e-6), torch.zeros_like(R)).float()
    torch.testing.assert_close(adv.gtpo(ex["rewards"], ex["entropies"], ex["mask"]), expected, atol=1e-7, rtol=0)


# ---------------------------------------------------------------- invariants


def random_batch(G=3, n=6, T=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randint(0, 2, (G, n), generator=g).float()
    rewards[:, 0], rewards[:, 1] = 1.0, 0.0  # both polarities in every group
    lengths = torch.randint(1, T + 1, (G, n), generator=g)
    mask = torch.arange(T)[None, None, :] < lengths[..., None]
    entropies = torch.rand(G, n, T, generator=g) * 3
    return rewards, entropies, mask


@pytest.mark.parametrize("fn", ["gtpo", "grpo_s", "grpo"])
def test_masked_positions_exactly_zero(fn):
    r, H, m = random_batch()
    A = adv.grpo(r, m) if fn == "grpo" else getattr(adv, fn)(r, H, m)
    assert A.shape == m.shape and A.dtype == torch.float32
    assert bool((A[~m] == 0).all())
    assert bool(torch.isfinite(A).all())


def test_gtpo_weights_sum_to_alive_count():
    """sum over O+ alive of (R+ - alpha1 r) / alpha2 = d_t; over O-: -h_t (column sums)."""
    r, H, m = random_batch(G=2, n=8, T=12, seed=1)
    R = adv.shaped_rewards_gtpo(r, H, m, alpha1=1.0, alpha2=0.1)
    pos = (r > 0.5)[..., None] & m
    neg = ~(r > 0.5)[..., None] & m
    base = torch.where(r > 0.5, r, r - 1.0)[..., None].double()
    bonus = (R - base) / 0.1
    torch.testing.assert_close((bonus * pos).sum(1), pos.sum(1).double(), atol=1e-9, rtol=0)
    torch.testing.assert_close((bonus * neg).sum(1), -neg.sum(1).double(), atol=1e-9, rtol=0)


def test_gtpo_reward_conservation_prop_2_2():
    """alpha1 + alpha2 = 1, rewards 1 on O+: sum O+ R+ = d_t and sum O- R- = -h_t."""
    r, H, m = random_batch(G=2, n=8, T=12, seed=2)
    R = adv.shaped_rewards_gtpo(r, H, m, alpha1=0.7, alpha2=0.3)
    pos = (r > 0.5)[..., None] & m
    neg = ~(r > 0.5)[..., None] & m
    torch.testing.assert_close((R * pos).sum(1), pos.sum(1).double(), atol=1e-9, rtol=0)
    torch.testing.assert_close((R * neg).sum(1), -neg.sum(1).double(), atol=1e-9, rtol=0)


def test_grpo_s_constant_over_each_sequence():
    r, H, m = random_batch(seed=3)
    A = adv.grpo_s(r, H, m)
    first = A[..., :1].expand_as(A)
    assert bool((A[m] == first[m]).all())


def test_equal_entropies_reduce_to_baseline_shape():
    r, _, m = random_batch(seed=4)
    H = torch.full(m.shape, 1.7)
    R = adv.shaped_rewards_gtpo(r, H, m, alpha1=1.0, alpha2=0.1)
    expected = torch.where(r > 0.5, 1.0 * r.double() + 0.1, -1.0 - 0.1)[..., None].expand(m.shape).double() * m
    torch.testing.assert_close(R, expected, atol=1e-9, rtol=0)
    Rs = adv.shaped_rewards_grpo_s(r, H, m)
    expected_s = torch.full(r.shape, -1.1, dtype=torch.float64).masked_fill(r > 0.5, 1.1)
    torch.testing.assert_close(Rs, expected_s, atol=1e-9, rtol=0)


def test_equal_entropies_grpo_s_joint_equals_grpo():
    r, _, m = random_batch(seed=5)
    H = torch.full(m.shape, 0.9)
    torch.testing.assert_close(adv.grpo_s(r, H, m), adv.grpo(r, m), atol=1e-5, rtol=0)


def test_equal_entropies_gtpo_joint_is_polarity_sign_only():
    """All entropies equal: every O+ token has one value and every O- token another."""
    r, _, m = random_batch(seed=6)
    A = adv.gtpo(r, torch.ones(m.shape), m)
    pos = (r > 0.5)[..., None] & m
    neg = ~(r > 0.5)[..., None] & m
    for g in range(r.shape[0]):
        assert torch.unique(A[g][pos[g]]).numel() == 1 and float(A[g][pos[g]][0]) > 0
        assert torch.unique(A[g][neg[g]]).numel() == 1 and float(A[g][neg[g]][0]) < 0


def test_alpha2_zero_gtpo_is_polarity_baseline():
    r, H, m = random_batch(seed=7)
    A0 = adv.gtpo(r, H, m, alpha2=0.0)
    A1 = adv.gtpo(r, torch.ones(m.shape), m)
    torch.testing.assert_close(A0, A1, atol=1e-6, rtol=0)


def test_groups_never_mix():
    r, H, m = random_batch(G=3, seed=8)
    full = adv.gtpo(r, H, m)
    for g in range(3):
        torch.testing.assert_close(full[g], adv.gtpo(r[g], H[g], m[g]))
    full_s = adv.grpo_s(r, H, m)
    torch.testing.assert_close(full_s[1], adv.grpo_s(r[1], H[1], m[1]))


def test_leading_batch_shape_any():
    r, H, m = random_batch(G=4, seed=9)
    A = adv.gtpo(r.reshape(2, 2, -1), H.reshape(2, 2, *H.shape[1:]), m.reshape(2, 2, *m.shape[1:]))
    torch.testing.assert_close(A.reshape(m.shape), adv.gtpo(r, H, m))


def test_permuting_a_group_permutes_advantages():
    r, H, m = random_batch(G=1, seed=10)
    perm = torch.randperm(r.shape[1], generator=torch.Generator().manual_seed(0))
    for fn in (adv.gtpo, adv.grpo_s):
        torch.testing.assert_close(fn(r[:, perm], H[:, perm], m[:, perm]), fn(r, H, m)[:, perm], atol=1e-6, rtol=0)


def test_entropies_are_not_differentiated():
    r, H, m = random_batch(seed=11)
    H = H.requires_grad_()
    A = adv.gtpo(r, H, m)
    assert not A.requires_grad


# ---------------------------------------------------------------- degenerate but legal


def test_zero_variance_groups_skip_and_shape():
    m = torch.ones(2, 3, 4, dtype=torch.bool)
    r = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    H = torch.rand(2, 3, 4) + 0.1
    for fn in (adv.gtpo, adv.grpo_s):
        assert bool((fn(r, H, m) == 0).all())
        shaped = fn(r, H, m, zero_variance="shape")
        assert bool(torch.isfinite(shaped).all()) and float(shaped.abs().sum()) > 0
    assert bool((adv.grpo(r, m) == 0).all())


def test_all_entropies_zero_is_finite_and_uniform():
    r = torch.tensor([1.0, 1.0, 0.0, 0.0])
    m = torch.ones(4, 3, dtype=torch.bool)
    H = torch.zeros(4, 3)
    R = adv.shaped_rewards_gtpo(r, H, m)
    torch.testing.assert_close(R, t([[1.1] * 3, [1.1] * 3, [-1.1] * 3, [-1.1] * 3]), atol=1e-9, rtol=0)
    for fn in (adv.gtpo, adv.grpo_s):
        assert bool(torch.isfinite(fn(r, H, m)).all())


def test_single_valid_token_responses():
    r = torch.tensor([1.0, 0.0])
    m = torch.tensor([[1, 0, 0], [1, 0, 0]], dtype=torch.bool)
    H = torch.tensor([[0.3, 9.0, 9.0], [2.0, 9.0, 9.0]])
    A = adv.gtpo(r, H, m)
    assert bool(torch.isfinite(A).all())
    assert float(A[0, 0]) > 0 > float(A[1, 0]) and bool((A[:, 1:] == 0).all())


def test_one_survivor_per_side_float32_noise_is_not_amplified():
    """Spec precision note: one response left on a side has weight exactly 1; its per-polarity
    advantage must be exactly 0, not float32 noise divided by 1e-6."""
    r = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float32)
    m = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    H = torch.tensor([[0.1, 0.7, 1.3, 0.3, 0.9]] * 3, dtype=torch.float32)
    A = adv.gtpo(r, H, m, normalize="per_polarity")
    assert bool((A[0] == 0).all()), A[0]  # O+ is one response: all of its tokens equal
    A = adv.grpo_s(r, H, m, normalize="per_polarity")
    assert float(A[0, 0]) == 0.0


def test_grpo_scales():
    r = torch.tensor([[1.0, 0.0, 0.0, 0.0], [3.0, 1.0, 1.0, 1.0]])
    m = torch.ones(2, 4, 2, dtype=torch.bool)
    none = adv.grpo(r, m, scale="none")
    torch.testing.assert_close(none[:, :, 0], torch.tensor([[0.75, -0.25, -0.25, -0.25], [1.5, -0.5, -0.5, -0.5]]))
    batch = adv.grpo(r, m, scale="batch")
    torch.testing.assert_close(batch[:, :, 0], (none[:, :, 0].double() / (r.double().std() + 1e-6)).float())


# ---------------------------------------------------------------- errors


def test_errors_name_the_problem():
    r, H, m = random_batch()
    with pytest.raises(ValueError, match="mask has shape"):
        adv.gtpo(r, H, m[:, :, :-1])
    with pytest.raises(ValueError, match="entropies has shape"):
        adv.gtpo(r, H[:, :, :-1], m)
    with pytest.raises(ValueError, match="empty group"):
        adv.grpo(torch.zeros(2, 0), torch.ones(2, 0, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="group of one|groups of one"):
        adv.gtpo(torch.ones(2, 1), torch.ones(2, 1, 3), torch.ones(2, 1, 3))
    bad = m.clone()
    bad[1, 2] = False
    with pytest.raises(ValueError, match=r"empty row at index \(1, 2\)"):
        adv.gtpo(r, H, bad)
    with pytest.raises(ValueError, match="rewards contains NaN"):
        adv.grpo(torch.tensor([1.0, float("nan")]), torch.ones(2, 2))
    H2 = H.clone()
    H2[0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="entropies contains Inf"):
        adv.gtpo(r, H2, m)
    with pytest.raises(ValueError, match="entropies must be >= 0"):
        adv.gtpo(r, -H, m)
    with pytest.raises(ValueError, match="alpha2 must be >= 0"):
        adv.gtpo(r, H, m, alpha2=-0.1)
    with pytest.raises(ValueError, match="normalize must be one of"):
        adv.gtpo(r, H, m, normalize="both")
    with pytest.raises(ValueError, match="zero_variance must be one of"):
        adv.grpo_s(r, H, m, zero_variance="drop")
    with pytest.raises(ValueError, match="scale must be one of"):
        adv.grpo(r, m, scale="global")
    with pytest.raises(TypeError, match="rewards must be a torch.Tensor"):
        adv.grpo([1.0, 0.0], m[0, :2])
    with pytest.raises(ValueError, match="mask must contain only 0 and 1"):
        adv.grpo(r, m.float() * 2)


def test_nan_entropy_at_masked_positions_is_ignored():
    r, H, m = random_batch()
    H2 = H.clone()
    H2[~m] = float("nan")
    torch.testing.assert_close(adv.gtpo(r, H2, m), adv.gtpo(r, H, m))


def _two_groups():
    """One response token each (T = 1). Group A: rewards 1, 1, 0, 0, entropies 1, 3, 1, 1;
    group B: rewards 1, 0, 0, 0, entropies 2, 1, 2, 2. With alpha1 = 1, alpha2 = 0.1 (Eq. 3, 5):
    A: R+ = 1 + 0.1 * (1/4) * 2 = 1.05 and 1 + 0.1 * (3/4) * 2 = 1.15; R- = -1 - 0.1 * (1/2) * 2 = -1.1 (both).
    B: R+ = 1 + 0.1 * 1 * 1 = 1.1; 1/H = 1, 1/2, 1/2 (sum 2): R- = -1 - 0.1 * (1/2) * 3 = -1.15,
    then -1 - 0.1 * (1/4) * 3 = -1.075 (twice)."""
    r = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    h = torch.tensor([[1.0, 3.0, 1.0, 1.0], [2.0, 1.0, 2.0, 2.0]])[..., None]
    return r, h, torch.ones(2, 4, 1, dtype=torch.bool)


def test_gtpo_per_polarity_over_the_batch_by_hand():
    """O+ of the batch: 1.05, 1.15, 1.1 (mean 1.1, std 0.05): z = -1, 1, 0.
    O- of the batch: -1.1, -1.1, -1.15, -1.075, -1.075 (mean -1.1, squared deviations 0, 0,
    0.0025, 0.000625, 0.000625, var 0.00375 / 4, std 0.0306186): z = 0, 0, -1.63299, 0.81650, 0.81650."""
    r, h, m = _two_groups()
    shaped = adv.shaped_rewards_gtpo(r, h, m)[..., 0]
    torch.testing.assert_close(
        shaped,
        torch.tensor([[1.05, 1.15, -1.1, -1.1], [1.1, -1.15, -1.075, -1.075]], dtype=torch.float64),
        atol=1e-7,
        rtol=0,
    )
    A = adv.gtpo(r, h, m, normalize="per_polarity_batch")[..., 0]
    s_pos, s_neg = 0.05 + 1e-6, (0.00375 / 4) ** 0.5 + 1e-6
    expected = torch.tensor(
        [[-0.05 / s_pos, 0.05 / s_pos, 0.0, 0.0], [0.0, -0.05 / s_neg, 0.025 / s_neg, 0.025 / s_neg]]
    )
    torch.testing.assert_close(A, expected, atol=2e-6, rtol=0)
    # per group instead: A's O- are equal (std 0 -> 0), B's single success gets 0
    B = adv.gtpo(r, h, m, normalize="per_polarity")[..., 0]
    s_b = (0.001875) ** 0.5 + 1e-6
    torch.testing.assert_close(B[1], torch.tensor([0.0, -0.05 / s_b, 0.025 / s_b, 0.025 / s_b]), atol=2e-6, rtol=0)
    assert B[0, 2] == 0 and B[0, 0] == pytest.approx(-(0.05 / (0.0707107 + 1e-6)), abs=1e-5)


def test_per_polarity_batch_zero_variance_groups():
    """zero_variance="skip": a group whose rewards are all equal gets 0 and is left out of the
    batch statistics (as if dynamic sampling had dropped it); "shape": it is shaped and counted."""
    r, h, m = _two_groups()
    base = adv.gtpo(r, h, m, normalize="per_polarity_batch")
    r3 = torch.cat([r, torch.ones(1, 4)])
    h3 = torch.cat([h, torch.tensor([[[0.5], [4.0], [1.0], [2.0]]])])
    m3 = torch.ones(3, 4, 1, dtype=torch.bool)
    skip = adv.gtpo(r3, h3, m3, normalize="per_polarity_batch")
    torch.testing.assert_close(skip[:2], base)
    assert bool((skip[2] == 0).all())
    shape = adv.gtpo(r3, h3, m3, normalize="per_polarity_batch", zero_variance="shape")
    assert not torch.allclose(shape[:2], base) and bool((shape[2] != 0).any())
    # one group: the batch is the group
    torch.testing.assert_close(
        adv.gtpo(r[:1], h[:1], m[:1], normalize="per_polarity_batch"),
        adv.gtpo(r[:1], h[:1], m[:1], normalize="per_polarity"),
    )
    seq = adv.grpo_s(r, h, m, normalize="per_polarity_batch")
    assert seq.shape == (2, 4, 1) and bool(torch.isfinite(seq).all())


def test_registered_per_polarity_batch_variant():
    from workbench import ALGORITHMS

    r, h, m = _two_groups()
    torch.testing.assert_close(
        ALGORITHMS["gtpo_per_polarity_batch"].advantages(r, h, m), adv.gtpo(r, h, m, normalize="per_polarity_batch")
    )
