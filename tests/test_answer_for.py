"""``Task.answer_for(prompt)``: a prompt's gold answer, from the task itself, for every task; and
``viz.sources.gold_answer`` through it (same answers as its own arithmetic gave before)."""

import json
import re

import pytest

from workbench.tasks import get_task
from workbench.viz.sources import gold_answer


def old_gold_answer(config: dict, prompt: str) -> str:
    """``viz.sources.gold_answer`` before it asked the task."""
    task = config.get("task")
    try:
        if task == "addition":
            return str(sum(int(x) for x in prompt.rstrip("=").split("+")))
        if task == "chain":
            parts = re.findall(r"([+*-]?)(\d+)", prompt)
            value = int(parts[0][1])
            for op, x in parts[1:]:
                value = {"+": value + int(x), "-": value - int(x), "*": value * int(x)}[op] % 100
            return str(value)
        if task == "jsonl":
            examples = get_task("jsonl", **(config.get("task_params") or {})).examples
            return next((e.answer for e in examples if e.prompt == prompt), "")
    except (ValueError, KeyError, IndexError, OSError):
        return ""
    return ""


@pytest.fixture
def jsonl_path(tmp_path):
    rows = [{"question": f"What is {a} plus {b}?", "answer": str(a + b)} for a in range(10) for b in range(4)]
    rows.append({"question": "GSM8K style", "answer": "half of 48 is 24, 48 + 24 = 72\n#### 72"})
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _configs(jsonl_path):
    return [
        ("addition", {}),
        ("addition", {"digits": 5}),
        ("chain", {"steps": 4}),
        ("chain", {"steps": 12, "max_operand": 20}),
        ("jsonl", {"path": str(jsonl_path)}),
        ("word_arithmetic", {}),
        ("word_arithmetic", {"phrasings": "varied", "operand_words": True}),
    ]


def test_each_task_knows_the_answer_of_its_prompts(jsonl_path):
    for name, params in _configs(jsonl_path):
        task = get_task(name, **params)
        for example in task.generate("train", 50, 0) + task.generate("eval", 20, 0):
            assert task.answer_for(example.prompt) == example.answer, (name, example)
        for foreign in ("", "not a problem", "What is the capital of France?"):
            assert task.answer_for(foreign) is None, (name, foreign)


def test_gold_answer_asks_the_task_and_agrees_with_its_old_arithmetic(jsonl_path):
    for name, params in _configs(jsonl_path):
        config = {"task": name, "task_params": params}
        task = get_task(name, **params)
        for example in task.generate("train", 30, 1) + task.generate("eval", 10, 1):
            assert gold_answer(config, example.prompt) == example.answer
            if name != "word_arithmetic":  # which it could not tell before (it gave "")
                assert gold_answer(config, example.prompt) == old_gold_answer(config, example.prompt)
    chain = {"task": "chain", "task_params": {"steps": 8}}
    assert gold_answer(chain, "1+2=") == old_gold_answer(chain, "1+2=") == "3"  # a record of the viz tests
    for config, prompt in (
        ({"task": "addition"}, "not a sum"),
        ({"task": "chain", "task_params": {"steps": 4}}, "x"),
        ({"task": "jsonl", "task_params": {"path": "/nowhere.jsonl"}}, "q"),
        ({"task": "sudoku"}, "q"),
        ({}, "1+2="),
        ({"task": "addition", "task_params": {"digits": 0}}, "1+2="),
    ):
        assert gold_answer(config, prompt) == ""


def test_gold_answer_calls_the_task_method(monkeypatch):
    from workbench.tasks.addition import Addition

    monkeypatch.setattr(Addition, "answer_for", lambda self, prompt: f"asked {prompt}")
    assert gold_answer({"task": "addition", "task_params": {"digits": 2}}, "12+34=") == "asked 12+34="


def test_a_jsonl_run_reads_its_file_once_for_many_prompts(jsonl_path, monkeypatch):
    import workbench.tasks.jsonl as jsonl

    loads = []
    real = jsonl.JsonlTask._load
    monkeypatch.setattr(jsonl.JsonlTask, "_load", lambda self: loads.append(1) or real(self))
    config = {"task": "jsonl", "task_params": {"path": str(jsonl_path)}}
    answers = [gold_answer(config, f"What is {a} plus 1?\n") for a in range(10)]
    assert answers == [str(a + 1) for a in range(10)] and len(loads) <= 1
    jsonl_path.write_text(json.dumps({"question": "What is 0 plus 1?", "answer": "one"}) + "\n" + "\n" * 3)
    assert gold_answer(config, "What is 0 plus 1?\n") in ("", "one")  # a changed file is read again, not stale


def test_reasoning_gym_answers():
    pytest.importorskip("reasoning_gym", reason="the reasoning-gym extra is not installed: pip install -e '.[tasks]'")
    params = {"dataset": "chain_sum", "size": 50, "seed": 3, "config": {"max_terms": 3}}
    task = get_task("reasoning_gym", **params)
    example = task.generate("eval", 1, 0)[0]
    assert task.answer_for(example.prompt) == example.answer and task.answer_for("nope") is None
    assert gold_answer({"task": "reasoning_gym", "task_params": params}, example.prompt) == example.answer
