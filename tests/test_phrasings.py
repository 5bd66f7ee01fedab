"""word_arithmetic's phrasings: the default generation is today's, bit for bit (against digests
recorded from the code before phrasing variety existed); ``phrasings="varied"`` adds phrasings,
some held out entirely (eval only, never trained on), each eval example tagged with its group."""

import hashlib
import json

import pytest

from workbench.tasks import get_task
from workbench.tasks.word_arithmetic import HELD_OUT_TEMPLATES, TEMPLATES, VARIED_TEMPLATES

#: Recorded from word_arithmetic at commit fe01f77 (before ``phrasings`` existed) by the script in
#: ``_record`` below: sha256 digests of the splits, of ``generate`` for seeds 0, 1, 7 (100 examples
#: of each split) and of ``held_out(64, 1234)``, with the split sizes and the first two eval examples.
RECORDED = {
    "{}": {
        "splits": "db8dcb3ef3ad1ff0f866993b2f99c6ead35680c5d6a8f05717ef1cabfcd3ac2f",
        "generate": "ed4fde94a06731eefd3a663ab1d104a8ca7ef61d59bd37591f20a2a1475479c3",
        "held_out": "43ed55c57156847068e4337d772c92fee2a41cb536ce09ca4fdecf2627a525e2",
        "sizes": [450, 171],
        "first": [
            [
                "What is 2 times 5? Give the answer as a number.",
                "10",
                "2 × 5 = 10. The answer is 10.",
                {"op": "*", "a": 2, "b": 5},
            ],
            [
                "What is 5 less than 6? Give the answer as a number.",
                "1",
                "6 - 5 = 1. The answer is 1.",
                {"op": "-", "a": 6, "b": 5},
            ],
        ],
    },
    '{"eval_fraction": 0.5, "max_operand": 7, "min_operand": 7, "ops": "+"}': {
        "splits": "2c2bdea40c2b534a7f6f621d2d6e001ec023a6fb35dae2bfbef9c7cff7219ad1",
        "generate": "f900e87426d9261de9eeb4b6df2ac71ee72d8387cc0082f5f3344bb1cc198b8d",
        "held_out": "dabacbf9597e7453a026840a3e0526209b1f222777a7c92f0f12145f18f86453",
        "sizes": [1, 2],
        "first": [
            [
                "Add 7 and 7. Give the answer as a number.",
                "14",
                "7 + 7 = 14. The answer is 14.",
                {"op": "+", "a": 7, "b": 7},
            ],
            [
                "What is the sum of 7 and 7? Give the answer as a number.",
                "14",
                "7 + 7 = 14. The answer is 14.",
                {"op": "+", "a": 7, "b": 7},
            ],
        ],
    },
    '{"instruction": "", "operand_words": true}': {
        "splits": "8158f3f707328c2a81bb76a790e25bf3cabb8bc2031abeb50dac346923b08553",
        "generate": "ce36b40a2425462003df754f20d968a9b7c3e371d11f32bbd33de176ccc93061",
        "held_out": "389b6437758119d9c48103fb33160eebf44e74d11a6ff202f110486a2477edf4",
        "sizes": [452, 169],
        "first": [
            ["Add seven and nine.", "16", "7 + 9 = 16. The answer is 16.", {"op": "+", "a": 7, "b": 9}],
            [
                "What is the product of four and three?",
                "12",
                "4 × 3 = 12. The answer is 12.",
                {"op": "*", "a": 4, "b": 3},
            ],
        ],
    },
    '{"max_operand": 30, "min_operand": 10, "ops": "-*"}': {
        "splits": "f1bb738c86b9fc72f6ad9ac85c7fbbacb5edbbc742a3edc9584ae3033e3bcdb8",
        "generate": "bcdce5e95adb4f07431d8a06d4b71c2048ff37095633d42b8cfaea28e38d3ef8",
        "held_out": "942db6fe03f64d7fdedb6f96c1d06804e13b08acba62987aecb1d2b0a6afdab1",
        "sizes": [1475, 541],
        "first": [
            [
                "What is 13 less than 19? Give the answer as a number.",
                "6",
                "19 - 13 = 6. The answer is 6.",
                {"op": "-", "a": 19, "b": 13},
            ],
            [
                "Multiply 26 by 10. Give the answer as a number.",
                "260",
                "26 × 10 = 260. The answer is 260.",
                {"op": "*", "a": 26, "b": 10},
            ],
        ],
    },
}


def _rows(examples):
    return [[e.prompt, e.answer, e.solution, e.meta] for e in examples]


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _record(task) -> dict:
    return {
        "splits": _digest({s: _rows(task.splits[s]) for s in ("train", "eval")}),
        "generate": _digest([_rows(task.generate(s, 100, seed)) for s in ("train", "eval") for seed in (0, 1, 7)]),
        "held_out": _digest(_rows(task.held_out(64, 1234))),
        "sizes": [task.split_size("train"), task.split_size("eval")],
        "first": _rows(task.generate("eval", 2, 0)),
    }


