"""Checkpoint files of a run: written atomically with checksums, verified, read back.

::

    run_dir/checkpoints/step_000050/   model.safetensors, config.json, tokenizer files,
                                        trainer_state.pt (optimizer, scheduler, RNG), checkpoint.json
                                        (a LoRA run: adapter_model.safetensors and adapter_config.json
                                        instead of the model's files; load_checkpoint reads either)
    run_dir/checkpoints/latest         the name of the newest complete checkpoint

A checkpoint is written into a uniquely named hidden directory, every file is fsync'ed and
listed with its SHA-256 in ``checkpoint.json``, and only then is the directory renamed to
``step_NNNNNN`` and ``latest`` updated: a crash at any moment leaves the previous checkpoint as
the latest complete one. ``trainer_state.pt`` loads with ``weights_only=True`` (plain tensors and
containers; any other pickle is refused unrun).
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import random
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from accelerate.utils import extract_model_from_parallel
from safetensors.torch import load_file

from .. import runs
from .._files import atomic_write_text, sha256, temporary_name
from ..models.lora import base_fingerprint, is_lora
from ..models.pretrained import quiet_hub_bars
from . import distributed

__all__ = [
    "save_checkpoint",
    "save_training",
    "restore_training",
    "verify_checkpoint",
    "intact_checkpoints",
    "checkpoint_name",
    "load_checkpoint",
    "load_weights",
    "TIED_KEYS",
]

TIED_KEYS = {"lm_head.weight"}  #: not saved when tied to the input embeddings


def checkpoint_name(step: int) -> str:
    """``step_000050``: the directory of the checkpoint after ``step`` RL steps."""
    return f"step_{step:06d}"


def save_checkpoint(
    run_dir,
    step: int,
    *,
    model,
    tokenizer,
    trainer_state: dict,
    meta: dict,
    keep: int,
    model_state: dict | None = None,
    fault=None,
) -> Path:
    """Write checkpoint ``step`` of the run in ``run_dir`` and keep the newest ``keep``; return its path.

    ``model_state``: the weights to save instead of ``model``'s own (the full state gathered from
    FSDP shards). ``meta`` is stored in ``checkpoint.json`` beside the checksums. ``fault(step)``
    is called once the files are written and before the rename (the crash tests' kill point).
    A full disk raises an ``OSError`` (ENOSPC) that says so, naming the checkpoint; the
    half-written directory is removed and the previous checkpoint stays the latest.
    """
    root = Path(run_dir) / "checkpoints"
    name = checkpoint_name(step)
    final, tmp = root / name, temporary_name(root / name, ".tmpdir")
    try:
        with quiet_hub_bars():
            if is_lora(model):  # the adapter's weights and config only (the base is the run's model source)
                model.save_pretrained(tmp, safe_serialization=True, save_embedding_layers=False)
                (tmp / "README.md").unlink(missing_ok=True)  # peft's blank model card
            else:
                model.save_pretrained(tmp, safe_serialization=True, state_dict=model_state)
        tokenizer.save_pretrained(tmp)
        with open(tmp / "trainer_state.pt", "wb") as f:  # a file object: a write error surfaces as OSError
            torch.save(trainer_state, f)
        if fault is not None:
            fault(step)
        files = {p.name: sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        atomic_write_text(tmp / "checkpoint.json", json.dumps({**meta, "step": step, "files": files}, indent=1))
        _fsync_files(tmp)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if _disk_full(e):
            free = shutil.disk_usage(root).free / 2**20
            raise OSError(
                errno.ENOSPC,
                f"disk full while writing checkpoint {name} in {root} ({free:.0f} MiB free "
                f"now): free some space, then resume the run from its last complete checkpoint "
                f"(resume({str(run_dir)!r}) or python -m workbench train --resume {run_dir})",
            ) from e
        raise
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    atomic_write_text(root / "latest", name)
    for old in runs.Run(Path(run_dir)).checkpoints()[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _disk_full(error: BaseException | None) -> bool:
    """Whether ``error`` (or one it was raised from) is a write that found the disk full."""
    while error is not None:
        if getattr(error, "errno", None) == errno.ENOSPC:
            return True
        text = str(error)
        if "No space left" in text or "StorageFull" in text:  # safetensors' and tokenizers' wording
            return True
        error = error.__cause__ or error.__context__
    return False


def verify_checkpoint(path) -> str | None:
    """``None`` if the checkpoint is complete and its checksums match, else what is wrong."""
    path = Path(path)
    meta_path = path / "checkpoint.json"
    if not meta_path.exists():
        return "no checkpoint.json (incomplete write)"
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError:
        return "checkpoint.json is corrupt"
    for name, digest in meta.get("files", {}).items():
        if name == "checkpoint.json":
            continue
        f = path / name
        if not f.exists():
            return f"{name} is missing"
        if sha256(f) != digest:
            return f"{name} does not match its checksum (corrupt or truncated)"
    return None


def intact_checkpoints(run_dir) -> Iterator[tuple[Path, dict, dict, dict]]:
    """The run's checkpoints that verify, newest first (``latest`` first): ``(path, weights,
    trainer_state, meta)`` each. A corrupt one, or one whose ``trainer_state.pt`` is not a plain
    tensor file, is skipped with a warning that names it and why."""
    run = runs.Run(Path(run_dir))
    candidates = [run.latest_checkpoint(), *reversed(run.checkpoints())]
    for ckpt in [p for p in dict.fromkeys(candidates) if p is not None]:
        problem = verify_checkpoint(ckpt)
        if problem:
            warnings.warn(f"skipping checkpoint {ckpt}: {problem}", stacklevel=3)
            continue
        try:  # weights_only: plain tensors and containers; any other pickle is refused unrun
            state = torch.load(ckpt / "trainer_state.pt", weights_only=True)
        except pickle.UnpicklingError as e:
            warnings.warn(
                f"refusing checkpoint {ckpt}: trainer_state.pt is not a plain tensor file ({e})", stacklevel=3
            )
            continue
        weights = {k: v for f in sorted(ckpt.glob("*.safetensors")) for k, v in load_file(f).items()}  # shards too
        yield ckpt, weights, state, json.loads((ckpt / "checkpoint.json").read_text())


def _fsync_files(path: Path) -> None:
    for p in path.iterdir():
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def save_training(
    run_dir,
    step: int,
    *,
    model,
    tokenizer,
    optimizer,
    scheduler,
    meta: dict,
    keep: int,
    fsdp: bool,
    is_main: bool,
    fault=None,
) -> Path | None:
    """Checkpoint a training run: weights, tokenizer, optimizer, scheduler and RNG states. Call it
    on every process: under FSDP (``model`` sharded) they gather the full state together; the
    main process writes it (the others return ``None``). ``model`` may be wrapped (DDP)."""
    unwrapped, model_state, optim_state = extract_model_from_parallel(model), None, None
    if fsdp:  # full (unsharded) weights and optimizer state, on the main process's CPU
        tied = TIED_KEYS if getattr(unwrapped.config, "tie_word_embeddings", False) else ()
        model_state, optim_state = distributed.full_state(model, optimizer, tied)
    if not is_main:
        return None
    if is_lora(unwrapped):  # the base the adapter was trained on (checked when it is read back)
        meta = {**meta, "lora_base": base_fingerprint(unwrapped)}
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    state = {
        "optimizer": optim_state if fsdp else optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "python_rng": random.getstate(),
        "cuda_rng": cuda_rng,
    }
    return save_checkpoint(
        run_dir,
        step,
        model=unwrapped,
        tokenizer=tokenizer,
        trainer_state=state,
        meta=meta,
        keep=keep,
        model_state=model_state,
        fault=fault,
    )


def restore_training(run_dir, *, model, optimizer, scheduler, fsdp: bool) -> dict | None:
    """Load the newest intact checkpoint of the run into the model (which may be wrapped: DDP),
    optimizer, scheduler and RNGs; return its ``checkpoint.json`` (``step`` and counters), or
    ``None`` when none was saved yet."""
    unwrapped = extract_model_from_parallel(model)
    found = next(intact_checkpoints(run_dir), None)
    if found is None:
        if runs.Run(Path(run_dir)).checkpoints():
            raise RuntimeError(f"no intact checkpoint in {Path(run_dir) / 'checkpoints'} to resume from")
        return None
    ckpt, weights, state, meta = found
    if is_lora(unwrapped) != (ckpt / "adapter_config.json").exists():
        kind = "a LoRA adapter" if is_lora(unwrapped) else "the whole model"
        raise RuntimeError(f"checkpoint {ckpt} does not fit the run: the run trains {kind}, the checkpoint does not")
    if fsdp:  # every process reads the full state and keeps its shards
        missing, unexpected = distributed.load_full_state(model, optimizer, weights, state["optimizer"])
        _check_fit(ckpt, missing, unexpected)
    else:
        load_weights(unwrapped, weights, ckpt, meta)
    if not fsdp:
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    random.setstate(state["python_rng"])
    return meta


def _check_fit(ckpt: Path, missing, unexpected) -> None:
    if unexpected or set(missing) - TIED_KEYS:
        raise RuntimeError(f"checkpoint {ckpt} does not fit the model: missing {missing}, unexpected {unexpected}")


def load_weights(model, weights: dict, ckpt: Path, meta: dict) -> None:
    """Load a checkpoint's ``weights`` into ``model`` (not wrapped): the whole model's, or a LoRA
    model's adapter (``peft``'s key names, as :func:`save_checkpoint` wrote them), after checking
    that the model's base is the one the adapter was trained on (``meta["lora_base"]``)."""
    if not is_lora(model):
        _check_fit(ckpt, *model.load_state_dict(weights, strict=False))
        return
    if meta.get("lora_base") not in (None, base_fingerprint(model)):
        raise RuntimeError(
            f"checkpoint {ckpt} holds a LoRA adapter trained on other base weights than the run's model now has "
            "(the model source changed since): restore the base model it was trained on"
        )
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    expected = set(get_peft_model_state_dict(model))
    if set(weights) != expected:
        raise RuntimeError(
            f"checkpoint {ckpt} does not fit the model's adapter: missing {sorted(expected - set(weights))}, "
            f"unexpected {sorted(set(weights) - expected)}"
        )
    set_peft_model_state_dict(model, weights)


