"""Problems found in the tasks (issue 22), each with the test that failed before its fix:
``word_arithmetic``'s answer regex in linear time, and the JSONL reader's bad inputs."""

import re
import time
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workbench.tasks import word_arithmetic as wa
from workbench.tasks.word_arithmetic import extract_final_answer

# ---------------------------------------------------------------------------- word_arithmetic in linear time

#: The answer regex before the fix: ``\s*[:=]?[\s*$\\(]*`` splits a run of blanks between its two
#: quantifiers in quadratically many ways before the number after it fails to match.
_OLD_ANSWER_RE = re.compile(
    rf"\banswer\s*(?:is|was|would be|will be|:|=)\s*[:=]?[\s*$\\(]*({wa._EXPRESSION}|{wa._WORDS}\b)", re.IGNORECASE
)


def old_extract_final_answer(completion: str) -> Fraction | None:
    """``extract_final_answer`` as it was, for the comparison (quadratic only on long blank runs)."""
    text = completion[-wa.MAX_CHARS :]
    boxed = wa._BOXED_RE.findall(text)
    if boxed:
        return wa._last_number(boxed[-1], words=True)
    stated = [m.group(1) for m in _OLD_ANSWER_RE.finditer(text)]
    if stated:
        return wa._last_number(stated[-1], words=True)
    return wa._last_number(text, words=True)


def _seconds(text: str) -> float:
    start = time.perf_counter()
    extract_final_answer(text)
    return time.perf_counter() - start


@pytest.mark.parametrize("blank", [" ", "\n", "\t", " \n\t"])
def test_the_answer_regex_is_linear_in_a_run_of_blanks(blank):
    """``"answer is" + " " * n + "x"`` took 4.6 s at n = 2,500 and 299 s at 19,980 (quadratic);
    sizes grow so that the old code fails on the first, in seconds, not minutes."""
    for n in (2_500, 10_000, 20_000, 200_000):
        for text in ("answer is" + blank * n + "x", "The answer is:" + blank * n + "x", "answer" + blank * n + "x"):
            assert _seconds(text) < 1.0, (len(text), text[:20])


def test_a_megabyte_reply_ending_in_blanks_is_scored_fast():
    """A 1 MB reply ending in "The answer is" + 4,000 spaces took 10.7 s."""
    filler = "Let me think about this step by step. 7 + 5 is twelve, I think. " * 16_000
    for tail in ("The answer is" + " " * 4_000, "The answer is" + " " * 4_000 + "x", "answer = " + "( $ * " * 3_000):
        reply = filler[: 1_000_000 - len(tail)] + tail
        assert len(reply) == 1_000_000 and _seconds(reply) < 1.0
    task = wa.WordArithmetic()
    example = task.generate("train", 1, 0)[0]
    start = time.perf_counter()
    assert task.reward(example, reply) in (0.0, 1.0)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize(
    "text",
    [
        "answer is " * 20_000,
        "answer is 1" + " " * 20_000 + "x",
        "answer is 1 +" + " " * 20_000 + "x",
        "answer is " + "1 + " * 5_000 + "1" * 3 + "x",
        "answer is " + "1,234" * 4_000,
        "answer is " + "1," * 10_000 + "2345",
        "answer is seven" + " " * 20_000 + "hundred",
        "seven hundred" + " " * 20_000 + "and" + " " * 20_000 + "x",
        "\\boxed" + " " * 20_000 + "x",
        "\\boxed{" + "a{b}" * 5_000,
        "\\boxed {" * 5_000,
        ("answer" + " " * 100) * 200,
        ("answer is:" + " " * 100) * 200,
        ("one" + " " * 100) * 200,
        "-" * 20_000 + "1",
        "1." * 10_000,
        "answer is " + "-" * 20_000,
        "answer is " + "1.1." * 5_000,
    ],
)
def test_other_adversarial_replies_are_scored_fast(text):
    assert _seconds(text) < 1.0


#: Replies of the shapes real models write, for the comparison with the old function.
REALISTIC = [
    "The answer is 12.",
    "The answer is: 7 + 5 = 12",
    "answer = $12$ (check: 7 + 5)",
    "**Answer:** 12",
    "Answer: **12**",
    "The answer is (12).",
    "The answer is \\(12\\).",
    "The answer is  \n\t 12",
    "The answer is : 12",
    "The answer is = 12",
    "The answer is :: 12",
    "The answer is * * 12",
    "The final answer would be twenty-one.",
    "The answer will be seven hundred and five",
    "answer was 3 - 4 = -1",
    "The answer is \\boxed{12}",
    "7 × 5 = 35. The answer is 35.",
    "Three plus four is seven.",
    "The answer is 1,234.50",
    "answer:\n\n12",
    "answer is x, so 7",
    "The answer is $ 12 $ and not 13",
]


@pytest.mark.parametrize("reply", REALISTIC)
def test_the_same_answers_as_before_on_realistic_replies(reply):
    assert extract_final_answer(reply) == old_extract_final_answer(reply)


def test_the_same_answers_as_before_on_the_stored_real_replies():
    from test_word_arithmetic import REAL_REPLIES

    for reply, _ in REAL_REPLIES:
        assert extract_final_answer(reply) == old_extract_final_answer(reply), reply


_PIECES = st.sampled_from(
    [
        "answer",
        "Answer",
        " is",
        " was",
        " would be",
        " will be",
        "The ",
        "final ",
        ":",
        "=",
        " ",
        "  ",
        "\n",
        "\t",
        "*",
        "$",
        "\\",
        "(",
        ")",
        "7",
        "12",
        "1,234",
        ".5",
        "-",
        "−",
        " + ",
        " × ",
        "x",
        "÷",
        "seven",
        "twenty",
        "-one",
        " hundred",
        " and ",
        "\\boxed{",
        "}",
        "{",
        ".",
        ",",
        "so",
        "one",
    ]
)


@settings(max_examples=3_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_PIECES, max_size=30).map("".join))
def test_the_same_answers_as_before_on_generated_replies(reply):
    assert extract_final_answer(reply) == old_extract_final_answer(reply)
