"""Status sync in its own thread: whoever notices a change asks for a sync and goes on at once.

Why a thread: the reference POSTs the status inline, so a slow or unreachable Loop holds up whatever changed it
(a REST request changing the operation mode, the model update). Here ``request()`` only sets an event; the
reporter thread sends the status as it is *when sent*, so a burst of changes costs one POST.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from llnode.failure_log import FailureLog

logger = logging.getLogger('llnode.detector.status')


class StatusReporter:
    """Calls ``send()`` in a named thread each time a sync was requested (bursts coalesce into one call).

    Failures go to ``failures`` (a :class:`~llnode.failure_log.FailureLog`: logged when they start, then once a
    minute, and when they end), with ``describe(error)`` as their cause.
    """

    def __init__(
        self,
        send: Callable[[], object],
        *,
        name: str,
        failures: FailureLog | None = None,
        describe: Callable[[Exception], str] = str,
    ) -> None:
        self._send = send
        self.failures = failures or FailureLog(logger, 'status sync')
        self._describe = describe
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._lock = threading.Lock()  # guards _pending and the _wake/_idle pair
        self._pending = False
        self.sent = 0  # written by the reporter thread only
        self.failed = 0
        self.last_ok: bool | None = None  # whether the last sync succeeded (None before the first)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        # made again here: a Thread made before a fork (gunicorn builds the node in its master) is marked stopped
        # in the child by CPython, so its is_alive() and join() would lie there (started already: start() raises)
        if self._thread.ident is None:
            self._thread = threading.Thread(target=self._run, name=self._thread.name, daemon=True)
        self._thread.start()

    def request(self) -> None:
        """Sync soon (returns at once)."""
        with self._lock:
            self._pending = True
            self._idle.clear()
            self._wake.set()

    def wait_idle(self, timeout: float) -> bool:
        """True once no requested sync is pending or running (for tests and orderly shutdown)."""
        return self._idle.wait(timeout)

    def stop(self, timeout: float) -> bool:
        """End the thread (a POST in flight finishes within its own timeout); True if it ended within ``timeout``."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            if self._stop.is_set():
                return
            with self._lock:
                self._wake.clear()
                self._pending = False
            try:
                self._send()
                self.sent += 1
                self.last_ok = True
            except Exception as e:
                self.failed += 1
                self.last_ok = False
                self.failures.failed(self._describe(e), exc_info=e)
            else:
                self.failures.succeeded()
            with self._lock:
                if not self._pending:
                    self._idle.set()
