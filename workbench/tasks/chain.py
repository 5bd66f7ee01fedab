"""A chain of ``steps`` arithmetic operations evaluated left to right, modulo 100.

``7+3*2-5=`` → ``7+3=10;10*2=20;20-5=15;|15``. Every value is kept in [0, 100) (results are
taken modulo 100), so each step is at most 9 characters: ``steps`` is the dial from short
(4 steps ≈ 30 characters of reasoning) to long (70 steps ≥ 500).
"""

from __future__ import annotations

import itertools
import random
import re

from .base import SEPARATOR, Example, Task, check_int, register_task

OPS = "+-*"
_PROMPT = re.compile(r"\d+(?:[+*-]\d+)+=")


def chain_solution(start: int, ops: list[tuple[str, int]]) -> tuple[str, int]:
    value, parts = start, []
    for op, x in ops:
        new = {"+": value + x, "-": value - x, "*": value * x}[op] % 100
        parts.append(f"{value}{op}{x}={new};")
        value = new
    return "".join(parts) + SEPARATOR + str(value), value


@register_task
class Chain(Task):
    """Left-to-right chains of ``steps`` operations on operands in [1, max_operand], modulo 100."""

    name = "chain"
    space_settings = "steps or max_operand"

    def __init__(self, steps: int = 4, max_operand: int = 9, eval_fraction: float = 0.1):
        check_int("steps", steps, 1, 1000)
        check_int("max_operand", max_operand, 1, 99)
        if not 0 < eval_fraction < 1:
            raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction!r}")
        self.steps, self.max_operand, self.eval_fraction = steps, max_operand, eval_fraction

    @property
    def max_response_tokens(self) -> int:
        """Characters (= tokens of the character-level tokenizer) of the longest worked
        solution, EOS included: ``9`` per step (``99*99=1;``), then ``|`` and two digits."""
        return 9 * self.steps + 4

    def problems(self):
        m = self.max_operand
        if m * (len(OPS) * m) ** self.steps > self.ENUMERATE_LIMIT:  # exact integers, however large
            return None
        step = list(itertools.product(OPS, range(1, m + 1)))
        return (_prompt(start, ops) for start in range(1, m + 1) for ops in itertools.product(step, repeat=self.steps))

    def answer_for(self, prompt: str) -> str | None:
        """The left-to-right value modulo 100 of a ``7+3*2-5=`` prompt (any length, any operands)."""
        if not _PROMPT.fullmatch(prompt):
            return None
        parts = re.findall(r"([+*-]?)(\d+)", prompt)
        value = int(parts[0][1])
        for op, x in parts[1:]:
            value = {"+": value + int(x), "-": value - int(x), "*": value * int(x)}[op] % 100
        return str(value)

    def generate(self, split: str, n: int, seed: int) -> list[Example]:
        rng = random.Random(f"chain-{self.steps}-{self.max_operand}-{split}-{seed}")

        def draw():
            start = rng.randint(1, self.max_operand)
            ops = [(rng.choice(OPS), rng.randint(1, self.max_operand)) for _ in range(self.steps)]
            prompt = _prompt(start, ops)

            def build():
                solution, value = chain_solution(start, ops)
                return Example(prompt, str(value), solution, {"steps": self.steps})

            return prompt, build

        return self._draw(split, n, draw)


def _prompt(start: int, ops) -> str:
    return f"{start}" + "".join(f"{op}{x}" for op, x in ops) + "="
