"""The word_arithmetic task: answers read from free text as a person reads them (real SmolLM2
replies), bounded reward time, deterministic disjoint splits that know their size."""

import time
from fractions import Fraction

import pytest

from workbench.tasks import TASKS, get_task
from workbench.tasks.word_arithmetic import extract_final_answer, number_words

# Replies of SmolLM2-135M-Instruct sampled at temperature 0.7 to this task's prompts (the
# instruction varied to draw \boxed{} and "the answer is"), with the answer a reader takes.
REAL_REPLIES = [
    ("Multiply 2 by 5, which is 10, so 10 is the result.", 10),
    ("1. Multiply: 2 × 5 = 10\n\nSo the answer is 10.", 10),
    ("The number 6 is 6 less than 8, so 6 - 8 = 1.", 1),
    ("The answer to this classic problem is 24.", 24),
    ("1 less than 8 is 7.", 7),
    ("1\n\nThe product of 6 and 1 is 6.", 6),
    ("2*3 = 6\n\nI hope this helps!", 6),
    ("To add 4 to 6, I'll multiply the numbers:\n\n6 x 4 = 24\n\nSo, 6 + 4 = 10.", 10),
    ("1.667 = 6 - 3\n\nSo, 1.667 = 6 - 3 = 1.\n\nSo, the final answer is 1.", 1),
    (
        "To solve this problem, you should first find 4 - 1, which is 5.\n4 - 1 equals 3.\nSo, 4 minus 1 is 3.\n\n"
        "So, your final answer is 3.\n\nThe final step in your process",
        3,
    ),
    (
        "Let's add 7 and 5 together:\n7 + 5 = 12\n\nThe final answer is: 7 + 12 = 18\n\nIn this example, the addition "
        "operation adds 7 and 5, which results in a total of 18 w",
        18,
    ),
    ("The solution is \\boxed{7 + 5 = 12.", 12),  # unclosed: not a box, the last number
    ("0.22\n\nThe answer is 2.", 2),
    ("2 + 8 = 10\nThe answer is 10", 10),
    ("6*5 equals 30. The answer is 30.", 30),
    ("0.5 = 1.5", Fraction(3, 2)),
    ("8", 8),
    ("17.", 17),
    ("Here it is: 7 + 9 = 16", 16),
    ("The sum of seven and four equates to 20.", 20),
    ("I'm a DNS client who specializes in HTTPS.", None),
]


@pytest.mark.parametrize("reply, expected", REAL_REPLIES)
def test_real_replies_are_read_as_a_person_reads_them(reply, expected):
    assert extract_final_answer(reply) == (None if expected is None else Fraction(expected))


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("The answer is \\boxed{12}. Then add 3 more.", 12),  # the box wins over a later number
        ("\\boxed{3} at first, but \\boxed{ 12 } in the end", 12),
        ("so \\boxed{\\text{12}}", 12),
        ("The answer is 12. I hope this helps with your 2 questions.", 12),  # "the answer is" over the last number
        ("Answer: **12**", 12),
        ("answer = $12$ (check: 7 + 5)", 12),
        ("The answer is 12, not 13.", 12),
        ("The answer is twenty-one, not 3", 21),
        ("Three plus four is seven.", 7),  # no digits at all: number words
        ("This is a simple one: 7 + 5 = 12.", 12),  # digits present: "one" is not a number here
        ("It comes to 1,234.", 1234),
        ("12.0", 12),
        ("5 - 8 = -3", -3),
        ("one hundred and five", 105),
        ("no number here", None),
        ("", None),
    ],
)
def test_each_rule(reply, expected):
    assert extract_final_answer(reply) == (None if expected is None else Fraction(expected))


def test_number_words_round_trip():
    assert [number_words(n) for n in (0, 13, 21, 100, 342)] == [
        "zero",
        "thirteen",
        "twenty-one",
        "one hundred",
        "three hundred and forty-two",
    ]
    for n in range(1000):
        assert extract_final_answer(f"It is {number_words(n)}.") == n


