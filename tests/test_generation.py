"""Sampling: the prompt is computed once per prompt, not once per sample, and nothing else changes."""

import pytest
import torch

from workbench.models.generation import generate
from workbench.models.load import load_model
from workbench.training.config import DEFAULT_INIT

PROMPTS = ["123+456=", "12+4=", "999+1="]  # different lengths: left padding


@pytest.fixture(scope="module")
def warm():
    return load_model(DEFAULT_INIT)


@pytest.mark.parametrize("do_sample", [False, True])
def test_shared_prompt_gives_the_same_samples(warm, do_sample):
    model, tok = warm
    out = {}
    for share in (False, True):
        torch.manual_seed(0)
        out[share] = generate(model, tok, PROMPTS, n=4, max_new_tokens=12, do_sample=do_sample, share_prompt=share)
    assert torch.equal(out[False].response_ids, out[True].response_ids)
    assert torch.equal(out[False].response_mask, out[True].response_mask)
    assert torch.equal(out[False].prompt_ids, out[True].prompt_ids) and out[True].prompt_ids.shape[0] == 12
    assert out[False].texts == out[True].texts
    if do_sample:  # the check is not vacuous: samples of one prompt differ
        assert len(set(out[True].texts[:4])) > 1


def test_shared_prompt_runs_each_prompt_once(warm):
    """Count the token positions the decoder runs: the prompt (all but its last token) once per
    prompt with sharing, ``n`` times without."""
    model, tok = warm
    n, new = 8, 6
    counted = []
    hook = model.model.register_forward_hook(
        lambda mod, args, kwargs, out: counted.append(
            kwargs["input_ids"].numel()
            if kwargs.get("input_ids") is not None
            else kwargs["inputs_embeds"].shape[:2].numel()
        ),
        with_kwargs=True,
    )
    try:
        tokens = {}
        for share in (False, True):
            counted.clear()
            g = generate(model, tok, PROMPTS, n=n, max_new_tokens=new, do_sample=True, share_prompt=share)
            tokens[share] = (sum(counted), len(counted))
    finally:
        hook.remove()
    P = g.prompt_ids.shape[1]
    steps = g.response_ids.shape[1]  # decode steps run (all rows stop together at the longest)
    assert tokens[False][0] == 3 * n * P + 3 * n * (steps - 1)
    assert tokens[True][0] == 3 * (P - 1) + 3 * n * 1 + 3 * n * (steps - 1)
    assert tokens[True][1] == tokens[False][1] + 1  # one extra (prefill) call


def test_shared_prefill_computes_no_prompt_logits(warm):
    """The prefill fills the KV cache only: the LM head computes one position per prompt there (no
    logits of every prompt position, which nothing reads), and the samples stay those of the
    unshared path (test_shared_prompt_gives_the_same_samples)."""
    model, tok = warm
    rows = []
    hook = model.lm_head.register_forward_hook(lambda mod, args, out: rows.append(tuple(out.shape[:2])))
    try:
        g = generate(model, tok, PROMPTS, n=4, max_new_tokens=6, do_sample=True)
    finally:
        hook.remove()
    assert g.prompt_ids.shape[1] > 2
    assert rows[0] == (3, 1)  # the prefill: 3 prompts, one position each (was P - 1 positions)
    assert all(shape == (12, 1) for shape in rows[1:]) and len(rows) == g.response_ids.shape[1] + 1


def test_greedy_with_several_samples_per_prompt(warm):
    """transformers refuses num_return_sequences > 1 without sampling; repeating the inputs works."""
    model, tok = warm
    g = generate(model, tok, PROMPTS[:1], n=3, max_new_tokens=12, do_sample=False)
    assert len(set(g.texts)) == 1 and len(g.texts) == 3


def test_static_cache_gives_the_same_samples(warm):
    """The static cache (compiled on CUDA) pads prompts further; the samples stay the same."""
    model, tok = warm
    out = {}
    for cache in ("dynamic", "static"):
        torch.manual_seed(0)
        out[cache] = generate(model, tok, PROMPTS, n=2, max_new_tokens=12, cache=cache)
    assert out["static"].prompt_ids.shape[1] == 32 and out["dynamic"].prompt_ids.shape[1] == 8
    assert out["static"].texts == out["dynamic"].texts
    with pytest.raises(ValueError, match="cache must be"):
        generate(model, tok, PROMPTS, cache="paged")


def test_every_end_token_of_the_generation_config_ends_a_response(warm):
    """Chat models often list several end tokens in their generation config (an end-of-turn
    token besides the tokenizer's eos); a response ends at the first of any of them."""
    import copy

    model, tok = warm
    model = copy.deepcopy(model)
    bar = tok.convert_tokens_to_ids("|")  # the separator: in every worked solution, before the answer
    model.generation_config.eos_token_id = [tok.eos_token_id, bar]
    torch.manual_seed(0)
    out = generate(model, tok, PROMPTS, n=4, max_new_tokens=12, do_sample=True)
    ends = {tok.eos_token_id, bar}
    for ids, m, truncated in zip(out.response_ids, out.response_mask, out.truncated):
        kept = ids[m].tolist()
        assert sum(t in ends for t in kept) == (0 if truncated else 1)
        assert truncated or kept[-1] in ends
    assert any(t.endswith("|") for t in out.texts)  # the test can fail: some responses end at the separator
