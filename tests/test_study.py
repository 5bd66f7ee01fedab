"""The study driver: a resumable grid and its summary statistics."""

import numpy as np
import pandas as pd
import pytest

from workbench.analysis.study import confidence_interval, label_methods, paired_comparison, run_grid, setting_label
from workbench.runs import load_run

TINY = dict(
    model="tiny",
    model_params={
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "intermediate_size": 64,
    },
    steps=2,
    prompts_per_step=2,
    group_size=2,
    max_new_tokens=6,
    eval_size=4,
    eval_every=1,
    dynamic_sampling=False,
)


def test_grid_runs_resumes_and_summarises(tmp_path, capsys):
    table = run_grid(
        tmp_path,
        algorithms=["grpo", "gtpo"],
        seeds=[0, 1],
        base=TINY,
        settings=[{"task": "chain", "task_params": {"steps": 2}}],
        progress=True,
    )
    assert len(table) == 4 and set(table["algorithm"]) == {"grpo", "gtpo"}
    assert set(table["chain_steps"]) == {2}
    for col in ("final_accuracy", "best_accuracy", "accuracy_auc", "entropy_start", "entropy_end", "response_len"):
        assert table[col].notna().all(), col
    assert (tmp_path / "results.csv").exists()
    cell = tmp_path / "runs" / "steps-2_task-chain" / "grpo-s0"
    assert (cell / "metrics.jsonl").exists() and (cell / "DONE").exists()
    assert not (cell / "checkpoints").exists()
    capsys.readouterr()
    again = run_grid(
        tmp_path,
        algorithms=["grpo", "gtpo"],
        seeds=[0, 1],
        base=TINY,
        settings=[{"task": "chain", "task_params": {"steps": 2}}],
        progress=True,
    )
    assert capsys.readouterr().out.count(": done") == 4  # nothing retrained
    pd.testing.assert_frame_equal(table, again)
    # a further setting in the same study: this call's table is its own, results.csv holds both
    more = run_grid(
        tmp_path,
        algorithms=["grpo"],
        seeds=[0],
        base=TINY,
        settings=[{"task": "chain", "task_params": {"steps": 3}}],
        progress=False,
    )
    assert list(more["chain_steps"]) == [3]
    stored = pd.read_csv(tmp_path / "results.csv")
    assert sorted(stored["chain_steps"]) == [2, 2, 2, 2, 3]
    assert sorted(stored["run"])[0] == "runs/steps-2_task-chain/grpo-s0"  # relative to the study root
    assert all(not r.startswith("/") and (tmp_path / r / "DONE").exists() for r in stored["run"])


def test_summary_holds_the_setting_pass_at_k_and_the_methods_own_metrics(tmp_path):
    table = run_grid(tmp_path, algorithms=["dapo_forking"], seeds=[0], base={**TINY, "eval_samples": 2}, progress=False)
    (row,) = table.to_dict("records")
    run = load_run(row["run"])
    assert row["setting"] == "default"
    assert row["final_pass@1"] == run.evals["pass@1"].iloc[-1] and row["final_pass@2"] == run.evals["pass@2"].iloc[-1]
    assert row["final_pass@1"] == row["final_sampled_accuracy"]  # pass@1 is the mean over the samples
    kept = run.metrics["top_entropy_kept_frac"]
    assert 0 < row["mean_top_entropy_kept_frac"] == pytest.approx(kept.mean()) and row["mean_top_entropy_kept_frac"] < 1
    assert "mean_clip_cov_frac" not in row  # a metric the run did not log


def test_confidence_interval_hand_values():
    mean, half = confidence_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.303 * 1.0 / np.sqrt(3), abs=0.0005 / np.sqrt(3))
    assert np.isnan(confidence_interval([5.0])[1])
    assert confidence_interval([1.0, np.nan, 2.0, 3.0]) == confidence_interval([1.0, 2.0, 3.0])


#: Half-widths the hand table of t quantiles (3 decimals, 1 to 30 degrees of freedom) gave for
#: ``[(i * i) % 7 / 10 for i in range(n)]``, recorded before scipy.stats took its place.
HAND_TABLE_HALF_WIDTHS = {
    2: 0.6353,
    3: 0.517156238,
    4: 0.271714978,
    5: 0.184139008,
    8: 0.132207519,
    10: 0.114100904,
    16: 0.078343238,
    20: 0.068707537,
    25: 0.060151821,
    30: 0.054016698,
    31: 0.053971334,
}


