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


# ---------------------------------------------------------------------------- JSONL: bad inputs

import json  # noqa: E402

from workbench.tasks import get_task  # noqa: E402


def _write(tmp_path, lines: list[bytes], name: str = "t.jsonl"):
    good = [json.dumps({"question": f"q{i}", "answer": str(i)}).encode() for i in range(30)]
    path = tmp_path / name
    path.write_bytes(b"\n".join(good[:2] + lines + good[2:]) + b"\n")
    return path


def test_gsm8k_answers_give_the_number_after_the_marks_and_the_text_before_as_solution(tmp_path):
    rows = [
        {
            "question": "Natalia sold 48 clips in April and half as many in May. How many in all?",
            "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
            "Altogether she sold 48+24 = <<48+24=72>>72 clips.\n#### 72",
        },
        {"question": "Own solution wins", "answer": "steps #### 1,000", "solution": "mine"},
        {"question": "Plain", "answer": "5"},
    ] + [{"question": f"q{i}", "answer": f"work {i}\n#### {i}"} for i in range(20)]
    path = tmp_path / "gsm8k.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = get_task("jsonl", path=str(path))
    by_question = {e.prompt.strip(): e for e in task.examples}
    natalia = next(e for q, e in by_question.items() if q.startswith("Natalia"))
    assert natalia.answer == "72"
    assert (
        natalia.solution
        == "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nAltogether she sold 48+24 = <<48+24=72>>72 clips.|72"
    )
    assert (
        by_question["Own solution wins"].answer == "1,000" and by_question["Own solution wins"].solution == "mine|1,000"
    )
    assert by_question["Plain"].answer == "5" and by_question["Plain"].solution == "|5"
    assert task.reward(natalia, "48 + 24 = 72 |72") == 1.0 and task.reward(natalia, "|71") == 0.0
    assert task.reward(natalia, natalia.solution) == 1.0


@pytest.mark.parametrize(
    "bad_line, problem",
    [
        (b'{"question": "q", "answer": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
        (
            b'{"question": "q", "answer": "1", "extra": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_000 + b"}",
            "nested too deeply",
        ),
        (b'{"question": "q", "answer": "1", "answer": "2"}', "duplicate key 'answer'"),
        (b'{"question": "q", "answer": "1", "meta": {"k": 1, "k": 2}}', "duplicate key 'k'"),
        (b'{"question": "q", "answer": "a|b"}', r"answer 'a\|b' contains '\|'"),
        (b'{"question": "q", "answer": "steps #### 3|4"}', r"contains '\|'"),
        (b'{"question": "q", "answer": "work ####  "}', "empty answer"),
        (b'{"question": "q1", "answer": "7"}', r"question of line 2 .*different answer"),
    ],
)
def test_bad_lines_name_the_line_and_lenient_mode_skips_them(tmp_path, bad_line, problem):
    path = _write(tmp_path, [bad_line])
    with pytest.raises(ValueError, match=f"{re.escape(str(path))}: line 3: .*{problem}") as raised:
        get_task("jsonl", path=str(path))
    assert "\n" not in str(raised.value) and len(str(raised.value)) < 400  # one line
    with pytest.warns(UserWarning, match="1 .*line.* skipped"):
        lenient = get_task("jsonl", path=str(path), lenient=True)
    assert [n for n, _ in lenient.skipped] == [3] and len(lenient.examples) == 30
    assert lenient.describe()["skipped_lines"] == 1 and re.search(problem, lenient.describe()["skipped"][0]["problem"])


def test_a_repeated_question_with_the_same_answer_is_kept(tmp_path):
    path = _write(tmp_path, [b'{"question": "q1", "answer": "1"}'])
    assert len(get_task("jsonl", path=str(path)).examples) == 31


def test_a_long_line_is_refused_while_it_is_read(tmp_path):
    """A 300 MB line was read whole before its length was checked; now no more than about a
    megabyte of it is ever held (measured: the peak of Python's allocations while loading)."""
    import tracemalloc

    path = tmp_path / "long.jsonl"
    good = [json.dumps({"question": f"q{i}", "answer": str(i)}).encode() for i in range(30)]
    with open(path, "wb") as f:
        f.write(b"\n".join(good[:2]) + b"\n")
        f.write(b'{"question": "')
        for _ in range(24):
            f.write(b"x" * (1 << 20))
        f.write(b'", "answer": "1"}\n')
        f.write(b"\n".join(good[2:]) + b"\n")
    with pytest.raises(ValueError, match=r"line 3: line is too long \(25165\d\d\d bytes > 1048576\)"):
        get_task("jsonl", path=str(path))
    tracemalloc.start()
    with pytest.warns(UserWarning, match="skipped"):
        task = get_task("jsonl", path=str(path), lenient=True)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert [n for n, _ in task.skipped] == [3] and len(task.examples) == 30
    assert peak < 6 * (1 << 20), peak


def test_a_directory_is_named_as_one(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("")
    with pytest.raises(
        IsADirectoryError, match=r"is a directory, not a JSONL file; pass the path of the file .*train\.jsonl"
    ):
        get_task("jsonl", path=str(tmp_path / "data"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        get_task("jsonl", path=str(tmp_path / "nowhere.jsonl"))
