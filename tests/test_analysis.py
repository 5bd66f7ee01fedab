"""rollout_records: a loaded model's groups as samples.jsonl records, consistent with the library."""

import inspect
import math

import numpy as np
import pytest
import torch

from workbench import advantages as adv
from workbench.analysis.records import rollout_records
from workbench.models.load import load_model
from workbench.runs import load_run
from workbench.tasks import get_task
from workbench.training.config import DEFAULT_INIT, TrainConfig
from workbench.viz import as_group, entropy_distribution


@pytest.fixture(scope="module")
def records():
    model, tokenizer = load_model(DEFAULT_INIT)
    return rollout_records(model, tokenizer, get_task("addition"), prompts=3, n=4, seed=1)


def test_records_have_the_trainer_schema(records):
    assert [r["group"] for r in records] == [0, 1, 2]
    task = get_task("addition")
    prompts = [e.prompt for e in task.generate("eval", 3, 1)]
    assert [r["prompt"] for r in records] == prompts
    assert [r["answer"] for r in records] == [e.answer for e in task.generate("eval", 3, 1)]
    for record in records:
        assert len(record["responses"]) == 4
        for resp in record["responses"]:
            T = len(resp["tokens"])
            assert T >= 1 and len(resp["entropies"]) == len(resp["logprobs"]) == len(resp["advantages"]) == T
            assert all(0 <= h <= math.log(98) + 1e-4 for h in resp["entropies"])
            assert all(lp <= 1e-6 for lp in resp["logprobs"])
            # the stored reward is the task's reward of the stored text
            example = next(e for e in task.generate("eval", 3, 1) if e.prompt == record["prompt"])
            assert resp["reward"] == task.reward(example, resp["text"])
            assert resp["correct"] == (resp["reward"] > 0.5)


def test_record_advantages_are_gtpo_of_the_record(records):
    for record in records:
        group = as_group(record)
        rewards, entropies, mask = group.tensors()
        expected = adv.gtpo(rewards.float(), entropies.float(), mask)
        for i, resp in enumerate(record["responses"]):
            got = torch.tensor(resp["advantages"])
            assert torch.allclose(got, expected[i, : len(got)], atol=2e-4)


def test_records_feed_the_figures(records):
    fig = entropy_distribution(records)
    assert sum(len(trace.x) for trace in fig.data) == sum(len(r["tokens"]) for rec in records for r in rec["responses"])


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="n >= 2"):
        rollout_records(None, None, None, prompts=1, n=1)


def test_records_sample_at_the_trainers_budget_by_default():
    """A checkpoint's entropy figures show replies as long as training lets them be (not a shorter budget)."""
    default = inspect.signature(rollout_records).parameters["max_new_tokens"].default
    assert default == TrainConfig().max_new_tokens == 20


def test_where_the_uncertainty_sits_in_the_shipped_run_is_what_notebook_1_and_the_readme_say():
    # "the uncertainty sits on the column digits (0.4 to 0.7 nats on average ...); the carry marks
    # `c`, the `|` and the answer after it ... are nearly certain (under 0.2 nats)"
    from pathlib import Path

    run = load_run(Path(__file__).parents[1] / "data" / "results" / "accuracy" / "runs" / "default" / "gtpo-s0")
    by_kind = {"column": [], "carry": [], "bar": [], "answer": []}
    for record in run.samples:
        for response in record["responses"]:
            tokens = response["tokens"]
            bar = tokens.index("|") if "|" in tokens else len(tokens)
            for i, (token, h) in enumerate(zip(tokens, response["entropies"])):
                kind = "answer" if i > bar else "bar" if i == bar else "carry" if token == "c" else "column"
                if token.isdigit() or i >= bar or token == "c":
                    by_kind[kind].append(h)
    means = {kind: float(np.mean(values)) for kind, values in by_kind.items()}
    assert 0.4 <= means["column"] <= 0.7, means
    assert max(means["carry"], means["bar"], means["answer"]) < 0.2, means


def test_the_forking_tokens_of_the_shipped_gtpo_runs_are_what_notebook_3_says():
    # "all 15 rows below, and 88 of the top 100, are in wrong responses"; among the correct ones
    # the most uncertain tokens are column digits
    from pathlib import Path

    from workbench import viz

    root = Path(__file__).parents[1] / "data" / "results" / "accuracy" / "runs" / "default"
    forking = viz.forking_tokens([load_run(p) for p in sorted(root.glob("gtpo-s*"))], top=100_000)
    assert not forking["correct"].head(15).any()
    assert (~forking["correct"].head(100)).sum() == 88
    assert forking[forking["correct"]].head(10)["token"].str.isdigit().all()
