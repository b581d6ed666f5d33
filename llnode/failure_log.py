"""Log a failure that repeats without flooding the log, and keep its cause for ``/readyz`` and ``/stats``.

A periodic task that fails (a status sync every 5 s against a Loop that refuses the password) would log the same
warning every cycle, forever, and the operator would still have to dig for it. :class:`FailureLog` logs it once
when it starts, then at most once per ``interval`` (a minute) with how often it failed meanwhile, once when the
cause changes, and once when it ends; :attr:`FailureLog.cause` is what the status pages show meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

#: Seconds between two log lines of the same ongoing failure.
REPEAT_LOG_INTERVAL = 60.0


class FailureLog:
    """The state of one periodic task's failures, logged under ``what`` (e.g. ``"detector: status sync"``).

    Call :meth:`failed` with the cause of each failure and :meth:`succeeded` after each success; both are
    thread-safe and cheap. ``start_traceback`` puts the traceback on the first line of a failure (for failures
    that are bugs, such as an exception from user code); otherwise tracebacks go to DEBUG only. ``clock``
    (monotonic seconds) can be injected for tests.
    """

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        interval: float = REPEAT_LOG_INTERVAL,
        level: int = logging.WARNING,
        start_traceback: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self.start_traceback = start_traceback
        self.what = what
        self.interval = interval
        self.level = level
        self._clock = clock
        self._lock = threading.Lock()  # guards every field below
        self._cause: str | None = None
        self._since = 0.0
        self._failures = 0
        self._logged_at = 0.0
        self._unlogged = 0

    @property
    def cause(self) -> str | None:
        """The cause of the ongoing failure, or None while the task works."""
        with self._lock:
            return self._cause

    @property
    def failures(self) -> int:
        """Failures in a row (0 while the task works)."""
        with self._lock:
            return self._failures

    def failed(self, cause: str, *, exc_info: BaseException | None = None) -> None:
        """Note a failure; logs when it is new, its cause changed, or ``interval`` passed since the last line.

        ``exc_info`` adds the traceback at DEBUG level only (the warning itself stays one line).
        """
        cause = ' '.join(str(cause).split()) or 'unknown error'
        now = self._clock()
        with self._lock:
            new = self._cause is None
            changed = not new and cause != self._cause
            self._failures += 1
            if new:
                self._since = now
            self._cause = cause
            due = new or changed or now - self._logged_at >= self.interval
            if not due:
                self._unlogged += 1
                return
            unlogged, self._unlogged = self._unlogged, 0
            self._logged_at = now
            failures, since = self._failures, now - self._since
        if new:
            start_exc = exc_info if self.start_traceback else None
            self._logger.log(self.level, '%s failed: %s', self.what, cause, exc_info=start_exc)
            if start_exc is not None:
                return
        elif changed:
            self._logger.log(self.level, '%s still fails, now: %s', self.what, cause)
        else:
            self._logger.log(
                self.level,
                '%s still fails (%d times in %s, %d not logged): %s',
                self.what,
                failures,
                _duration(since),
                unlogged,
                cause,
            )
        if exc_info is not None:
            self._logger.debug('%s failure', self.what, exc_info=exc_info)

    def succeeded(self) -> None:
        """Note a success; logs once when it ends a failure."""
        now = self._clock()
        with self._lock:
            if self._cause is None:
                return
            failures, since = self._failures, now - self._since
            self._cause, self._failures, self._unlogged = None, 0, 0
        self._logger.info('%s works again (after %d failures in %s)', self.what, failures, _duration(since))

    def stats(self) -> dict[str, Any]:
        """``cause`` and ``failures`` in a row, for ``/stats``."""
        with self._lock:
            return {'cause': self._cause, 'failures': self._failures}


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f'{seconds:.0f} s'
    if seconds < 7200:
        return f'{seconds / 60:.0f} min'
    return f'{seconds / 3600:.1f} h'
