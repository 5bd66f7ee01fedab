"""math-verify with a deadline, from any thread: every check returns within a bounded time.

math-verify's own timeouts use ``signal.alarm``, which works only in a process's main thread
(not in a notebook widget's callback, a data-loader worker or a thread pool), and without them a
completion such as ``9^9^9`` makes sympy compute for ever. So the checks run in a child process
(Python with math-verify only, started on first use and shared by every task of this process),
one request at a time, with the deadlines of :mod:`workbench.tasks.bounded`:

- in the child, a ``SIGALRM`` deadline of ``timeout`` seconds (its main thread) stops a slow check;
- in the parent, a hard deadline of ``timeout + KILL_MARGIN`` seconds kills the child if the check
  is stuck where no signal handler runs (C code), and the next check starts a new one.

A check that hits either deadline counts as a timeout (the caller scores it 0). A gold answer that
cannot be checked within the deadline even against ``0`` is remembered: later checks of that example
compare text without calling math-verify, so one bad line in the data does not cost every score.
"""

from __future__ import annotations

import atexit
import os
import threading
import warnings

from .bounded import KILL_MARGIN, BoundedChild

__all__ = ["Verifier", "verify", "DEFAULT_TIMEOUT", "KILL_MARGIN"]

DEFAULT_TIMEOUT = 5.0  #: seconds a check may take before it scores 0

_CHILD = r"""
import logging
logging.disable(logging.CRITICAL)
from math_verify import parse, verify

def handle(req):
    try:
        gold, answer = parse(req["gold"], parsing_timeout=None), parse(req["answer"], parsing_timeout=None)
        return {"equal": bool(verify(gold, answer, timeout_seconds=None)) if gold and answer else None}
    except Exception as e:
        return {"equal": None, "error": type(e).__name__}
"""


class Verifier:
    """A math-verify child process with deadlines; thread-safe (one check at a time)."""

    def __init__(self):
        self.pid = os.getpid()
        self._lock = threading.Lock()
        self._child = BoundedChild(_CHILD, "math-verify checker", " (is math-verify installed?)")
        self._bad_gold: set[str] = set()
        self._good_gold: set[str] = set()

    def close(self) -> None:
        self._child.close()

    def _ask(self, gold: str, answer: str, timeout: float) -> dict:
        """One request: ``{"status": "ok", "equal": ...}`` or ``{"status": "timeout"}``."""
        return self._child.ask({"gold": gold, "answer": answer}, timeout)

    # ------------------------------------------------------------------ checks

    def check(self, gold: str, answer: str, timeout: float = DEFAULT_TIMEOUT) -> tuple[bool, bool]:
        """``(equal, timed_out)``: whether ``answer`` equals ``gold`` for math-verify (``0.5``,
        ``1/2`` and ``\\frac{1}{2}`` are equal), falling back to an exact match of the stripped
        text when either side cannot be parsed; ``(False, True)`` when the check ran out of time."""
        if gold in self._bad_gold:
            return gold.strip() == answer.strip(), False
        with self._lock:
            reply = self._ask(gold, answer, timeout)
            if reply["status"] == "timeout" and gold not in self._good_gold:
                probe = self._ask(gold, "0", timeout)  # is the gold answer itself the slow side?
                if probe["status"] == "timeout":
                    self._bad_gold.add(gold)
                    warnings.warn(
                        f"the gold answer {gold[:60]!r} takes over {timeout:g} s to check with "
                        "math-verify (even against 0): it is compared as text from now on",
                        stacklevel=3,
                    )
            elif reply["status"] == "ok":
                self._good_gold.add(gold)
        if reply["status"] == "timeout":
            return False, True
        equal = reply.get("equal")
        return (gold.strip() == answer.strip() if equal is None else bool(equal)), False


_shared: Verifier | None = None
_shared_lock = threading.Lock()


def verify(gold: str, answer: str, timeout: float = DEFAULT_TIMEOUT) -> tuple[bool, bool]:
    """:meth:`Verifier.check` on this process's shared checker."""
    global _shared
    with _shared_lock:
        if _shared is None or _shared.pid != os.getpid():  # a forked process starts its own child
            _shared = Verifier()
            atexit.register(_shared.close)
    return _shared.check(gold, answer, timeout)
