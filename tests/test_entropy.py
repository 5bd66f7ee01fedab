"""Token statistics: chunked float32 path against an unchunked float64 reference."""

import math

import pytest
import torch

from workbench.entropy import token_stats
from workbench.models.scoring import token_stats_from_model


def reference(logits, tokens, temperature=1.0):
    z = logits.double() / temperature
    logp_all = torch.log_softmax(z, -1)
    logp = logp_all.gather(-1, tokens[..., None]).squeeze(-1)
    ent = -(logp_all.exp() * logp_all).sum(-1)
    return logp, ent


def data(B=3, T=7, V=50, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, T, V, generator=g) * 3).to(dtype)
    tokens = torch.randint(0, V, (B, T), generator=g)
    return logits, tokens


@pytest.mark.parametrize("chunk_size", [1, 4, 5, 21, 1024])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_equals_float64_reference(chunk_size, temperature):
    logits, tokens = data()
    logp, ent = token_stats(logits, tokens, temperature=temperature, chunk_size=chunk_size)
    ref_logp, ref_ent = reference(logits, tokens, temperature)
    assert logp.dtype == ent.dtype == torch.float32
    torch.testing.assert_close(logp.double(), ref_logp, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent.double(), ref_ent, atol=1e-5, rtol=0)


@pytest.mark.parametrize("chunk_size", [2, 8, 100])
def test_bf16_logits_computed_in_float32(chunk_size):
    logits, tokens = data(dtype=torch.bfloat16)
    logp, ent = token_stats(logits, tokens, chunk_size=chunk_size)
    ref_logp, ref_ent = reference(logits, tokens)  # reference on the same bf16 values, in float64
    assert logp.dtype == torch.float32
    torch.testing.assert_close(logp.double(), ref_logp, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent.double(), ref_ent, atol=1e-5, rtol=0)


def test_mask_zeroes_and_ignores_padding_ids():
    logits, tokens = data()
    mask = torch.ones_like(tokens, dtype=torch.bool)
    mask[0, 4:] = False
    tokens = tokens.clone()
    tokens[0, 4:] = -100  # padding ids out of range are fine where masked
    logp, ent = token_stats(logits, tokens, mask)
    assert bool((logp[0, 4:] == 0).all()) and bool((ent[0, 4:] == 0).all())
    ref_logp, ref_ent = reference(logits[1:], tokens[1:])
    torch.testing.assert_close(logp[1:].double(), ref_logp, atol=1e-5, rtol=0)


def test_entropy_bounds_and_known_values():
    V = 8
    logits = torch.zeros(1, 2, V)
    logits[0, 1, 3] = 1e4  # near one-hot
    logp, ent = token_stats(logits, torch.tensor([[0, 3]]))
    assert math.isclose(float(ent[0, 0]), math.log(V), abs_tol=1e-6)
    assert math.isclose(float(logp[0, 0]), -math.log(V), abs_tol=1e-6)
    assert abs(float(ent[0, 1])) < 1e-6 and abs(float(logp[0, 1])) < 1e-6


def test_minus_inf_logits_for_unused_vocab_are_fine():
    logits = torch.tensor([[[0.0, 0.0, float("-inf"), float("-inf")]]])
    logp, ent = token_stats(logits, torch.tensor([[1]]))
    assert math.isclose(float(ent), math.log(2), abs_tol=1e-6)
    assert math.isclose(float(logp), -math.log(2), abs_tol=1e-6)


def test_gradients_flow_to_logprobs_not_entropy():
    logits, tokens = data()
    logits.requires_grad_()
    logp, ent = token_stats(logits, tokens, chunk_size=4)
    assert logp.requires_grad and not ent.requires_grad
    logp.sum().backward()
    ref = logits.detach().clone().requires_grad_()
    torch.log_softmax(ref, -1).gather(-1, tokens[..., None]).sum().backward()
    torch.testing.assert_close(logits.grad, ref.grad, atol=1e-6, rtol=0)


def test_entropy_grad_when_asked():
    logits, tokens = data()
    logits.requires_grad_()
    _, ent = token_stats(logits, tokens, chunk_size=3, entropy_grad=True)
    ent.sum().backward()
    ref = logits.detach().clone().requires_grad_()
    lp = torch.log_softmax(ref, -1)
    (-(lp.exp() * lp).sum(-1)).sum().backward()
    torch.testing.assert_close(logits.grad, ref.grad, atol=1e-5, rtol=0)


