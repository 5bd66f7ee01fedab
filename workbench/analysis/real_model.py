"""Measurements of a real model on a task, for notebook 8 and the stored study.

- :func:`task_accuracy`: greedy and sampled accuracy on held-out problems, with 95% intervals,
  and how many groups of ``samples`` replies would carry a learning signal (right and wrong);
- :func:`entropy_summary`, :func:`high_entropy_words`: where the entropy of sampled replies sits
  (mean, fraction of tokens above a threshold, the share the top tokens carry; the words);
- :func:`credit_shares`: how GRPO, GTPO and GRPO-S spread one group's credit over its tokens;
- :func:`study_accuracy`: a stored study's runs, held-out accuracy before and after with intervals.

All but :func:`study_accuracy` (which reads run directories) read the records of
:func:`workbench.analysis.rollout_records` (``samples.jsonl`` records), so they work on a run
directory's samples as well.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from scipy import stats

from ..algorithms import get_algorithm
from ..models.generation import format_prompts, generate
from ..viz.sources import token_table
from .study import confidence_interval

__all__ = [
    "wilson_interval",
    "task_accuracy",
    "entropy_summary",
    "high_entropy_words",
    "credit_shares",
    "study_accuracy",
]


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion, ``successes`` of ``trials`` (95% by
    default), from ``scipy.stats.binomtest(...).proportion_ci(method="wilson")``."""
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must be in [0, trials={trials}], got {successes}")
    ci = stats.binomtest(int(successes), int(trials)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


@torch.no_grad()
def task_accuracy(
    model,
    tokenizer,
    task,
    *,
    problems: int = 128,
    samples: int = 8,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    split: str = "eval",
    seed: int = 0,
    prompts_per_batch: int = 8,
    chat_template: bool | None = None,
) -> dict:
    """Greedy accuracy (one reply per problem; Wilson 95% interval) and sampled accuracy
    (``samples`` replies per problem at ``temperature``; 95% t interval over the problems' mean
    correctness, since replies to one problem are not independent) on ``problems`` problems of
    ``split``. ``mixed_groups``: the fraction of problems whose ``samples`` replies are both right
    and wrong, i.e. of GRPO groups of that size with a non-zero advantage. Also mean reply
    length (tokens, end token included) and the fraction cut at ``max_new_tokens``."""
    if samples < 1 or problems < 1:
        raise ValueError(f"need problems >= 1 and samples >= 1, got {problems}, {samples}")
    examples = task.generate(split, problems, seed)
    texts = format_prompts(tokenizer, [e.prompt for e in examples], chat_template)
    out = {"problems": problems, "samples": samples, "max_new_tokens": max_new_tokens, "temperature": temperature}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name, n, sample in (("greedy", 1, False), ("sampled", samples, True)):
            correct, lengths, truncated = [], [], []
            for start in range(0, problems, prompts_per_batch):
                chunk = examples[start : start + prompts_per_batch]
                gen = generate(
                    model,
                    tokenizer,
                    texts[start : start + prompts_per_batch],
                    n=n,
                    max_new_tokens=max_new_tokens,
                    do_sample=sample,
                    temperature=temperature,
                )
                correct += [task.reward(chunk[i // n], t) > 0.5 for i, t in enumerate(gen.texts)]
                lengths += gen.response_mask.sum(-1).tolist()
                truncated += gen.truncated.tolist()
            per_problem = np.asarray(correct, dtype=float).reshape(problems, n).mean(1)
            out[f"{name}_accuracy"] = float(per_problem.mean())
            if sample:
                mean, half = confidence_interval(per_problem)
                out["sampled_ci95"] = [max(0.0, mean - half), min(1.0, mean + half)]
                out["mixed_groups"] = float(((per_problem > 0) & (per_problem < 1)).mean())
            else:
                out["greedy_ci95"] = list(wilson_interval(int(sum(correct)), problems))
            out[f"{name}_length"] = float(np.mean(lengths))
            out[f"{name}_truncated"] = float(np.mean(truncated))
    return out


def entropy_summary(samples, *, threshold: float = 1.0, top: float = 0.2) -> pd.DataFrame:
    """Per reply population (all, correct, wrong): tokens, mean and median entropy (nats), the
    fraction of tokens above ``threshold``, and the share of all entropy carried by the ``top``
    fraction of tokens with the highest entropy."""
    table = token_table(samples)
    rows = []
    for label, part in (("all", table), ("correct", table[table["correct"]]), ("wrong", table[~table["correct"]])):
        h = np.sort(part["entropy"].to_numpy(dtype=float))[::-1]
        k = max(1, round(top * len(h))) if len(h) else 0
        rows.append(
            {
                "replies": label,
                "tokens": len(h),
                "mean_entropy": float(h.mean()) if len(h) else np.nan,
                "median_entropy": float(np.median(h)) if len(h) else np.nan,
                f"frac_above_{threshold:g}": float((h > threshold).mean()) if len(h) else np.nan,
                f"top{round(top * 100)}pct_share": float(h[:k].sum() / h.sum()) if len(h) and h.sum() > 0 else np.nan,
            }
        )
    return pd.DataFrame(rows)


def high_entropy_words(samples, *, top: int = 15, min_count: int = 3, threshold: float = 1.0) -> pd.DataFrame:
    """The tokens (as text) with the highest mean entropy over their ``min_count`` or more
    occurrences: ``token``, ``count``, ``mean_entropy``, ``frac_above`` (of its occurrences above
    ``threshold``), ``frac_in_correct`` (of its occurrences in right replies)."""
    table = token_table(samples)
    table = table.assign(word=table["token"].astype(str), above=table["entropy"] > threshold)
    grouped = table.groupby("word").agg(
        count=("entropy", "size"),
        mean_entropy=("entropy", "mean"),
        frac_above=("above", "mean"),
        frac_in_correct=("correct", "mean"),
    )
    grouped = grouped[grouped["count"] >= min_count].sort_values("mean_entropy", ascending=False, kind="stable")
    return grouped.head(top).reset_index().rename(columns={"word": "token"})


def _group_tensors(record: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[bool]]:
    responses = record["responses"]
    T = max(len(r["entropies"]) for r in responses)
    entropies = torch.zeros(len(responses), T, dtype=torch.float64)
    mask = torch.zeros(len(responses), T, dtype=torch.bool)
    for i, r in enumerate(responses):
        entropies[i, : len(r["entropies"])] = torch.tensor(r["entropies"], dtype=torch.float64)
        mask[i, : len(r["entropies"])] = True
    rewards = torch.tensor([float(r["reward"]) for r in responses], dtype=torch.float64)
    return rewards, entropies, mask, [bool(r["correct"]) for r in responses]


def credit_shares(record: dict, algorithms=("grpo", "gtpo", "grpo_s"), *, top: float = 0.2) -> pd.DataFrame:
    """How each algorithm spreads one group's credit over its tokens (advantages recomputed from
    the record's rewards and entropies with each algorithm's defaults).

    Per algorithm and per side (``correct`` replies: positive credit; ``wrong``: negative): the
    total |advantage| over the side's tokens, the share of it on the ``top`` fraction of that
    side's tokens with the highest entropy (``top`` itself when credit is uniform, as under
    GRPO), and the mean |advantage| on those tokens and on the others.
    """
    rewards, entropies, mask, correct = _group_tensors(record)
    if all(correct) or not any(correct):
        raise ValueError("the group's replies are all right or all wrong: every algorithm gives it zero advantage")
    rows = []
    for name in algorithms:
        adv = get_algorithm(name).advantages(rewards[None], entropies[None].float(), mask[None])[0].double()
        for side, members in (
            ("correct", [i for i, c in enumerate(correct) if c]),
            ("wrong", [i for i, c in enumerate(correct) if not c]),
        ):
            m = mask[members]
            a, h = adv[members][m].abs(), entropies[members][m]
            k = max(1, round(top * len(h)))
            high = torch.zeros_like(h, dtype=torch.bool)
            high[torch.argsort(h, descending=True, stable=True)[:k]] = True
            rows.append(
                {
                    "algorithm": name,
                    "replies": side,
                    "responses": len(members),
                    "tokens": int(m.sum()),
                    "credit": float(a.sum()),
                    f"share_on_top{round(top * 100)}pct_entropy": float(a[high].sum() / a.sum()),
                    "mean_abs_advantage_high_entropy": float(a[high].mean()),
                    "mean_abs_advantage_other": float(a[~high].mean()) if (~high).any() else np.nan,
                }
            )
    return pd.DataFrame(rows)


def study_accuracy(runs) -> pd.DataFrame:
    """One row per run of a study: held-out greedy and sampled accuracy at its first and last
    evaluation, each with its Wilson 95% interval (one reply per problem; every run is evaluated on
    the same problems with the same sampling seed, so the first evaluation of runs from the same
    model agrees), and the mean training entropy over the first and the last quarter of its steps.
    ``runs``: run directories or :class:`~workbench.runs.Run` objects (e.g. ``load_results(root)["run"]``)."""
    from ..runs import Run, load_run

    rows = []
    for item in runs:
        run = item if isinstance(item, Run) else load_run(item)
        ev, m = run.evals, run.metrics
        if len(ev) < 2:
            raise ValueError(f"{run.path}: needs evaluations before and after training, found {len(ev)}")
        row = {"algorithm": run.config["algorithm"], "seed": run.config["seed"], "steps": int(ev["step"].iloc[-1])}
        for kind in ("greedy", "sampled"):
            for when, e in (("before", ev.iloc[0]), ("after", ev.iloc[-1])):
                n = int(e["problems"])
                acc = float(e[f"{kind}_accuracy"])
                lo, hi = wilson_interval(round(acc * n), n)
                row[f"{kind}_{when}"] = acc
                row[f"{kind}_{when}_95%"] = f"{lo:.0%}-{hi:.0%}"
        quarter = max(1, len(m) // 4)
        row["entropy_first"] = float(m["entropy"].iloc[:quarter].mean())
        row["entropy_last"] = float(m["entropy"].iloc[-quarter:].mean())
        rows.append(row)
    return pd.DataFrame(rows)
