"""A phase timer whose phase names are the timing metrics (as verl's ``marked_timer``).

::

    timer = PhaseTimer()
    with timer("rollout"):
        ...
    timer.metrics()  # {"time_rollout": 1.23, ...}: seconds, summed over the phase's entries
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["PhaseTimer"]


class PhaseTimer:
    """Wall-clock seconds per named phase. ``sync`` (e.g. ``torch.cuda.synchronize``) runs at
    the end of each phase, so that queued GPU work is counted in the phase that queued it."""

    def __init__(self, sync: Callable[[], None] | None = None):
        self.seconds: dict[str, float] = {}
        self._sync = sync

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            if self._sync is not None:
                self._sync()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def metrics(self) -> dict[str, float]:
        """``{"time_<phase>": seconds}`` for every phase entered."""
        return {f"time_{name}": seconds for name, seconds in self.seconds.items()}
