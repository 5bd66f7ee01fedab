"""Calls into a child process with deadlines, from any thread: every call returns in bounded time.

A library's own timeouts (``signal.alarm``) work only in a process's main thread (not in a
notebook widget's callback, a data-loader worker or a thread pool), and a check stuck in C code
(a huge integer power) does not see a signal at all. So checks that may run long (math-verify for
JSONL tasks, reasoning-gym's scorers) run in a child process, one request at a time:

- in the child, a ``SIGALRM`` deadline of ``timeout`` seconds (its main thread) stops a slow call;
- in the parent, a hard deadline of ``timeout + KILL_MARGIN`` seconds kills the child if the call
  is stuck where no signal handler runs, and the next call starts a new child.

A call that hits either deadline answers ``{"status": "timeout"}`` (the caller scores it 0).
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading

__all__ = ["BoundedChild", "KILL_MARGIN"]

KILL_MARGIN = 2.0  #: extra seconds before the parent kills a child that did not answer

#: The child's request loop; the code given to :class:`BoundedChild` defines ``handle(request) -> dict``.
_LOOP = r"""
import json, signal, sys

class Deadline(BaseException):  # not an Exception: a library's own handlers let it through
    pass

def _alarm(signum, frame):
    raise Deadline()

signal.signal(signal.SIGALRM, _alarm)
print(json.dumps({"ready": True}), flush=True)
for _line in sys.stdin:
    _request = json.loads(_line)
    signal.setitimer(signal.ITIMER_REAL, _request["timeout"])
    try:
        _out = {"status": "ok", **handle(_request)}
    except Deadline:
        _out = {"status": "timeout"}
    except Exception as e:
        _out = {"status": "error", "error": f"{type(e).__name__}: {e}"[:300]}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    try:
        _line = json.dumps(_out)
    except (TypeError, ValueError) as e:
        _line = json.dumps({"status": "error", "error": f"the answer is not JSON: {e}"[:300]})
    print(_line, flush=True)
"""


class BoundedChild:
    """A child process running ``code`` (imports and a ``handle(request) -> dict`` function), started
    on first use and again after a kill, with ``env`` added to this process's environment.
    :meth:`ask` sends one JSON request and returns the child's answer (``{"status": "ok", ...}`` or
    ``{"status": "error", "error": ...}``), or ``{"status": "timeout"}`` when the deadline passed.
    Thread-safe: one request at a time (callers may hold :attr:`lock` across several requests)."""

    def __init__(self, code: str, what: str, hint: str = "", start_timeout: float = 120.0, env: dict | None = None):
        self.code, self.what, self.hint, self.start_timeout = code + "\n" + _LOOP, what, hint, start_timeout
        self.env = dict(env or {})
        self.pid = os.getpid()
        self.lock = threading.RLock()
        self._proc: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        env = {**os.environ, "PYTHONWARNINGS": "ignore", **self.env}
        proc = subprocess.Popen(
            [sys.executable, "-c", self.code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            env=env,
        )
        if self._read(proc, self.start_timeout) != {"ready": True}:  # importing sympy takes a second or two
            self._kill(proc)
            raise RuntimeError(f"the {self.what} process did not start{self.hint}")
        return proc

    @staticmethod
    def _read(proc: subprocess.Popen, timeout: float) -> dict | None:
        """The child's next line as JSON, or ``None`` if none came within ``timeout`` seconds."""
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = proc.stdout.readline()
        return json.loads(line) if line else None

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            stream.close()

    def close(self) -> None:
        with self.lock:
            if self._proc is not None:
                self._kill(self._proc)
                self._proc = None

    def ask(self, request: dict, timeout: float) -> dict:
        """One request (``timeout`` seconds added to it), answered within ``timeout + KILL_MARGIN``."""
        with self.lock:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = self._start()
            try:
                self._proc.stdin.write(json.dumps({**request, "timeout": timeout}) + "\n")
                self._proc.stdin.flush()
                reply = self._read(self._proc, timeout + KILL_MARGIN)
            except (BrokenPipeError, OSError, json.JSONDecodeError):
                reply = None
            if reply is None:  # stuck where the alarm cannot reach, or gone: a fresh child next time
                self._kill(self._proc)
                self._proc = None
                return {"status": "timeout"}
            return reply
