"""workbench.analysis.real_model's study table and interval, on hand-made numbers (no model needed)."""

from __future__ import annotations

import json
import math

import pytest
from scipy.stats import norm

from workbench.analysis.real_model import study_accuracy, wilson_interval


def test_wilson_interval_hand_worked_and_solves_its_equation():
    lo, hi = wilson_interval(35, 64)  # the model as shipped: 35 of 64 held-out problems greedy
    assert (round(lo, 4), round(hi, 4)) == (0.4257, 0.6627)
    z, n, p_hat = norm.ppf(0.975), 64, 35 / 64
    for p in (lo, hi):  # the bounds are the roots of (p_hat - p)^2 = z^2 p (1 - p) / n
        assert math.isclose((p_hat - p) ** 2, z * z * p * (1 - p) / n, rel_tol=1e-9)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    with pytest.raises(ValueError, match="trials"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(11, 10)


#: What the hand-written formula (z = 1.96) gave, recorded before scipy.stats took its place.
HAND_WILSON = {
    (0, 10): (0.0, 0.277540169),
    (10, 10): (0.722459831, 1.0),
    (35, 64): (0.425733825, 0.662707485),
    (48, 64): (0.631834908, 0.83985208),
    (1, 2): (0.094528655, 0.905471345),
    (3, 7): (0.158216922, 0.74954577),
    (70, 128): (0.460524801, 0.630493511),
    (128, 128): (0.970862004, 1.0),
    (0, 1): (0.0, 0.793456709),
    (50, 256): (0.151403399, 0.24823084),
}


def test_wilson_interval_from_scipy_matches_the_hand_formula_and_the_closed_form():
    for (k, n), recorded in HAND_WILSON.items():
        lo, hi = wilson_interval(k, n)
        assert (lo, hi) == pytest.approx(recorded, abs=2e-5), (k, n)  # z = 1.96 then, 1.959964 now
        z, p = norm.ppf(0.975), k / n  # the closed form with scipy's normal quantile
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        assert (lo, hi) == pytest.approx((max(0.0, centre - half), min(1.0, centre + half)), abs=1e-12), (k, n)
    assert wilson_interval(35, 64, confidence=0.99)[0] < wilson_interval(35, 64)[0]


def _run(path, algorithm, seed, evals, entropies):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"algorithm": algorithm, "seed": seed, "steps": len(entropies)}))
    (path / "eval.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evals))
    rows = [{"step": i + 1, "entropy": h} for i, h in enumerate(entropies)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_study_accuracy_reads_first_and_last_evaluation(tmp_path):
    evals = [
        {"step": 0, "greedy_accuracy": 35 / 64, "sampled_accuracy": 10 / 64, "problems": 64},
        {"step": 4, "greedy_accuracy": 40 / 64, "sampled_accuracy": 12 / 64, "problems": 64},
        {"step": 8, "greedy_accuracy": 48 / 64, "sampled_accuracy": 20 / 64, "problems": 64},
    ]
    run = _run(tmp_path / "gtpo-s1", "gtpo", 1, evals, [2.0, 2.2, 1.0, 1.0, 1.0, 1.0, 0.5, 0.7])
    table = study_accuracy([run])
    row = table.iloc[0]
    assert (row["algorithm"], row["seed"], row["steps"]) == ("gtpo", 1, 8)
    assert (row["greedy_before"], row["greedy_after"]) == (35 / 64, 48 / 64)
    assert (row["sampled_before"], row["sampled_after"]) == (10 / 64, 20 / 64)
    assert row["greedy_before_95%"] == "43%-66%"
    lo, hi = wilson_interval(48, 64)
    assert row["greedy_after_95%"] == f"{lo:.0%}-{hi:.0%}"
    assert row["entropy_first"] == pytest.approx(2.1) and row["entropy_last"] == pytest.approx(0.6)


def test_study_accuracy_needs_two_evaluations(tmp_path):
    run = _run(tmp_path / "grpo-s0", "grpo", 0, [{"step": 0, "greedy_accuracy": 0.5, "problems": 2}], [1.0])
    with pytest.raises(ValueError, match="before and after"):
        study_accuracy([run])
