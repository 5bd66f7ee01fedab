"""Sampling responses with ``transformers`` generation, and greedy/sampled accuracy.

Shared by the RL trainer, the warm start and the notebooks.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from .lora import base_model

__all__ = [
    "Generated",
    "format_prompts",
    "generate",
    "accuracy",
    "end_token_ids",
    "shared_prompt_cache",
    "decode_dropping_finished",
    "sample_tokens",
]


@dataclass
class Generated:
    """``n`` responses per prompt, flattened to ``B = len(prompts) * n`` rows."""

    prompt_ids: torch.Tensor  # [B, P] left-padded
    prompt_mask: torch.Tensor  # [B, P]
    response_ids: torch.Tensor  # [B, T] right-padded with pad_token_id after the first EOS
    response_mask: torch.Tensor  # [B, T] bool: tokens up to and including the first end token
    truncated: torch.Tensor  # [B] bool: no EOS within max_new_tokens
    texts: list[str]  # decoded responses, special tokens removed


def format_prompts(tokenizer, prompts: list[str], chat_template: bool | None = None) -> list[str]:
    """Wrap each prompt as one user turn of ``tokenizer``'s chat template, with the generation prompt.

    ``chat_template=None`` uses the template when the tokenizer has one (a local instruct
    checkpoint), and leaves plain prompts alone otherwise (the shipped character-level model);
    ``True`` requires one and raises a ``ValueError`` naming the problem when there is none.
    """
    has = bool(getattr(tokenizer, "chat_template", None))
    if chat_template is None:
        chat_template = has
    if not chat_template:
        return list(prompts)
    if not has:
        raise ValueError(
            "chat_template=True but the tokenizer has no chat template; "
            "set chat_template to false or use a checkpoint whose tokenizer_config.json has one"
        )
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    *,
    n: int = 1,
    max_new_tokens: int = 16,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_p: float = 1.0,
    autocast=None,
    synced_gpus: bool = False,
    share_prompt: bool = True,
    cache: str = "dynamic",
    drop_finished: bool = False,
) -> Generated:
    """Sample ``n`` responses for each prompt (KV cache; stops at EOS; left-padded batch).

    ``share_prompt``: with ``n > 1``, run each prompt through the model once and copy its KV cache
    to the ``n`` samples, instead of recomputing the prompt ``n`` times (same samples for the same
    seed, up to float rounding). ``cache="static"``: transformers' static KV cache instead, which
    it compiles the decode step for on CUDA (prompts are padded to a multiple of 32 tokens so
    that few shapes are compiled; the prompt is not shared then). ``synced_gpus``: keep running
    forward passes until every process has finished (needed when the parameters are sharded over
    processes, as with FSDP: every forward is collective). ``drop_finished``: our own decode loop
    (:func:`decode_dropping_finished`: finished rows leave the batch; dynamic cache, no sync). A
    LoRA model (``peft``) samples through the transformers model inside, whose layers hold the adapter.
    """
    if not prompts:
        raise ValueError("prompts is empty")
    if cache not in ("dynamic", "static"):
        raise ValueError(f"cache must be 'dynamic' or 'static', got {cache!r}")
    if drop_finished and (cache == "static" or synced_gpus):
        raise ValueError(
            "drop_finished needs cache='dynamic' and synced_gpus=False (every forward of FSDP is collective)"
        )
    model = base_model(model)  # a LoRA model: the transformers model inside, whose layers run the adapter
    device = next(model.parameters()).device
    enc = tokenizer(
        prompts,
        return_tensors="pt",
        padding=True,
        add_special_tokens=False,
        pad_to_multiple_of=32 if cache == "static" else None,
    ).to(device)
    ends = end_token_ids(model, tokenizer)
    kwargs = dict(
        max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=tokenizer.pad_token_id, eos_token_id=ends
    )
    if cache == "static":
        kwargs["cache_implementation"] = "static"
        share_prompt = False
    if synced_gpus:
        kwargs["synced_gpus"] = True
    if do_sample:
        kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    was_training = model.training
    model.eval()
    with autocast if autocast is not None else torch.autocast(device.type, enabled=False):
        if drop_finished:
            out, _ = decode_dropping_finished(
                model,
                enc["input_ids"],
                enc["attention_mask"],
                n=n,
                max_new_tokens=max_new_tokens,
                ends=ends,
                pad_token_id=tokenizer.pad_token_id,
                do_sample=do_sample,
                temperature=temperature,
                top_p=top_p,
            )
        elif share_prompt and n > 1 and enc["input_ids"].shape[1] > 1:
            out = model.generate(**_shared_prompt_inputs(model, enc, n), **kwargs)
        else:
            out = model.generate(**{k: v.repeat_interleave(n, 0) for k, v in enc.items()}, **kwargs)
    model.train(was_training)
    return _generated(out, enc, n, ends, tokenizer)


def _generated(out: torch.Tensor, enc, n: int, ends: list[int], tokenizer) -> Generated:
    """The prompts, the replies of ``out`` (prompt + reply tokens) cut at their first end token
    and padded after it, their masks and texts."""
    prompt_ids = enc["input_ids"].repeat_interleave(n, 0)
    prompt_mask = enc["attention_mask"].repeat_interleave(n, 0)
    response = out[:, prompt_ids.shape[1] :]
    if response.shape[1] == 0:
        raise RuntimeError("generation returned no new tokens")
    is_eos = torch.isin(response, torch.tensor(ends, device=response.device))
    after_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
    mask = ~after_eos
    response = torch.where(mask, response, torch.full_like(response, tokenizer.pad_token_id))
    texts = [tokenizer.decode(r[m].tolist(), skip_special_tokens=True) for r, m in zip(response, mask)]
    return Generated(prompt_ids, prompt_mask, response, mask, ~is_eos.any(-1), texts)


def end_token_ids(model, tokenizer) -> list[int]:
    """The tokens that end a response: the tokenizer's end-of-sequence token and every end token
    of the model's generation config (chat models often add an end-of-turn token there)."""
    ends = [tokenizer.eos_token_id]
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for token in configured if isinstance(configured, (list, tuple)) else [configured]:
        if token is not None and token not in ends:
            ends.append(int(token))
    return ends


