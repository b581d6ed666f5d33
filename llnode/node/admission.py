"""Admission for Socket.IO: bounded sessions, long-polls and WebSockets, so idle or vanished clients never take
the threads that serve the REST API.

Every waiting long-poll holds a server thread for up to the ping interval (5 s), and every WebSocket holds one
for its whole life (gunicorn's and werkzeug's threaded servers). Without bounds a few dozen idle clients take
every thread of a fixed pool (waitress, gunicorn) and ``/detect`` waits behind them. :class:`SocketIOAdmission`
wraps the node's WSGI app and counts what is in flight; past a limit the next connection gets ``503`` with
``Retry-After`` and a JSON ``{"detail": ...}`` at once, and python-socketio clients retry later.

It also answers two things the engine.io server gets wrong on its own: a POST to a session the client already
closed (engine.io raises ``KeyError``, a bare 500) gets a 400 with a JSON body.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

logger = logging.getLogger('llnode.node.http')

#: Threads of a server's pool kept free of Socket.IO long-polls and WebSockets, for the REST API (a quarter of
#: a smaller pool, at least one).
REST_RESERVE = 8


@dataclass(frozen=True)
class ServingLimits:
    """Bounds on Socket.IO's long-lived connections (sized for a robot: a few clients, generous headroom).

    ``max_sessions``: connected Socket.IO sessions (a handshake beyond it is refused).
    ``max_long_polls``: long-polling GETs waiting at once (each holds a server thread while it waits);
    None: the server's thread count less :data:`REST_RESERVE`.
    ``max_websockets``: open WebSockets (each holds a server thread); None: as ``max_long_polls``.
    ``retry_after_s``: the ``Retry-After`` a refusal carries.
    ``read_timeout_s``: longest wait for the next bytes of a request (headers or body) before the connection is
    closed, so a hung upload frees its thread (gunicorn and werkzeug; waitress reads bodies in its own loop and
    closes a silent connection after it). A connected client answers engine.io's ping every ``ping_interval_s``,
    so an idle WebSocket never times out; the default is when engine.io gives a silent client up.
    ``ping_interval_s``, ``ping_timeout_s``: engine.io's heartbeat, told to every client in its handshake. The
    server pings each client ``ping_interval_s`` after its last pong and gives the client up when no pong came
    within ``ping_timeout_s``, so a client that vanished without closing (a robot out of WiFi range, a killed
    process behind a live TCP connection) holds its session and threads at most ``ping_interval_s +
    ping_timeout_s`` plus a second. python-engineio's own defaults (25 s and 20 s) held them 45 s or more; a
    5-s ping costs a few bytes per client (a 1-byte frame each way) and, on long-polling, one poll per interval.
    """

    max_sessions: int = 100
    max_long_polls: int | None = None
    max_websockets: int | None = None
    retry_after_s: int = 5
    read_timeout_s: float = 25.0
    ping_interval_s: float = 5.0
    ping_timeout_s: float = 20.0

    def __post_init__(self) -> None:
        for name in ('max_sessions', 'max_long_polls', 'max_websockets', 'retry_after_s'):
            value = getattr(self, name)
            if value is None and name in ('max_long_polls', 'max_websockets'):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f'{name} must be a positive integer, got {value!r}')
        for name in ('read_timeout_s', 'ping_interval_s', 'ping_timeout_s'):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float('inf'):
                raise ValueError(f'{name} must be a positive number of seconds, got {value!r}')

    def for_threads(self, threads: int | None, *, websocket: bool = True) -> ServingLimits:
        """These limits with the open ones filled in for a server of ``threads`` threads (None: a thread per
        connection): what is left after :data:`REST_RESERVE`, shared by long-polls and WebSockets where the
        server carries both."""
        free = 200 if threads is None else max(1, threads - min(REST_RESERVE, max(1, threads // 4)))
        default = max(1, free // 2) if websocket else free
        polls = self.max_long_polls if self.max_long_polls is not None else default
        sockets = self.max_websockets if self.max_websockets is not None else default
        return replace(self, max_long_polls=polls, max_websockets=sockets)


WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class SocketIOAdmission:
    """A WSGI wrapper in front of the node's app that admits Socket.IO requests within :class:`ServingLimits`."""

    def __init__(self, app: WSGIApp, eio: Any, path: str, limits: ServingLimits) -> None:
        self.app = app
        self._eio = eio
        self._prefix = '/' + path.strip('/')
        self.limits = limits
        self._lock = threading.Lock()  # guards the three counts
        self.long_polls = 0
        self.websockets = 0
        self.refused = 0

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get('PATH_INFO', '')
        if not (path == self._prefix or path.startswith(self._prefix + '/')):
            return self.app(environ, start_response)
        query = urllib.parse.parse_qs(environ.get('QUERY_STRING', ''))
        sid = query.get('sid', [None])[0]
        method = environ.get('REQUEST_METHOD', '')
        websocket = environ.get('HTTP_UPGRADE', '').lower() == 'websocket'
        if sid is None:
            if method == 'GET':
                full = self._full('websockets' if websocket else 'long_polls')
                if full is None and len(self._eio.sockets) >= self.limits.max_sessions:
                    full = f'too many Socket.IO sessions ({self.limits.max_sessions})'
                if full is not None:  # a new polling session polls at once: refuse it here, not at its first poll
                    return self._refuse(start_response, full)
            return self._counted(environ, start_response, 'websockets' if websocket else None)
        socket = self._eio.sockets.get(sid)
        if socket is not None and socket.closed:
            return _json(start_response, '400 BAD REQUEST', {'detail': f'Socket.IO session {sid} is closed'})
        if method == 'GET' and websocket:
            return self._counted(environ, start_response, 'websockets')
        if method == 'GET':
            return self._counted(environ, start_response, 'long_polls')
        return self.app(environ, start_response)

    def _counted(
        self, environ: dict[str, Any], start_response: Callable[..., Any], kind: str | None
    ) -> Iterable[bytes]:
        if kind is None:
            return self.app(environ, start_response)
        limit = self._limit(kind)
        with self._lock:
            admitted = getattr(self, kind) < limit
            if admitted:
                setattr(self, kind, getattr(self, kind) + 1)
        if not admitted:
            return self._refuse(start_response, self._too_many(kind))
        try:
            # engine.io answers polls and WebSockets with a list, complete once the call returns
            return list(self.app(environ, start_response))
        finally:
            with self._lock:
                setattr(self, kind, getattr(self, kind) - 1)

    def _limit(self, kind: str) -> int:
        limit = self.limits.max_websockets if kind == 'websockets' else self.limits.max_long_polls
        assert limit is not None  # filled in by ServingLimits.for_threads
        return limit

    def _too_many(self, kind: str) -> str:
        what = 'WebSockets' if kind == 'websockets' else 'waiting Socket.IO long-polls'
        return f'too many {what} ({self._limit(kind)})'

    def _full(self, kind: str) -> str | None:
        """Why a connection of ``kind`` would be refused now, or None."""
        with self._lock:
            full = getattr(self, kind) >= self._limit(kind)
        return self._too_many(kind) if full else None

    def _refuse(self, start_response: Callable[..., Any], detail: str) -> Iterable[bytes]:
        with self._lock:
            self.refused += 1
            first = self.refused == 1
        (logger.warning if first else logger.debug)('Socket.IO connection refused: %s', detail)
        return _json(
            start_response,
            '503 SERVICE UNAVAILABLE',
            {'detail': f'{detail}; retry later'},
            [('Retry-After', str(self.limits.retry_after_s))],
        )

    def stats(self) -> dict[str, int]:
        """What is in flight now and how many connections were refused so far."""
        with self._lock:
            return {
                'sessions': len(self._eio.sockets),
                'long_polls': self.long_polls,
                'websockets': self.websockets,
                'refused': self.refused,
            }


def _json(
    start_response: Callable[..., Any], status: str, payload: Any, headers: list[tuple[str, str]] | None = None
) -> list[bytes]:
    body = json.dumps(payload).encode()
    start_response(
        status,
        [('Content-Type', 'application/json'), ('Content-Length', str(len(body)))] + (headers or []),
    )
    return [body]
