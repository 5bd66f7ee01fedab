"""Warm start: supervised fine-tuning of the tiny model on the tasks' worked solutions.

RL needs a policy that is right some of the time. The shipped checkpoint
(``data/checkpoints/addition-warmstart``) was made by::

    python -m workbench warmstart

which trains until held-out greedy accuracy first reaches ``target_accuracy`` (checked every
``eval_every`` steps) and saves there, so that RL starts from a partly competent policy. The run
is deterministic on one machine (an interrupted one resumes to the same bits), but float sums
follow the CPU's vector kernels, so another CPU type rebuilds a model of the same recipe with
other bits (and possibly another stopping step).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .._files import atomic_write_text, replace_dir
from ..models.generation import accuracy
from ..models.load import build_tiny_model, count_parameters, load_model, save_model
from ..models.tokenizer import build_char_tokenizer
from ..tasks import get_task
from ..tasks.base import check_int
from .config import DEFAULT_INIT

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


def warm_start(
    *,
    task: str = "addition",
    task_params: dict | None = None,
    max_steps: int = 3000,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    target_accuracy: float = 0.2,
    min_steps: int = 100,
    eval_every: int = 25,
    eval_size: int = 256,
    max_new_tokens: int | None = None,
    model_params: dict | None = None,
    init: str | Path | None = None,
    out: str | Path = DEFAULT_INIT,
    progress: bool = True,
) -> dict:
    """Train a tiny model on worked solutions; save it to ``out`` once it reaches the target.

    The model is fresh, or continues from the local checkpoint ``init`` (a curriculum: a model
    warm-started on shorter chains). ``max_new_tokens`` for the accuracy checks defaults to the
    task's ``max_response_tokens``. At every accuracy check the model, optimizer and step are
    saved atomically next to ``out`` (``.<out name>.progress``); calling again with the same
    arguments resumes from there, with the same result as an uninterrupted run, and the progress
    is removed once ``out`` is written. Returns a summary dict (also ``out/warmstart.json``) with
    the accuracy at every check in ``curve``.
    """
    args = dict(locals())  # the arguments: checked, stored with the progress, repeated in the summary
    _check_arguments(args)
    t = get_task(task, **(task_params or {}))
    out = Path(out)
    settings = {
        "task": task,
        "task_params": task_params or {},
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "model_params": model_params or {},
        "init": None if init is None else str(init),
    }
    progress_dir = out.with_name(f".{out.name}.progress")
    state = _load_progress(progress_dir, settings)
    model, tokenizer = _starting_model(progress_dir if state is not None else None, init, seed, model_params)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
    save = lambda progress: _save_progress(progress_dir, model, tokenizer, optimizer, settings, progress)  # noqa: E731
    step, curve, seconds = _train(model, tokenizer, optimizer, t, args, state, save)
    summary = {
        "task": task,
        "task_params": task_params or {},
        "steps": step,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "target_accuracy": target_accuracy,
        "greedy_accuracy": curve[-1]["greedy_accuracy"] if curve else 0.0,
        "eval_size": eval_size,
        "parameters": count_parameters(model),
        "seconds": round(seconds, 1),
        "command": _command(args),
    }
    if init is not None:
        summary["init"] = str(init)
    summary["curve"] = curve
    path = save_model(model, tokenizer, out)
    atomic_write_text(path / "warmstart.json", json.dumps(summary, indent=2))
    shutil.rmtree(progress_dir, ignore_errors=True)
    return summary


def _check_arguments(args: dict) -> None:
    if not 0 < args["target_accuracy"] <= 1:
        raise ValueError(f"target_accuracy must be in (0, 1], got {args['target_accuracy']}")
    for name in ("max_steps", "eval_every", "batch_size"):
        check_int(name, args[name], 1)
    if not args["lr"] >= 0:
        raise ValueError(f"lr must be >= 0, got {args['lr']!r}")
    if args["init"] is not None and args["model_params"]:
        raise ValueError("model_params cannot change a model continued from init; leave one of them out")


def _train(model, tokenizer, optimizer, task, args: dict, state: dict | None, save) -> tuple[int, list, float]:
    """SFT steps until the held-out greedy accuracy reaches the target (checked every
    ``eval_every`` steps from ``min_steps`` on, each check saved as progress by ``save``) or
    ``max_steps``; continues from ``state``. Returns the last step, the curve and the seconds."""
    done, curve, seconds = (state["step"], state["curve"], state["seconds"]) if state else (0, [], 0.0)
    max_new_tokens = args["max_new_tokens"] or task.max_response_tokens
    eval_examples = task.generate("eval", args["eval_size"], 1234)
    start, step, max_steps = time.perf_counter() - seconds, done, args["max_steps"]
    bar = tqdm(
        range(done + 1, max_steps + 1), desc="warm start", disable=not args["progress"], initial=done, total=max_steps
    )
    for step in bar:
        model.train()
        batch = sft_batch(tokenizer, task.generate("train", args["batch_size"], args["seed"] * 1_000_003 + step))
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= args["min_steps"] and step % args["eval_every"] == 0:
            acc = accuracy(model, tokenizer, task, eval_examples, max_new_tokens=max_new_tokens)
            curve.append({"step": step, "loss": round(loss.item(), 4), "greedy_accuracy": acc})
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{acc:.2f}")
            if acc >= args["target_accuracy"]:
                break
            save({"step": step, "curve": curve, "seconds": time.perf_counter() - start})
    return step, curve, time.perf_counter() - start


def _starting_model(progress_dir: Path | None, init, seed: int, model_params: dict | None):
    """The model a warm start trains: its saved progress, the checkpoint ``init``, or a fresh one."""
    if progress_dir is not None:
        return load_model(progress_dir / "model")
    if init is not None:
        return load_model(init)
    torch.manual_seed(seed)
    tokenizer = build_char_tokenizer()
    return build_tiny_model(tokenizer, seed=seed, **(model_params or {})), tokenizer


def _command(args: dict) -> str:
    """The ``python -m workbench warmstart`` command that repeats a warm start (defaults left out)."""
    a = args
    return (
        f"python -m workbench warmstart --task {a['task']} --seed {a['seed']} "
        f"--target-accuracy {a['target_accuracy']}"
        + (f" --task-params '{json.dumps(a['task_params'])}'" if a["task_params"] else "")
        + (f" --max-steps {a['max_steps']}" if a["max_steps"] != 3000 else "")
        + (f" --batch-size {a['batch_size']}" if a["batch_size"] != 64 else "")
        + (f" --lr {a['lr']}" if a["lr"] != 1e-3 else "")
        + (f" --eval-every {a['eval_every']}" if a["eval_every"] != 25 else "")
        + (f" --eval-size {a['eval_size']}" if a["eval_size"] != 256 else "")
        + ("" if a["init"] is None else f" --init {a['init']}")
        + ("" if str(a["out"]) == DEFAULT_INIT else f" --out {a['out']}")
    )


def _save_progress(path: Path, model, tokenizer, optimizer, settings: dict, state: dict) -> None:
    """Model, optimizer and step of an unfinished warm start, replaced as a whole (temporary dir, rename)."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tokenizer, tmp / "model")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    atomic_write_text(tmp / "state.json", json.dumps({"settings": settings, **state}))
    replace_dir(tmp, path)


def _load_progress(path: Path, settings: dict) -> dict | None:
    """The saved state of an unfinished warm start with these settings, or None when there is none."""
    if not (path / "state.json").is_file():
        return None
    state = json.loads((path / "state.json").read_text())
    if state["settings"] != settings:
        changed = sorted(k for k in settings if state["settings"].get(k) != settings[k])
        raise ValueError(
            f"{path} holds an unfinished warm start with other settings ({', '.join(changed)}); "
            "repeat its arguments to resume it, or delete the folder to start over"
        )
    state["optimizer"] = torch.load(path / "optimizer.pt", weights_only=True)
    return state
