"""A thread pool that grows with the work and shrinks when idle, for gunicorn's threaded worker.

gunicorn's ``gthread`` worker runs each connection in a ``concurrent.futures.ThreadPoolExecutor``, whose threads
never end: after a burst of a hundred Socket.IO clients the process keeps a hundred idle threads for good.
:class:`ElasticThreadPool` offers the two calls the worker makes (``submit`` and ``shutdown``), starts a thread
only when no started one is free (up to ``max_threads``), names its threads, and lets a thread end after
``idle_s`` without work.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

logger = logging.getLogger('llnode.node.http')

#: Seconds a thread waits for work before it ends: long enough that steady traffic reuses threads (starting one
#: costs about 0.1 ms), short enough that the threads of clients that left are gone soon after engine.io gives
#: them up.
IDLE_S = 2.0


class ElasticThreadPool:
    """``submit(fn, *args)`` runs ``fn`` on a pool thread and returns its ``Future``."""

    def __init__(self, max_threads: int, *, idle_s: float = IDLE_S, name: str = 'llnode-http') -> None:
        if max_threads < 1:
            raise ValueError(f'max_threads must be at least 1, got {max_threads!r}')
        self._max = max_threads
        self._idle_s = idle_s
        self._name = name
        self._counter = itertools.count(1)
        self._cond = threading.Condition()  # guards every field below
        self._items: deque[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]] = deque()
        self._threads = 0
        self._busy = 0
        self._shutdown = False

    @property
    def threads(self) -> int:
        """Threads alive now."""
        with self._cond:
            return self._threads

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        with self._cond:
            if self._shutdown:
                raise RuntimeError('the thread pool is shut down')
            self._items.append((future, fn, args))
            if self._threads - self._busy < len(self._items) and self._threads < self._max:
                self._threads += 1
                thread = threading.Thread(target=self._work, name=f'{self._name}-{next(self._counter)}', daemon=True)
                thread.start()
            else:
                self._cond.notify()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new work; idle threads end at once, busy ones after their work (``wait``: join them, bounded by
        nothing but that work)."""
        with self._cond:
            self._shutdown = True
            if cancel_futures:
                while self._items:
                    self._items.popleft()[0].cancel()
            self._cond.notify_all()
        if wait:
            with self._cond:
                while self._threads:
                    self._cond.wait(1.0)

    def _work(self) -> None:
        try:
            while True:
                with self._cond:
                    idle_until = time.monotonic() + self._idle_s
                    while not self._items:
                        left = idle_until - time.monotonic()
                        if self._shutdown or left <= 0:
                            return
                        self._cond.wait(left)
                    future, fn, args = self._items.popleft()
                    self._busy += 1
                if not future.set_running_or_notify_cancel():
                    with self._cond:
                        self._busy -= 1
                    continue
                result: Any = None
                error: BaseException | None = None
                try:
                    result = fn(*args)
                except BaseException as e:
                    error = e
                with self._cond:
                    self._busy -= 1  # before the caller hears of it: its next submit finds this thread free
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(result)
        finally:
            with self._cond:
                self._threads -= 1
                if self._shutdown:
                    self._cond.notify_all()  # for shutdown(wait=True)
