"""The study driver: a resumable grid and its summary statistics."""

import numpy as np
import pandas as pd
import pytest

from workbench.study import confidence_interval, paired_comparison, run_grid, setting_label

TINY = dict(model="tiny", model_params={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                        "num_key_value_heads": 2, "intermediate_size": 64},
            steps=2, prompts_per_step=2, group_size=2, max_new_tokens=6, eval_size=4, eval_every=1,
            dynamic_sampling=False)


def test_grid_runs_resumes_and_summarises(tmp_path, capsys):
    table = run_grid(tmp_path, algorithms=["grpo", "gtpo"], seeds=[0, 1], base=TINY,
                     settings=[{"task": "chain", "task_params": {"steps": 2}}], progress=True)
    assert len(table) == 4 and set(table["algorithm"]) == {"grpo", "gtpo"}
    assert set(table["chain_steps"]) == {2}
    for col in ("final_accuracy", "best_accuracy", "accuracy_auc", "entropy_start", "entropy_end", "response_len"):
        assert table[col].notna().all(), col
    assert (tmp_path / "results.csv").exists()
    cell = tmp_path / "runs" / "steps-2_task-chain" / "grpo-s0"
    assert (cell / "metrics.jsonl").exists() and (cell / "DONE").exists()
    assert not (cell / "checkpoints").exists()
    capsys.readouterr()
    again = run_grid(tmp_path, algorithms=["grpo", "gtpo"], seeds=[0, 1], base=TINY,
                     settings=[{"task": "chain", "task_params": {"steps": 2}}], progress=True)
    assert capsys.readouterr().out.count(": done") == 4  # nothing retrained
    pd.testing.assert_frame_equal(table, again)


def test_confidence_interval_hand_values():
    mean, half = confidence_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.303 * 1.0 / np.sqrt(3))
    assert np.isnan(confidence_interval([5.0])[1])


def test_paired_comparison_pairs_by_seed():
    table = pd.DataFrame({"algorithm": ["grpo"] * 3 + ["gtpo"] * 3, "seed": [0, 1, 2] * 2,
                          "final_accuracy": [0.5, 0.6, 0.7, 0.6, 0.6, 0.9], "task": "addition"})
    out = paired_comparison(table, "final_accuracy", "grpo")
    row = out.iloc[0]
    assert row["algorithm"] == "gtpo" and row["pairs"] == 3 and row["wins"] == 2 and row["losses"] == 0
    assert row["mean_difference"] == pytest.approx(0.1)


def test_setting_label():
    assert setting_label({}) == "default"
    assert setting_label({"task": "chain", "task_params": {"steps": 8}}) == "steps-8_task-chain"
