"""Problems from reasoning-gym (Apache-2.0): a library of procedurally generated, verifiable tasks.

``get_task("reasoning_gym", dataset="chain_sum", size=1000, seed=0)`` generates ``size`` problems
of one reasoning-gym dataset offline (``seed`` is reasoning-gym's: it picks the problems; a run's
own seed only orders them) and keeps the distinct questions; ``config`` passes the dataset's own
options (``{"min_terms": 2, "max_terms": 3}``). Problems are held out by a hash of the question
(``eval_fraction``), as in every task: the splits are disjoint, the same for every training seed
and for either answer format, and both are listed, so :meth:`split_size` is exact. The problems
are generated in a fresh child process with ``PYTHONHASHSEED=0``: six of reasoning-gym 0.1.25's
datasets (``polynomial_multiplication``, ``word_ladder``, ...) otherwise generate other problems in
every process. Needs the optional extra: ``pip install -e '.[tasks]'`` (``make install`` does it).

Prompts and completions. The prompt is the dataset's question, then ``instruction`` on a line of
its own when there is one, then a newline. With ``answer_format="separator"`` (the default) the
worked completion is ``|`` and the answer, like every workbench task's (what the character-level
model learns; reasoning-gym has no worked solutions); with ``answer_format="tags"`` it is
``<answer>...</answer>``, reasoning-gym's own convention, and the default instruction asks for it
(the format for an instruct model under its chat template: SmolLM2 knows tags, not ``|``).

A reply's answer is read the same way in either format: the text inside the last complete
``<answer>...</answer>`` pair; else the text after the last ``|``; else the rest of the line after
the last "the answer is" (also "answer:", "answer ="; without the quotes, ``**`` and full stop
around it: SmolLM2-135M-Instruct ignores the tags instruction and writes "The final answer is:
boss"); stripped; otherwise the reply has no answer (it scores 0, and 0 for ``format_reward``).
A last-number rule like ``word_arithmetic``'s is not used: answers here may be words, lists or
expressions. Only the last :data:`MAX_CHARS` characters of a reply are read (plain string
searches: linear time).

Scoring. The answer is scored by the dataset's own scorer (``score_answer``) in a child process
with a deadline (:mod:`workbench.tasks.bounded`): a scorer that has not answered within
``score_timeout`` seconds scores 0 and is counted in ``timeouts``. The reward is 1.0 when the
scorer gives full marks and 0.0 otherwise (the trainer's accuracy is the share of rewards above
0.5); ``partial_credit=True`` makes the reward the scorer's own score in [0, 1].
"""

from __future__ import annotations

import atexit
import json
import os
import random
import threading
import warnings

from .base import SEPARATOR, Example, Task, check_int, in_eval_split, register_task
from .bounded import BoundedChild

__all__ = ["ReasoningGym", "TAGS_INSTRUCTION", "EXTRA", "extract_tagged_or_separated"]

#: How to install what this task needs.
EXTRA = "pip install -e '.[tasks]' (or pip install reasoning-gym==0.1.25)"
#: The default instruction of ``answer_format="tags"``.
TAGS_INSTRUCTION = "Give only the final answer between <answer> and </answer> tags."
DEFAULT_TIMEOUT = 5.0  #: seconds a scorer may take before the reply scores 0
GENERATE_TIMEOUT = 120.0  #: seconds a child may take to import reasoning-gym and build a dataset
GENERATE_SECONDS_PER_PROBLEM = 0.05  #: and then to generate each problem
MAX_CHARS = 20_000  #: the end of a reply that is read for its answer
MAX_SIZE = 100_000  #: the most problems generated (all are generated, and listed, when the task is built)
_OPEN, _CLOSE = "<answer>", "</answer>"


#: Where a reply without tags or separator states its answer: the rest of the line after the last one.
STATED = ("answer is", "answer:", "answer =", "answer would be", "answer will be")
_WRAPPING = " \t*\"'`$:=" + "\u201c\u201d"  # around a stated answer ("**12**", "'sun'", ": 12")


