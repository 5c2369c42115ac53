"""One process-wide lock between graph tracing and running models.

While torch.fx (and ``make_fx``) traces, it patches ``torch.nn.Module.__call__`` for the
whole process: a model called from another thread during the trace goes through the
tracer and fails (``module is not installed as a submodule``, Proxy outputs), and a graph
traced while other threads call modules can record their calls. So deploycam traces
under :func:`tracing` (exclusive) and runs explanations under :func:`running` (shared
with other runs): many threads may explain at once, and a trace waits until they are
done and holds new ones back until it is.

Both are reentrant in one thread, and a thread that traces may run models inside its
trace. Code outside deploycam that calls models while deploycam traces is not covered:
torch.fx's patching is process-wide.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class _TraceRunLock:
    """A readers-writer lock with writer preference and per-thread reentrancy."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._running = 0  # threads inside running()
        self._writer: int | None = None  # ident of the thread inside tracing()
        self._writer_depth = 0
        self._waiting_writers = 0
        self._local = threading.local()

    @contextmanager
    def tracing(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            if self._writer == me:
                self._writer_depth += 1
            else:
                if getattr(self._local, "depth", 0):
                    raise RuntimeError("deploycam internal: a trace was started inside a model run in the same thread")
                self._waiting_writers += 1
                self._cond.wait_for(lambda: self._writer is None and self._running == 0)
                self._waiting_writers -= 1
                self._writer, self._writer_depth = me, 1
        try:
            yield
        finally:
            with self._cond:
                self._writer_depth -= 1
                if self._writer_depth == 0:
                    self._writer = None
                    self._cond.notify_all()

    @contextmanager
    def running(self) -> Iterator[None]:
        me = threading.get_ident()
        depth = getattr(self._local, "depth", 0)
        if self._writer == me or depth:  # reentrant: inside our own trace or run
            self._local.depth = depth + 1
            try:
                yield
            finally:
                self._local.depth -= 1
            return
        with self._cond:
            self._cond.wait_for(lambda: self._writer is None and self._waiting_writers == 0)
            self._running += 1
        self._local.depth = 1
        try:
            yield
        finally:
            self._local.depth = 0
            with self._cond:
                self._running -= 1
                if self._running == 0:
                    self._cond.notify_all()


_LOCK = _TraceRunLock()

#: Exclusive: torch.fx / make_fx tracing, TorchScript scripting, ONNX export.
tracing = _LOCK.tracing
#: Shared: running a model's backbone and head for an explanation.
running = _LOCK.running