def test_rewards():
    task = get_task("word_arithmetic")
    for example in task.generate("train", 50, 0) + task.generate("eval", 20, 0):
        assert task.reward(example, example.solution) == 1.0
        assert task.reward(example, f"The answer is {int(example.answer) + 1}.") == 0.0
        assert task.format_reward(example.solution) == 1.0
    assert task.format_reward("no number") == 0.0
    assert task.extract_answer("7 × 5 = 35.") == "35" and task.extract_answer("x") is None


@pytest.mark.parametrize(
    "text",
    [
        "answer is " * 50_000,
        "1," * 200_000,
        "9" * 400_000,
        "\\boxed{" * 50_000 + "1",
        "7 + " * 100_000,
        "twenty " * 100_000,
        "\x00\n" * 100_000,
    ],
)
def test_any_reply_is_scored_in_bounded_time(text):
    example = get_task("word_arithmetic").generate("train", 1, 0)[0]
    start = time.perf_counter()
    assert get_task("word_arithmetic").reward(example, text) in (0.0, 1.0)
    assert time.perf_counter() - start < 1.0


def test_problems_phrasings_and_the_instruction():
    task = get_task("word_arithmetic", ops="+", min_operand=7, max_operand=7, eval_fraction=0.5)
    prompts = sorted(e.prompt for split in ("train", "eval") for e in task.splits[split])
    assert prompts == [
        "Add 7 and 7. Give the answer as a number.",
        "What is 7 plus 7? Give the answer as a number.",
        "What is the sum of 7 and 7? Give the answer as a number.",
    ]
    words = get_task("word_arithmetic", ops="-", operand_words=True, instruction="")
    assert {e.prompt for e in words.generate("train", 400, 0)} >= {"What is nine minus two?"}
    assert all(e.meta["a"] >= e.meta["b"] and int(e.answer) >= 0 for e in words.generate("train", 300, 0))
    assert "word_arithmetic" in TASKS


def test_splits_are_deterministic_disjoint_and_sized():
    task = get_task("word_arithmetic")
    train, held_out = task.split_size("train"), task.split_size("eval")
    assert train + held_out == (81 + 45 + 81) * 3  # +, - (no negative results), x over 1..9, 3 phrasings
    assert 0.2 < held_out / (train + held_out) < 0.3  # eval_fraction 0.25
    assert task.generate("eval", 64, 3) == get_task("word_arithmetic").generate("eval", 64, 3)
    assert task.generate("eval", 64, 3) != task.generate("eval", 64, 4)
    assert len({e.prompt for e in task.generate("eval", held_out, 0)}) == held_out  # distinct up to the split size
    assert len(task.generate("eval", held_out + 5, 0)) == held_out + 5  # then cycles
    train_prompts = {e.prompt for seed in range(3) for e in task.generate("train", 500, seed)}
    eval_prompts = {e.prompt for e in task.generate("eval", 500, 0)}
    assert not train_prompts & eval_prompts and len(train_prompts) == train


def test_an_unfillable_split_raises_naming_the_settings():
    task = get_task("word_arithmetic", ops="+", min_operand=1, max_operand=1, eval_fraction=0.01)
    empty = "eval" if task.split_size("eval") == 0 else "train"
    start = time.perf_counter()
    with pytest.raises(ValueError, match=f"no problem in the {empty} split.*max_operand"):
        task.generate(empty, 4, 0)
    assert time.perf_counter() - start < 1


def test_bad_settings():
    for kwargs, message in (
        ({"ops": "+/"}, "ops must be"),
        ({"ops": "++"}, "ops must be"),
        ({"max_operand": 0, "min_operand": 1}, "max_operand must be"),
        ({"eval_fraction": 1.0}, "eval_fraction"),
        ({"instruction": 3}, "instruction"),
    ):
        with pytest.raises((ValueError, TypeError), match=message):
            get_task("word_arithmetic", **kwargs)