def extract_tagged_or_separated(completion: str) -> str | None:
    """The answer of a reply: inside the last complete ``<answer>...</answer>``; else after the
    last ``|``; else the rest of the line after the last "answer is" (or "answer:", "answer =",
    any case), without the quotes, ``*``, ``$`` and final full stop around it; stripped; ``None``
    when there is none of these or it is empty. Plain string searches: linear time."""
    text = completion[-MAX_CHARS:]
    end = text.rfind(_CLOSE)
    start = text.rfind(_OPEN, 0, end) if end >= 0 else -1
    if start >= 0:
        answer = text[start + len(_OPEN) : end]
    elif SEPARATOR in text:
        answer = text.rsplit(SEPARATOR, 1)[1]
    else:
        lower = text.lower()
        at, marker = max((lower.rfind(m), m) for m in STATED)
        if at < 0:
            return None
        answer = text[at + len(marker) :].lstrip(_WRAPPING).split("\n", 1)[0].rstrip()
        answer = answer[:-1] if answer.endswith(".") else answer
        answer = answer.strip(_WRAPPING)
    return answer.strip() or None


def _check_installed() -> str:
    """reasoning-gym's version; a clear ``ImportError`` when it is missing (it is imported only in
    the child processes)."""
    import importlib.metadata
    import importlib.util

    if importlib.util.find_spec("reasoning_gym") is None:
        raise ImportError(f"task 'reasoning_gym' needs the reasoning-gym package: {EXTRA}")
    return importlib.metadata.version("reasoning-gym")


# ---------------------------------------------------------------------------- reasoning-gym, in a child

#: Problems are generated (and scored) in child processes with a fixed hash seed: isomorphic_strings,
#: knight_swap, list_functions, polynomial_multiplication, ransom_note and word_ladder generate other
#: problems under another ``PYTHONHASHSEED`` (measured on reasoning-gym 0.1.25). The scorer is sent
#: the generated entry itself (pickled), so it scores exactly the problem that was asked.
_ENV = {"PYTHONHASHSEED": "0"}

_CHILD = r"""
import base64, difflib, json, logging, pickle
logging.disable(logging.CRITICAL)
import reasoning_gym
from reasoning_gym.factory import DATASETS

_datasets = {}

def _dataset(spec):
    key = json.dumps(spec, sort_keys=True)
    if key not in _datasets:
        _datasets[key] = reasoning_gym.create_dataset(
            spec["dataset"], size=spec["size"], seed=spec["seed"], **spec["config"]
        )
    return _datasets[key]

def _pickled(entry):
    try:
        return base64.b64encode(pickle.dumps(entry)).decode()
    except Exception:
        return None

def _text(answer):
    return None if answer is None else str(answer)

def handle(req):
    spec, op = req["spec"], req["op"]
    if op == "generate":
        if spec["dataset"] not in DATASETS:
            return {"unknown": difflib.get_close_matches(spec["dataset"], DATASETS, n=3), "known": len(DATASETS)}
        try:
            dataset = _dataset(spec)
        except Exception as e:
            return {"bad_config": " ".join(f"{type(e).__name__}: {e}".split())[:300]}
        entries = (dataset[i] for i in range(spec["size"]))
        return {"problems": [[str(e["question"]), _text(e["answer"]), _pickled(e)] for e in entries]}
    key = json.dumps(spec, sort_keys=True)
    if op == "load":
        _dataset(spec)
        return {}
    if key not in _datasets:
        return {"unloaded": True}
    dataset = _datasets[key]
    if req["entry"] is not None:
        entry = pickle.loads(base64.b64decode(req["entry"]))
    else:  # an entry that did not pickle: built again
        entry = dataset[req["index"]]
        if ("" if entry["answer"] is None else str(entry["answer"])) != req["gold"]:
            return {"mismatch": str(entry["answer"])[:60]}
    return {"score": float(dataset.score_answer(req["answer"], entry))}
"""

_shared: BoundedChild | None = None
_shared_lock = threading.Lock()


def _child() -> BoundedChild:
    return BoundedChild(_CHILD, "reasoning-gym", f" (is reasoning-gym installed? {EXTRA})", env=_ENV)


def _scorer() -> BoundedChild:
    """This process's reasoning-gym scorer (a forked process starts its own)."""
    global _shared
    with _shared_lock:
        if _shared is None or _shared.pid != os.getpid():
            _shared = _child()
            atexit.register(_shared.close)
        return _shared


# ---------------------------------------------------------------------------- the task


