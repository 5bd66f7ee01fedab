"""Verifiable reasoning tasks: plain data and rewards, usable without a model.

``get_task(name, **params)`` builds one: ``addition`` (digits), ``chain`` (steps, the
long-CoT dial), ``jsonl`` (a user's file, checked with math-verify), ``word_arithmetic`` (questions
in words, for real instruct models) and ``reasoning_gym`` (a dataset of the reasoning-gym library,
scored by its own scorers; the optional extra ``.[tasks]``).
"""

from . import addition, chain, jsonl, reasoning_gym_task, word_arithmetic  # noqa: F401  (register the tasks)
from .addition import Addition, addition_solution
from .base import SEPARATOR, TASKS, Example, Task, get_task, register_task
from .chain import Chain, chain_solution
from .jsonl import JsonlTask
from .reasoning_gym_task import ReasoningGym

__all__ = [
    "SEPARATOR",
    "TASKS",
    "Example",
    "Task",
    "get_task",
    "register_task",
    "Addition",
    "Chain",
    "JsonlTask",
    "ReasoningGym",
    "addition_solution",
    "chain_solution",
]
