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


def _addition_prompts(k=16):
    from workbench.tasks import get_task

    return [e.prompt for e in get_task("addition").generate("train", k, 0)]


def test_dropping_finished_rows_keeps_every_sample(warm):
    """The decode loop with finished rows dropped from the batch (their KV cache, mask and inputs)
    samples exactly what it samples when they stay: 16 prompts x 8 at temperature 1, rows of many
    lengths; the decode batch shrinks as rows finish."""
    from workbench.models.generation import decode_dropping_finished, end_token_ids

    model, tok = warm
    enc = tok(_addition_prompts(), return_tensors="pt", padding=True, add_special_tokens=False)
    common = dict(n=8, max_new_tokens=20, ends=end_token_ids(model, tok), pad_token_id=tok.pad_token_id)
    out, rows = {}, {}
    for drop in (True, False):
        torch.manual_seed(0)
        out[drop], rows[drop] = decode_dropping_finished(
            model.eval(), enc["input_ids"], enc["attention_mask"], drop_finished=drop, **common
        )
    assert torch.equal(out[True], out[False])
    replies = out[True][:, enc["input_ids"].shape[1] :]
    lengths = (torch.isin(replies, torch.tensor(common["ends"])).int().cumsum(-1) == 0).sum(-1) + 1
    assert lengths.unique().numel() >= 4  # rows end at different steps
    assert rows[False] == [128] * len(rows[False])
    finished_before = [int((lengths <= t).sum()) for t in range(len(rows[True]))]  # rows done before step t
    assert rows[True] == [128 - f for f in finished_before] and sum(rows[True]) < 0.7 * sum(rows[False])


def test_the_decode_loop_is_greedy_generate_and_refuses_what_it_cannot_do(warm):
    model, tok = warm
    prompts = _addition_prompts(8) + PROMPTS
    ours = generate(model, tok, prompts, n=2, max_new_tokens=16, do_sample=False, drop_finished=True)
    theirs = generate(model, tok, prompts, n=2, max_new_tokens=16, do_sample=False)
    assert torch.equal(ours.response_ids, theirs.response_ids) and ours.texts == theirs.texts
    assert torch.equal(ours.response_mask, theirs.response_mask)
    torch.manual_seed(0)
    sampled = generate(model, tok, PROMPTS, n=4, max_new_tokens=12, drop_finished=True)
    assert len(set(sampled.texts[:4])) > 1 and sampled.response_mask.sum() > 0
    with pytest.raises(ValueError, match="drop_finished needs cache='dynamic' and synced_gpus=False"):
        generate(model, tok, PROMPTS, n=2, max_new_tokens=4, drop_finished=True, cache="static")


def test_sample_tokens_draws_from_the_tempered_nucleus():
    """Gumbel-max with per-row noise: frequencies of 40,000 draws match softmax(z / T) to 0.01; with
    top_p the removed tokens are transformers' TopPLogitsWarper's and the rest keep their odds."""
    from transformers.generation.logits_process import TopPLogitsWarper

    from workbench.models.generation import sample_tokens

    z = torch.tensor([[2.0, 1.0, 0.5, -1.0, 0.0]])
    g = torch.Generator().manual_seed(0)
    draws = 40_000
    noise = torch.rand(draws, 5, generator=g)
    for temperature, top_p in ((1.0, 1.0), (0.7, 1.0), (1.0, 0.8)):
        tokens = sample_tokens(z.expand(draws, 5), noise, temperature=temperature, top_p=top_p)
        freq = torch.bincount(tokens, minlength=5).float() / draws
        kept = TopPLogitsWarper(top_p)(None, z / temperature) if top_p < 1 else z / temperature
        expected = kept.softmax(-1)[0]
        assert float((freq - expected).abs().max()) < 0.01, (temperature, top_p, freq, expected)
        assert bool((freq[expected == 0] == 0).all())
    assert TopPLogitsWarper(0.8)(None, z).isinf().sum() == 2  # the nucleus case removes something


def test_a_run_with_drop_finished_samples_the_decode_loop(tmp_path):
    """``drop_finished=True`` in the config: the rollout is the decode loop's (the same replies as
    calling it with the step's seed), and the run trains; a static cache with it is refused."""
    from workbench.training.config import TrainConfig
    from workbench.training.trainer import Trainer

    config = dict(steps=1, prompts_per_step=3, group_size=4, max_new_tokens=12, eval_size=4, save_every=0)
    trainer = Trainer({**config, "drop_finished": True, "output_dir": str(tmp_path / "a")}, progress=False)
    seen = []
    runner_generate = trainer.runner.generate

    def spy(model, prompts, n, *, do_sample):
        state = torch.get_rng_state()
        gen = runner_generate(model, prompts, n, do_sample=do_sample)
        torch.set_rng_state(state)
        again = generate(
            model, trainer.tokenizer, prompts, n=n, max_new_tokens=12, do_sample=do_sample, drop_finished=True
        )
        seen.append(torch.equal(gen.response_ids, again.response_ids))
        return gen

    trainer.runner.generate = spy
    row = trainer.train_step(1)
    trainer.close()
    assert seen and all(seen) and row["generated_tokens"] > 0 and row["updated"]
    with pytest.raises(ValueError, match="drop_finished runs its own decode loop on the dynamic cache"):
        TrainConfig(drop_finished=True, generation_cache="static")
