"""The repeat thread: one named thread that runs a node's cycle every few seconds until it is stopped.

It reads like a worker's main loop: run the cycle unless muted, then wait on an event for the interval. The
delay is counted after the work (as the reference does), so a slow cycle never piles up behind itself. A cycle
that raises is logged and the loop carries on. ``stop()`` and ``wake()`` cut the wait short at once.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable

from llnode.failure_log import FailureLog

logger = logging.getLogger('llnode.node.repeat')

#: Seconds between the end of one cycle and the start of the next (reference: ``repeat_loop_cycle_sec``).
REPEAT_INTERVAL = 5.0


class RepeatThread:
    """Runs ``cycle()`` in a named daemon thread every ``interval`` seconds while not muted.

    Losing this thread at interpreter exit loses nothing (a cycle is a heartbeat, not a write), hence daemon.
    All state is guarded by events; the counters are only written by the thread itself.
    """

    def __init__(self, cycle: Callable[[], None], *, interval: float = REPEAT_INTERVAL, name: str, muted: bool = False):
        if not (isinstance(interval, (int, float)) and math.isfinite(interval) and interval > 0):
            raise ValueError(f'repeat interval must be a positive number of seconds, got {interval!r}')
        self._cycle = cycle
        self.interval = float(interval)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._muted = threading.Event()
        if muted:
            self._muted.set()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._cycles = 0
        self._failures = 0

    @property
    def name(self) -> str:
        return self._thread.name

    @property
    def muted(self) -> bool:
        return self._muted.is_set()

    @property
    def cycles(self) -> int:
        """Cycles run so far (muted rounds do not count)."""
        return self._cycles

    @property
    def failures(self) -> int:
        """Cycles that raised so far."""
        return self._failures

    def is_current(self) -> bool:
        """Whether the calling code runs in this thread (it must not join itself)."""
        return threading.current_thread() is self._thread

    def start(self) -> None:
        # made again here: a Thread made before a fork (gunicorn builds the node in its master) is marked stopped
        # in the child by CPython, so its is_alive() and join() would lie there (started already: start() raises)
        if self._thread.ident is None:
            self._thread = threading.Thread(target=self._loop, name=self._thread.name, daemon=True)
        self._thread.start()

    def mute(self) -> None:
        """Skip cycles until ``unmute()``; a cycle already running finishes."""
        self._muted.set()

    def unmute(self) -> None:
        """Run cycles again, the next one at once."""
        self._muted.clear()
        self._wake.set()

    def wake(self) -> None:
        """Run the next cycle now instead of after the rest of the interval."""
        self._wake.set()

    def request_stop(self) -> None:
        """Ask the loop to end after the cycle that runs now (if any); returns at once."""
        self._stop.set()
        self._wake.set()

    def stop(self, timeout: float) -> bool:
        """Ask the loop to end and wait up to ``timeout`` seconds; True if the thread has ended."""
        self.request_stop()
        if not self._thread.is_alive() or self.is_current():
            return not self._thread.is_alive()
        self._thread.join(max(0.0, timeout))
        if self._thread.is_alive():
            logger.warning('%s did not end within %.1f s (a cycle is still running)', self.name, timeout)
            return False
        return True

    def _loop(self) -> None:
        # a failing cycle: its traceback once, then a line a minute with a count, and one when it works again
        failures = FailureLog(logger, f'{self.name}: repeat cycle', start_traceback=True)
        while not self._stop.is_set():
            self._wake.clear()
            if not self._muted.is_set():
                try:
                    self._cycle()
                except Exception as e:
                    self._failures += 1
                    failures.failed(f'{type(e).__name__}: {e}', exc_info=e)
                else:
                    failures.succeeded()
                self._cycles += 1
            self._wake.wait(self.interval)
