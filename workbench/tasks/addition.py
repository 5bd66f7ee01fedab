"""Multi-digit addition, solved right to left with carries.

``357+486=`` → ``3c4c8|843``: each column's sum digit, ``c`` when a carry goes out, then the
separator and the sum. Compact so that a 1 M-parameter character model can learn it.
"""

from __future__ import annotations

import random
import re

from .base import SEPARATOR, Example, Task, check_int, register_task

_PROMPT = re.compile(r"(\d+)\+(\d+)=")


def addition_solution(a: int, b: int) -> str:
    da, db = str(a)[::-1], str(b)[::-1]
    steps, carry = [], 0
    for i in range(max(len(da), len(db))):
        s = int(da[i] if i < len(da) else 0) + int(db[i] if i < len(db) else 0) + carry
        carry = s // 10
        steps.append(f"{s % 10}{'c' if carry else ''}")
    if carry:
        steps.append("1")
    return "".join(steps) + SEPARATOR + str(a + b)


@register_task
class Addition(Task):
    """``digits``-digit addition (leading digit nonzero); 10% of problems held out for eval."""

    name = "addition"
    space_settings = "digits"

    def __init__(self, digits: int = 3, eval_fraction: float = 0.1):
        check_int("digits", digits, 1, 18)
        if not 0 < eval_fraction < 1:
            raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction!r}")
        self.digits, self.eval_fraction = digits, eval_fraction

    @property
    def _operands(self) -> range:
        return range(10 ** (self.digits - 1), 10**self.digits)

    def problems(self):
        ops = self._operands
        if len(ops) ** 2 > self.ENUMERATE_LIMIT:
            return None
        return (f"{a}+{b}=" for a in ops for b in ops)

    def worked_solutions(self, n: int = 256) -> list[str]:
        largest = self._operands[-1]  # 99...9 + 99...9: a carry out of every column, the longest solution
        return super().worked_solutions(n) + [addition_solution(largest, largest)]

    def answer_for(self, prompt: str) -> str | None:
        """The sum of an ``a+b=`` prompt (any number of digits)."""
        match = _PROMPT.fullmatch(prompt)
        return None if match is None else str(int(match[1]) + int(match[2]))

    def generate(self, split: str, n: int, seed: int) -> list[Example]:
        rng = random.Random(f"addition-{self.digits}-{split}-{seed}")
        lo, hi = self._operands[0], self._operands[-1]

        def draw():
            a, b = rng.randint(lo, hi), rng.randint(lo, hi)
            return f"{a}+{b}=", lambda: Example(f"{a}+{b}=", str(a + b), addition_solution(a, b), {"a": a, "b": b})

        return self._draw(split, n, draw)