def test_t_intervals_from_scipy_agree_with_the_hand_table_to_its_three_decimals():
    from scipy import stats

    for n, recorded in HAND_TABLE_HALF_WIDTHS.items():
        x = np.array([(i * i) % 7 / 10 for i in range(n)])
        se = x.std(ddof=1) / np.sqrt(n)
        mean, half = confidence_interval(x)
        assert mean == pytest.approx(x.mean())
        assert half == pytest.approx(recorded, abs=0.0005 * se + 1e-12), n  # the table's rounding, no more
        assert half == pytest.approx(stats.t.ppf(0.975, n - 1) * se, rel=1e-12)
    # beyond 30 degrees of freedom the table stopped at 2.042; the quantile goes on falling towards 1.96
    x = np.arange(128) % 5
    assert confidence_interval(x)[1] / (x.std(ddof=1) / np.sqrt(128)) == pytest.approx(1.9788, abs=1e-4)
    assert confidence_interval([1.0, 2.0, 3.0], confidence=0.9)[1] == pytest.approx(2.920 / np.sqrt(3), abs=3e-4)


def test_paired_comparison_pairs_by_seed():
    table = pd.DataFrame(
        {
            "algorithm": ["grpo"] * 3 + ["gtpo"] * 3,
            "seed": [0, 1, 2] * 2,
            "final_accuracy": [0.5, 0.6, 0.7, 0.6, 0.6, 0.9],
            "task": "addition",
        }
    )
    out = paired_comparison(table, "final_accuracy", "grpo")
    row = out.iloc[0]
    assert row["algorithm"] == "gtpo" and row["pairs"] == 3 and row["wins"] == 2 and row["losses"] == 0
    assert row["mean_difference"] == pytest.approx(0.1)


def test_methods_of_one_algorithm_under_two_settings_are_compared_by_seed_against_the_default():
    # DAPO with an entropy bonus (a setting) against plain DAPO: paired by seed, not pooled with it
    table = pd.DataFrame(
        {
            "algorithm": ["dapo"] * 4,
            "setting": ["default", "default", "entropy_target-0.25", "entropy_target-0.25"],
            "seed": [0, 1, 0, 1],
            "final_accuracy": [0.5, 0.7, 0.6, 0.6],
            "task": "addition",
        }
    )
    labelled = label_methods(table, {"entropy_target-0.25": "adaptive bonus"})
    assert list(labelled["method"]) == ["dapo", "dapo", "dapo (adaptive bonus)", "dapo (adaptive bonus)"]
    out = paired_comparison(labelled, "final_accuracy", "dapo", key="method")
    (row,) = out.to_dict("records")
    assert row["method"] == "dapo (adaptive bonus)" and row["pairs"] == 2 and (row["wins"], row["losses"]) == (1, 1)
    assert row["mean_difference"] == pytest.approx(0.0)
    assert label_methods(table.drop(columns="setting"))["method"].tolist() == ["dapo"] * 4  # an older table


def test_setting_label():
    assert setting_label({}) == "default"
    assert setting_label({"task": "chain", "task_params": {"steps": 8}}) == "steps-8_task-chain"
    # settings that differ only inside a dict get different directories
    assert setting_label({"advantage_kwargs": {"alpha2": 0.3}}) == "alpha2-0.3"
    assert setting_label({"advantage_kwargs": {"normalize": "per_polarity"}}) == "normalize-per_polarity"
    assert (
        setting_label({"task": "chain", "task_params": {"steps": 4}, "model": "runs/warm", "max_new_tokens": 40})
        == "max_new_tokens-40_steps-4_task-chain"
    )


def _fake_run(path, tokens_per_step, eval_steps, accuracies, samples=()):
    import json

    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"algorithm": "grpo", "seed": 0, "task": "addition", "steps": 4}))
    (path / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "generated_tokens": t}) + "\n" for s, t in enumerate(tokens_per_step, start=1))
    )
    (path / "eval.jsonl").write_text(
        "".join(json.dumps({"step": s, "greedy_accuracy": a}) + "\n" for s, a in zip(eval_steps, accuracies))
    )
    (path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in samples))
    return path


