"""Study driver: a grid of algorithms x seeds x task settings, resumable, one tidy table.

    python -m workbench study --name accuracy --algorithms grpo,dapo,gtpo,grpo_s --seeds 0,1,2,3,4

Each cell is a training run in ``<root>/runs/<setting>/<algorithm>-s<seed>``; a finished cell
is skipped, a partly finished one resumed, so re-running the same command continues a grid.
Checkpoints are deleted once a cell finishes (the results keep metrics, evaluations and
samples). The summary (:func:`summarize`) has one row per run: final and best held-out
accuracy, area under the accuracy curve, entropy at the start/middle/end, response length,
and instability events.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from .. import runs
from .._files import atomic_write_text
from ..training.trainer import resume, train

__all__ = [
    "Study",
    "load_study",
    "finished_runs",
    "run_grid",
    "summarize",
    "summarize_run",
    "confidence_interval",
    "paired_comparison",
    "describe",
    "load_results",
    "accuracy_at_tokens",
    "equal_budget",
    "entropy_by_step",
]

#: A run's entropy has collapsed when a step's mean token entropy falls below this fraction of
#: its starting level (mean of the first tenth of the steps). Relative, because tasks differ:
#: addition starts near 0.34 nats, a chain of arithmetic near 0.08.
ENTROPY_COLLAPSE = 0.25
ACCURACY_DROP = 0.2  #: a fall of held-out greedy accuracy between two evaluations counted as an event
DONE = "DONE"  #: the marker of a study's finished cell
MANIFEST = "manifest.json"


def setting_label(setting: dict) -> str:
    """A directory name for a setting: ``task-chain_steps-8`` (dict values such as task_params
    or advantage_kwargs flattened to their items; the model path and other path-like values are
    left out of the name, they are in each run's config)."""
    flat = {}
    for key, value in setting.items():
        if key == "model":
            continue
        flat.update(value if isinstance(value, dict) else {key: value})
    return (
        "_".join(f"{k}-{v}" for k, v in sorted(flat.items()) if not isinstance(v, (dict, list)) and "/" not in str(v))
        or "default"
    )


def run_grid(
    root,
    *,
    algorithms,
    seeds,
    settings=({},),
    base: dict | None = None,
    progress: bool = True,
    keep_checkpoints: bool = False,
) -> pd.DataFrame:
    """Train every (setting, algorithm, seed) cell not yet finished; return :func:`summarize` of all.

    ``settings`` are dicts of TrainConfig overrides (e.g. ``{"task": "chain", "task_params":
    {"steps": 8}}``); ``base`` holds the overrides shared by every cell. ``results.csv`` in
    ``root`` summarises every finished cell there, also those of earlier calls with other
    settings (a study grown one setting at a time keeps one table).
    """
    root = Path(root)
    base = dict(base or {})
    cells = []
    for setting in settings:
        for algorithm in algorithms:
            for seed in seeds:
                path = root / "runs" / setting_label(setting) / f"{algorithm}-s{seed}"
                config = {**base, **setting, "algorithm": algorithm, "seed": int(seed), "output_dir": str(path)}
                cells.append((path, config))
    for i, (path, config) in enumerate(cells, 1):
        state = _cell_state(path, config["steps"] if "steps" in config else None)
        if progress:
            print(f"[{i}/{len(cells)}] {path.relative_to(root)}: {state}", flush=True)
        if state == "done":
            continue
        if state == "partial":
            resume(path, progress=progress)
        else:
            train(config, progress=progress, overwrite=True)
        if not keep_checkpoints:
            shutil.rmtree(path / "checkpoints", ignore_errors=True)
        (path / DONE).write_text("ok\n")
    table = summarize(finished_runs(root))
    stored = table.assign(run=[Path(r).relative_to(root).as_posix() for r in table["run"]])
    stored.to_csv(root / "results.csv", index=False)  # runs relative to the study root: the study can move
    return table.set_index("run").loc[[str(p) for p, _ in cells]].reset_index()  # this call's cells, in order


def _cell_state(path: Path, steps: int | None) -> str:
    if (path / DONE).exists():
        return "done"
    run = runs.Run(path)
    if (path / "config.json").exists() and run.latest_checkpoint() is not None:
        return "partial"
    return "new"


def summarize_run(run) -> dict:
    """One row of the results table for a finished run (its study setting is the name of the
    directory that holds it; ``final_pass@k`` columns where it was evaluated with several samples)."""
    run = _as_run(run)
    config, m, ev = run.config, run.metrics, run.evals
    steps = int(config["steps"])
    acc = ev["greedy_accuracy"].to_numpy() if len(ev) else np.array([np.nan])
    ev_steps = ev["step"].to_numpy() if len(ev) else np.array([0])
    auc = float(np.trapezoid(acc, ev_steps) / max(1, ev_steps[-1] - ev_steps[0])) if len(acc) > 1 else float(acc[0])
    ent = m["entropy"].to_numpy() if "entropy" in m else np.array([np.nan])
    ent = ent[np.isfinite(ent)] if np.isfinite(ent).any() else ent
    k = max(1, len(ent) // 10)
    drops = np.diff(acc) if len(acc) > 1 else np.array([0.0])
    task_params = config.get("task_params", {})
    passes = {f"final_{c}": float(ev[c].iloc[-1]) for c in ev.columns if c.startswith("pass@")} if len(ev) else {}
    return {
        "run": str(run.path),
        "setting": run.path.parent.name,
        "algorithm": config["algorithm"],
        "seed": config["seed"],
        "task": config["task"],
        "chain_steps": task_params.get("steps") if config["task"] == "chain" else None,
        "steps": steps,
        "initial_accuracy": float(acc[0]),
        "final_accuracy": float(acc[-1]),
        "best_accuracy": float(np.nanmax(acc)),
        "accuracy_auc": auc,
        "final_sampled_accuracy": float(ev["sampled_accuracy"].iloc[-1]) if len(ev) else np.nan,
        **passes,
        "entropy_start": float(np.mean(ent[:k])),
        "entropy_middle": float(np.mean(ent[len(ent) // 2 - k // 2 :][:k])),
        "entropy_end": float(np.mean(ent[-k:])),
        "response_len": float(m["response_len_mean"].mean()) if "response_len_mean" in m else np.nan,
        "grad_norm_max": float(m["grad_norm"].max()) if "grad_norm" in m else np.nan,
        "nonfinite_steps": int(m["skipped_updates"].max()) if "skipped_updates" in m and len(m) else 0,
        "entropy_collapse": bool((ent < ENTROPY_COLLAPSE * np.mean(ent[:k])).any()),
        "accuracy_drops": int((drops < -ACCURACY_DROP).sum()),
        "generated_tokens": int(m["generated_tokens"].sum()) if "generated_tokens" in m else None,
        "seconds": float(m["time_step"].sum()) if "time_step" in m else np.nan,
        **{f"mean_{c}": float(m[c].mean()) for c in METHOD_METRICS if c in m},
    }


#: Per-step metrics of the entropy methods that :func:`summarize_run` averages over a run
#: (``mean_<name>`` columns, where a run logged them).
METHOD_METRICS = (
    "top_entropy_kept_frac",
    "clip_cov_frac",
    "kl_cov_frac",
    "erc_kept_frac",
    "entropy_coef",
    "clip_frac",
    "approx_kl",
)


def label_methods(table: pd.DataFrame, names: dict | None = None) -> pd.DataFrame:
    """``table`` with a ``method`` column: the algorithm for a cell of the default setting, and
    ``"<algorithm> (<setting>)"`` for a cell of another one, ``names`` mapping setting labels
    (:func:`setting_label`) to short names, e.g. ``{"entropy_target-0.25": "adaptive bonus"}``.
    Pass ``key="method"`` to :func:`paired_comparison` and ``by=("method",)`` to :func:`describe`."""
    names = names or {}
    settings = table["setting"] if "setting" in table else pd.Series("default", index=table.index)
    method = [a if s == "default" else f"{a} ({names.get(s, s)})" for a, s in zip(table["algorithm"], settings)]
    return table.assign(method=method)


def summarize(paths) -> pd.DataFrame:
    return pd.DataFrame([summarize_run(p) for p in paths if (Path(p) / "config.json").exists()])


def _as_run(run) -> runs.Run:
    return runs.load_run(run) if not isinstance(run, runs.Run) else run


def accuracy_at_tokens(run, tokens: float, metric: str = "greedy_accuracy") -> float:
    """Held-out ``metric`` of ``run`` after it had generated ``tokens`` rollout tokens.

    Evaluation at step ``s`` follows training steps ``1..s``; its token count is their summed
    ``generated_tokens`` (dynamic-sampling rounds included). Linear interpolation between
    evaluations; a budget beyond the run's total raises ``ValueError`` (no extrapolation).
    """
    run = _as_run(run)
    m, ev = run.metrics, run.evals
    if "generated_tokens" not in m or not len(ev):
        raise ValueError(f"{run.path}: needs generated_tokens in metrics.jsonl and evaluations in eval.jsonl")
    cumulative = m.set_index("step")["generated_tokens"].sort_index().cumsum()
    used = np.array([float(cumulative.loc[:s].iloc[-1]) if s > 0 else 0.0 for s in ev["step"]])
    if tokens > used[-1] * (1 + 1e-9):
        raise ValueError(f"{run.path}: budget {tokens:.0f} exceeds the run's {used[-1]:.0f} generated tokens")
    return float(np.interp(tokens, used, ev[metric].to_numpy()))


def equal_budget(table: pd.DataFrame, tokens: float | None = None, metric: str = "greedy_accuracy") -> pd.DataFrame:
    """``table`` (from :func:`summarize`) with ``budget_accuracy``: each run's ``metric`` at the
    same number of generated tokens, by default the smallest total of any run in the table."""
    if tokens is None:
        tokens = float(table["generated_tokens"].min())
    out = table.copy()
    out["budget_tokens"] = tokens
    out["budget_accuracy"] = [accuracy_at_tokens(r, tokens, metric) for r in table["run"]]
    return out


def entropy_by_step(run, top: float = 0.2) -> pd.DataFrame:
    """Per logged step of ``samples.jsonl``: mean token entropy of all sampled tokens and of the
    ``top`` fraction with the highest entropy (the "forking" tokens)."""
    if not 0 < top <= 1:
        raise ValueError(f"top must be in (0, 1], got {top!r}")
    run = _as_run(run)
    rows = {}
    for record in run.samples:
        rows.setdefault(record["step"], []).extend(h for r in record["responses"] for h in r["entropies"])
    out = []
    for step, values in sorted(rows.items()):
        v = np.sort(np.asarray(values, dtype=float))[::-1]
        k = max(1, int(round(top * len(v))))
        out.append(
            {
                "step": step,
                "entropy": float(v.mean()),
                f"entropy_top{round(top * 100)}": float(v[:k].mean()),
                "tokens": len(v),
            }
        )
    return pd.DataFrame(out)


def confidence_interval(values, confidence: float = 0.95) -> tuple[float, float]:
    """Mean of the finite ``values`` and the half-width of its two-sided Student-t interval
    (95% by default; the quantile from ``scipy.stats.t`` with n - 1 degrees of freedom)."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return float("nan"), float("nan")
    if len(x) == 1:
        return float(x[0]), float("nan")
    t = float(stats.t.ppf(0.5 + confidence / 2, df=len(x) - 1))
    return float(x.mean()), float(t * x.std(ddof=1) / math.sqrt(len(x)))


def paired_comparison(
    table: pd.DataFrame, metric: str, baseline: str, *, by=("task", "chain_steps"), key: str = "algorithm"
) -> pd.DataFrame:
    """Per algorithm (or other ``key``, e.g. :func:`label_methods`'s ``method``), the seed-paired
    difference to ``baseline``: mean, 95% half-width, wins/losses."""
    rows = []
    keys = [k for k in by if k in table and table[k].notna().any()]
    for group_key, group in table.groupby(keys, dropna=False) if keys else [((), table)]:
        base = group[group[key] == baseline].set_index("seed")[metric]
        for algorithm, sub in group.groupby(key):
            if algorithm == baseline:
                continue
            diff = (sub.set_index("seed")[metric] - base).dropna()
            mean, half = confidence_interval(diff)
            rows.append(
                {
                    **dict(zip(keys, group_key if isinstance(group_key, tuple) else (group_key,))),
                    key: algorithm,
                    "baseline": baseline,
                    "metric": metric,
                    "pairs": len(diff),
                    "mean_difference": mean,
                    "ci95": half,
                    "wins": int((diff > 0).sum()),
                    "losses": int((diff < 0).sum()),
                }
            )
    return pd.DataFrame(rows)


def describe(table: pd.DataFrame, metric: str, *, by=("task", "chain_steps", "algorithm")) -> pd.DataFrame:
    """Mean and 95% interval of ``metric`` per group."""
    keys = [k for k in by if k in table and table[k].notna().any()]
    rows = []
    for key, group in table.groupby(keys, dropna=False):
        mean, half = confidence_interval(group[metric])
        rows.append(
            {
                **dict(zip(keys, key if isinstance(key, tuple) else (key,))),
                "runs": len(group),
                f"{metric}_mean": mean,
                f"{metric}_ci95": half,
            }
        )
    return pd.DataFrame(rows)


def load_results(root) -> pd.DataFrame:
    """The stored results table of a study (``<root>/results.csv``), its ``run`` column the run
    directories under ``root`` (the file holds them relative to the study root)."""
    root = Path(root)
    path = root / "results.csv"
    if not path.exists():
        raise FileNotFoundError(f"no results table at {path}; run the study first")
    table = pd.read_csv(path)
    table["run"] = [str(_run_path(root, r)) for r in table["run"]]
    return table


def _run_path(root: Path, stored: str) -> Path:
    """Where a run of ``results.csv`` is, for the study at ``root``: ``run`` is relative to the study
    root (``runs/<setting>/<algorithm>-s<seed>``); a table of an older version, which stored the path
    the study saw (absolute, or relative to where it ran), is re-anchored at ``root`` by its last
    three parts, so a study read from another working directory or another checkout finds its runs."""
    path = Path(stored)
    if not path.is_absolute() and path.parts[:1] == ("runs",):
        return root / path
    if path.parts[-3:-2] == ("runs",):
        return root / Path(*path.parts[-3:])
    return path if path.is_absolute() else root / path


def save_manifest(root, command: str, **info) -> None:
    """Write the study's ``manifest.json``: the command that makes it, and what else ``info`` says."""
    atomic_write_text(Path(root) / MANIFEST, json.dumps({"command": command, **info}, indent=2))


def finished_runs(root) -> list[Path]:
    """The finished cells of a study directory (``runs/<setting>/<algorithm>-s<seed>`` with a
    ``DONE`` marker), in order: a partly run grid gives the cells it has finished."""
    return sorted(p.parent for p in Path(root).glob(f"runs/*/*/{DONE}"))


@dataclass(frozen=True)
class Study:
    """A study directory, as :func:`run_grid` and the study scripts leave it::

    root/
      manifest.json      the command that makes the study (and what else it records)
      results.csv        one row per finished cell (:func:`summarize`; ``run`` relative to root)
      runs/<setting>/<algorithm>-s<seed>/   run directories; DONE marks a finished one
      warmstarts/*.json  the warm starts the runs started from, where the study made its own
    """

    root: Path

    @property
    def manifest(self) -> dict:
        """``manifest.json`` (empty when the study has none)."""
        path = self.root / MANIFEST
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    @property
    def command(self) -> str:
        """The command that makes the study (``""`` when its manifest does not say)."""
        return self.manifest.get("command", "")

    def run_dirs(self) -> list[Path]:
        """The finished cells' run directories (:func:`finished_runs`)."""
        return finished_runs(self.root)

    def runs(self) -> list[runs.Run]:
        """The finished cells as :class:`workbench.runs.Run` objects."""
        return [runs.Run(p) for p in self.run_dirs()]

    def results(self) -> pd.DataFrame:
        """The stored results table (:func:`load_results`)."""
        return load_results(self.root)

    def summary(self) -> pd.DataFrame:
        """:func:`summarize` of the finished cells, computed from their run directories."""
        return summarize(self.run_dirs())

    def warm_starts(self) -> pd.DataFrame:
        """One row per ``warmstarts/*.json`` (its ``file`` name, the ``init`` it continued from, or
        ``"(fresh model)"``, and what the warm start recorded: steps, accuracy, ...)."""
        rows = [
            {**json.loads(p.read_text(encoding="utf-8")), "file": p.name}
            for p in sorted((self.root / "warmstarts").glob("*.json"))
        ]
        table = pd.DataFrame(rows, columns=None if rows else ["file", "init", "steps", "greedy_accuracy"])
        table["init"] = table.get("init", pd.Series(index=table.index, dtype=object)).fillna("(fresh model)")
        return table


def load_study(root) -> Study:
    """The study directory ``root`` (see :class:`Study`)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no study directory at {root}: give the folder that holds its runs/ and manifest.json")
    return Study(root)
