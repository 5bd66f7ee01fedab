"""A user's own problems: a JSONL file of ``{"question": ..., "answer": ...}`` lines.

The prompt is ``question + suffix`` (``suffix="\\n"`` by default); the worked completion is
the line's optional ``"solution"`` field (else nothing) followed by ``|`` and the answer.
GSM8K's answers are read as GSM8K writes them: in ``"... so 48 + 24 = 72.\\n#### 72"`` the answer
is the text after the last ``####`` (``72``) and the text before it, stripped, is the solution
(unless the line has its own ``"solution"``).

A line is refused (with ``lenient=True``: skipped and counted in ``skipped``), naming the file
and the line, when it is not one JSON object with a non-empty string ``question`` and answer
(a string or a finite number), when it holds a key twice, is nested too deeply to parse or is
longer than :data:`MAX_LINE_BYTES` (checked while reading: no more of a line is ever held), when
its answer contains the separator ``|`` (no completion could state it: the answer is read after
the last ``|``), and when its question was already given with a different answer on an earlier
line (the earlier line is kept). A question repeated with the same answer is kept twice.
Answers are checked with ``math-verify`` (the ecosystem's verifier: ``0.5`` equals ``1/2`` and
``\\frac{1}{2}``), falling back to an exact match of the stripped text when either side cannot be
parsed. Every check finishes within ``verify_timeout`` seconds, from any thread (see
:mod:`workbench.tasks.verifier`); one that runs out of time scores 0 and is counted in ``timeouts``.
"""

from __future__ import annotations

import json
import math
import random
import warnings
from pathlib import Path

from .base import SEPARATOR, Example, Task, in_eval_split, register_task
from .verifier import DEFAULT_TIMEOUT, verify

MAX_LINE_BYTES = 1 << 20  #: the longest line read (its newline included); longer ones are refused
#: Marks GSM8K's final answer: ``"<worked solution>\\n#### 72"``.
GSM8K_MARK = "####"
_CHUNK = 1 << 20  #: bytes read at a time while skipping the rest of a line that is too long


def _not_finite(token: str):
    raise ValueError(f"{token} is not a finite number (JSON numbers must be finite; quote it if it is meant as text)")


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    row = dict(pairs)
    if len(row) < len(pairs):
        seen = set()
        duplicate = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"duplicate key {duplicate!r} in one object (keep one)")
    return row


def _finite_float(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):
        raise ValueError(f"{token} is not a finite number (it overflows a float; quote it if it is meant as text)")
    return value


