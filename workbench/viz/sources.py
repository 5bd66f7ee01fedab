"""What the figures read: runs, metrics tables, rollout groups and per-token tables.

Figures accept the forms a notebook has at hand and convert them here:

- runs: a :class:`workbench.runs.Run`, a run directory path, a metrics ``DataFrame``, a
  list of these, or a ``{label: run}`` dict;
- groups: a ``samples.jsonl`` record, a list of response dicts, one response dict, or a
  dict of ``rewards``/``entropies``/``mask`` arrays (as :func:`workbench.examples.spec_example`);
- samples: a ``Run``, a run path, a list of ``samples.jsonl`` records, one record, or a
  token table (``DataFrame``) already built by :func:`token_table`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..runs import Run, load_run

__all__ = [
    "RunData",
    "as_runs",
    "Group",
    "as_group",
    "as_records",
    "one_group",
    "run_samples",
    "pick_record",
    "gold_answer",
    "token_table",
    "TOKEN_COLUMNS",
]

TOKEN_COLUMNS = [
    "step",
    "group",
    "response",
    "position",
    "token",
    "entropy",
    "logprob",
    "advantage",
    "reward",
    "correct",
    "algorithm",
    "source",
    "record",
]


# ---------------------------------------------------------------------------- runs


@dataclass
class RunData:
    """One run as the figures use it: a label, its config, metrics and eval tables."""

    label: str
    config: dict = field(default_factory=dict)
    metrics: pd.DataFrame = field(default_factory=pd.DataFrame)
    evals: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def algorithm(self) -> str:
        return str(self.config.get("algorithm", self.label))

    group: str = ""  # the label of its group, when given as ``{label: [runs]}``

    def key(self, by: str) -> str:
        """The overlay group of this run: ``"run"`` (its label), ``"algorithm"``, ``"group"`` (the label it
        was given under in ``{label: [runs]}``), or ``"<config key>=value"``."""
        if by == "run":
            return self.label
        if by == "algorithm":
            return self.algorithm
        if by == "group":
            return self.group or self.label
        return f"{by}={self.config.get(by)}"


def _from_frame(df: pd.DataFrame, label: str) -> RunData:
    config = {}
    for column in ("algorithm", "seed"):
        if column in df.columns and len(df):
            config[column] = df[column].iloc[0]
    return RunData(label, config, df)


def _one_run(run, label: str | None) -> RunData:
    if isinstance(run, RunData):
        return run if label is None else RunData(label, run.config, run.metrics, run.evals)
    if isinstance(run, pd.DataFrame):
        return _from_frame(run, label or "run")
    if isinstance(run, (str, Path)):
        run = load_run(run)
    if isinstance(run, Run):
        return RunData(label or run.name, run.config, run.metrics, run.evals)
    raise TypeError(f"expected a Run, a run path or a metrics DataFrame, got {type(run).__name__}")


def as_runs(runs) -> list[RunData]:
    """Normalise ``runs`` (one run, a list of runs, ``{label: run}`` or ``{label: [runs]}``) to a list of
    :class:`RunData`; with ``{label: [runs]}`` each run's ``group`` is its label (overlay with ``by="group"``)."""
    if isinstance(runs, dict):
        out = []
        for label, value in runs.items():
            if isinstance(value, (list, tuple)):  # a named group of runs (seeds of one variant)
                for run in value:
                    data = _one_run(run, None)
                    out.append(RunData(f"{label}/{data.label}", data.config, data.metrics, data.evals, str(label)))
            else:
                out.append(_one_run(value, str(label)))
        return out
    if isinstance(runs, (list, tuple)):
        return [_one_run(run, f"run{i}" if isinstance(run, pd.DataFrame) else None) for i, run in enumerate(runs)]
    return [_one_run(runs, None)]


# ---------------------------------------------------------------------------- groups


