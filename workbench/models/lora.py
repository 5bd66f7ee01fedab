"""LoRA adapters through ``peft``: wrapping a model, seeing through the wrapper, merging it away.

A LoRA-wrapped model (``peft.get_peft_model``) is a ``PeftModel`` around the transformers model,
whose linear layers ``peft`` replaced in place by LoRA layers (the frozen base weight plus
``B @ A * alpha / r``). Running that inner transformers model therefore runs the adapter: the
sampling and scoring code of :mod:`workbench.models` calls :func:`base_model` first and works
on the inner model as on any other (its decoder, its LM head, its ``generate``), with the
adapter's effect in every forward. :func:`merged_model` folds the adapter into the weights: a
plain transformers model that :func:`workbench.models.save_model` writes as a normal checkpoint.
"""

from __future__ import annotations

import copy
import hashlib
import sys
import warnings

import torch

__all__ = ["DEFAULT_TARGET_MODULES", "add_lora", "base_fingerprint", "base_model", "is_lora", "merged_model"]

#: The attention and MLP projections of Llama-style decoders (Llama, Qwen2, SmolLM2, Mistral and
#: the tiny default): every linear layer of a block; the embeddings and the LM head stay as they are.
DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def is_lora(model) -> bool:
    """Whether ``model`` is a ``peft`` model (``PeftModel``); ``peft`` is imported only by code that
    made one, so a model built without it is never one."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def base_model(model):
    """The transformers model inside a ``PeftModel`` (with the LoRA layers in it, so its forward is
    the adapted model's); any other model as it is."""
    return model.get_base_model() if is_lora(model) else model


def add_lora(model, *, rank: int, alpha: float, target_modules, seed: int = 0):
    """``model`` wrapped with a LoRA adapter of rank ``rank`` and scale ``alpha / rank`` on the
    modules named ``target_modules`` (a name matches a module whose name ends with it, as in
    ``peft``). The base weights are frozen; only the adapter's trains. The adapter's ``A``
    matrices are drawn from ``seed`` (the global RNG is left as it was); ``B`` starts at zero, so
    the wrapped model computes what ``model`` did."""
    from peft import LoraConfig, get_peft_model

    names = [name for name, _ in model.named_modules()]
    missing = [t for t in target_modules if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ValueError(
            f"lora_target_modules: {', '.join(missing)} not in the model; its linear layers are named "
            f"{', '.join(linear)}"
        )
    config = LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=list(target_modules), lora_dropout=0.0, task_type="CAUSAL_LM"
    )
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.manual_seed(seed)
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*deprecated")  # peft on transformers 5
        return get_peft_model(model, config)


def merged_model(model):
    """A plain transformers model whose weights hold ``model``'s adapter (``merge_and_unload`` on a
    copy: ``model`` keeps its adapter); any other model as it is."""
    if not is_lora(model):
        return model
    return copy.deepcopy(model).merge_and_unload()


def base_fingerprint(model) -> str:
    """A SHA-256 of a LoRA model's frozen base weights (names, shapes and about 4,096 values of
    each, evenly spaced): what an adapter was trained on, so that it is not put on another base."""
    digest = hashlib.sha256()
    for name, p in model.named_parameters():
        if p.requires_grad:
            continue
        flat = p.detach().flatten()
        sample = flat[:: max(1, flat.numel() // 4096)].float().cpu()
        digest.update(f"{name}{tuple(p.shape)}".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()
