"""Verifiable reasoning tasks: plain data and rewards, usable without a model.

``get_task(name, **params)`` builds one: ``addition`` (digits), ``chain`` (steps, the
long-CoT dial) and ``jsonl`` (a user's file, checked with math-verify).
"""

from . import addition, chain, jsonl, word_arithmetic  # noqa: F401  (register the tasks)
from .addition import Addition, addition_solution
from .base import SEPARATOR, TASKS, Example, Task, get_task, register_task
from .chain import Chain, chain_solution
from .jsonl import JsonlTask

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
    "addition_solution",
    "chain_solution",
]
