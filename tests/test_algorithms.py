"""The registry, the public names and the demo entry point."""

import subprocess
import sys

import pytest
import torch

import workbench
from workbench import ALGORITHMS, Algorithm, get_algorithm, register_algorithm
from workbench.examples import advantage_table, spec_example


def test_public_names_import():
    from workbench.advantages import dapo, grpo, grpo_s, gtpo, shaped_rewards_grpo_s, shaped_rewards_gtpo  # noqa: F401
    from workbench.entropy import token_stats  # noqa: F401
    from workbench.losses import policy_loss  # noqa: F401

    assert {"grpo", "dapo", "gtpo", "grpo_s"} <= set(ALGORITHMS)


def test_registry_defaults_follow_the_spec():
    assert ALGORITHMS["grpo"].loss_kwargs() == {
        "eps_low": 0.2,
        "eps_high": 0.2,
        "agg": "seq-mean-token-mean",
        "level": "token",
    }
    for name in ("dapo", "gtpo"):
        a = ALGORITHMS[name]
        assert (a.eps_low, a.eps_high, a.agg, a.level, a.dynamic_sampling) == (0.2, 0.28, "token-mean", "token", True)
    assert ALGORITHMS["grpo_s"].level == "sequence" and ALGORITHMS["grpo_s"].eps_high == 0.28
    assert ALGORITHMS["gtpo"].uses_entropy and not ALGORITHMS["dapo"].uses_entropy


def test_registry_advantages_equal_the_functions():
    ex = spec_example()
    r, h, m = ex["rewards"], ex["entropies"], ex["mask"]
    torch.testing.assert_close(ALGORITHMS["gtpo"].advantages(r, h, m), workbench.gtpo(r, h, m))
    torch.testing.assert_close(ALGORITHMS["grpo_s"].advantages(r, h, m), workbench.grpo_s(r, h, m))
    torch.testing.assert_close(ALGORITHMS["grpo"].advantages(r, h, m), workbench.grpo(r, m))
    torch.testing.assert_close(
        ALGORITHMS["gtpo_per_polarity"].advantages(r, h, m), workbench.gtpo(r, h, m, normalize="per_polarity")
    )
    torch.testing.assert_close(ALGORITHMS["gtpo"].advantages(r, h, m, alpha2=0.3), workbench.gtpo(r, h, m, alpha2=0.3))


def test_adding_a_variant_is_one_line():
    algo = register_algorithm(
        Algorithm("test_gtpo_strong", lambda r, h, m, **kw: workbench.gtpo(r, h, m, alpha2=0.5, **kw))
    )
    try:
        ex = spec_example()
        out = get_algorithm("test_gtpo_strong").advantages(*ex.values())
        torch.testing.assert_close(out, workbench.gtpo(*ex.values(), alpha2=0.5))
        with pytest.raises(ValueError, match="already registered"):
            register_algorithm(algo)
    finally:
        del ALGORITHMS["test_gtpo_strong"]


def test_unknown_algorithm_lists_known_names():
    with pytest.raises(ValueError, match=r"unknown algorithm 'ppo'; known: .*gtpo"):
        get_algorithm("ppo")
    with pytest.raises(ValueError, match="agg must be one of"):
        Algorithm("bad", workbench.gtpo, agg="sum")


def test_advantage_table_columns():
    table = advantage_table()
    assert list(table.columns) == ["response", "t", "reward", "entropy", "grpo", "dapo", "gtpo", "grpo_s"]
    assert len(table) == 10
    assert table["gtpo"].iloc[1] == pytest.approx(0.999393, abs=1e-5)


def test_demo_command_prints_the_table():
    out = subprocess.run([sys.executable, "-m", "workbench", "demo"], capture_output=True, text=True, check=True)
    assert "gtpo" in out.stdout and "+0.9994" in out.stdout and "+0.8721" in out.stdout


def test_advantage_kwargs_are_checked_with_the_config(tmp_path):
    """Unknown or bad advantage_kwargs fail when the config is built (they used to fail at step 1,
    after the step-0 evaluation had written files, so the corrected command was refused)."""
    from workbench.training.config import TrainConfig

    with pytest.raises(ValueError, match=r"advantage_kwargs: 'alpha3' is not an argument of .*gtpo.*alpha2"):
        TrainConfig(algorithm="gtpo", advantage_kwargs={"alpha3": 1.0})
    with pytest.raises(ValueError, match=r"advantage_kwargs: 'alpha2' is not an argument of .*grpo.*scale"):
        TrainConfig(algorithm="grpo", advantage_kwargs={"alpha2": 0.1})
    with pytest.raises(ValueError, match=r"advantage_kwargs: 'beta2'.*dapo"):
        TrainConfig(algorithm="dapo", advantage_kwargs={"beta2": 0.1})
    with pytest.raises(ValueError, match="advantage_kwargs: normalize must be one of"):
        TrainConfig(algorithm="grpo_s", advantage_kwargs={"normalize": "both"})
    with pytest.raises(ValueError, match="advantage_kwargs: alpha2 must be >= 0"):
        TrainConfig(algorithm="gtpo", advantage_kwargs={"alpha2": -1.0})
    TrainConfig(algorithm="gtpo", advantage_kwargs={"alpha2": 0.2, "normalize": "per_polarity"})
    TrainConfig(algorithm="dr_grpo", advantage_kwargs={"scale": "group"})
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="alpha3"):
        workbench.train(model="tiny", advantage_kwargs={"alpha3": 1.0}, output_dir=str(out))
    assert not out.exists()
