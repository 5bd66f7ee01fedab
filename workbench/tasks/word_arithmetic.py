"""Arithmetic asked in words and answered in free text: a task for a real instruct model.

``What is 7 plus 5? Give the answer as a number.`` → any reply whose final answer is 12. The
answer is read the way a person reads a reply, in this order: the last ``\\boxed{...}``; else
the last "the answer is ..." (also "answer: ...", "answer = ..."; when an expression follows,
its value: "the answer is: 7 + 5 = 12"); else the last number in the reply (``7 + 5 = 12.``).
Numbers may carry thousands separators or a zero fraction (``1,234``, ``12.0``). Number words
(``seven``, ``twenty-one``) count after "the answer is", and as the final number only in a
reply without any digits (``Three plus four is seven.``), since words such as "one" also appear
in ordinary text. Prompts are plain questions; the trainer wraps them in the model's chat
template. Every reward is a few regular-expression scans of a bounded text: linear time.
"""

from __future__ import annotations

import random
import re
import warnings
from fractions import Fraction

from .base import Example, Task, check_int, in_eval_split, register_task

#: Question templates per operation; ``{a}`` and ``{b}`` are the operands.
TEMPLATES = {
    "+": ("What is {a} plus {b}?", "What is the sum of {a} and {b}?", "Add {a} and {b}."),
    "-": ("What is {a} minus {b}?", "Subtract {b} from {a}.", "What is {b} less than {a}?"),
    "*": ("What is {a} times {b}?", "What is the product of {a} and {b}?", "Multiply {a} by {b}."),
}
#: ``phrasings="varied"``: the default phrasings and more, all of them trained on.
VARIED_TEMPLATES = {
    "+": TEMPLATES["+"]
    + ("Calculate {a} + {b}.", "What do you get when you add {a} and {b}?", "{a} plus {b} equals what?"),
    "-": TEMPLATES["-"]
    + ("Calculate {a} - {b}.", "What do you get when you take {b} away from {a}?", "{a} minus {b} equals what?"),
    "*": TEMPLATES["*"]
    + ("Calculate {a} × {b}.", "What do you get when you multiply {a} by {b}?", "{a} times {b} equals what?"),
}
#: ``phrasings="varied"``: phrasings never trained on, in the eval split only (a word problem, a
#: "find" and a "how much"), to tell arithmetic learned from a template fitted.
HELD_OUT_TEMPLATES = {
    "+": (
        "Sam has {a} apples and gets {b} more. How many apples does Sam have now?",
        "Find the total of {a} and {b}.",
        "How much is {a} added to {b}?",
    ),
    "-": (
        "Sam has {a} apples and gives {b} away. How many apples are left?",
        "Find the difference when {b} is taken from {a}.",
        "How much is {a} take away {b}?",
    ),
    "*": (
        "There are {a} boxes with {b} apples in each. How many apples are there in all?",
        "Find {a} groups of {b}.",
        "How much is {a} multiplied by {b}?",
    ),
}
#: The phrasing groups of ``phrasings="varied"`` (``Example.meta["phrasing"]``).
PHRASING_GROUPS = ("train", "held_out")
SYMBOLS = {"+": "+", "-": "-", "*": "×"}
#: Appended to every question by default: it keeps replies short enough to finish within 64 tokens.
INSTRUCTION = "Give the answer as a number."

_UNITS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen"
).split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
WORD_VALUES = {w: i for i, w in enumerate(_UNITS)} | {w: 20 + 10 * i for i, w in enumerate(_TENS)}


