"""Tasks: determinism, worked solutions score 1, wrong answers 0, disjoint splits, bad JSONL."""

import json

import pytest

from workbench.tasks import TASKS, addition_solution, chain_solution, get_task

TASK_PARAMS = [("addition", {}), ("addition", {"digits": 5}), ("chain", {"steps": 4}), ("chain", {"steps": 70})]


@pytest.fixture
def jsonl_file(tmp_path):
    rows = [{"question": f"What is {a} plus {b}?", "answer": str(a + b)} for a in range(10) for b in range(4)]
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def all_tasks(jsonl_file):
    return [get_task(n, **p) for n, p in TASK_PARAMS] + [get_task("jsonl", path=str(jsonl_file))]


def test_hand_checked_solutions():
    assert addition_solution(357, 486) == "3c4c8|843"
    assert addition_solution(999, 1) == "0c0c0c1|1000"
    assert chain_solution(7, [("+", 3), ("*", 2), ("-", 5)]) == ("7+3=10;10*2=20;20-5=15;|15", 15)
    assert chain_solution(9, [("*", 9), ("*", 9)])[1] == (9 * 9 % 100) * 9 % 100
    assert chain_solution(2, [("-", 5)]) == ("2-5=97;|97", 97)  # modulo 100


def test_generation_is_deterministic_and_seeded(jsonl_file):
    for task in all_tasks(jsonl_file):
        a, b = task.generate("train", 20, seed=3), task.generate("train", 20, seed=3)
        assert a == b
        assert a != task.generate("train", 20, seed=4)


def test_worked_solutions_score_one_and_wrong_answers_zero(jsonl_file):
    for task in all_tasks(jsonl_file):
        for ex in task.generate("train", 30, seed=0) + task.generate("eval", 10, seed=0):
            assert task.reward(ex, ex.solution) == 1.0, (task.name, ex)
            assert task.format_reward(ex.solution) == 1.0
            wrong = ex.solution.rsplit("|", 1)[0] + "|" + str(int(float(ex.answer)) + 1)
            assert task.reward(ex, wrong) == 0.0
        for garbage in ("", "|", "no separator", "||||", "\x00\n", "1" * 500):
            assert task.reward(ex, garbage) == 0.0
        assert task.format_reward("no separator") == 0.0


def test_splits_are_disjoint(jsonl_file):
    for task in all_tasks(jsonl_file):
        train = {e.prompt for seed in range(5) for e in task.generate("train", 200, seed)}
        held_out = {e.prompt for seed in range(5) for e in task.generate("eval", 50, seed)}
        assert train and held_out and not train & held_out, task.name


def test_chain_length_dial():
    short = get_task("chain", steps=4).generate("train", 50, 0)
    long = get_task("chain", steps=70).generate("train", 20, 0)
    assert 25 <= sum(len(e.solution) for e in short) / 50 <= 40
    assert min(len(e.solution) for e in long) >= 500


def test_jsonl_math_verify_equivalences(tmp_path):
    path = tmp_path / "t.jsonl"
    lines = [{"question": f"q{i}", "answer": "0.5"} for i in range(20)] + [{"question": "int", "answer": 42}]
    path.write_text("\n".join(json.dumps(r) for r in lines))
    task = get_task("jsonl", path=str(path))
    ex = next(e for e in task.examples if e.answer == "0.5")
    assert task.reward(ex, "|1/2") == 1.0
    assert task.reward(ex, "|\\frac{1}{2}") == 1.0
    assert task.reward(ex, "|0.6") == 0.0
    ex42 = next(e for e in task.examples if e.answer == "42")
    assert task.reward(ex42, "work|42.0") == 1.0


@pytest.mark.parametrize(
    "bad_line, problem",
    [
        (b'{"question": "q", "answer": "1"', "not valid JSON"),
        (b'{"question": "q"}', "missing field 'answer'"),
        (b'{"question": 3, "answer": "1"}', "must be strings"),
        (b'{"question": "q", "answer": "  "}', "empty answer"),
        (b'{"question": "q\xff", "answer": "1"}', "not valid UTF-8"),
        (b"[1, 2]", "expected a JSON object"),
        (b'{"question": "' + b"x" * (1 << 20) + b'", "answer": "1"}', "too long"),
        (b'{"question": "q", "answer": NaN}', "not a finite number"),
        (b'{"question": "q", "answer": Infinity}', "not a finite number"),
        (b'{"question": "q", "answer": -Infinity}', "not a finite number"),
        (b'{"question": "q", "answer": 1e400}', "not a finite number"),
    ],
)
def test_jsonl_bad_lines_name_the_line(tmp_path, bad_line, problem):
    good = [json.dumps({"question": f"q{i}", "answer": str(i)}).encode() for i in range(30)]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(good[:2] + [bad_line] + good[2:]) + b"\n")
    with pytest.raises(ValueError, match=f"line 3: .*{problem}"):
        get_task("jsonl", path=str(path))
    lenient = get_task("jsonl", path=str(path), lenient=True)
    assert [n for n, _ in lenient.skipped] == [3] and len(lenient.examples) == 30