def load_checkpoint(path):
    """``(model, tokenizer)`` of a training checkpoint directory (``run_dir/checkpoints/step_*``),
    verified first: the whole model's checkpoint through :func:`workbench.models.load_model`; a
    LoRA run's (the adapter only) as the run's base model (its ``config.json``: the model source,
    ``lora_*``, ``seed``) with the checkpoint's adapter, a ``peft`` model that samples and scores
    like any other and that :func:`workbench.models.save_model` writes merged."""
    from ..models.load import load_model
    from .config import TrainConfig
    from .loading import load_policy

    path = Path(path)
    problem = verify_checkpoint(path)
    if problem:
        raise ValueError(f"checkpoint {str(path)!r} cannot be read: {problem}")
    if not (path / "adapter_config.json").exists():
        return load_model(path)
    run_config = path.parent.parent / "config.json"
    if not run_config.exists():
        raise FileNotFoundError(
            f"checkpoint {str(path)!r} holds a LoRA adapter; its base model is named in the run's config.json "
            f"({run_config}), which is missing"
        )
    config = TrainConfig.from_dict({**json.loads(run_config.read_text()), "output_dir": str(path.parent.parent)})
    model, tokenizer = load_policy(config.replace(gradient_checkpointing=False))
    weights = {k: v for f in sorted(path.glob("*.safetensors")) for k, v in load_file(f).items()}
    load_weights(model, weights, path, json.loads((path / "checkpoint.json").read_text()))
    return model.eval(), tokenizer
