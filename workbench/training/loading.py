"""What a run starts from: its accelerator (device, precision) and its model and tokenizer."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from accelerate import Accelerator

from ..models.load import build_tiny_model, load_model
from ..models.lora import add_lora
from .config import DEFAULT_INIT, TrainConfig

__all__ = ["make_accelerator", "load_policy"]


def make_accelerator(config: TrainConfig) -> Accelerator:
    """CUDA when there is a GPU (``device="auto"``), bf16 there (``mixed_precision="auto"``)."""
    use_cpu = config.device == "cpu" or not torch.cuda.is_available()
    if config.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' but no CUDA GPU is available")
    precision = config.mixed_precision
    if precision == "auto":
        precision = "bf16" if not use_cpu and torch.cuda.is_bf16_supported() else "no"
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        raise ValueError(
            "accelerate's own FSDP (--use_fsdp or an FSDP accelerate config) is not supported: the trainer shards "
            "the model itself, so that generation, evaluation and checkpoints work under FSDP; launch with "
            "--multi_gpu and set parallel='fsdp' (--parallel fsdp)"
        )
    return Accelerator(cpu=use_cpu, mixed_precision=precision)


def load_policy(config: TrainConfig):
    """``(model, tokenizer)`` of ``config.model``: a fresh tiny model, the shipped warm start, or a
    local checkpoint (see :func:`workbench.models.load_model`); activation checkpointing on if asked;
    wrapped with a LoRA adapter when ``lora_rank > 0`` (:func:`workbench.models.lora.add_lora`)."""
    if config.model == "tiny":
        from ..models.tokenizer import build_char_tokenizer

        tokenizer = build_char_tokenizer()
        model = build_tiny_model(tokenizer, seed=config.seed, **config.model_params)
    else:
        path = DEFAULT_INIT if config.model == "default" else config.model
        if config.model == "default" and not Path(path).is_dir():
            raise FileNotFoundError(
                f"the shipped warm-start checkpoint {path} is missing; rebuild it with `python -m workbench warmstart`"
            )
        model, tokenizer = load_model(path, trust_remote_code=config.trust_remote_code)
    if config.gradient_checkpointing:  # recompute each block's activations in the backward (non-reentrant)
        if hasattr(model, "activation_checkpointing_enable"):  # transformers 5.x's name, then the older one
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config.lora_rank:  # the base frozen, a LoRA adapter on the target modules (drawn from the run's seed)
        model = add_lora(
            model,
            rank=config.lora_rank,
            alpha=config.lora_alpha,
            target_modules=config.lora_targets(),
            seed=config.seed,
        )
    return model, tokenizer
