"""Models: a tiny causal LM built from a transformers config, or a local checkpoint directory.

Nothing here downloads: a model is either built from a ``Qwen2Config`` and a character-level
tokenizer, or loaded from a local directory (weights through safetensors only; no remote code
unless the caller turns it on explicitly).
"""

from __future__ import annotations

import json
import os
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import (AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast,
                          Qwen2Config, Qwen2ForCausalLM)

__all__ = ["TINY_DEFAULTS", "build_tiny_model", "check_model_source", "load_model", "save_model", "count_parameters", "quiet_hub_bars"]


@contextmanager
def quiet_hub_bars():
    """Hide transformers' per-file loading/saving bars (noise for a few-MB model); restore after."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()

#: The embedded default: ~1 M parameters (see shared notes, "embedded-default").
TINY_DEFAULTS = dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                     intermediate_size=512, max_position_embeddings=1024, tie_word_embeddings=True)


def build_tiny_model(tokenizer: PreTrainedTokenizerBase, *, seed: int = 0, **overrides) -> Qwen2ForCausalLM:
    """A freshly initialised Qwen2-style causal LM sized for the tokenizer's vocabulary."""
    unknown = set(overrides) - set(Qwen2Config().to_dict())
    if unknown:
        raise ValueError(f"unknown model config key(s): {', '.join(sorted(unknown))}")
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **{**TINY_DEFAULTS, **overrides},
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def check_model_source(model: str) -> None:
    """Raise ``FileNotFoundError`` naming ``model`` unless it is something :func:`load_model` can
    read (checked when a config is built, before a run directory is touched)."""
    if not Path(os.fspath(model)).expanduser().is_dir():
        raise FileNotFoundError(f"model: {model!r} is neither 'default', 'tiny' nor a local directory")


def load_model(path, *, trust_remote_code: bool = False, torch_dtype=None):
    """Load ``(model, tokenizer)`` from a local Hugging Face checkpoint directory.

    Raises ``FileNotFoundError`` naming the path when it is missing or not a model directory.
    Weights load only from safetensors; ``trust_remote_code`` stays off unless asked, with a
    warning when it is turned on.
    """
    path = Path(os.fspath(path)).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"model path {str(path)!r} does not exist or is not a directory "
                                "(models load from a local directory only; hub names are not downloaded)")
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"model path {str(path)!r} has no config.json: not a Hugging Face checkpoint")
    if not any(path.glob("*.safetensors")):
        raise ValueError(f"model path {str(path)!r} has no .safetensors weights; pickle-based weights "
                         "(pytorch_model.bin) are refused. Convert them with safetensors first.")
    if trust_remote_code:
        warnings.warn(f"trust_remote_code=True: code shipped in {path} will run", stacklevel=2)
    kwargs = dict(local_files_only=True, trust_remote_code=trust_remote_code)
    tokenizer = _load_tokenizer(path, kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    with quiet_hub_bars():
        model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, dtype=torch_dtype, **kwargs)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


#: Tokenizers saved from a plain ``tokenizers`` object. AutoTokenizer would re-read them as the
#: model type's own class (Qwen2Tokenizer for the tiny model), which rebuilds the pre-tokenizer
#: and silently drops spaces and newlines; they load as the generic fast tokenizer instead.
_GENERIC_TOKENIZERS = ("TokenizersBackend", "PreTrainedTokenizerFast")


def _load_tokenizer(path: Path, kwargs: dict):
    config_file = path / "tokenizer_config.json"
    if config_file.is_file() and (path / "tokenizer.json").is_file():
        try:
            cls = json.loads(config_file.read_text()).get("tokenizer_class")
        except (json.JSONDecodeError, AttributeError):
            cls = None
        if cls in _GENERIC_TOKENIZERS:
            return PreTrainedTokenizerFast.from_pretrained(path, **kwargs)
    return AutoTokenizer.from_pretrained(path, **kwargs)


def save_model(model, tokenizer, path) -> Path:
    """Save model (safetensors) and tokenizer to ``path`` atomically (temporary dir, then rename)."""
    import shutil

    from .runs import replace_dir

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with quiet_hub_bars():
        model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    replace_dir(tmp, path)
    return path


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