def test_accuracy_at_tokens_interpolates_between_evaluations(tmp_path):
    from workbench.analysis.study import accuracy_at_tokens

    # evals after 0, 2 and 4 steps; tokens used by then: 0, 100+300 = 400, 400+200+200 = 800
    run = _fake_run(tmp_path / "r", [100, 300, 200, 200], [0, 2, 4], [0.2, 0.6, 0.8])
    assert accuracy_at_tokens(run, 0) == pytest.approx(0.2)
    assert accuracy_at_tokens(run, 200) == pytest.approx(0.4)  # halfway to the step-2 eval
    assert accuracy_at_tokens(run, 600) == pytest.approx(0.7)
    assert accuracy_at_tokens(run, 800) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="exceeds"):
        accuracy_at_tokens(run, 801)


def test_equal_budget_uses_the_smallest_total(tmp_path):
    from workbench.analysis.study import equal_budget

    a = _fake_run(tmp_path / "a", [100, 100], [0, 2], [0.0, 1.0])
    b = _fake_run(tmp_path / "b", [200, 200], [0, 2], [0.0, 1.0])
    table = equal_budget(pd.DataFrame({"run": [str(a), str(b)], "generated_tokens": [200, 400]}))
    assert table["budget_tokens"].tolist() == [200, 200]
    assert table["budget_accuracy"].tolist() == pytest.approx([1.0, 0.5])


def test_entropy_by_step_top_fraction(tmp_path):
    from workbench.analysis.study import entropy_by_step

    samples = [
        {
            "step": 1,
            "group": 0,
            "responses": [{"entropies": [1.0, 2.0, 3.0, 4.0, 5.0]}, {"entropies": [6.0, 7.0, 8.0, 9.0, 10.0]}],
        },
        {"step": 5, "group": 0, "responses": [{"entropies": [0.0, 0.0, 0.0, 1.0, 1.0]}]},
    ]
    run = _fake_run(tmp_path / "r", [1], [0], [0.0], samples)
    table = entropy_by_step(run, top=0.2)
    assert table["step"].tolist() == [1, 5]
    assert table["entropy"].tolist() == pytest.approx([5.5, 0.4])
    assert table["entropy_top20"].tolist() == pytest.approx([9.5, 1.0])  # top 2 of 10, top 1 of 5
    with pytest.raises(ValueError, match="top"):
        entropy_by_step(run, top=0)


def test_load_results_finds_runs_from_any_working_directory(tmp_path, monkeypatch):
    from workbench.analysis.study import load_results

    root = tmp_path / "study"
    run = _fake_run(root / "runs" / "default" / "grpo-s0", [10], [0], [0.5])
    pd.DataFrame({"run": ["somewhere/else/runs/default/grpo-s0"], "final_accuracy": [0.5]}).to_csv(
        root / "results.csv", index=False
    )
    monkeypatch.chdir(tmp_path)
    table = load_results("study")
    assert table["run"].tolist() == [str(root.relative_to(tmp_path) / "runs" / "default" / "grpo-s0")]
    assert (tmp_path / table["run"][0] / "config.json").exists() and run.exists()


@pytest.mark.parametrize("last,collapsed", [(0.2, True), (0.3, False)])
def test_entropy_collapse_is_relative_to_the_start(tmp_path, last, collapsed):
    import json

    from workbench.analysis.study import summarize_run

    path = tmp_path / "r"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"algorithm": "gtpo", "seed": 0, "task": "addition", "steps": 11}))
    (path / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s + 1, "entropy": h}) + "\n" for s, h in enumerate([1.0] * 10 + [last]))
    )
    (path / "eval.jsonl").write_text(
        "".join(
            json.dumps({"step": s, "greedy_accuracy": a, "sampled_accuracy": a}) + "\n"
            for s, a in [(0, 0.5), (5, 0.8), (11, 0.55)]
        )
    )
    row = summarize_run(path)
    assert row["entropy_collapse"] is collapsed  # below 25% of the starting entropy (1.0)
    assert row["accuracy_drops"] == 1  # 0.8 -> 0.55 falls by more than 0.2
    assert row["entropy_start"] == 1.0 and row["entropy_end"] == last
