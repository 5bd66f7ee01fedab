"""Reward terms added to the outcome reward before advantages: DAPO's overlong shaping and GROP.

Both take response lengths (in tokens) and return a penalty (``<= 0``) of the same shape, to
be added to the rewards.
"""

from __future__ import annotations

import torch

from . import _checks

__all__ = ["overlong_penalty", "grop_penalty"]


def _lengths(lengths) -> torch.Tensor:
    lengths = _checks.tensor("lengths", lengths, min_dim=1)
    if lengths.dtype == torch.bool or lengths.is_complex():
        raise TypeError(f"lengths must be a real tensor, got dtype {lengths.dtype}")
    _checks.finite("lengths", lengths)
    if bool((lengths < 0).any()):
        raise ValueError("lengths must be >= 0")
    return lengths.double()


def overlong_penalty(lengths, *, max_len: int, cache_len: int) -> torch.Tensor:
    """DAPO's soft overlong punishment, ``[...]`` float32.

    ``0`` if ``|o| <= max_len - cache_len``; ``((max_len - cache_len) - |o|) / cache_len`` if
    ``max_len - cache_len < |o| <= max_len``; ``-1`` beyond.
    """
    _checks.positive("max_len", max_len)
    _checks.positive("cache_len", cache_len)
    if cache_len > max_len:
        raise ValueError(f"cache_len ({cache_len}) must be <= max_len ({max_len})")
    n = _lengths(lengths)
    start = max_len - cache_len
    soft = (start - n) / cache_len
    out = torch.where(n <= start, torch.zeros_like(n), torch.where(n <= max_len, soft, -torch.ones_like(n)))
    return out.float()


def grop_penalty(rewards, lengths, *, gamma1: float = 0.75, threshold: float = 0.5) -> torch.Tensor:
    """GROP, group-relative overlong punishment (paper's Appendix D): ``[..., n]`` float32.

    Per group with ``c`` correct of ``n`` (``frac = c / n``): easy (``frac >= gamma1``)
    penalises the correct responses with the knee ``L`` over the correct lengths; hard
    (``frac <= 1 - gamma1``) no penalty; medium: knee over all lengths, penalise the correct
    responses if ``c > n - c``, else the wrong ones. ``L = max((min + max) / 2, mean)`` of the
    lengths considered; penalty ``0`` if ``|o| < L``, ``-0.5 (|o| - L) / L`` if
    ``L <= |o| < 2L``, ``-0.5`` beyond.
    """
    rewards = _checks.tensor("rewards", rewards, min_dim=1)
    n = _lengths(lengths)
    if tuple(n.shape) != tuple(rewards.shape):
        raise ValueError(f"lengths has shape {tuple(n.shape)}, but rewards has shape {tuple(rewards.shape)}")
    _checks.finite("rewards", rewards)
    _checks.number("gamma1", gamma1)
    if not 0.5 < gamma1 <= 1:
        raise ValueError(f"gamma1 must be in (0.5, 1] so that easy and hard groups do not overlap, got {gamma1}")
    if rewards.shape[-1] < 1:
        raise ValueError("rewards has an empty group")
    if bool((n < 1).any()):
        raise ValueError("lengths must be >= 1 for GROP (a knee of length 0 is undefined)")
    correct = rewards > threshold
    c = correct.sum(-1, keepdim=True).double()
    size = rewards.shape[-1]
    frac = c / size
    easy = frac >= gamma1
    hard = (frac <= 1 - gamma1) & ~easy
    medium = ~easy & ~hard
    considered = torch.where(easy, correct, torch.ones_like(correct))
    target = torch.where(
        easy, correct, torch.where(medium, torch.where(c > size - c, correct, ~correct), torch.zeros_like(correct))
    )

    big = torch.finfo(torch.float64).max
    lo = torch.where(considered, n, torch.full_like(n, big)).min(-1, keepdim=True).values
    hi = torch.where(considered, n, torch.full_like(n, -big)).max(-1, keepdim=True).values
    cnt = considered.double().sum(-1, keepdim=True).clamp(min=1)
    mean = torch.where(considered, n, torch.zeros_like(n)).sum(-1, keepdim=True) / cnt
    knee = torch.maximum((lo + hi) / 2, mean)
    knee = torch.where(considered.any(-1, keepdim=True), knee, torch.ones_like(knee))
    pen = torch.where(
        n < knee, torch.zeros_like(n), torch.where(n < 2 * knee, -0.5 * (n - knee) / knee, torch.full_like(n, -0.5))
    )
    return torch.where(target, pen, torch.zeros_like(pen)).float()
