"""Trackers: a run's rows copied to the tools researchers look at, as TRL and transformers'
``report_to``: ``"tensorboard"`` (``run_dir/tensorboard``), ``"trackio"`` (trackio's local store,
``TRACKIO_DIR``) and ``"wandb"`` (Weights & Biases in offline mode, ``run_dir/wandb``; ``wandb sync``
uploads it later). None of them ever needs a network.

The run directory stays the record: a row goes to the trackers only after it is in
``metrics.jsonl`` (tags ``train/<column>``) or ``eval.jsonl`` (``eval/<column>``), only from the main
process, every numeric column as a scalar at the row's step. ``run_dir/trackers.json`` notes which
trackers have the run (and the ids they know it by), so a resume continues the same tracker run:

- a tracker that has not seen the run yet (added on resume) first gets the rows already there;
- TensorBoard's writer purges the events after the checkpoint being resumed (``purge_step``), so the
  steps that are redone replace the ones a crash left behind;
- trackio and wandb cannot delete a logged step, so a step they may already hold (up to the last
  row the run directory had before the resume) is not sent again.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import numbers
import os
import uuid
from pathlib import Path

from .._files import atomic_write_text
from ..runs import read_jsonl

__all__ = ["TRACKERS", "report_to_names", "check_installed", "last_step", "Trackers"]

#: What each tracker needs installed: (module, the pip command that installs it).
TRACKERS = {
    "tensorboard": ("tensorboard", "pip install 'gtpo-workbench[tensorboard]' (or pip install tensorboard)"),
    "trackio": ("trackio", "pip install 'gtpo-workbench[trackio]' (or pip install trackio)"),
    "wandb": ("wandb", "pip install 'gtpo-workbench[wandb]' (or pip install wandb)"),
}
STATE = "trackers.json"  #: in the run directory: the trackers that have the run, with their ids
PROJECT = "gtpo-workbench"  #: the trackio / wandb project, unless TRACKIO_PROJECT / WANDB_PROJECT says


def report_to_names(report_to) -> list[str]:
    """The trackers ``report_to`` names (``"none"``, a name, comma-separated names or a list of
    them), in order, each once; a ``ValueError`` names an unknown one and the choices."""
    items = report_to.split(",") if isinstance(report_to, str) else list(report_to)
    names = []
    for item in items:
        name = item.strip().lower() if isinstance(item, str) else item
        if name in ("none", ""):
            continue
        if name not in TRACKERS:
            raise ValueError(f"report_to: unknown tracker {item!r}; choose from none, {', '.join(TRACKERS)}")
        if name not in names:
            names.append(name)
    return names


def check_installed(names) -> None:
    """Raise a one-line ``ModuleNotFoundError`` with the install command for the first tracker of
    ``names`` whose package is missing."""
    for name in names:
        module, install = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            raise ModuleNotFoundError(
                f"report_to={name!r} needs the {module} package, which is not installed: {install}"
            )


def last_step(run_dir) -> int:
    """The last step ``metrics.jsonl`` or ``eval.jsonl`` of ``run_dir`` holds (-1: none): a bound
    on what a tracker can hold, since rows reach it only after the run directory."""
    steps = [r.get("step", 0) for name in ("metrics.jsonl", "eval.jsonl") for r in read_jsonl(Path(run_dir) / name)]
    return max(steps, default=-1)


def scalars(row: dict) -> dict[str, float]:
    """The numeric columns of ``row`` (booleans as 0/1; ``step`` and text left out)."""
    return {k: float(v) for k, v in row.items() if k != "step" and isinstance(v, numbers.Real)}


class _TensorBoard:
    purges = True  #: hides the events after the resumed checkpoint, so redone steps replace them

    def __init__(self, run_dir: Path, state: dict, config: dict, resume_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        purge = None if resume_step is None else resume_step + 1
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge)
        if not state:
            self.writer.add_text("config", "```json\n" + json.dumps(config, indent=2) + "\n```", 0)
        state["logdir"] = "tensorboard"

    def log(self, values: dict, step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        self.writer.close()


class _Trackio:
    purges = False

    def __init__(self, run_dir: Path, state: dict, config: dict, resume_step: int | None):
        trackio = importlib.import_module("trackio")
        fresh = not state
        state.setdefault("project", os.environ.get("TRACKIO_PROJECT", PROJECT))
        state.setdefault("name", f"{run_dir.name}-{uuid.uuid4().hex[:8]}")
        self.run = trackio.init(
            project=state["project"],
            name=state["name"],
            config=config,
            resume="never" if fresh else "allow",
            auto_log_gpu=False,
            auto_log_cpu=False,
        )

    def log(self, values: dict, step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class _Wandb:
    purges = False

    def __init__(self, run_dir: Path, state: dict, config: dict, resume_step: int | None):
        wandb = importlib.import_module("wandb")
        state.setdefault("project", os.environ.get("WANDB_PROJECT", PROJECT))
        state.setdefault("id", uuid.uuid4().hex[:12])
        self.run = wandb.init(
            project=state["project"],
            name=run_dir.name,
            id=state["id"],
            resume="allow",
            dir=str(run_dir),
            mode="offline",  # never the network: `wandb sync run_dir/wandb/offline-run-*` uploads it
            config=config,
            settings=wandb.Settings(console="off", silent=True),
        )

    def log(self, values: dict, step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


_OPEN = {"tensorboard": _TensorBoard, "trackio": _Trackio, "wandb": _Wandb}


class Trackers:
    """The trackers of one training session of a run (none: every call does nothing).

    ``resume_step``: the checkpoint's step when the session resumes a run (``None`` for a new run);
    ``last_row``: the last step the run directory held before the resume cut it back
    (:func:`last_step`), which bounds what a tracker already holds.
    """

    def __init__(self, names=(), run_dir=None, config: dict | None = None, *, resume_step=None, last_row: int = -1):
        self.run_dir, self.trackers, self.sent_through = Path(run_dir or "."), {}, {}
        if not names:
            return
        check_installed(names)
        path = self.run_dir / STATE
        state = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        try:
            for name in names:
                fresh, known = name not in state, dict(state.get(name, {}))
                tracker = self.trackers[name] = _OPEN[name](self.run_dir, known, config or {}, resume_step)
                state[name] = known
                self.sent_through[name] = -1 if fresh or tracker.purges else last_row
                if fresh:  # a tracker new to the run first gets the rows already there
                    self._replay(tracker)
            atomic_write_text(path, json.dumps(state, indent=1))
        except BaseException:
            self.close()
            raise

    def _replay(self, tracker) -> None:
        for prefix, name in (("train", "metrics.jsonl"), ("eval", "eval.jsonl")):
            for row in read_jsonl(self.run_dir / name):
                tracker.log({f"{prefix}/{k}": v for k, v in scalars(row).items()}, int(row.get("step", 0)))

    def log(self, prefix: str, row: dict, step: int) -> None:
        """Send ``row``'s numeric columns as ``<prefix>/<column>`` at ``step`` to every tracker that
        does not hold that step yet."""
        values = {f"{prefix}/{k}": v for k, v in scalars(row).items()}
        for name, tracker in self.trackers.items():
            if step > self.sent_through[name]:
                tracker.log(values, step)

    def close(self) -> None:
        for tracker in self.trackers.values():
            tracker.close()
        self.trackers = {}