def cache_argument(module) -> str:
    """The name of ``module.forward``'s KV-cache argument: ``cache`` in transformers 5.x,
    ``past_key_values`` in earlier releases."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def shared_prompt_cache(module, input_ids, attention_mask, n: int, **kwargs):
    """Run each row of ``input_ids [G, P]`` (left-padded prompts) through ``module`` (a causal LM or
    its decoder) once and repeat its KV cache ``n`` times, one copy per sample of the prompt.
    Returns ``(output, cache)``; with gradients on, they flow from every copy back into the one
    computation of the prompt. ``kwargs`` go to the forward (``logits_to_keep=1``: no logits but
    the last position's)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=module.config)
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # left padding, as generate counts them
    out = module(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=True,
        **{cache_argument(module): cache},
        **kwargs,
    )
    cache.batch_repeat_interleave(n)
    return out, cache


def _shared_prompt_inputs(model, enc, n: int) -> dict:
    """``generate`` inputs for ``n`` samples per prompt whose KV cache holds every prompt but its
    last token, computed once per prompt and repeated ``n`` times (generation then runs the
    last prompt token and samples on). The prefill computes no logits (none is read) where the
    model takes ``logits_to_keep``: one position's, instead of every prompt position's."""
    ids, mask = enc["input_ids"], enc["attention_mask"]
    keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    _, cache = shared_prompt_cache(model, ids[:, :-1], mask[:, :-1], n, **keep)
    return {
        "input_ids": ids.repeat_interleave(n, 0),
        "attention_mask": mask.repeat_interleave(n, 0),
        cache_argument(model): cache,
    }


def accuracy(
    model,
    tokenizer,
    task,
    examples,
    *,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    batch_size: int = 256,
) -> float:
    """Fraction of ``examples`` answered correctly (greedy by default)."""
    correct = 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        out = generate(
            model,
            tokenizer,
            [e.prompt for e in chunk],
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
        )
        correct += sum(task.reward(e, t) > 0.5 for e, t in zip(chunk, out.texts))
    return correct / len(examples)


def sample_tokens(logits: torch.Tensor, noise: torch.Tensor, *, temperature: float = 1.0, top_p: float = 1.0):
    """One token per row of ``logits [R, V]``, drawn from ``softmax(logits / temperature)`` cut to
    its nucleus ``top_p`` (as transformers' ``TopPLogitsWarper``: the smallest-probability tokens
    whose mass is at most ``1 - top_p`` are removed, the likeliest always kept) by the Gumbel-max
    trick with the row's own uniform ``noise [R, V]``: ``argmax(z - log(-log u))``. A row's token
    depends on that row's logits and noise alone, so the rows can be drawn in any grouping."""
    z = logits.float() / temperature
    if top_p < 1:
        ordered, index = z.sort(-1)
        remove = ordered.softmax(-1).cumsum(-1) <= 1 - top_p
        remove[:, -1] = False
        z = z.masked_fill(remove.scatter(-1, index, remove), float("-inf"))
    return (z - (-noise.clamp_min(1e-30).log()).log()).argmax(-1)


@torch.no_grad()
def decode_dropping_finished(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    n: int,
    max_new_tokens: int,
    ends: list[int],
    pad_token_id: int,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_p: float = 1.0,
    drop_finished: bool = True,
) -> tuple[torch.Tensor, list[int]]:
    """``n`` replies to each left-padded prompt of ``input_ids [G, P]``: each prompt but its last
    token computed once and its KV cache repeated to the ``n`` rows, then one token per step for
    the rows still going. A row that has written an end token leaves the decode batch (its rows of
    the KV cache, mask and inputs are dropped: ``drop_finished``), so a step costs the live rows only.

    Sampling draws one uniform ``[G * n, V]`` tensor per step from the global torch RNG, for every
    row, finished or not, and row ``i`` samples with its own row ``i`` (:func:`sample_tokens`):
    the draws, and so the samples, are the same whether finished rows are dropped or kept. (They
    are not transformers' ``generate`` samples for the same seed, which draws ``multinomial`` over
    the batch it holds.) Greedy decoding takes the argmax. Returns ``(prompt + reply tokens
    [G * n, P + T]`` right-padded with ``pad_token_id`` after each end token, the decode batch's
    row count at each step)."""
    device = input_ids.device
    ids, mask = input_ids.repeat_interleave(n, 0), attention_mask.repeat_interleave(n, 0)
    B, P = ids.shape
    keep_logits = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    if P > 1 and n > 1:
        _, cache = shared_prompt_cache(model, input_ids[:, :-1], attention_mask[:, :-1], n, **keep_logits)
        step_ids, step_pos = ids[:, -1:], positions[:, -1:]
    else:
        from transformers import DynamicCache

        cache, step_ids, step_pos = DynamicCache(config=model.config), ids, positions
    ends_t = torch.tensor(ends, device=device)
    replies = torch.full((B, max_new_tokens), pad_token_id, dtype=ids.dtype, device=device)
    live = torch.arange(B, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    batch_rows = []
    for t in range(max_new_tokens):
        batch_rows.append(len(live))
        out = model(
            input_ids=step_ids,
            attention_mask=mask,
            position_ids=step_pos,
            use_cache=True,
            **{cache_argument(model): cache},
            **keep_logits,
        )
        logits = out.logits[:, -1]
        if do_sample:
            noise = torch.rand(B, logits.shape[-1], device=device)  # every row's draw, live or not
            token = sample_tokens(logits, noise[live], temperature=temperature, top_p=top_p)
        else:
            token = logits.argmax(-1)
        token = torch.where(done[live], pad_token_id, token)  # kept finished rows (drop_finished off)
        replies[live, t] = token
        done[live] |= torch.isin(token, ends_t)
        if bool(done.all()) or t == max_new_tokens - 1:
            break
        step_ids, step_pos = token[:, None], step_pos[:, -1:] + 1
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        if drop_finished and bool(done[live].any()):
            stay = (~done[live]).nonzero().squeeze(-1)
            cache.batch_select_indices(stay)
            live, step_ids, step_pos, mask = live[stay], step_ids[stay], step_pos[stay], mask[stay]
    return torch.cat([ids, replies[:, : len(batch_rows)]], 1), batch_rows
