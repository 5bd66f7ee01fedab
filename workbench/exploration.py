"""pass@k: how the entropy papers report exploration (``entropy-methods.md`` section 7).

From ``n`` samples of a problem with ``c`` correct, the unbiased estimator of Chen et al. 2021
(arXiv 2107.03374) is ``pass@k = 1 - C(n - c, k) / C(n, k)`` (1 when ``n - c < k``), averaged
over problems. It is computed as their reference does, in the numerically stable product form
``1 - prod_{i = n - c + 1}^{n} (1 - k / i)``, which never forms the (huge) binomials.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np

__all__ = ["pass_at_k", "mean_pass_at_k", "pass_at_k_curve", "k_values"]


def _count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    return int(value)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem: ``n`` samples, ``c`` of them correct, budget ``k``.

    ``1 - C(n - c, k) / C(n, k)`` (1.0 when ``n - c < k``) as ``1 - prod_{i=n-c+1}^{n} (1 - k/i)``.
    Examples: n=8, c=1: pass@1 0.125, pass@4 0.5; n=8, c=2: pass@4 0.785714; n=16, c=4: pass@8 0.961538.
    """
    n, c, k = _count("n", n), _count("c", c), _count("k", k)
    if n < 1:
        raise ValueError(f"n (samples of the problem) must be >= 1, got {n}")
    if not 0 <= c <= n:
        raise ValueError(f"c (correct samples) must be in [0, n] = [0, {n}], got {c}")
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, n] = [1, {n}] (pass@k needs at least k samples), got {k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_pass_at_k(n: int | Sequence[int], c: Sequence[int], k: int) -> float:
    """pass@k averaged over problems: ``c[j]`` correct of ``n`` (one number for all, or ``n[j]``) samples."""
    c = list(c)
    if not c:
        raise ValueError("c is empty: pass@k needs at least one problem")
    ns = [n] * len(c) if isinstance(n, numbers.Integral) and not isinstance(n, bool) else list(n)
    if len(ns) != len(c):
        raise ValueError(f"n has {len(ns)} entries but c has {len(c)}: one sample count per problem")
    return float(np.mean([pass_at_k(nj, cj, k) for nj, cj in zip(ns, c)]))


def k_values(n: int) -> list[int]:
    """The budgets ``1, 2, 4, ...`` up to ``n`` (powers of two ``<= n``), the k axis of a pass@k curve."""
    n = _count("n", n)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return [2**i for i in range(n.bit_length()) if 2**i <= n]


def pass_at_k_curve(n: int | Sequence[int], c: Sequence[int], ks: Sequence[int] | None = None) -> dict[int, float]:
    """``{k: mean pass@k over problems}`` for ``ks`` (default :func:`k_values` of the smallest ``n``)."""
    c = list(c)
    smallest = n if isinstance(n, numbers.Integral) and not isinstance(n, bool) else min(n, default=0)
    ks = k_values(smallest) if ks is None else list(ks)
    return {int(k): mean_pass_at_k(n, c, k) for k in ks}
