"""Property-based tests (hypothesis) of every advantage and loss function.

Random shapes, masks, rewards and entropies, with the edges drawn on purpose: all rewards
equal, all entropies zero, one valid token, huge and tiny magnitudes, bf16 and float32.
"""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workbench import advantages as adv
from workbench.losses import AGGREGATIONS, policy_loss

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def groups(draw, max_groups=3, max_n=6, max_t=7):
    G = draw(st.integers(1, max_groups))
    n = draw(st.integers(2, max_n))
    T = draw(st.integers(1, max_t))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    reward_kind = draw(st.sampled_from(["binary", "equal", "continuous"]))
    if reward_kind == "binary":
        rewards = torch.randint(0, 2, (G, n), generator=gen).float()
    elif reward_kind == "equal":
        rewards = torch.full((G, n), draw(st.sampled_from([0.0, 1.0, 0.3])))
    else:
        rewards = torch.rand(G, n, generator=gen) * 2 - 0.5
    scale = draw(st.sampled_from([0.0, 1e-6, 1.0, 30.0, 1e4]))
    entropies = torch.rand(G, n, T, generator=gen) * scale
    if draw(st.booleans()):
        entropies[entropies < 0.3 * scale] = 0.0  # exact zeros mixed in
    lengths = torch.randint(1, T + 1, (G, n), generator=gen)
    if draw(st.booleans()):
        lengths[0, 0] = 1  # a single valid token
    mask = torch.arange(T)[None, None, :] < lengths[..., None]
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16]))
    return rewards.to(dtype), entropies.to(dtype), mask


ALGOS = {
    "grpo": lambda r, h, m, **kw: adv.grpo(r, m),
    "grpo_batch": lambda r, h, m, **kw: adv.grpo(r, m, scale="batch"),
    "grpo_none": lambda r, h, m, **kw: adv.grpo(r, m, scale="none"),
    "gtpo": lambda r, h, m, **kw: adv.gtpo(r, h, m, **kw),
    "gtpo_pp": lambda r, h, m, **kw: adv.gtpo(r, h, m, normalize="per_polarity", **kw),
    "gtpo_shape": lambda r, h, m, **kw: adv.gtpo(r, h, m, zero_variance="shape", **kw),
    "grpo_s": lambda r, h, m, **kw: adv.grpo_s(r, h, m, **kw),
    "grpo_s_pp": lambda r, h, m, **kw: adv.grpo_s(r, h, m, normalize="per_polarity", **kw),
}


@pytest.mark.parametrize("name", list(ALGOS))
@SETTINGS
@given(batch=groups())
def test_finite_masked_zero_and_float32(name, batch):
    r, h, m = batch
    a = ALGOS[name](r, h, m)
    assert a.shape == m.shape and a.dtype == torch.float32
    assert bool(torch.isfinite(a).all())
    assert bool((a[~m] == 0).all())


@pytest.mark.parametrize("name", list(ALGOS))
@SETTINGS
@given(batch=groups(max_groups=1), perm_seed=st.integers(0, 1000))
def test_permuting_a_group_permutes_outputs(name, batch, perm_seed):
    r, h, m = batch
    perm = torch.randperm(r.shape[-1], generator=torch.Generator().manual_seed(perm_seed))
    a = ALGOS[name](r, h, m)
    b = ALGOS[name](r[:, perm], h[:, perm], m[:, perm])
    torch.testing.assert_close(b, a[:, perm], atol=1e-4, rtol=1e-4)


@SETTINGS
@given(batch=groups(), value=st.sampled_from([0.0, 0.5, 2.0, 100.0]))
def test_equal_entropies_reduce_to_the_baseline(batch, value):
    r, _, m = batch
    r = r.float()
    h = torch.full(m.shape, value)
    expected = torch.where(r > 0.5, r.double() + 0.1, r.double() - 1.0 - 0.1)[..., None] * m
    torch.testing.assert_close(adv.shaped_rewards_gtpo(r, h, m), expected, atol=1e-7, rtol=0)
    expected_s = torch.where(r > 0.5, r.double() + 0.1, r.double() - 1.0 - 0.1)
    torch.testing.assert_close(adv.shaped_rewards_grpo_s(r, h, m), expected_s, atol=1e-7, rtol=0)
    binary = (r > 0.5).float()
    torch.testing.assert_close(adv.grpo_s(binary, h, m), adv.grpo(binary, m), atol=1e-4, rtol=0)


