"""The run directory: what a training run leaves, and how to read it back.

::

    run_dir/
      config.json          resolved TrainConfig
      task.json            the task's account of its data: split sizes; a JSONL file's skipped lines
      metrics.jsonl        one row per RL step (columns and meanings: ``workbench.training.metrics.METRICS``)
      eval.jsonl           held-out evaluations: step, greedy_accuracy, sampled_accuracy, pass@k (with
                           eval_samples > 1), entropy,
                           problems (how many were evaluated), reward_timeouts
      samples.jsonl        per-token records of a few rollout groups (one line per group)
      checkpoints/step_000050/   model (safetensors), tokenizer, optimizer/scheduler/RNG state,
                                 checkpoint.json (step, counters, SHA-256 of every file)
      checkpoints/latest   name of the newest complete checkpoint (``step_000050``)
      .lock                held by the live run

Every file write is atomic (a temporary file with a unique name, fsync, rename) or an fsync'ed
append of whole lines, so a killed run leaves no half-written file behind. A live run holds an
exclusive lock on its directory (``run_dir/.lock``, :func:`lock_run_dir`): a second run, a resume
or an overwrite of the same directory is refused while it is held.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from filelock import FileLock, Timeout

from ._files import atomic_write_text

__all__ = [
    "Run",
    "load_run",
    "append_jsonl",
    "response_record",
    "read_jsonl",
    "truncate_jsonl",
    "holds_run",
    "check_history",
    "open_run_dir",
    "check_run_dir",
    "prepare_run_dir",
    "lock_run_dir",
    "remove_leftovers",
    "clear_run_dir",
    "RunInUseError",
    "LOCK_NAME",
]

LOCK_NAME = ".lock"  #: the run directory's lock file (kept when a run is overwritten)


class RunInUseError(RuntimeError):
    """Another live run holds the run directory's lock."""


def lock_run_dir(path) -> FileLock:
    """Take the exclusive lock of run directory ``path`` (created if missing) and return it, held;
    raise :class:`RunInUseError` at once if another run holds it. The lock (``fcntl.flock`` through
    ``filelock``) belongs to the open file: it is released by ``release()`` or when the process
    ends, however it ends, so a killed run never leaves a stale lock behind."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path / LOCK_NAME, thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RunInUseError(
            f"output_dir {str(path)!r} is in use by another run (it holds {LOCK_NAME}): wait for "
            "that run to finish or stop it, or choose another output_dir"
        ) from None
    return lock


def check_run_dir(path, *, resume: bool, overwrite: bool) -> None:
    """Raise unless ``path`` suits the run: a resume needs a run there; a new run needs none,
    or ``overwrite``."""
    path = Path(path)
    if resume and not holds_run(path):
        raise FileNotFoundError(f"nothing to resume in {str(path)!r}: it holds no run")
    if not resume and not overwrite and holds_run(path):
        raise FileExistsError(
            f"output_dir {str(path)!r} already holds a run: resume it (resume=True), "
            "pass overwrite=True, or choose another output_dir"
        )


def prepare_run_dir(path, *, clear: bool, config: dict, task: dict) -> None:
    """Set up run directory ``path`` for a run whose lock is held: an overwritten run's files
    removed (``clear``), a killed run's temporary files removed, ``config.json`` and
    ``task.json`` (the task's account of its data) written."""
    path = Path(path)
    if clear:
        clear_run_dir(path)
    remove_leftovers(path)
    (path / "checkpoints").mkdir(parents=True, exist_ok=True)
    atomic_write_text(path / "config.json", json.dumps(config, indent=2))
    atomic_write_text(path / "task.json", json.dumps(task, indent=1))


def open_run_dir(
    path,
    *,
    resume: bool,
    overwrite: bool,
    config: dict,
    task: dict,
    main: bool = True,
    agree=lambda ok: ok,
    barrier=lambda: None,
) -> FileLock | None:
    """Start or resume a run in ``path``: take its lock (held for the life of the run; refused at
    once while another run holds it), check it (:func:`check_run_dir`) and prepare it
    (:func:`prepare_run_dir`); return the held lock. With several processes only the ``main`` one
    locks and writes: ``agree(ok)`` gives every process its verdict, ``barrier()`` waits for it."""
    path = Path(path)
    if resume and not path.is_dir():
        raise FileNotFoundError(f"nothing to resume in {str(path)!r}: it holds no run")
    lock, problem = None, None
    if main:
        try:
            lock = lock_run_dir(path)
        except RunInUseError as e:
            problem = str(e)
    if not agree(problem is None):
        raise RunInUseError(problem or f"output_dir {str(path)!r} is in use by another run")
    try:
        check_run_dir(path, resume=resume, overwrite=overwrite)
        if main:
            prepare_run_dir(path, clear=overwrite and not resume, config=config, task=task)
        barrier()
    except BaseException:
        if lock is not None:
            lock.release(force=True)
        raise
    return lock


def clear_run_dir(path) -> None:
    """Remove everything in the run directory ``path`` except its lock (for ``overwrite``)."""
    for p in Path(path).iterdir():
        if p.name == LOCK_NAME:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def remove_leftovers(path) -> None:
    """Remove the temporary files and directories a killed run left in run directory ``path``
    (call it while holding the directory's lock: then no live writer owns them)."""
    path = Path(path)
    for p in [
        *path.glob(".*.tmp"),
        *path.glob("checkpoints/.*.tmp"),
        *path.glob("checkpoints/.*.tmpdir"),
        *path.glob("checkpoints/.*.old"),
    ]:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def append_jsonl(path: Path, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, default=float) + "\n")
        f.flush()
        os.fsync(f.fileno())