@register_task
class ReasoningGym(Task):
    """One reasoning-gym ``dataset``: ``size`` problems generated with ``seed`` (and ``config``),
    ``eval_fraction`` of them held out by a hash of the question; answers in ``answer_format``
    (``"separator"`` or ``"tags"``), scored by reasoning-gym within ``score_timeout`` seconds
    (see the module's docstring)."""

    name = "reasoning_gym"
    space_settings = "size"

    def __init__(
        self,
        dataset: str,
        size: int = 1000,
        seed: int = 0,
        config: dict | None = None,
        eval_fraction: float = 0.2,
        answer_format: str = "separator",
        instruction: str | None = None,
        partial_credit: bool = False,
        score_timeout: float = DEFAULT_TIMEOUT,
    ):
        if not isinstance(dataset, str):
            raise TypeError(f"dataset must be the name of a reasoning-gym dataset, got {dataset!r}")
        check_int("size", size, 1, MAX_SIZE)
        check_int("seed", seed, 0, 2**32 - 1)
        config = {} if config is None else config
        if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
            raise TypeError(f"config must be a dict of the dataset's options, got {config!r}")
        try:
            config = json.loads(json.dumps(config))
        except (TypeError, ValueError):
            raise TypeError(
                f"config must hold JSON values only (it is written to config.json), got {config!r}"
            ) from None
        if clash := {"size", "seed"} & set(config):
            raise ValueError(f"config must not set {', '.join(sorted(clash))}: pass them as the task's own parameters")
        if not 0 < eval_fraction < 1:
            raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction!r}")
        if answer_format not in ("separator", "tags"):
            raise ValueError(f"answer_format must be 'separator' or 'tags', got {answer_format!r}")
        if instruction is not None and not isinstance(instruction, str):
            raise TypeError(f"instruction must be a string or None, got {type(instruction).__name__}")
        if not isinstance(partial_credit, bool):
            raise TypeError(f"partial_credit must be a bool, got {partial_credit!r}")
        if (
            isinstance(score_timeout, bool)
            or not isinstance(score_timeout, (int, float))
            or not 0 < score_timeout <= 600
        ):
            raise ValueError(f"score_timeout must be a number of seconds in (0, 600], got {score_timeout!r}")
        self.dataset, self.size, self.seed, self.config = dataset, size, seed, config
        self.eval_fraction, self.answer_format, self.partial_credit = eval_fraction, answer_format, partial_credit
        self.instruction = (TAGS_INSTRUCTION if answer_format == "tags" else "") if instruction is None else instruction
        self.score_timeout, self.timeouts, self._warned = float(score_timeout), 0, False
        self.examples = self._generate_all()
        self._by_prompt = {e.prompt: e for e in self.examples}
        self.splits: dict[str, list[Example]] = {"train": [], "eval": []}
        for e in self.examples:
            self.splits["eval" if in_eval_split(e.meta["question"], eval_fraction) else "train"].append(e)
        for split, items in self.splits.items():
            if not items:
                raise ValueError(
                    f"reasoning_gym dataset {dataset!r}: the {split} split is empty ({len(self.examples)} distinct "
                    "problems); raise size or change eval_fraction"
                )

    @property
    def _spec(self) -> dict:
        return {"dataset": self.dataset, "size": self.size, "seed": self.seed, "config": self.config}

    def _generate_all(self) -> list[Example]:
        """Every problem, generated in a fresh child process (with a fixed hash seed, and no state
        left from other datasets: the same problems in every process and every run)."""
        self.version = _check_installed()
        child = _child()
        seconds = GENERATE_TIMEOUT + GENERATE_SECONDS_PER_PROBLEM * self.size
        try:
            reply = child.ask({"spec": self._spec, "op": "generate"}, seconds)
        finally:
            child.close()
        if reply["status"] == "timeout":
            raise ValueError(
                f"reasoning_gym dataset {self.dataset!r}: generating {self.size} problems took over {seconds:g} s; "
                "lower size"
            )
        if reply["status"] != "ok":
            raise RuntimeError(f"reasoning_gym dataset {self.dataset!r}: reasoning-gym failed: {reply.get('error')}")
        if "unknown" in reply:
            close = reply["unknown"]
            hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
            raise ValueError(
                f"unknown reasoning-gym dataset {self.dataset!r}; {hint}the {reply['known']} names are "
                "reasoning_gym.factory.DATASETS"
            )
        if "bad_config" in reply:
            raise ValueError(f"reasoning_gym dataset {self.dataset!r} with config {self.config}: {reply['bad_config']}")
        out, seen, self._entries = [], set(), {}
        for index, (question, answer, entry) in enumerate(reply["problems"]):
            if question in seen:
                continue
            seen.add(question)
            answer = "" if answer is None else str(answer)
            if self.answer_format == "separator" and SEPARATOR in answer:
                raise ValueError(
                    f"reasoning_gym dataset {self.dataset!r}: the answer {answer[:40]!r} (problem {index}) contains "
                    f"{SEPARATOR!r}, which answer_format='separator' reads answers after; use answer_format='tags'"
                )
            prompt = question.rstrip() + (f"\n{self.instruction}" if self.instruction else "") + "\n"
            solution = f"{_OPEN}{answer}{_CLOSE}" if self.answer_format == "tags" else SEPARATOR + answer
            self._entries[index] = entry
            out.append(
                Example(prompt, answer, solution, {"dataset": self.dataset, "index": index, "question": question})
            )
        return out

    @property
    def max_response_tokens(self) -> int:
        """Characters (at least the tokens) of the longest worked solution, with the end token."""
        return max(16, max(len(e.solution) for e in self.examples) + 1)

    def split_size(self, split: str) -> int:
        self._check_split(split, 1)
        return len(self.splits[split])

    def generate(self, split: str, n: int, seed: int) -> list[Example]:
        """``n`` problems of the split in an order shuffled by ``seed`` (cycled when ``n`` exceeds it)."""
        self._check_split(split, n)
        pool = self.splits[split]
        rng = random.Random(f"reasoning_gym-{self.dataset}-{split}-{seed}")
        out: list[Example] = []
        while len(out) < n:
            order = pool[:]
            rng.shuffle(order)
            out.extend(order[: n - len(out)])
        return out

    def describe(self) -> dict:
        return {
            **super().describe(),
            **self._spec,
            "answer_format": self.answer_format,
            "distinct_problems": len(self.examples),
            "reasoning_gym_version": self.version,
        }

    def answer_for(self, prompt: str) -> str | None:
        example = self._by_prompt.get(prompt)
        return example.answer if example is not None and example.answer else None

    # ------------------------------------------------------------------ scoring

    def extract_answer(self, completion: str) -> str | None:
        return extract_tagged_or_separated(completion)

    def score(self, example: Example, completion: str) -> float:
        """reasoning-gym's score in [0, 1] of ``completion``'s answer (0 without one, or when the
        scorer ran out of time: counted in ``timeouts``)."""
        answer = self.extract_answer(completion)
        if answer is None:
            return 0.0
        index = example.meta["index"]
        request = {"op": "score", "spec": self._spec, "index": index, "gold": example.answer, "answer": answer}
        request["entry"] = self._entries.get(index)
        child = _scorer()
        with child.lock:
            reply = child.ask(request, self.score_timeout)
            if reply.get("unloaded"):  # a new child: import reasoning-gym and build the dataset first
                loaded = child.ask({"op": "load", "spec": self._spec}, GENERATE_TIMEOUT)
                reply = child.ask(request, self.score_timeout) if loaded["status"] == "ok" else loaded
        if reply["status"] == "timeout":
            self.timeouts += 1
            return 0.0
        if "mismatch" in reply and not self._warned:
            self._warned = True
            warnings.warn(
                f"reasoning-gym rebuilt problem {index} of {self.dataset!r} with another answer "
                f"({reply['mismatch']!r}, not {example.answer[:60]!r}): such replies score 0",
                stacklevel=3,
            )
        score = reply.get("score")
        return min(max(float(score), 0.0), 1.0) if isinstance(score, (int, float)) and score == score else 0.0

    def reward(self, example: Example, completion: str) -> float:
        try:
            score = self.score(example, completion)
        except Exception:
            return 0.0
        return score if self.partial_credit else float(score >= 1.0)

    def is_correct(self, example: Example, completion: str) -> bool:
        return self.score(example, completion) >= 1.0
