"""Task basics: an example, the task interface and the registry."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property

__all__ = ["Example", "Task", "TASKS", "register_task", "get_task", "SEPARATOR"]

#: Separates the worked solution from the final answer in every task's completion.
SEPARATOR = "|"


@dataclass(frozen=True)
class Example:
    """One problem: the prompt, the gold answer and the worked completion (without EOS)."""

    prompt: str
    answer: str
    solution: str
    meta: dict = field(default_factory=dict, compare=False, hash=False)


def stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def in_eval_split(key: str, eval_fraction: float) -> bool:
    """Deterministic, seed-independent split: a problem is held out by a hash of its text."""
    return (stable_hash(key) % 10_000) < eval_fraction * 10_000


class Task:
    """A verifiable task: generate examples, extract and check final answers."""

    name = "task"
    #: A ``max_new_tokens`` that fits every worked solution (tasks with long solutions override it).
    max_response_tokens: int = 16
    #: Reward checks that ran out of time (and scored 0) so far; the trainer logs each step's count.
    timeouts: int = 0

    def generate(self, split: str, n: int, seed: int) -> list[Example]:
        raise NotImplementedError

    def held_out(self, n: int, seed: int) -> list[Example]:
        """``n`` held-out problems for evaluation; when the held-out split has fewer than ``n``
        distinct problems, the distinct ones drawn, with a warning naming ``eval_size`` (a
        problem counted twice would weigh twice in the accuracy)."""
        examples, size = self.generate("eval", n, seed), self.split_size("eval")
        if size is not None and size < n:
            examples = list({(e.prompt, e.answer): e for e in examples}.values())
            warnings.warn(
                f"eval_size={n} is larger than the held-out split of task {self.name!r} ({size} distinct "
                f"problems): evaluating on {len(examples)} distinct ones (lower eval_size, or add problems)",
                stacklevel=4,
            )
        return examples

    def worked_solutions(self, n: int = 256) -> list[str]:
        """Worked solutions to check a response budget against: ``n`` of the training split's
        (tasks that know their longest solution add it)."""
        return [e.solution for e in self.generate("train", n, 0)]

    def describe(self) -> dict:
        """What a run records about its data (``task.json`` in the run directory): the split sizes
        (``None`` when too many to count), and, for data read from a file, what was skipped."""
        return {"task": self.name, "train_problems": self.split_size("train"), "eval_problems": self.split_size("eval")}

    def answer_for(self, prompt: str) -> str | None:
        """The gold answer of ``prompt`` under this task (what a figure shows beside a logged group
        whose record does not store it), or ``None`` when the task cannot tell: the prompt is not
        one of its problems, or not in its format. Each task implements it."""
        return None

    def extract_answer(self, completion: str) -> str | None:
        """The text after the last separator, stripped; ``None`` if there is none."""
        if SEPARATOR not in completion:
            return None
        answer = completion.rsplit(SEPARATOR, 1)[1].strip()
        return answer or None

    def is_correct(self, example: Example, completion: str) -> bool:
        return self.extract_answer(completion) == example.answer

    def reward(self, example: Example, completion: str) -> float:
        """1.0 for a correct final answer, else 0.0 (never raises on odd model output)."""
        try:
            return 1.0 if self.is_correct(example, completion) else 0.0
        except Exception:
            return 0.0

    def format_reward(self, completion: str) -> float:
        """1.0 if the completion has the expected shape (a separator, then an answer)."""
        return 1.0 if self.extract_answer(completion) is not None else 0.0

    #: Problem spaces up to this many problems are listed once, so that each split's size is known.
    ENUMERATE_LIMIT = 100_000
    #: The settings that size the problem space, named in the error of a split that holds nothing.
    space_settings: str = ""
    eval_fraction: float = 0.1

    def problems(self) -> Iterable[str] | None:
        """Every prompt the task can draw, when there are at most :data:`ENUMERATE_LIMIT` of them
        (``None`` otherwise: the space is too large to list, and every split is far from empty)."""
        return None

    @cached_property
    def _split_sizes(self) -> dict[str, int] | None:
        prompts = self.problems()
        if prompts is None:
            return None
        held_out = sum(in_eval_split(p, self.eval_fraction) for p in prompts)
        total = sum(1 for _ in self.problems())
        return {"train": total - held_out, "eval": held_out}

    def split_size(self, split: str) -> int | None:
        """Distinct problems in ``split``, or ``None`` when the problem space is too large to count."""
        self._check_split(split, 1)
        sizes = self._split_sizes
        return None if sizes is None else sizes[split]

    def _draw(self, split: str, n: int, draw: Callable[[], tuple[str, Callable[[], Example]]]) -> list[Example]:
        """``n`` examples of ``split`` from ``draw() -> (prompt, build)``: prompts are drawn until
        ``n`` fall in the split (hashed), and only those are built. A split with no problem is an
        error at once, naming the settings to change, instead of a loop that never ends."""
        self._check_split(split, n)
        if self.split_size(split) == 0:
            sizes = self._split_sizes
            raise ValueError(
                f"task {self.name!r} has no problem in the {split} split: eval_fraction="
                f"{self.eval_fraction} holds out {sizes['eval']} of its {sum(sizes.values())} problems; "
                f"change eval_fraction or {self.space_settings or 'the task settings'}"
            )
        out, draws, limit = [], 0, 1_000_000 + 1000 * n
        while len(out) < n:
            prompt, build = draw()
            if in_eval_split(prompt, self.eval_fraction) == (split == "eval"):
                out.append(build())
            draws += 1
            if draws >= limit:  # a backstop: listed spaces are checked above, large ones fill their splits
                raise ValueError(
                    f"task {self.name!r}: {draws} problems drawn, {len(out)} of {n} in the {split} "
                    f"split; change eval_fraction or {self.space_settings or 'the task settings'}"
                )
        return out

    @staticmethod
    def _check_split(split: str, n: int) -> None:
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")


TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    TASKS[cls.name] = cls
    return cls


def get_task(name: str, **params) -> Task:
    """An instance of the registered task ``name`` with ``params``."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}")
    return TASKS[name](**params)


def check_int(name: str, value, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be an int {bound}, got {value!r}")