def response_record(
    tokenizer, ids, entropies, logprobs, advantages, *, text: str, reward: float, correct: bool
) -> dict:
    """One response of a ``samples.jsonl`` record (``ids`` and the per-token lists already masked)."""
    return {
        "text": text,
        "tokens": [tokenizer.decode([t]) for t in ids],
        "entropies": [round(float(x), 5) for x in entropies],
        "logprobs": [round(float(x), 5) for x in logprobs],
        "advantages": [round(float(x), 5) for x in advantages],
        "reward": float(reward),
        "correct": bool(correct),
    }


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL file; a torn last line (from a crash mid-write) is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}: line {i + 1} is not valid JSON") from None
    return rows


def truncate_jsonl(path: Path, max_step: int) -> None:
    """Keep only rows with ``step <= max_step`` (used on resume: no lost or duplicated rows)."""
    path = Path(path)
    if path.exists():
        rows = [r for r in read_jsonl(path) if r.get("step", 0) <= max_step]
        atomic_write_text(path, "".join(json.dumps(r, default=float) + "\n" for r in rows))


def check_history(path, step: int, eval_every: int) -> None:
    """Warn when run ``path``'s history ends before the checkpoint at ``step`` being resumed (rows
    lost or the files removed): the resumed run then has a gap there."""
    path = Path(path)
    expected = {"metrics.jsonl": step, "eval.jsonl": step // eval_every * eval_every}
    for name, needed in expected.items():
        file = path / name
        if not file.exists():
            warnings.warn(
                f"{file} is missing; the checkpoint is at step {step}: the resumed run's {name} starts after it",
                stacklevel=3,
            )
            continue
        last = max((r.get("step", 0) for r in read_jsonl(file)), default=None)
        if last is None or last < needed:
            warnings.warn(
                f"{name} has rows up to step {last}, but the checkpoint is at step {step}: the rows in "
                f"between are lost (the resumed run continues after step {step})",
                stacklevel=3,
            )


def holds_run(path) -> bool:
    """Whether ``path`` holds a (possibly interrupted) run: what ``resume`` continues and
    ``train`` refuses to overwrite unless asked."""
    path = Path(path)
    return any((path / f).exists() for f in ("metrics.jsonl", "eval.jsonl", "checkpoints/latest"))


@dataclass
class Run:
    """A run directory read back: config, metrics, evaluations and per-token samples."""

    path: Path

    @property
    def config(self) -> dict:
        return json.loads((self.path / "config.json").read_text())

    @property
    def metrics(self) -> pd.DataFrame:
        return pd.DataFrame(read_jsonl(self.path / "metrics.jsonl"))

    @property
    def evals(self) -> pd.DataFrame:
        return pd.DataFrame(read_jsonl(self.path / "eval.jsonl"))

    @property
    def samples(self) -> list[dict]:
        return read_jsonl(self.path / "samples.jsonl")

    @property
    def name(self) -> str:
        return self.path.name

    def checkpoints(self) -> list[Path]:
        """This run's checkpoint directories, ``checkpoints/step_000002`` and so on, oldest first."""
        root = self.path / "checkpoints"
        if not root.exists():
            return []
        return sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and p.name.startswith("step_"))

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint ``checkpoints/latest`` names, if it is one of this run's own
        (``checkpoints/step_*``); else, with a warning when the pointer names something else, the
        newest of them. ``None`` when there is none."""
        ckpts = self.checkpoints()
        pointer = self.path / "checkpoints" / "latest"
        if not pointer.exists():
            return ckpts[-1] if ckpts else None
        name = pointer.read_text().strip()
        own = {p.name: p for p in ckpts}
        if name in own:
            return own[name]
        fallback = f"using {ckpts[-1].name}, the newest of them" if ckpts else "there are none"
        warnings.warn(
            f"{pointer} names {name[:200]!r}, which is not one of this run's checkpoints "
            f"({self.path / 'checkpoints'}/step_*): {fallback}",
            stacklevel=2,
        )
        return ckpts[-1] if ckpts else None

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"


def load_run(path) -> Run:
    """Open a run directory; a ``FileNotFoundError`` names the path when it is not one."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} is not a run directory (no config.json)")
    return Run(path)
