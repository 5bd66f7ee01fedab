"""Entropy analysis of any model: sample groups, score them, and write them as the trainer's
``samples.jsonl`` records, so every figure of :mod:`workbench.viz` works on a loaded or
trained model as well as on a run directory.

    model, tokenizer = load_model("path/to/checkpoint")
    records = rollout_records(model, tokenizer, get_task("addition"), prompts=16, n=8)
    viz.entropy_distribution(records); viz.forking_tokens_table(records)
"""

from __future__ import annotations

import torch

from ..algorithms import get_algorithm
from ..models.generation import format_prompts, generate
from ..models.scoring import token_stats_from_model
from ..runs import response_record
from ..training.config import TrainConfig

__all__ = ["rollout_records"]


@torch.no_grad()
def rollout_records(
    model,
    tokenizer,
    task,
    *,
    prompts: int = 8,
    n: int = 8,
    split: str = "eval",
    seed: int = 0,
    max_new_tokens: int = TrainConfig.max_new_tokens,
    temperature: float = 1.0,
    algorithm: str = "gtpo",
    chat_template: bool | None = None,
    step: int = 0,
    source: str = "",
) -> list[dict]:
    """Sample ``n`` responses for each of ``prompts`` task examples and return one record per group
    (at most ``max_new_tokens`` each: by default the trainer's budget).

    Each record has ``step``, ``group``, ``prompt``, ``answer`` (the gold answer), ``algorithm``,
    ``source`` (a label for the figures, e.g. the checkpoint's name) and ``responses`` (tokens,
    entropies and log-probs of the sampled tokens at ``temperature``, reward, correctness and
    the ``algorithm``'s advantages), as the trainer logs them.
    """
    if prompts < 1 or n < 2:
        raise ValueError(f"need prompts >= 1 and n >= 2, got prompts={prompts}, n={n}")
    advantage_fn = get_algorithm(algorithm).advantages
    examples = task.generate(split, prompts, seed)
    torch.manual_seed(seed)
    texts_in = format_prompts(tokenizer, [e.prompt for e in examples], chat_template)
    gen = generate(model, tokenizer, texts_in, n=n, max_new_tokens=max_new_tokens, temperature=temperature)
    T = int(gen.response_mask.sum(-1).max())
    mask = gen.response_mask[:, :T]
    ids = torch.cat([gen.prompt_ids, gen.response_ids[:, :T]], 1)
    attention = torch.cat([gen.prompt_mask, mask.long()], 1)
    was_training = model.training
    model.eval()
    logp, ent = token_stats_from_model(
        model, ids, attention, response_len=T, response_mask=mask, temperature=temperature
    )
    model.train(was_training)
    rewards = torch.tensor([task.reward(examples[i // n], t) for i, t in enumerate(gen.texts)])
    advantages = advantage_fn(rewards.view(-1, n), ent.view(-1, n, T).float().cpu(), mask.view(-1, n, T).cpu())
    advantages = advantages.view(-1, T)
    records = []
    for g, ex in enumerate(examples):
        responses = []
        for i in range(g * n, (g + 1) * n):
            m = mask[i]
            responses.append(
                response_record(
                    tokenizer,
                    gen.response_ids[i, :T][m].tolist(),
                    ent[i][m],
                    logp[i][m],
                    advantages[i][m.cpu()],
                    text=gen.texts[i],
                    reward=float(rewards[i]),
                    correct=float(rewards[i]) > 0.5,
                )
            )
        records.append(
            {
                "step": step,
                "group": g,
                "prompt": ex.prompt,
                "answer": ex.answer,
                "algorithm": algorithm,
                "source": source,
                "responses": responses,
            }
        )
    return records