def test_bad_task_input():
    with pytest.raises(ValueError, match="unknown task 'sudoku'; known: addition, chain, jsonl"):
        get_task("sudoku")
    with pytest.raises(ValueError, match="digits must be an int"):
        get_task("addition", digits=0)
    with pytest.raises(ValueError, match="steps must be an int"):
        get_task("chain", steps=-1)
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        get_task("jsonl", path="/nowhere.jsonl")
    with pytest.raises(ValueError, match="split must be"):
        get_task("addition").generate("test", 3, 0)
    assert set(TASKS) == {"addition", "chain", "jsonl", "reasoning_gym", "word_arithmetic"}


@pytest.mark.parametrize(
    "name, params, split, setting",
    [
        ("chain", {"steps": 1, "max_operand": 1}, "eval", "max_operand"),
        ("addition", {"digits": 1, "eval_fraction": 0.001}, "eval", "eval_fraction"),
        ("addition", {"digits": 1, "eval_fraction": 0.999}, "train", "eval_fraction"),
    ],
)
def test_unfillable_split_raises_at_once_naming_the_setting(name, params, split, setting):
    """A split that holds no problem of a small problem space used to loop forever."""
    import time

    start = time.perf_counter()
    with pytest.raises(ValueError, match=f"no problem in the {split} split.*{setting}"):
        get_task(name, **params).generate(split, 4, 0)
    assert time.perf_counter() - start < 5


def test_small_problem_spaces_know_their_split_sizes():
    # 1-digit addition: 81 problems; the split sizes add up and generate() stays inside each split
    task = get_task("addition", digits=1)
    train, held_out = task.split_size("train"), task.split_size("eval")
    assert train + held_out == 81 and held_out >= 1
    assert {e.prompt for e in task.generate("eval", 200, 0)} <= {
        f"{a}+{b}=" for a in range(1, 10) for b in range(1, 10)
    }
    assert len({e.prompt for e in task.generate("eval", 500, 0)}) == held_out
    assert get_task("addition", digits=3).split_size("eval") is None  # too many to enumerate: unknown


def test_jsonl_split_sizes(jsonl_file):
    task = get_task("jsonl", path=str(jsonl_file))
    assert task.split_size("train") + task.split_size("eval") == 40
    assert task.split_size("eval") == len({e.prompt for e in task.generate("eval", 100, 0)})
    assert get_task("chain", steps=1000).split_size("eval") is None  # a huge space is never listed


def _timed(fn, *args):
    import time

    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def test_jsonl_reward_finishes_in_bounded_time_from_any_thread(tmp_path):
    """``9^9^9`` against gold ``3`` made math-verify compute for ever; now it scores 0 within
    the deadline, in the main thread and in another one, and the timeout is counted."""
    import threading

    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps({"question": f"q{i}", "answer": "3"}) + "\n" for i in range(20)))
    task = get_task("jsonl", path=str(path), verify_timeout=1.0)
    ex = task.examples[0]
    assert task.reward(ex, "|3") == 1.0 and task.timeouts == 0
    reward, seconds = _timed(task.reward, ex, "|9^9^9")
    assert reward == 0.0 and task.timeouts == 1 and seconds < 1.0 + 3.5
    results = []
    thread = threading.Thread(target=lambda: results.append(_timed(task.reward, ex, "|9^9^9")))
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive() and results[0][0] == 0.0 and task.timeouts == 2
    worker = threading.Thread(target=lambda: results.append(task.reward(ex, "|6/2")))  # sympy still works there
    worker.start()
    worker.join(timeout=30)
    assert results[-1] == 1.0


def test_a_gold_answer_that_hangs_does_not_hang_later_scores(tmp_path):
    path = tmp_path / "t.jsonl"
    rows = [{"question": "slow", "answer": "9^9^9"}] + [{"question": f"q{i}", "answer": "7"} for i in range(20)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = get_task("jsonl", path=str(path), verify_timeout=1.0)
    ex = next(e for e in task.examples if e.answer == "9^9^9")
    with pytest.warns(UserWarning, match="takes over 1 s to check"):
        assert task.reward(ex, "|5") == 0.0
    for completion, expected in (("|4", 0.0), ("|9^9^9", 1.0)):  # compared as text, at once
        reward, seconds = _timed(task.reward, ex, completion)
        assert reward == expected and seconds < 0.5
    other = next(e for e in task.examples if e.answer == "7")
    assert task.reward(other, "|14/2") == 1.0  # the checker still serves the other examples
