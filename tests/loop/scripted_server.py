"""A real HTTP(S) server on 127.0.0.1 that answers from a route table and records every request.

For faults the local Loop does not produce on purpose (corrupt image bytes, a failing metadata chunk, a missing
Content-Disposition, TLS with a private CA). Handlers run in the server's threads, so they may block.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TypeVar
from urllib.parse import parse_qs, urlsplit


@dataclass
class Seen:
    """One request as the server saw it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    thread: str


@dataclass
class Reply:
    status: int = 200
    body: bytes = b''
    headers: dict[str, str] = field(default_factory=dict)


Route = Callable[[Seen], Reply]
Server = TypeVar('Server', bound='ScriptedServer')


class ScriptedServer:
    """``routes`` maps ``(method, path)`` to a function of the request; unknown routes answer 404."""

    def __init__(self, routes: dict[tuple[str, str], Route] | None = None, *, tls: ssl.SSLContext | None = None):
        self.routes: dict[tuple[str, str], Route] = dict(routes or {})
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'

            def _handle(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get('Content-Length') or 0)
                seen = Seen(
                    method=self.command,
                    path=parts.path,
                    query=parse_qs(parts.query),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=self.rfile.read(length) if length else b'',
                    thread=threading.current_thread().name,
                )
                with server._lock:
                    server.seen.append(seen)
                route = server.routes.get((self.command, parts.path))
                reply = route(seen) if route else Reply(404, b'{"detail": "not found"}')
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                if 'Content-Length' in reply.headers:  # a lying length: send the body, then hang up
                    self.close_connection = True
                else:
                    self.send_header('Content-Length', str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            do_GET = do_POST = do_PUT = do_DELETE = _handle

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self._httpd.daemon_threads = True
        if tls is not None:
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.02,), name='scripted-server', daemon=True
        )

    def count(self, method: str, path: str) -> int:
        with self._lock:
            return sum(1 for s in self.seen if s.method == method and s.path == path)

    def requests_to(self, method: str, path: str) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.method == method and s.path == path]

    def __enter__(self: Server) -> Server:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def login_route(cookie: str = 'session=abc; Path=/') -> Route:
    """A login that always succeeds and sets ``cookie``."""
    return lambda seen: Reply(200, b'{}', {'Set-Cookie': cookie})
