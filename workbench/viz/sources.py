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

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..runs import Run, load_run

__all__ = ["RunData", "as_runs", "Group", "as_group", "as_records", "token_table", "TOKEN_COLUMNS"]

TOKEN_COLUMNS = [
    "step", "group", "response", "position", "token",
    "entropy", "logprob", "advantage", "reward", "correct", "algorithm",
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

    def key(self, by: str) -> str:
        """The overlay group of this run: ``"run"`` (its label), ``"algorithm"``, or ``"<config key>=value"``."""
        if by == "run":
            return self.label
        if by == "algorithm":
            return self.algorithm
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
    """Normalise ``runs`` (one run, a list of runs, or ``{label: run}``) to a list of :class:`RunData`."""
    if isinstance(runs, dict):
        return [_one_run(run, str(label)) for label, run in runs.items()]
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


def _from_responses(responses: list[dict], prompt: str = "", threshold: float = 0.5) -> Group:
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
    return Group(rewards, entropies, mask, correct, tokens, optional("logprobs"), optional("advantages"), prompt)


def as_group(group, threshold: float = 0.5) -> Group:
    """Normalise a group (record, response list, one response, or array dict) to a :class:`Group`."""
    if isinstance(group, Group):
        return group
    if isinstance(group, (list, tuple)):
        return _from_responses(list(group), threshold=threshold)
    if not isinstance(group, dict):
        raise TypeError(f"expected a samples record, a list of responses or an array dict, got {type(group).__name__}")
    if "responses" in group:
        return _from_responses(group["responses"], group.get("prompt", ""), threshold)
    if "rewards" in group:
        rewards = np.asarray(group["rewards"], dtype=float)
        entropies = np.asarray(group["entropies"], dtype=float)
        mask = np.asarray(group.get("mask", np.ones_like(entropies)), dtype=bool)
        extra = {k: np.where(mask, np.asarray(group[k], dtype=float), np.nan)
                 for k in ("logprobs", "advantages") if k in group}
        return Group(rewards, np.where(mask, entropies, 0.0), mask, rewards > threshold, group.get("tokens"), **extra)
    if "entropies" in group:
        return _from_responses([group], threshold=threshold)
    raise ValueError("a group dict needs 'responses', 'rewards' (with 'entropies') or 'entropies'")


# ---------------------------------------------------------------------------- samples


def _is_record(obj) -> bool:
    return isinstance(obj, dict) and "responses" in obj


def as_records(samples) -> list[dict]:
    """``samples.jsonl`` records from a ``Run``, a run path, a record list or one record."""
    if isinstance(samples, (str, Path)):
        samples = load_run(samples)
    if isinstance(samples, Run):
        return samples.samples
    if _is_record(samples):
        return [samples]
    if isinstance(samples, (list, tuple)) and all(_is_record(r) for r in samples):
        return list(samples)
    raise TypeError("expected a Run, a run path, a samples record or a list of samples records")


def _records_table(records: list[dict]) -> pd.DataFrame:
    columns = {name: [] for name in TOKEN_COLUMNS}
    for record in records:
        for i, response in enumerate(record["responses"]):
            entropies = response.get("entropies") or []
            n = len(entropies)
            tokens = response.get("tokens") or [""] * n
            logprobs = response.get("logprobs") or [np.nan] * n
            advantages = response.get("advantages") or [np.nan] * n
            reward = float(response.get("reward", np.nan))
            correct = bool(response.get("correct", reward > 0.5))
            columns["step"] += [record.get("step", 0)] * n
            columns["group"] += [record.get("group", 0)] * n
            columns["response"] += [i] * n
            columns["position"] += list(range(n))
            columns["token"] += list(tokens)
            columns["entropy"] += list(entropies)
            columns["logprob"] += list(logprobs)
            columns["advantage"] += list(advantages)
            columns["reward"] += [reward] * n
            columns["correct"] += [correct] * n
            columns["algorithm"] += [record.get("algorithm", "")] * n
    table = pd.DataFrame(columns)
    return table.astype({"entropy": float, "logprob": float, "advantage": float, "reward": float, "correct": bool})


def token_table(samples) -> pd.DataFrame:
    """One row per token: step, group, response, position, token, entropy, logprob,
    advantage, reward, correct, algorithm.

    ``samples`` is anything :func:`as_records` reads, or a token table (returned as is).
    A list of runs/paths or a ``{label: samples}`` dict gives one table with a ``source``
    column (the run name or the label) for overlays.
    """
    if isinstance(samples, pd.DataFrame):
        return samples
    if isinstance(samples, dict) and not _is_record(samples):
        parts = {str(label): token_table(value) for label, value in samples.items()}
    elif isinstance(samples, (list, tuple)) and samples and not all(_is_record(r) for r in samples):
        parts = {}
        for value in samples:
            run = load_run(value) if isinstance(value, (str, Path)) else value
            parts[run.name] = token_table(run)
    else:
        return _records_table(as_records(samples))
    return pd.concat([t.assign(source=label) for label, t in parts.items()], ignore_index=True)
