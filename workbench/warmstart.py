"""Warm start: supervised fine-tuning of the tiny model on the tasks' worked solutions.

RL needs a policy that is right some of the time. The shipped checkpoint
(``data/checkpoints/addition-warmstart``) is rebuilt, bit for bit on CPU, by::

    python -m workbench warmstart

which trains until held-out greedy accuracy first reaches ``target_accuracy`` (checked every
``eval_every`` steps) and saves there, so that RL starts from a partly competent policy.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .config import DEFAULT_INIT
from .generation import accuracy
from .models import build_tiny_model, count_parameters, save_model
from .tasks import get_task
from .tokenizer import build_char_tokenizer

__all__ = ["warm_start", "sft_batch"]


def sft_batch(tokenizer, examples, device="cpu"):
    """Left-padded ``prompt + solution + EOS`` with labels only on the solution and EOS."""
    ids, labels = [], []
    for e in examples:
        p = tokenizer(e.prompt, add_special_tokens=False)["input_ids"]
        s = tokenizer(e.solution, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids.append(p + s)
        labels.append([-100] * len(p) + s)
    width = max(map(len, ids))
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids], device=device)
    label_ids = torch.tensor([[-100] * (width - len(x)) + x for x in labels], device=device)
    attention = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=device)
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": input_ids, "attention_mask": attention, "position_ids": position_ids, "labels": label_ids}


def warm_start(*, task: str = "addition", task_params: dict | None = None, max_steps: int = 3000,
               batch_size: int = 64, lr: float = 1e-3, seed: int = 0, target_accuracy: float = 0.2,
               min_steps: int = 100, eval_every: int = 25, eval_size: int = 256, max_new_tokens: int | None = None,
               model_params: dict | None = None, out: str | Path = DEFAULT_INIT, progress: bool = True) -> dict:
    """Train a fresh tiny model on worked solutions; save it to ``out`` once it reaches the target.

    ``max_new_tokens`` for the accuracy checks defaults to the task's ``max_response_tokens``.
    Returns a summary dict (also written to ``out/warmstart.json``).
    """
    if not 0 < target_accuracy <= 1:
        raise ValueError(f"target_accuracy must be in (0, 1], got {target_accuracy}")
    torch.manual_seed(seed)
    t = get_task(task, **(task_params or {}))
    if max_new_tokens is None:
        max_new_tokens = t.max_response_tokens
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, seed=seed, **(model_params or {}))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    eval_examples = t.generate("eval", eval_size, 1234)
    start = time.perf_counter()
    acc, step = 0.0, 0
    bar = tqdm(range(1, max_steps + 1), desc="warm start", disable=not progress)
    for step in bar:
        model.train()
        batch = sft_batch(tokenizer, t.generate("train", batch_size, seed * 1_000_003 + step))
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= min_steps and step % eval_every == 0:
            acc = accuracy(model, tokenizer, t, eval_examples, max_new_tokens=max_new_tokens)
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{acc:.2f}")
            if acc >= target_accuracy:
                break
    summary = {
        "task": task, "task_params": task_params or {}, "steps": step, "batch_size": batch_size, "lr": lr,
        "seed": seed, "target_accuracy": target_accuracy, "greedy_accuracy": acc, "eval_size": eval_size,
        "parameters": count_parameters(model), "seconds": round(time.perf_counter() - start, 1),
        "command": (f"python -m workbench warmstart --task {task} --seed {seed} --target-accuracy {target_accuracy}"
                    + (f" --task-params '{json.dumps(task_params)}'" if task_params else "")
                    + (f" --max-steps {max_steps}" if max_steps != 3000 else "")
                    + (f" --eval-every {eval_every}" if eval_every != 25 else "")
                    + (f" --eval-size {eval_size}" if eval_size != 256 else "")
                    + ("" if str(out) == DEFAULT_INIT else f" --out {out}")),
    }
    path = save_model(model, tokenizer, out)
    (path / "warmstart.json").write_text(json.dumps(summary, indent=2))
    return summary