@dataclass
class Group:
    """One rollout group as arrays: ``n`` responses padded to ``T`` positions.

    ``entropies`` is 0 and ``logprobs``/``advantages`` NaN at masked positions; ``tokens``
    holds each response's tokens (unpadded) when known.
    """

    rewards: np.ndarray  # [n] float
    entropies: np.ndarray  # [n, T] float
    mask: np.ndarray  # [n, T] bool
    correct: np.ndarray  # [n] bool
    tokens: list[list[str]] | None = None
    logprobs: np.ndarray | None = None
    advantages: np.ndarray | None = None
    prompt: str = ""
    answer: str = ""
    info: dict = field(default_factory=dict)  # step, group, algorithm, source of a logged group

    @property
    def n(self) -> int:
        return len(self.rewards)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(rewards, entropies, mask)`` tensors for the advantage functions."""
        return (
            torch.as_tensor(self.rewards, dtype=torch.float32),
            torch.as_tensor(self.entropies, dtype=torch.float32),
            torch.as_tensor(self.mask, dtype=torch.bool),
        )

    def token(self, i: int, t: int) -> str | None:
        return self.tokens[i][t] if self.tokens is not None and t < len(self.tokens[i]) else None


def _padded(rows: list[list[float]], T: int, fill: float) -> np.ndarray:
    out = np.full((len(rows), T), fill, dtype=float)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def _from_responses(
    responses: list[dict], prompt: str = "", threshold: float = 0.5, answer: str = "", info: dict | None = None
) -> Group:
    if not responses:
        raise ValueError("a group needs at least one response")
    lengths = [len(r.get("entropies") or r.get("tokens") or []) for r in responses]
    T = max(lengths)
    mask = np.arange(T)[None, :] < np.array(lengths)[:, None]
    rewards = np.array([float(r.get("reward", 0.0)) for r in responses])
    correct = np.array([bool(r.get("correct", rew > threshold)) for r, rew in zip(responses, rewards)])

    def optional(key):
        if all(key in r for r in responses):
            return _padded([r[key] for r in responses], T, np.nan)
        return None

    entropies = _padded([r.get("entropies", [0.0] * n) for r, n in zip(responses, lengths)], T, 0.0)
    tokens = [list(r["tokens"]) for r in responses] if all("tokens" in r for r in responses) else None
    return Group(
        rewards,
        entropies,
        mask,
        correct,
        tokens,
        optional("logprobs"),
        optional("advantages"),
        prompt,
        str(answer or ""),
        dict(info or {}),
    )


def as_group(group, threshold: float = 0.5) -> Group:
    """Normalise a group (record, response list, one response, or array dict) to a :class:`Group`."""
    if isinstance(group, Group):
        return group
    if isinstance(group, (list, tuple)):
        return _from_responses(list(group), threshold=threshold)
    if not isinstance(group, dict):
        raise TypeError(f"expected a samples record, a list of responses or an array dict, got {type(group).__name__}")
    if "responses" in group:
        info = {k: group[k] for k in ("step", "group", "algorithm", "source") if k in group}
        return _from_responses(group["responses"], group.get("prompt", ""), threshold, group.get("answer", ""), info)
    if "rewards" in group:
        rewards = np.asarray(group["rewards"], dtype=float)
        entropies = np.asarray(group["entropies"], dtype=float)
        mask = np.asarray(group.get("mask", np.ones_like(entropies)), dtype=bool)
        extra = {
            k: np.where(mask, np.asarray(group[k], dtype=float), np.nan)
            for k in ("logprobs", "advantages")
            if k in group
        }
        return Group(rewards, np.where(mask, entropies, 0.0), mask, rewards > threshold, group.get("tokens"), **extra)
    if "entropies" in group:
        return _from_responses([group], threshold=threshold)
    raise ValueError("a group dict needs 'responses', 'rewards' (with 'entropies') or 'entropies'")


# ---------------------------------------------------------------------------- samples


def _is_record(obj) -> bool:
    return isinstance(obj, dict) and "responses" in obj


#: Tasks built for :func:`gold_answer`, by their settings (a JSONL file also by its size and time):
#: the records of one run ask the same task many times.
_TASKS: dict[str, object] = {}
_TASKS_KEPT = 8


def _task(name, params: dict):
    from ..tasks import get_task

    key = json.dumps([name, params], sort_keys=True, default=str)
    if isinstance(params.get("path"), str):
        try:
            stat = os.stat(params["path"])
            key += f" {stat.st_size} {stat.st_mtime_ns}"
        except OSError:
            pass
    if key not in _TASKS:
        task = get_task(name, **params)
        while len(_TASKS) >= _TASKS_KEPT:
            _TASKS.pop(next(iter(_TASKS)))
        _TASKS[key] = task
    return _TASKS[key]


def gold_answer(config: dict, prompt: str) -> str:
    """The gold answer of ``prompt`` under a run's task, for ``samples.jsonl`` records that do not
    store it: the task's own :meth:`~workbench.tasks.Task.answer_for` (the sum of an ``addition``
    prompt, the left-to-right value modulo 100 of a ``chain``, the file's answer of a ``jsonl``
    question, ...); ``""`` when it cannot be told."""
    try:
        answer = _task(config.get("task"), dict(config.get("task_params") or {})).answer_for(prompt)
    except (ValueError, TypeError, KeyError, IndexError, OSError, ImportError, RuntimeError):
        return ""
    return answer or ""


def run_samples(run) -> list[dict]:
    """The ``samples.jsonl`` records of a run (``Run`` or path), each tagged with ``source`` (the run's
    name) and ``answer`` (the gold answer, when the record does not hold it)."""
    run = load_run(run) if isinstance(run, (str, Path)) else run
    config, records = run.config, run.samples
    answers = {r["prompt"]: gold_answer(config, r["prompt"]) for r in records if not r.get("answer")}
    return [{"source": run.name, **r, "answer": r.get("answer") or answers.get(r["prompt"], "")} for r in records]


def as_records(samples) -> list[dict]:
    """``samples.jsonl`` records from a ``Run``, a run path, a record list or one record."""
    if isinstance(samples, (str, Path, Run)):
        return run_samples(samples)
    if _is_record(samples):
        return [samples]
    if isinstance(samples, (list, tuple)) and all(_is_record(r) for r in samples):
        return list(samples)
    raise TypeError("expected a Run, a run path, a samples record or a list of samples records")


def pick_record(records: list[dict], *, mixed: bool = True) -> dict:
    """One group of ``records``: the last logged one whose responses are both right and wrong
    (``mixed``), else the last one."""
    if not records:
        raise ValueError("no samples records to choose a group from")
    if mixed:
        for record in reversed(records):
            correct = [bool(r.get("correct", float(r.get("reward", 0)) > 0.5)) for r in record["responses"]]
            if any(correct) and not all(correct):
                return record
    return records[-1]


def _records_table(records: list[dict]) -> pd.DataFrame:
    columns = {name: [] for name in TOKEN_COLUMNS}
    for k, record in enumerate(records):
        for i, response in enumerate(record["responses"]):
            entropies = response.get("entropies") or []
            n = len(entropies)
            reward = float(response.get("reward", np.nan))
            per_token = {
                "position": list(range(n)),
                "token": list(response.get("tokens") or [""] * n),
                "entropy": list(entropies),
                "logprob": list(response.get("logprobs") or [np.nan] * n),
                "advantage": list(response.get("advantages") or [np.nan] * n),
            }
            per_response = {
                "step": record.get("step", 0),
                "group": record.get("group", 0),
                "response": i,
                "reward": reward,
                "correct": bool(response.get("correct", reward > 0.5)),
                "algorithm": record.get("algorithm", ""),
                "source": record.get("source", ""),
                "record": k,
            }
            for name in TOKEN_COLUMNS:
                columns[name] += per_token[name] if name in per_token else [per_response[name]] * n
    table = pd.DataFrame(columns)
    return table.astype({"entropy": float, "logprob": float, "advantage": float, "reward": float, "correct": bool})


def one_group(source) -> Group:
    """One group from ``source``: a ``samples.jsonl`` record, a :class:`Group`, a list of response
    dicts, or several groups (a list of records, a ``Run``, a run path), of which the last one with
    both right and wrong answers (:func:`pick_record`)."""
    if isinstance(source, Group) or (isinstance(source, dict) and "responses" in source):
        return as_group(source)
    if isinstance(source, (list, tuple)) and source and "responses" not in source[0]:
        return as_group(source)
    return as_group(pick_record(as_records(source)))


def token_table(samples) -> pd.DataFrame:
    """One row per token: step, group, response, position, token, entropy, logprob,
    advantage, reward, correct, algorithm, source (the run a record came from, when known) and
    record (the record's index in this table: what tells two merged records apart).

    ``samples`` is anything :func:`as_records` reads, or a token table (returned as is).
    A list of runs/paths or a ``{label: samples}`` dict gives one table whose ``source`` column
    is the run name or the label, for overlays.
    """
    if isinstance(samples, pd.DataFrame):
        return samples
    if isinstance(samples, dict) and not _is_record(samples):
        records = [{**r, "source": str(label)} for label, value in samples.items() for r in as_records(value)]
    elif isinstance(samples, (list, tuple)) and samples and not all(_is_record(r) for r in samples):
        records = [r for value in samples for r in as_records(value)]
    else:
        records = as_records(samples)
    return _records_table(records)