@pytest.mark.filterwarnings("ignore:eval_size=64 is larger")
@pytest.mark.parametrize("params", sorted(RECORDED))
def test_the_default_generation_is_unchanged(params):
    kwargs = json.loads(params)
    assert _record(get_task("word_arithmetic", **kwargs)) == RECORDED[params]
    assert _record(get_task("word_arithmetic", phrasings="default", **kwargs)) == RECORDED[params]


def varied(**kw):
    return get_task("word_arithmetic", phrasings="varied", **kw)


def test_held_out_phrasings_are_never_trained_on():
    task = varied()
    train, held_out = task.splits["train"], task.splits["eval"]
    held_templates = {t for op in HELD_OUT_TEMPLATES for t in HELD_OUT_TEMPLATES[op]}
    assert all(e.meta["phrasing"] == "train" and e.meta["template"] not in held_templates for e in train)
    groups = {g: [e for e in held_out if e.meta["phrasing"] == g] for g in ("train", "held_out")}
    assert groups["train"] and groups["held_out"] and len(groups["train"]) + len(groups["held_out"]) == len(held_out)
    assert {e.meta["template"] for e in groups["held_out"]} == held_templates
    assert {e.meta["template"] for e in groups["train"]} == {t for op in VARIED_TEMPLATES for t in VARIED_TEMPLATES[op]}
    # a held-out problem is held out in every phrasing: no operands of the eval split are trained on
    problem = lambda e: (e.meta["op"], e.meta["a"], e.meta["b"])  # noqa: E731
    assert not {problem(e) for e in train} & {problem(e) for e in held_out}
    assert {problem(e) for e in groups["train"]} == {problem(e) for e in groups["held_out"]}
    seen = {e.prompt for seed in range(3) for e in task.generate("train", 2000, seed)}
    assert not any(e.prompt in seen for e in held_out) and len(seen) == task.split_size("train")
    # more phrasings than the default, the default's among them
    for op, templates in TEMPLATES.items():
        assert set(templates) < set(VARIED_TEMPLATES[op]) and not set(VARIED_TEMPLATES[op]) & set(
            HELD_OUT_TEMPLATES[op]
        )
        assert len(HELD_OUT_TEMPLATES[op]) >= 3


def test_every_phrasing_states_its_problem_and_is_scored():
    task = varied(operand_words=True)
    for split in ("train", "eval"):
        for e in task.splits[split]:
            m = e.meta
            assert int(e.answer) == {"+": m["a"] + m["b"], "-": m["a"] - m["b"], "*": m["a"] * m["b"]}[m["op"]]
            assert e.prompt.endswith("Give the answer as a number.") and "{" not in e.prompt
            assert task.reward(e, e.solution) == 1.0 and task.reward(e, f"The answer is {int(e.answer) + 1}.") == 0.0
    assert any("seven" in e.prompt for e in task.splits["eval"] if e.meta["phrasing"] == "held_out")


def test_held_out_examples_of_each_kind():
    task = varied()
    groups = task.held_out_by_phrasing(40, 0)
    assert set(groups) == {"train", "held_out"}
    for group, examples in groups.items():
        assert len(examples) == 40 and all(e.meta["phrasing"] == group for e in examples)
        assert len({e.prompt for e in examples}) == 40
    assert groups == task.held_out_by_phrasing(40, 0) and groups != task.held_out_by_phrasing(40, 1)
    assert task.generate("eval", 30, 2, phrasing="held_out") == task.held_out_by_phrasing(30, 2)["held_out"]
    size = task.split_size("eval", phrasing="held_out")
    assert size + task.split_size("eval", phrasing="train") == task.split_size("eval")
    with pytest.warns(UserWarning, match="larger than the held-out phrasing group"):
        assert len(task.held_out_by_phrasing(size + 10, 0)["held_out"]) == size
    mixed = task.held_out(64, 0)  # the trainer's evaluation: both groups, each example tagged
    assert {e.meta["phrasing"] for e in mixed} == {"train", "held_out"}


def test_phrasing_settings_are_checked():
    with pytest.raises(ValueError, match="phrasings must be 'default' or 'varied', got 'many'"):
        get_task("word_arithmetic", phrasings="many")
    with pytest.raises(ValueError, match="phrasing groups exist only with phrasings='varied'"):
        get_task("word_arithmetic").generate("eval", 3, 0, phrasing="held_out")
    with pytest.raises(ValueError, match="phrasing must be 'train' or 'held_out'"):
        varied().generate("eval", 3, 0, phrasing="new")
    with pytest.raises(ValueError, match="held-out phrasings are in the eval split only"):
        varied().generate("train", 3, 0, phrasing="held_out")