def test_errors():
    logits, tokens = data()
    with pytest.raises(ValueError, match=r"logits must have shape \[B, T, V\]"):
        token_stats(logits[0], tokens)
    with pytest.raises(ValueError, match="tokens has shape"):
        token_stats(logits, tokens[:, :-1])
    with pytest.raises(ValueError, match="outside"):
        token_stats(logits, tokens + 100)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        token_stats(logits, tokens, temperature=0)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        token_stats(logits, tokens, chunk_size=0)
    bad = logits.clone()
    bad[1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        token_stats(bad, tokens)
    with pytest.raises(TypeError, match="tokens must be an integer tensor"):
        token_stats(logits, tokens.float())


def test_from_model_matches_manual_shift():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=20,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    model = Qwen2ForCausalLM(cfg).eval()
    ids = torch.randint(1, 20, (2, 10))
    with torch.no_grad():
        logp, ent = token_stats_from_model(model, ids, response_len=4, temperature=0.8)
        full = model(input_ids=ids).logits
    ref_logp, ref_ent = reference(full[:, -5:-1], ids[:, -4:], temperature=0.8)
    assert logp.shape == (2, 4)
    torch.testing.assert_close(logp.double(), ref_logp, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent.double(), ref_ent, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="response_len"):
        token_stats_from_model(model, ids, response_len=10)


# ---------------------------------------------------------------- hidden-state path (no full logits)


@pytest.mark.parametrize("chunk_size", [1, 3, 64])
def test_from_hidden_equals_reference_with_gradients(chunk_size):
    from workbench.models.scoring import token_stats_from_hidden

    g = torch.Generator().manual_seed(1)
    h = torch.randn(2, 5, 8, generator=g).requires_grad_()
    W = torch.randn(30, 8, generator=g).requires_grad_()
    tok = torch.randint(0, 30, (2, 5), generator=g)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    gl, ge = torch.randn(2, 5, generator=g), torch.randn(2, 5, generator=g)
    lp, en = token_stats_from_hidden(h, W, tok, mask, chunk_size=chunk_size, temperature=0.7, entropy_grad=True)
    (lp * gl + en * ge).sum().backward()
    h2, W2 = h.detach().double().requires_grad_(), W.detach().double().requires_grad_()
    ref_lp, ref_en = reference(h2 @ W2.T, tok, 0.7)
    m = mask.double()
    ((ref_lp * gl * m) + (ref_en * ge * m)).sum().backward()
    torch.testing.assert_close(lp.double(), ref_lp * m, atol=1e-5, rtol=0)
    torch.testing.assert_close(en.double(), ref_en * m, atol=1e-5, rtol=0)
    torch.testing.assert_close(h.grad.double(), h2.grad, atol=1e-5, rtol=0)
    torch.testing.assert_close(W.grad.double(), W2.grad, atol=1e-5, rtol=0)


def test_from_hidden_entropy_detached_by_default_and_errors():
    from workbench.models.scoring import token_stats_from_hidden

    h = torch.randn(1, 3, 4, requires_grad=True)
    W = torch.randn(6, 4)
    lp, en = token_stats_from_hidden(h, W, torch.tensor([[0, 1, 5]]))
    assert lp.requires_grad and not en.requires_grad
    with pytest.raises(ValueError, match=r"weight has shape \(6, 5\), expected \[V, 4\]"):
        token_stats_from_hidden(h, torch.randn(6, 5), torch.tensor([[0, 1, 5]]))
    with pytest.raises(ValueError, match="outside"):
        token_stats_from_hidden(h, W, torch.tensor([[0, 1, 6]]))


def test_from_model_hidden_and_logits_paths_agree():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=20,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    model = Qwen2ForCausalLM(cfg)
    ids = torch.randint(1, 20, (2, 9))
    attn = torch.ones_like(ids)
    attn[0, :2] = 0  # left padding
    a = token_stats_from_model(model, ids, attn, response_len=5, method="hidden")
    b = token_stats_from_model(model, ids, attn, response_len=5, method="logits")
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="method must be one of"):
        token_stats_from_model(model, ids, method="fused")