@register_task
class JsonlTask(Task):
    """Problems from ``path``; bad lines (see the module's docstring) raise naming the file and
    the line, or are skipped and counted in ``self.skipped`` with ``lenient=True``."""

    name = "jsonl"

    def __init__(
        self,
        path: str,
        lenient: bool = False,
        eval_fraction: float = 0.2,
        suffix: str = "\n",
        verify_timeout: float = DEFAULT_TIMEOUT,
    ):
        if (
            isinstance(verify_timeout, bool)
            or not isinstance(verify_timeout, (int, float))
            or not (0 < verify_timeout <= 600)
        ):
            raise ValueError(f"verify_timeout must be a number of seconds in (0, 600], got {verify_timeout!r}")
        self.verify_timeout, self.timeouts = float(verify_timeout), 0
        if not 0 < eval_fraction < 1:
            raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction!r}")
        if not isinstance(suffix, str):
            raise TypeError(f"suffix must be a string, got {type(suffix).__name__}")
        self.path, self.lenient, self.eval_fraction, self.suffix = Path(path), lenient, eval_fraction, suffix
        self.skipped: list[tuple[int, str]] = []
        self.examples = self._load()
        self._answers = {e.prompt: e.answer for e in self.examples}  # a question's answers all agree
        if self.skipped:
            first = ", ".join(f"line {number}: {problem}" for number, problem in self.skipped[:3])
            warnings.warn(
                f"{len(self.skipped)} bad line(s) of {self.path} skipped (lenient=True): {first}"
                f"{', ...' if len(self.skipped) > 3 else ''} (a run lists them all in its task.json)",
                stacklevel=3,
            )
        self.splits = {"train": [], "eval": []}
        for e in self.examples:
            self.splits["eval" if in_eval_split(e.prompt, eval_fraction) else "train"].append(e)
        for split, items in self.splits.items():
            if not items:
                raise ValueError(
                    f"{self.path}: the {split} split is empty ({len(self.examples)} usable lines); "
                    "add lines or change eval_fraction"
                )

    def _load(self) -> list[Example]:
        if self.path.is_dir():
            inside = sorted(p.name for p in self.path.glob("*.jsonl"))[:3]
            example = f" (it holds {', '.join(inside)})" if inside else ""
            raise IsADirectoryError(
                f"JSONL task file {str(self.path)!r} is a directory, not a JSONL file; pass the path of the file "
                f"itself{example}"
            )
        if not self.path.exists():
            raise FileNotFoundError(f"JSONL task file {str(self.path)!r} does not exist")
        if not self.path.is_file():
            raise ValueError(
                f"JSONL task file {str(self.path)!r} is not a regular file; pass the path of a .jsonl file"
            )
        out, first_line = [], {}  # prompt -> (line, answer) of the first line that asked it
        with open(self.path, "rb") as f:
            for number, raw in enumerate(_lines(f), start=1):
                try:
                    example = self._parse(raw, self.suffix)
                    if example is not None:
                        seen = first_line.setdefault(example.prompt, (number, example.answer))
                        if seen[1] != example.answer:
                            raise ValueError(
                                f"the question of line {seen[0]} again, with a different answer "
                                f"({example.answer[:40]!r}, not {seen[1][:40]!r}); keep one of the two lines"
                            )
                except ValueError as e:
                    if not self.lenient:
                        raise ValueError(f"{self.path}: line {number}: {e}") from None
                    self.skipped.append((number, str(e)))
                    continue
                if example is not None:
                    out.append(example)
        return out

    @staticmethod
    def _parse(raw: bytes | _TooLong, suffix: str = "\n") -> Example | None:
        if isinstance(raw, _TooLong) or len(raw) > MAX_LINE_BYTES:
            raise ValueError(f"line is too long ({len(raw)} bytes > {MAX_LINE_BYTES})")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("not valid UTF-8") from None
        if not text.strip():
            return None
        try:
            row = json.loads(
                text, parse_constant=_not_finite, parse_float=_finite_float, object_pairs_hook=_unique_keys
            )
        except json.JSONDecodeError as e:
            raise ValueError(f"not valid JSON ({e.msg})") from None
        except RecursionError:
            raise ValueError(
                "JSON nested too deeply to parse (over Python's recursion limit); flatten the line"
            ) from None
        if not isinstance(row, dict):
            raise ValueError(f"expected a JSON object, got {type(row).__name__}")
        for key in ("question", "answer"):
            if key not in row:
                raise ValueError(f"missing field {key!r}")
        question, answer = row["question"], row["answer"]
        if isinstance(answer, (int, float)) and not isinstance(answer, bool):
            answer = str(answer)
        if not isinstance(question, str) or not isinstance(answer, str):
            raise ValueError("fields 'question' and 'answer' must be strings (or a number for the answer)")
        solution = row.get("solution")
        if "solution" in row and not isinstance(solution, str):
            raise ValueError("field 'solution' must be a string")
        if GSM8K_MARK in answer:  # GSM8K: the worked solution, then "#### 72"
            worked, answer = answer.rsplit(GSM8K_MARK, 1)
            solution = worked.strip() if solution is None else solution
        answer = answer.strip()
        if not answer:
            raise ValueError("empty answer")
        if not question.strip():
            raise ValueError("empty question")
        if SEPARATOR in answer:
            raise ValueError(
                f"answer {answer[:40]!r} contains {SEPARATOR!r}, the separator a completion states its answer "
                f"after, so no completion could match it; remove the {SEPARATOR!r} from the answer"
            )
        return Example(question + suffix, answer, (solution or "") + SEPARATOR + answer)

    def describe(self) -> dict:
        skipped = [{"line": number, "problem": problem} for number, problem in self.skipped]
        return {
            **super().describe(),
            "path": str(self.path),
            "examples": len(self.examples),
            "skipped_lines": len(skipped),
            "skipped": skipped,
        }

    def answer_for(self, prompt: str) -> str | None:
        """The file's answer to the question of ``prompt`` (``question + suffix``)."""
        return self._answers.get(prompt)

    def split_size(self, split: str) -> int:
        self._check_split(split, 1)
        return len(self.splits[split])

    def generate(self, split: str, n: int, seed: int) -> list[Example]:
        """``n`` examples of the split, shuffled by ``seed`` (cycled when ``n`` exceeds it)."""
        self._check_split(split, n)
        pool = self.splits[split]
        rng = random.Random(f"jsonl-{split}-{seed}")
        out = []
        while len(out) < n:
            order = pool[:]
            rng.shuffle(order)
            out.extend(order[: n - len(out)])
        return out

    def is_correct(self, example: Example, completion: str) -> bool:
        answer = self.extract_answer(completion)
        if answer is None:
            return False
        equal, timed_out = verify(example.answer, answer, self.verify_timeout)
        self.timeouts += timed_out
        return equal


class _TooLong:
    """A line longer than :data:`MAX_LINE_BYTES`, read past without being held: only its length."""

    def __init__(self, length: int):
        self.length = length

    def __len__(self) -> int:
        return self.length


def _lines(f):
    """The lines of binary file ``f``, each read with at most ``MAX_LINE_BYTES + 1`` bytes held: a
    longer line is read through in bounded chunks and yielded as a :class:`_TooLong`."""
    while True:
        line = f.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        if len(line) <= MAX_LINE_BYTES or line.endswith(b"\n"):
            yield line
            continue
        length = len(line)
        del line
        while True:
            chunk = f.readline(_CHUNK)
            length += len(chunk)
            if not chunk or chunk.endswith(b"\n"):
                break
        yield _TooLong(length)
