"""One TLS connection that one thread reads while another writes, with every TLS call made by one thread at a time.

engineio's threading client reads its WebSocket in one thread and writes it in another. Over ``wss://`` both
threads then drive one OpenSSL connection at once, and now and then a read reports the connection closed while
the Loop still holds it open: after a polling-to-WebSocket upgrade, 1 to 3 % of connections to a uvicorn
server failed this way on a loaded 2-core machine (none over plain HTTP). This is python-engineio#461,
python-socketio#1568 and #1577; engineio 4.15.1 has no fix.

:class:`SerialTlsSocket` wraps the connected ``ssl.SSLSocket``. It keeps the socket non-blocking and makes each
TLS call under one lock, which is never held while waiting: a call that cannot go on (no complete record yet, or a
full send buffer) releases the lock, waits with ``select`` for the socket, and tries again. To websocket-client it
still looks like a blocking socket with a timeout.
"""

from __future__ import annotations

import selectors
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

#: Longest single wait between two tries. A call that wanted the other direction (a TLS renegotiation) could miss
#: its wake-up to the other thread's read; it then tries again after this.
MAX_WAIT = 0.5

T = TypeVar('T')


class SerialTlsSocket:
    """A connected ``ssl.SSLSocket`` whose TLS calls never overlap; blocking, with a timeout, as the socket was."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self._sock = sock
        self._timeout: float | None = sock.gettimeout()
        self._lock = threading.Lock()  # held only for one non-blocking TLS call or socket operation
        sock.setblocking(False)

    def gettimeout(self) -> float | None:
        return self._timeout

    def settimeout(self, timeout: float | None) -> None:
        self._timeout = timeout

    def fileno(self) -> int:
        return self._sock.fileno()

    def recv(self, bufsize: int) -> bytes:
        """Up to ``bufsize`` bytes; b'' when the peer closed; ``TimeoutError`` after the timeout."""
        return self._call(lambda: self._sock.recv(bufsize), selectors.EVENT_READ)

    def send(self, data: bytes) -> int:
        """Send some of ``data``; the number of bytes sent; ``TimeoutError`` after the timeout."""
        return self._call(lambda: self._sock.send(data), selectors.EVENT_WRITE)

    def shutdown(self, how: int) -> None:
        with self._lock:
            self._sock.shutdown(how)

    def close(self) -> None:
        with self._lock:
            self._sock.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)  # what websocket-client may ask besides (getpeername, setsockopt, ...)

    def _call(self, call: Callable[[], T], event: int) -> T:
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        while True:
            with self._lock:
                try:
                    return call()
                except ssl.SSLWantReadError:
                    wanted = selectors.EVENT_READ
                except ssl.SSLWantWriteError:
                    wanted = selectors.EVENT_WRITE
                except BlockingIOError:
                    wanted = event
            wait = MAX_WAIT
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError('timed out')
                wait = min(wait, remaining)
            with selectors.DefaultSelector() as selector:
                selector.register(self._sock, wanted)
                selector.select(wait)
