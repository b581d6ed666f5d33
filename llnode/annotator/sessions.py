"""Per-frontend sessions of the annotator: each frontend's history, and its events handled one at a time, in order.

The node's Loop socket already hands it one frontend's events one after another, in the order the Loop sent them
(one lane per frontend, see :meth:`llnode.loop.socket.LoopSocket.on`), but ``handle_user_input`` and
``user_logout`` may also be called from other threads. A session hands out *turns*: a thread waits in the
frontend's queue until the events before it are done, so the tool sees one frontend's events one after another
in the order they reached the session, while different frontends run side by side. The queue is bounded (a tool
slower than its callers must not pile up threads) and a wait is bounded too; :meth:`FrontendSessions.close` wakes
every waiter at once.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

logger = logging.getLogger('llnode.annotator.sessions')

#: Events of one frontend that may wait for their turn; more are refused (back-pressure on a slow tool).
MAX_PENDING_EVENTS = 32
#: How long an event waits for its turn before it is refused.
TURN_TIMEOUT = 30.0
#: A frontend without events for this long loses its history (it may hold an image); None: kept until logout.
HISTORY_TIMEOUT: float | None = 3600.0


class SessionBusy(RuntimeError):
    """An event could not get its turn: too many events of its frontend wait, or the wait took too long."""


class SessionsClosed(RuntimeError):
    """The node is stopping; no more events are handled."""


_NO_HISTORY = object()


class Session:
    """One frontend's state. ``history`` may be read and replaced only by the thread that holds the turn."""

    def __init__(self, frontend_id: str) -> None:
        self.frontend_id = frontend_id
        self._history: Any = _NO_HISTORY
        self.queue: collections.deque[object] = collections.deque()
        self.last_used = time.monotonic()

    @property
    def has_history(self) -> bool:
        return self._history is not _NO_HISTORY

    def history(self, create: Callable[[], Any]) -> Any:
        """The current history, made with ``create()`` if there is none."""
        if self._history is _NO_HISTORY:
            self._history = create()
        return self._history

    def reset(self) -> None:
        """Forget the history; the next event gets a new one."""
        self._history = _NO_HISTORY


class FrontendSessions:
    """The sessions of all frontends. ``_lock`` (with its condition) guards the table and every session's queue."""

    def __init__(
        self,
        *,
        max_pending: int = MAX_PENDING_EVENTS,
        turn_timeout: float = TURN_TIMEOUT,
        history_timeout: float | None = HISTORY_TIMEOUT,
    ) -> None:
        if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
            raise ValueError(f'max_pending must be an integer >= 1, got {max_pending!r}')
        if not turn_timeout > 0:
            raise ValueError(f'turn_timeout must be a positive number of seconds, got {turn_timeout!r}')
        if history_timeout is not None and not history_timeout > 0:
            raise ValueError(f'history_timeout must be a positive number of seconds or None, got {history_timeout!r}')
        self.max_pending = max_pending
        self.turn_timeout = float(turn_timeout)
        self.history_timeout = history_timeout
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._sessions: dict[str, Session] = {}
        self._closed = False

    @contextmanager
    def turn(self, frontend_id: str, what: str = 'event') -> Iterator[Session]:
        """Wait for ``frontend_id``'s turn and hold it for the ``with`` block; yields the frontend's session.

        Raises :class:`SessionBusy` when ``max_pending`` events of this frontend already wait or the turn does
        not come within ``turn_timeout``, and :class:`SessionsClosed` once :meth:`close` was called.
        """
        token = object()
        deadline = time.monotonic() + self.turn_timeout
        with self._lock:
            if self._closed:
                raise SessionsClosed('the annotator is stopping')
            session = self._sessions.get(frontend_id)
            if session is None:
                session = self._sessions[frontend_id] = Session(frontend_id)
            if len(session.queue) > self.max_pending:  # the running event plus max_pending waiting
                raise SessionBusy(
                    f'{len(session.queue) - 1} events of frontend {frontend_id!r} are waiting already; {what} refused'
                )
            session.queue.append(token)
            try:
                while session.queue[0] is not token:
                    if self._closed:
                        raise SessionsClosed('the annotator is stopping')
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise SessionBusy(
                            f'{what} of frontend {frontend_id!r} waited {self.turn_timeout:g} s for the events '
                            'before it; refused'
                        )
                    self._changed.wait(left)
            except BaseException:
                session.queue.remove(token)
                self._changed.notify_all()
                raise
        try:
            yield session
        finally:
            with self._lock:
                session.queue.popleft()
                session.last_used = time.monotonic()
                self._changed.notify_all()

    def queued(self, frontend_id: str) -> int:
        """Events of ``frontend_id`` that hold or wait for its turn now."""
        with self._lock:
            session = self._sessions.get(frontend_id)
            return len(session.queue) if session is not None else 0

    def frontend_ids(self) -> list[str]:
        """Frontends that have a history now."""
        with self._lock:
            return [fid for fid, session in self._sessions.items() if session.has_history]

    def forget_idle(self, now: float | None = None) -> list[str]:
        """Drop the sessions of frontends idle for longer than ``history_timeout``; returns their ids."""
        if self.history_timeout is None:
            return []
        now = time.monotonic() if now is None else now
        with self._lock:
            idle = [
                fid
                for fid, session in self._sessions.items()
                if not session.queue and now - session.last_used > self.history_timeout
            ]
            for fid in idle:
                del self._sessions[fid]
        if idle:
            logger.info('forgot the histories of %d idle frontend(s)', len(idle))
        return idle

    def close(self) -> None:
        """Refuse further events and wake every waiting one (it raises :class:`SessionsClosed`)."""
        with self._lock:
            self._closed = True
            self._changed.notify_all()