DDP_CHECK = """
import sys
import torch
import torch.distributed as dist
from workbench.training.config import DEFAULT_INIT
from workbench.models.scoring import token_stats_from_model
from workbench.models.load import load_model

model, tok = load_model(DEFAULT_INIT)
ids = tok(["123+456=975|579", "12+4=61|16"], return_tensors="pt", padding=True)
dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
try:
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    kept = []
    hook = model.lm_head.register_forward_hook(lambda m, a, out: kept.append(out.shape[1]))
    got = token_stats_from_model(ddp, ids["input_ids"], ids["attention_mask"], response_len=6)
    want = token_stats_from_model(model, ids["input_ids"], ids["attention_mask"], response_len=6, method="logits")
    hook.remove()
    got[0].sum().backward()  # the gradient reaches the LM head through the wrapper
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0
finally:
    dist.destroy_process_group()
assert kept[0] == 1, kept  # the wrapped forward computed one position's logits, not the response's
for a, b in zip(got, want):
    torch.testing.assert_close(a.detach(), b.detach(), atol=1e-5, rtol=1e-5)
print("ok")
"""


def test_token_stats_from_a_ddp_wrapped_model(tmp_path):
    """Under DDP the statistics still come from the hidden states (the forward runs through the
    wrapper, which keeps only one position's logits) and equal the unwrapped model's. A one-process
    gloo group in its own process, on the loopback interface and under a time limit: a process group
    never touches the test process, and a network that cannot resolve its host name fails the test
    instead of hanging the suite."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [sys.executable, "-c", DDP_CHECK, str(tmp_path / "pg")], capture_output=True, text=True, timeout=300, env=env
    )
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]


class VocabMatmulRows(torch.utils._python_dispatch.TorchDispatchMode):
    """Rows of every matrix product with ``vocab`` output columns (the LM head, forward and backward)."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab, self.rows = vocab, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm) and out.shape[-1] == self.vocab:
            self.rows += out.shape[0]
        return out


