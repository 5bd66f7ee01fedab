"""Files: atomic writes and directory swaps (a reader sees the old version or the new one, never
half of either), a file's checksum and one over a set of files."""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path

__all__ = ["temporary_name", "atomic_write_text", "replace_dir", "sha256", "files_digest"]


def temporary_name(path: Path, suffix: str = ".tmp") -> Path:
    """A unique hidden name beside ``path`` (two writers never share a temporary file)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}{suffix}")


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a uniquely named temporary file and a rename."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def replace_dir(tmp: Path, path: Path) -> None:
    """Put the finished directory ``tmp`` in place of ``path`` by renames: at every moment one
    complete version exists (the old one is set aside under a unique name, then removed once the
    new one is in)."""
    tmp, path = Path(tmp), Path(path)
    if path.exists():
        old = temporary_name(path, ".old")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def sha256(path) -> str:
    """The SHA-256 of a file's bytes (hex), read 4 MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def files_digest(root, globs) -> str:
    """One SHA-256 over the files that ``globs`` match under ``root``: each one's path relative to
    ``root`` and its :func:`sha256`, in path order (so a file added, removed, renamed or changed shows)."""
    root = Path(root)
    digest = hashlib.sha256()
    for path in sorted({p for g in globs for p in root.glob(g)}):
        digest.update(f"{path.relative_to(root).as_posix()}\n{sha256(path)}\n".encode())
    return digest.hexdigest()