@SETTINGS
@given(batch=groups())
def test_grpo_s_constant_per_sequence(batch):
    r, h, m = batch
    a = adv.grpo_s(r, h, m)
    first = a[..., :1].expand_as(a)
    assert bool((a[m] == first[m]).all())


@SETTINGS
@given(batch=groups())
def test_zero_variance_groups_are_zero_with_skip(batch):
    r, h, m = batch
    equal = r.float().max(-1).values == r.float().min(-1).values
    for fn in (adv.gtpo, adv.grpo_s):
        a = fn(r, h, m)
        assert bool((a[equal] == 0).all())


@st.composite
def loss_inputs(draw):
    B = draw(st.integers(1, 5))
    T = draw(st.integers(1, 8))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    spread = draw(st.sampled_from([0.0, 0.1, 1.0, 30.0]))
    logp_old = -torch.rand(B, T, generator=gen) * draw(st.sampled_from([1e-6, 1.0, 50.0]))
    logp_new = logp_old + torch.randn(B, T, generator=gen) * spread
    advantages = torch.randn(B, T, generator=gen) * draw(st.sampled_from([0.0, 1.0, 1e3]))
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    mask = torch.arange(T)[None] < lengths[:, None]
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16]))
    return logp_new.to(dtype), logp_old.to(dtype), advantages, mask


@SETTINGS
@given(inputs=loss_inputs(), agg=st.sampled_from(AGGREGATIONS), level=st.sampled_from(["token", "sequence"]))
def test_policy_loss_finite_and_gradient_only_on_valid_tokens(inputs, agg, level):
    logp_new, logp_old, advantages, mask = inputs
    logp_new = logp_new.clone().requires_grad_()
    loss, metrics = policy_loss(
        logp_new,
        logp_old,
        advantages,
        mask,
        eps_low=0.2,
        eps_high=0.28,
        agg=agg,
        level=level,
        logp_ref=logp_old,
        beta_kl=0.01,
    )
    assert torch.isfinite(loss)
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    assert 0.0 <= metrics["clip_frac"] <= 1.0
    loss.backward()
    assert bool(torch.isfinite(logp_new.grad.float()).all())
    assert bool((logp_new.grad[~mask] == 0).all())


@pytest.mark.parametrize("magnitude", [1e160, 1e200, 1e300])
def test_huge_float64_rewards_give_finite_advantages_for_every_algorithm(magnitude):
    """Float64 rewards near 1e160 made GTPO return +-inf where GRPO, DAPO and GRPO-S stayed finite:
    squared deviations overflowed, and 0 * inf at masked positions made the std NaN. Every
    algorithm now gives finite advantages, and z-scores do not depend on the rewards' scale."""
    gen = torch.Generator().manual_seed(0)
    r = torch.tensor([[1.0, 0.0, 0.25, 1.0], [0.0, 0.0, 1.0, 0.5]], dtype=torch.float64)
    lengths = torch.tensor([[3, 1, 4, 2], [4, 2, 1, 3]])
    mask = torch.arange(4)[None, None, :] < lengths[..., None]
    h = torch.rand(2, 4, 4, generator=gen, dtype=torch.float64)
    big = r * magnitude
    outputs = {
        "grpo": adv.grpo(big, mask),
        "grpo batch": adv.grpo(big, mask, scale="batch"),
        "dapo": adv.dapo(big, mask),
        "gtpo": adv.gtpo(big, h, mask),
        "gtpo per_polarity": adv.gtpo(big, h, mask, normalize="per_polarity"),
        "grpo_s": adv.grpo_s(big, h, mask),
        "grpo_s per_polarity": adv.grpo_s(big, h, mask, normalize="per_polarity"),
    }
    for name, out in outputs.items():
        assert bool(torch.isfinite(out).all()), name
        assert out[mask].abs().max() > 0.1, name  # not silently zero either
    torch.testing.assert_close(outputs["grpo"], adv.grpo(r, mask), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outputs["grpo batch"], adv.grpo(r, mask, scale="batch"), rtol=1e-5, atol=1e-5)
    # without the entropy bonus, GTPO's joint z-score does not depend on the rewards' scale either
    plain = adv.gtpo(big, h, mask, alpha2=0.0)
    torch.testing.assert_close(plain, adv.gtpo(r * 1e6, h, mask, alpha2=0.0), rtol=1e-5, atol=1e-5)