def test_from_hidden_runs_the_lm_head_on_valid_rows_only():
    """Padding positions cost no LM-head work (forward, and the backward's recomputation), and
    the statistics and gradients are those of the reference, 0 at the masked positions."""
    from workbench.models.scoring import token_stats_from_hidden

    g = torch.Generator().manual_seed(2)
    h = torch.randn(3, 6, 8, generator=g).requires_grad_()
    W = torch.randn(30, 8, generator=g).requires_grad_()
    tok = torch.randint(0, 30, (3, 6), generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    tok[~mask] = -1  # padding ids never reach the head
    counter = VocabMatmulRows(30)
    with counter:
        lp, en = token_stats_from_hidden(h, W, tok, mask, chunk_size=4, entropy_grad=True)
        (lp.sum() + 0.5 * en.sum()).backward()
    assert counter.rows == 2 * 12  # 12 valid rows of 18, once forward and once in the backward
    h2, W2 = h.detach().double().requires_grad_(), W.detach().double().requires_grad_()
    ref_lp, ref_en = reference(h2 @ W2.T, tok.clamp(min=0))
    m = mask.double()
    ((ref_lp + 0.5 * ref_en) * m).sum().backward()
    torch.testing.assert_close(lp.double(), ref_lp * m, atol=1e-5, rtol=0)
    torch.testing.assert_close(en.double(), ref_en * m, atol=1e-5, rtol=0)
    torch.testing.assert_close(h.grad.double(), h2.grad, atol=1e-5, rtol=0)
    torch.testing.assert_close(W.grad.double(), W2.grad, atol=1e-5, rtol=0)
    assert bool((lp[~mask] == 0).all()) and bool((en[~mask] == 0).all())
    nothing = token_stats_from_hidden(h, W, tok, torch.zeros_like(mask))  # no valid row at all
    assert all(bool((x == 0).all()) for x in nothing)


# ---------------------------------------------------------------- each group's prompt computed once


def _warm_groups(n=3, new=10):
    """The shipped warm start (Qwen2) and a sampled batch: 3 left-padded prompts of different
    lengths, ``n`` replies each (different lengths: right padding)."""
    from workbench.models.generation import generate
    from workbench.models.load import load_model
    from workbench.training.config import DEFAULT_INIT

    model, tok = load_model(DEFAULT_INIT)
    torch.manual_seed(0)
    gen = generate(model, tok, ["123+456=", "12+4=", "999+1="], n=n, max_new_tokens=new, temperature=1.5)
    ids = torch.cat([gen.prompt_ids, gen.response_ids], 1)
    attention = torch.cat([gen.prompt_mask, gen.response_mask.long()], 1)
    return model, ids, attention, gen.response_mask


def _stats_and_grads(model, ids, attention, mask, group_size):
    model.zero_grad(set_to_none=True)
    logp, ent = token_stats_from_model(
        model,
        ids,
        attention,
        response_len=mask.shape[1],
        response_mask=mask,
        temperature=0.8,
        entropy_grad=True,
        group_size=group_size,
    )
    (logp.sum() + 0.3 * ent.sum()).backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return logp.detach(), ent.detach(), grads


def _decoder_positions(model):
    counted = []
    hook = model.model.register_forward_hook(
        lambda mod, args, kwargs, out: counted.append(kwargs["input_ids"].numel()), with_kwargs=True
    )
    return counted, hook


def test_shared_prompt_gives_the_same_statistics_and_gradients():
    """Each group's prompt runs once (with gradients) and its KV cache serves the group's replies:
    the decoder computes ``G * P + B * (T - 1)`` positions instead of ``B * (P + T)``, with the
    same log-probs, entropies and gradients as the whole rows (to float rounding)."""
    n = 3
    model, ids, attention, mask = _warm_groups(n)
    B, T = mask.shape
    P = ids.shape[1] - T
    assert len(set(attention[:, :P].sum(-1).tolist())) == 3 and len(set(mask.sum(-1).tolist())) > 1
    model.train()
    out, positions = {}, {}
    for group_size in (1, n):
        counted, hook = _decoder_positions(model)
        out[group_size] = _stats_and_grads(model, ids, attention, mask, group_size)
        hook.remove()
        positions[group_size] = sum(counted)
    assert positions == {1: B * (P + T), n: B // n * P + B * (T - 1)}
    (lp1, en1, g1), (lp, en, g) = out[1], out[n]
    torch.testing.assert_close(lp, lp1, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(en, en1, atol=1e-4, rtol=1e-5)
    assert float((g - g1).norm() / g1.norm()) < 3e-5  # 1.2e-5 seen: float32 rounding over the summed rows
    assert bool((lp[~mask] == 0).all()) and g1.norm() > 0


def test_shared_prompt_is_exact_in_float64():
    """In float64 the decoder's hidden states of the two paths are the same numbers, and the
    gradients differ only by the float32 rounding of the statistics' own backward: sharing the
    prompt changes the order of the work, not the computation."""
    from workbench.models.scoring import _response_hidden

    model, ids, attention, mask = _warm_groups()
    model = model.double().train()
    T = mask.shape[1]
    kwargs = {"attention_mask": attention, "position_ids": (attention.cumsum(-1) - 1).clamp(min=0)}
    with torch.no_grad():
        whole = _response_hidden(model, model.model, ids, kwargs, T, 1)
        shared = _response_hidden(model, model.model, ids, kwargs, T, 3)
    torch.testing.assert_close(shared[mask], whole[mask], atol=1e-12, rtol=1e-12)
    g1, g3 = (_stats_and_grads(model, ids, attention, mask, n)[2] for n in (1, 3))
    assert float((g3 - g1).norm() / g1.norm()) < 1e-6


def test_shared_prompt_falls_back_under_gradient_checkpointing():
    """Checkpointed layers drop a KV cache under gradients: the whole rows are computed then (the
    same numbers; a reply that lost its prompt would score very differently)."""
    model, ids, attention, mask = _warm_groups()
    model.train()
    want = _stats_and_grads(model, ids, attention, mask, 1)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    counted, hook = _decoder_positions(model)
    got = _stats_and_grads(model, ids, attention, mask, 3)
    hook.remove()
    assert counted == [ids.numel()]  # one forward of the whole rows
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # without gradients the layers keep the cache: shared again
        counted, hook = _decoder_positions(model)
        got = token_stats_from_model(model, ids, attention, response_len=mask.shape[1], group_size=3)
        hook.remove()
    assert len(counted) == 2


def test_shared_prompt_errors():
    model, ids, attention, mask = _warm_groups()
    T = mask.shape[1]
    with pytest.raises(ValueError, match="group_size=2 does not divide the 9 rows"):
        token_stats_from_model(model, ids, attention, response_len=T, group_size=2)
    with pytest.raises(ValueError, match="must share their prompt"):
        token_stats_from_model(model, ids.roll(1, 0), attention.roll(1, 0), response_len=T, group_size=3)
    with pytest.raises(ValueError, match="group_size must be a positive int"):
        token_stats_from_model(model, ids, attention, response_len=T, group_size=0)
