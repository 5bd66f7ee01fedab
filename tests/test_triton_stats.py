"""The fused Triton kernels against float64 references: compiled on a CUDA GPU when there is one,
else run by Triton's interpreter on CPU."""

import math

import pytest
import torch

pytest.importorskip("triton", reason="the fused kernels need triton (in the dev extra on Linux)")

from workbench.models import scoring, triton_stats  # noqa: E402
from workbench.models.scoring import token_stats_from_hidden  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
pytestmark = pytest.mark.skipif(
    not triton_stats.available(DEVICE),
    reason="needs CUDA, or TRITON_INTERPRET=1 without it (tests/conftest.py sets it)",
)


def reference(z64: torch.Tensor, tok: torch.Tensor, temperature: float):
    logp_all = (z64 / temperature).log_softmax(-1)
    p = logp_all.exp()
    ent = -torch.where(p > 0, p * logp_all, torch.zeros((), dtype=z64.dtype, device=z64.device)).sum(-1)
    return (z64 / temperature).logsumexp(-1), logp_all.gather(-1, tok[:, None]).squeeze(-1), ent


def case(N, V, scale, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(N, V, generator=g, dtype=torch.float64) * scale
    tok = torch.randint(0, V, (N,), generator=g)
    tok[0], tok[-1] = 0, V - 1  # the vocabulary's edges
    return z.to(DEVICE), tok.to(DEVICE)


@pytest.mark.parametrize("V", [7, 1000, 5000])  # one partial block, one, two blocks (BLOCK <= 4096)
@pytest.mark.parametrize("scale,temperature", [(1.0, 1.0), (30.0, 0.7), (0.01, 2.0)])
def test_forward_matches_float64(V, scale, temperature):
    z, tok = case(9, V, scale)
    lse, logp, ent = triton_stats.stats_forward(z.float(), tok, temperature)
    ref = reference(z.float().double(), tok, temperature)  # same float32 inputs, float64 maths
    for got, want, name in zip((lse, logp, ent), ref, ("lse", "logp", "entropy")):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want, atol=2e-5 * max(1.0, scale), rtol=1e-5, msg=name)
    assert (logp <= 1e-6).all() and (ent >= -1e-6).all() and (ent <= math.log(V) + 1e-4).all()


def test_forward_with_minus_infinity_logits():
    """Masked vocabulary entries (-inf) have probability 0 and add nothing to the entropy."""
    z, tok = case(4, 300, 3.0)
    z[:, 100:250] = float("-inf")
    tok[:] = 5
    lse, logp, ent = triton_stats.stats_forward(z.float(), tok, 1.0)
    ref = reference(z.float().double(), tok, 1.0)
    assert torch.isfinite(ent).all() and torch.isfinite(logp).all()
    for got, want in zip((lse, logp, ent), ref):
        torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("grads", ["logp", "entropy", "both"])
def test_backward_matches_autograd(grads):
    z, tok = case(6, 1500, 5.0)
    T = 0.8
    g = torch.Generator().manual_seed(1)
    g_logp = torch.randn(6, generator=g, dtype=torch.float64).to(DEVICE) if grads != "entropy" else None
    g_ent = torch.randn(6, generator=g, dtype=torch.float64).to(DEVICE) if grads != "logp" else None
    z64 = z.float().double().requires_grad_(True)
    _, logp, ent = reference(z64, tok, T)
    loss = (logp * g_logp).sum() if g_logp is not None else 0.0
    loss = loss + ((ent * g_ent).sum() if g_ent is not None else 0.0)
    loss.backward()
    lse, _, H = triton_stats.stats_forward(z.float(), tok, T)
    dz = triton_stats.stats_backward(
        z.float(), tok, lse, H, None if g_logp is None else g_logp.float(), None if g_ent is None else g_ent.float(), T
    )
    torch.testing.assert_close(dz.double(), z64.grad, atol=2e-6, rtol=1e-4)
    buf = z.float().clone()  # in place: the gradient overwrites the logits it is computed from
    out = triton_stats.stats_backward(
        buf,
        tok,
        lse,
        H,
        None if g_logp is None else g_logp.float(),
        None if g_ent is None else g_ent.float(),
        T,
        out=buf,
    )
    assert out.data_ptr() == buf.data_ptr()
    torch.testing.assert_close(out, dz)


def test_hidden_path_triton_equals_torch():
    """token_stats_from_hidden with the kernels gives the PyTorch path's values and gradients
    (several chunks, a mask, the entropy's own gradient)."""
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(3, 5, 16, generator=g).to(DEVICE)
    weight = (torch.randn(700, 16, generator=g) / 4).to(DEVICE)
    tokens = torch.randint(0, 700, (3, 5), generator=g).to(DEVICE)
    mask = torch.ones(3, 5, dtype=torch.bool, device=DEVICE)
    mask[1, 3:] = False
    out = {}
    for impl in ("torch", "triton"):
        h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
        logp, ent = token_stats_from_hidden(
            h, w, tokens, mask, temperature=0.9, chunk_size=4, entropy_grad=True, impl=impl
        )
        (logp.sum() - 0.3 * ent.sum()).backward()
        out[impl] = (logp.detach(), ent.detach(), h.grad, w.grad)
    for a, b in zip(out["torch"], out["triton"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert (out["triton"][0][~mask] == 0).all() and (out["triton"][1][~mask] == 0).all()


def test_auto_selection(monkeypatch):
    monkeypatch.delenv("WORKBENCH_STATS_IMPL", raising=False)
    # CUDA: the kernels, once they passed the self-check; CPU: the PyTorch path, kernels or not
    assert scoring._resolve_impl("auto", DEVICE) == ("triton" if DEVICE.type == "cuda" else "torch")
    assert scoring._resolve_impl("triton", DEVICE) == "triton"  # asked for, and runnable here
    monkeypatch.setenv("WORKBENCH_STATS_IMPL", "torch")
    assert scoring._resolve_impl("auto", DEVICE) == "torch"
    monkeypatch.setenv("WORKBENCH_STATS_IMPL", "fast")
    with pytest.raises(ValueError, match="WORKBENCH_STATS_IMPL must be one of"):
        scoring._resolve_impl("auto", DEVICE)
    with pytest.raises(ValueError, match="impl must be one of"):
        scoring._resolve_impl("cuda", DEVICE)
    assert scoring._parity(DEVICE) < 1e-4  # the self-check CUDA runs before it trusts the kernels
    with torch.no_grad(), torch.autocast(DEVICE.type, dtype=torch.bfloat16):  # as from a scoring pass
        assert scoring._parity(DEVICE) < 1e-4


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE.type != "cuda", reason="bf16 logits on a GPU (the trainer's mixed precision)")
def test_bfloat16_logits_on_gpu():
    z, tok = case(64, 151936 // 8, 4.0)
    lse, logp, ent = triton_stats.stats_forward(z.bfloat16(), tok, 1.0)
    ref = reference(z.bfloat16().double(), tok, 1.0)
    for got, want in zip((lse, logp, ent), ref):
        torch.testing.assert_close(got.double(), want, atol=1e-3, rtol=1e-4)


def test_shape_errors():
    with pytest.raises(ValueError, match="tokens has shape"):
        triton_stats.stats_forward(torch.zeros(3, 10, device=DEVICE), torch.zeros(4, dtype=torch.long, device=DEVICE))
    with pytest.raises(ValueError, match="contiguous rows"):
        triton_stats.stats_forward(torch.zeros(10, 3, device=DEVICE).T, torch.zeros(3, dtype=torch.long, device=DEVICE))
