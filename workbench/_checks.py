"""Argument checks shared by the public tensor functions.

Every check raises ``TypeError`` or ``ValueError`` with a message that names the argument
and the problem, so that bad input never turns into a silent NaN.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


def tensor(name: str, value, *, min_dim: int = 0) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimension(s), got shape {tuple(value.shape)}")
    return value


def mask(name: str, value, shape: torch.Size | tuple) -> torch.Tensor:
    """A bool or 0/1 mask of exactly ``shape``; returned as bool."""
    value = tensor(name, value)
    if tuple(value.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(value.shape)}, expected {tuple(shape)}")
    if value.dtype == torch.bool:
        return value
    if value.is_complex():
        raise TypeError(f"{name} must be bool or 0/1, got dtype {value.dtype}")
    if value.numel() and not bool(((value == 0) | (value == 1)).all()):
        raise ValueError(f"{name} must contain only 0 and 1 (or be bool)")
    return value != 0


def same_shape(names: Iterable[str], values: Iterable[torch.Tensor]) -> None:
    names, values = list(names), list(values)
    first = tuple(values[0].shape)
    for n, v in zip(names[1:], values[1:]):
        if tuple(v.shape) != first:
            raise ValueError(f"{n} has shape {tuple(v.shape)}, but {names[0]} has shape {first}")


def finite(name: str, value: torch.Tensor, where: torch.Tensor | None = None) -> None:
    """Raise if ``value`` holds NaN or Inf (only at positions where ``where`` is true)."""
    if not value.is_floating_point():
        return
    bad = ~torch.isfinite(value)
    if where is not None:
        bad = bad & where
    if bool(bad.any()):
        kind = "NaN" if bool((torch.isnan(value) & (where if where is not None else True)).any()) else "Inf"
        idx = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{name} contains {kind} (first at index {idx})")


def no_empty_rows(name: str, m: torch.Tensor) -> None:
    """Every response (last-dim row) of a bool mask must have at least one valid token."""
    if m.shape[-1] == 0:
        raise ValueError(f"{name} has no positions (last dimension is 0)")
    empty = ~m.any(-1)
    if bool(empty.any()):
        idx = tuple(int(i) for i in empty.nonzero()[0])
        raise ValueError(f"{name} has an empty row at index {idx}: every response needs at least one valid token")


def positive(name: str, value, *, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}")


def number(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite number, got {value!r}")


def choice(name: str, value, options: Iterable[str]) -> None:
    options = tuple(options)
    if value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}; got {value!r}")