def number_words(n: int) -> str:
    """``n`` in [0, 999] written in English words (``21`` → ``twenty-one``)."""
    if not 0 <= n < 1000:
        raise ValueError(f"number_words covers 0..999, got {n}")
    if n >= 100:
        rest = n % 100
        return f"{_UNITS[n // 100]} hundred" + (f" and {number_words(rest)}" if rest else "")
    if n < 20:
        return _UNITS[n]
    return _TENS[n // 10 - 2] + (f"-{_UNITS[n % 10]}" if n % 10 else "")


_DIGITS = r"[-−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_UNIT = "|".join(sorted(_UNITS, key=len, reverse=True))  # longest first: "seventeen" before "seven"
_BELOW_100 = rf"(?:(?:{'|'.join(_TENS)})(?:[-\s](?:{'|'.join(_UNITS[1:10])}))?|{_UNIT})"
_WORDS = rf"(?:(?:{'|'.join(_UNITS[1:10])})\s+hundred(?:\s+(?:and\s+)?{_BELOW_100})?|{_BELOW_100})"
_NUMBER_RE = re.compile(rf"(?<![\w.]){_DIGITS}(?!\d)")
_WORD_RE = re.compile(rf"\b{_WORDS}\b", re.IGNORECASE)
_BOXED_RE = re.compile(r"\\boxed\s*\{([^{}]*(?:\{[^{}]*\}[^{}]*)*)\}")
#: After "the answer is": a number, or an expression whose value comes last ("7 + 5 = 12"), or words.
_EXPRESSION = rf"{_DIGITS}(?:\s*[-+*/×x÷=]\s*{_DIGITS})*(?!\d)"
#: Between "answer is" and the answer: blanks, at most one ``:`` or ``=``, then blanks, ``*``, ``$``,
#: ``\`` and ``(``. Written so that a run of blanks can be split between quantifiers in one way only
#: (``\s*[:=]?[\s*$\\(]*`` split it in quadratically many before a failing match: 64 s for
#: 10,000 spaces); it matches the same texts.
_LEAD_IN = r"(?:\s*[:=])?[\s*$\\(]*"
_ANSWER_RE = re.compile(
    rf"\banswer\s*(?:is|was|would be|will be|:|=){_LEAD_IN}({_EXPRESSION}|{_WORDS}\b)", re.IGNORECASE
)
#: Replies are bounded by max_new_tokens; a longer text is read from its last characters only.
MAX_CHARS = 20_000


def parse_number(text: str) -> Fraction | None:
    """The value of one number written in digits (``-1,234.50``) or words (``twenty-one``)."""
    text = text.strip().replace("−", "-").replace(",", "")
    if not text:
        return None
    try:
        return Fraction(text)
    except ValueError:
        pass
    words = re.findall(r"[a-z]+", text.lower())
    if not words or any(w not in WORD_VALUES and w not in ("hundred", "and") for w in words):
        return None
    total = 0
    for w in words:
        if w == "hundred":
            total = (total or 1) * 100
        elif w != "and":
            total += WORD_VALUES[w]
    return Fraction(total)


def _last_number(text: str, *, words: bool) -> Fraction | None:
    found = [m.group(0) for m in _NUMBER_RE.finditer(text)]
    if not found and words:
        found = [m.group(0) for m in _WORD_RE.finditer(text)]
    for candidate in reversed(found):
        value = parse_number(candidate)
        if value is not None:
            return value
    return None


def extract_final_answer(completion: str) -> Fraction | None:
    """The final answer of a free-text reply (``\\boxed{}``, then "the answer is", then the last
    number), or ``None`` when the reply states no number."""
    text = completion[-MAX_CHARS:]
    boxed = _BOXED_RE.findall(text)
    if boxed:
        return _last_number(boxed[-1], words=True)
    stated = [m.group(1) for m in _ANSWER_RE.finditer(text)]
    if stated:
        return _last_number(stated[-1], words=True)
    return _last_number(text, words=True)


def _format(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else str(float(value))


@register_task
class WordArithmetic(Task):
    """Questions such as "What is 7 plus 5?" over ``ops`` with operands in [``min_operand``,
    ``max_operand``] (subtraction never goes below zero), followed by ``instruction``;
    ``operand_words=True`` writes the operands as words ("seven plus five"). The defaults (single
    digits, ``+-*``) put SmolLM2-135M-Instruct's accuracy sampled at temperature 1 in the range
    where RL has signal (measured in ``data/results/smollm2/difficulty.json``).

    Phrasings. ``phrasings="default"`` (today's task, unchanged: the stored studies ran it) asks
    each problem in three phrasings per operation (:data:`TEMPLATES`) and holds out a question by
    a hash of its text (``eval_fraction``), so a held-out question may share its operands with a
    trained one in another phrasing. ``phrasings="varied"`` tells arithmetic learned from a
    template fitted: problems (operation and operands) are held out by a hash of the problem, so a
    held-out problem is held out in every phrasing; training uses the six phrasings per operation of
    :data:`VARIED_TEMPLATES`, and the eval split asks each held-out problem in those and in the three
    of :data:`HELD_OUT_TEMPLATES`, which are never trained on. Every example of a varied task has
    ``meta["phrasing"]``: ``"train"`` (a trained phrasing) or ``"held_out"`` (a held-out phrasing,
    eval only), and ``meta["template"]``; report accuracy per group by grouping the eval examples
    on ``meta["phrasing"]``. :meth:`held_out_by_phrasing` gives ``n`` held-out examples of each
    group; ``generate``/``split_size`` take ``phrasing=`` to draw or count one group.

    The splits are disjoint and the same for every seed; both are enumerated, so
    :meth:`split_size` is exact."""

    name = "word_arithmetic"
    #: Tokens that fit the worked solution of every problem with room to spare ("7 × 5 = 35. The answer is 35.").
    max_response_tokens = 48

    def __init__(
        self,
        ops: str = "+-*",
        min_operand: int = 1,
        max_operand: int = 9,
        operand_words: bool = False,
        instruction: str = INSTRUCTION,
        eval_fraction: float = 0.25,
        phrasings: str = "default",
    ):
        if not isinstance(ops, str) or not ops or set(ops) - set(TEMPLATES) or len(set(ops)) != len(ops):
            raise ValueError(f"ops must be a non-empty string of distinct operations from '+-*', got {ops!r}")
        check_int("min_operand", min_operand, 0, 999)
        check_int("max_operand", max_operand, min_operand, 999)
        if not isinstance(operand_words, bool):
            raise TypeError(f"operand_words must be a bool, got {operand_words!r}")
        if not isinstance(instruction, str):
            raise TypeError(f"instruction must be a string, got {type(instruction).__name__}")
        if not 0 < eval_fraction < 1:
            raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction!r}")
        if phrasings not in ("default", "varied"):
            raise ValueError(f"phrasings must be 'default' or 'varied', got {phrasings!r}")
        self.instruction = instruction.strip()
        self.ops, self.min_operand, self.max_operand = ops, min_operand, max_operand
        self.operand_words, self.eval_fraction, self.phrasings = operand_words, eval_fraction, phrasings
        self.splits: dict[str, list[Example]] = {"train": [], "eval": []}
        if phrasings == "default":
            for example in self._problems(TEMPLATES):
                self.splits["eval" if in_eval_split(example.prompt, eval_fraction) else "train"].append(example)
        else:
            for (op, a, b), examples in self._varied_problems():
                held_out = in_eval_split(f"{a} {op} {b}", eval_fraction)  # the problem, whatever its phrasing
                self.splits["eval" if held_out else "train"] += [
                    e for e in examples if held_out or e.meta["phrasing"] == "train"
                ]
        self._answers = {e.prompt: e.answer for examples in self.splits.values() for e in examples}
        self._groups = {
            (split, group): [e for e in examples if e.meta.get("phrasing") == group]
            for split, examples in self.splits.items()
            for group in PHRASING_GROUPS
        }

    def _example(self, op: str, a: int, b: int, template: str, meta: dict) -> Example:
        show = number_words if self.operand_words else str
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
        prompt = " ".join(filter(None, (template.format(a=show(a), b=show(b)), self.instruction)))
        solution = f"{a} {SYMBOLS[op]} {b} = {value}. The answer is {value}."
        return Example(prompt, str(value), solution, {"op": op, "a": a, "b": b, **meta})

    def _operands(self, op: str):
        span = range(self.min_operand, self.max_operand + 1)
        return ((a, b) for a in span for b in span if op != "-" or b <= a)

    def _problems(self, templates):
        for op in self.ops:
            for a, b in self._operands(op):
                for template in templates[op]:
                    yield self._example(op, a, b, template, {})

    def _varied_problems(self):
        for op in self.ops:
            for a, b in self._operands(op):
                phrased = [(t, "train") for t in VARIED_TEMPLATES[op]] + [
                    (t, "held_out") for t in HELD_OUT_TEMPLATES[op]
                ]
                yield (op, a, b), [self._example(op, a, b, t, {"phrasing": g, "template": t}) for t, g in phrased]

    def _pool(self, split: str, phrasing: str | None) -> list[Example]:
        if phrasing is None:
            return self.splits[split]
        if self.phrasings != "varied":
            raise ValueError("phrasing groups exist only with phrasings='varied' (this task has phrasings='default')")
        if phrasing not in PHRASING_GROUPS:
            raise ValueError(f"phrasing must be 'train' or 'held_out', got {phrasing!r}")
        if split == "train" and phrasing == "held_out":
            raise ValueError("held-out phrasings are in the eval split only (never trained on): use split='eval'")
        return self._groups[(split, phrasing)]

    def split_size(self, split: str, phrasing: str | None = None) -> int:
        """How many distinct problems the split holds (those of one phrasing group with ``phrasing``)."""
        self._check_split(split, 1)
        return len(self._pool(split, phrasing))

    def generate(self, split: str, n: int, seed: int, phrasing: str | None = None) -> list[Example]:
        """``n`` problems of the split (of its ``phrasing`` group, with ``phrasings="varied"``) in an
        order shuffled by ``seed``; distinct while ``n`` is at most :meth:`split_size`, then the
        split again in a new order."""
        self._check_split(split, n)
        pool = self._pool(split, phrasing)
        if not pool:
            raise ValueError(
                f"no problem in the {split} split of word_arithmetic (ops={self.ops!r}, operands "
                f"{self.min_operand}..{self.max_operand}, eval_fraction={self.eval_fraction}): widen "
                "the operand range (max_operand) or change eval_fraction"
            )
        rng = random.Random(f"word_arithmetic-{split}-{seed}" + ("" if phrasing is None else f"-{phrasing}"))
        out: list[Example] = []
        while len(out) < n:
            order = pool[:]
            rng.shuffle(order)
            out.extend(order[: n - len(out)])
        return out

    def held_out_by_phrasing(self, n: int, seed: int) -> dict[str, list[Example]]:
        """``{"train": ..., "held_out": ...}``: ``n`` distinct held-out examples in trained phrasings
        and ``n`` in held-out ones (``phrasings="varied"`` only); a group with fewer than ``n`` gives
        all of its own, with a warning."""
        out = {}
        for group in PHRASING_GROUPS:
            size = self.split_size("eval", group)
            if 0 < size < n:
                warnings.warn(
                    f"n={n} is larger than the held-out phrasing group {group!r} of word_arithmetic ({size} distinct "
                    f"problems): {size} of them (lower n, or widen the operand range)",
                    stacklevel=2,
                )
            out[group] = self.generate("eval", min(n, size) or n, seed, phrasing=group)
        return out

    def describe(self) -> dict:
        info = super().describe()
        if self.phrasings == "varied":
            info["phrasings"] = "varied"
            info["eval_problems_by_phrasing"] = {g: self.split_size("eval", g) for g in PHRASING_GROUPS}
        return info

    def answer_for(self, prompt: str) -> str | None:
        """The answer of one of the task's questions (``None`` for any other text)."""
        return self._answers.get(prompt)

    def extract_answer(self, completion: str) -> str | None:
        value = extract_final_answer(completion)
        return None if value is None else _format(value)

    def is_correct(self, example: Example, completion: str) -> bool:
        value = extract_final_answer(completion)
        return value is not None and value == Fraction(example.answer)
