"""Serving a node's WSGI app with waitress or werkzeug's threaded server, stoppable within a bounded time.

(gunicorn, the default on Linux, forks and runs as the process's master: see :mod:`llnode.node.gunicorn_serving`.)

Both servers bind in the constructor (a port in use is an ``OSError`` there, before the node starts), serve in
one named thread after ``start()``, and ``stop(timeout)`` ends that thread and every connection it opened.

- **waitress** (the default): production grade, but it cannot hand a connection over to WebSocket, so
  Socket.IO runs long-polling only. Its worker threads are waitress's own (``waitress-N``), woken newest-idle
  first (:class:`LifoCondition`): waitress wakes the longest-idle one, so every request ran on the next of its
  32 threads and each kept its touched stack and caches resident (1.6 MB more idle RSS than 8 threads); now
  the threads that just served serve again and the rest stay cold until traffic needs them.
- **werkzeug**: the threaded development server; it hands the raw socket to ``simple-websocket``, so Socket.IO
  clients upgrade to WebSocket. Request threads are named ``llnode-http-N``. llnode binds the socket itself
  (werkzeug would ``sys.exit(1)`` on a bind error) and logs requests at DEBUG under ``llnode.node.http``
  (werkzeug's own logging would attach a handler to the ``werkzeug`` logger).

Both servers drop request headers whose names contain ``_`` (in WSGI ``a_b`` and ``a-b`` become the same key,
which would let a client spoof a header a proxy sets). A node may name a few headers it wants anyway
(``underscore_headers``, e.g. the detector's ``camera_id`` and ``creation_date``, which the reference's README
tells clients to send): those reach the app under their hyphenated name, unless the hyphenated header is there too.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import socket
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any, Protocol

logger = logging.getLogger('llnode.node.http')

SERVERS = ('gunicorn', 'waitress', 'werkzeug')

#: Most threads per server when ``serve()`` is not told (gunicorn's start on demand and end when idle;
#: waitress starts all of them; werkzeug starts one per connection).
DEFAULT_THREADS = {'gunicorn': 256, 'waitress': 32, 'werkzeug': 32}

#: waitress's open connections per worker thread (at least 100, its default): a long-polling Socket.IO client
#: holds two and a keep-alive REST client one, while only requests being answered take a thread.
CONNECTIONS_PER_THREAD = 4

#: How often the serving loops look at their stop flag when nothing wakes them.
POLL_INTERVAL_S = 0.2


class HTTPServer(Protocol):
    """What a node needs from a server: where it listens, start serving, stop within a time."""

    @property
    def address(self) -> tuple[str, int]: ...

    def start(self) -> None: ...

    def stop(self, timeout: float) -> bool: ...


def default_server() -> str:
    """gunicorn on Linux when it is installed and ``serve()`` runs in the main thread (it forks and handles
    signals), else waitress."""
    if not sys.platform.startswith('linux') or threading.current_thread() is not threading.main_thread():
        return 'waitress'
    try:
        import gunicorn  # noqa: F401
    except ImportError:
        return 'waitress'
    return 'gunicorn'


def default_threads(server: str) -> int:
    return DEFAULT_THREADS.get(server, 32)


def make_server(
    app: Any,
    host: str,
    port: int,
    *,
    server: str = 'waitress',
    threads: int = 8,
    underscore_headers: Iterable[str] = (),
    read_timeout_s: float | None = None,
) -> HTTPServer:
    """Bind ``host:port`` (port 0: any free port) for ``app`` with the named server; serving starts on ``start()``.

    ``server``: ``waitress`` or ``werkzeug`` (gunicorn runs through ``Node.serve()``, which forks).
    ``underscore_headers``: header names with ``_`` to pass to the app anyway (see the module docstring).
    ``read_timeout_s``: how long a connection may stay silent in the middle of a request (and, for werkzeug,
    between requests) before it is closed; None: the server's own default.
    """
    if server not in ('waitress', 'werkzeug'):
        raise ValueError(f'server must be waitress or werkzeug, got {server!r}')
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f'port must be an integer from 0 to 65535, got {port!r}')
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f'threads must be a positive integer, got {threads!r}')
    names = frozenset(_checked_header_names(underscore_headers))
    if server == 'waitress':
        return WaitressServer(app, host, port, threads=threads, underscore_headers=names, read_timeout_s=read_timeout_s)
    return WerkzeugServer(app, host, port, underscore_headers=names, read_timeout_s=read_timeout_s)


def _checked_header_names(names: Iterable[str]) -> list[str]:
    checked = []
    for name in names:
        if not isinstance(name, str) or '_' not in name or not name.replace('_', '').replace('-', '').isalnum():
            raise ValueError(f'underscore_headers must be header names containing "_", got {name!r}')
        checked.append(name.lower())
    return checked


def _underscore_headers(lines: Iterable[tuple[str, str]], names: frozenset[str]) -> Iterable[tuple[str, str]]:
    """``(WSGI key without HTTP_, value)`` for each header in ``lines`` that ``names`` lets through."""
    for name, value in lines:
        if name.strip().lower() in names:
            yield name.strip().upper(), value.strip(' \t')


class LifoCondition:
    """``threading.Condition``'s ``wait``/``notify``/``notify_all`` on ``lock``, waking the newest waiter first.

    The caller holds ``lock`` around every call, as with ``threading.Condition``.
    """

    def __init__(self, lock: Any) -> None:
        self._lock = lock
        self._waiters: list[Any] = []  # guarded by ``lock``; the last one waited last

    def wait(self, timeout: float | None = None) -> bool:
        waiter = threading.Lock()
        waiter.acquire()
        self._waiters.append(waiter)
        self._lock.release()
        woken = False
        try:
            woken = waiter.acquire(timeout=-1 if timeout is None else max(0.0, timeout))
            return woken
        finally:
            self._lock.acquire()
            if not woken:
                with contextlib.suppress(ValueError):  # a notify took it between the timeout and here
                    self._waiters.remove(waiter)

    @property
    def waiting(self) -> int:
        """Threads waiting now."""
        return len(self._waiters)

    def notify(self, n: int = 1) -> None:
        while self._waiters and n > 0:
            self._waiters.pop().release()
            n -= 1

    def notify_all(self) -> None:
        self.notify(len(self._waiters))


class WaitressServer:
    """waitress, driven by llnode's own loop so that the serving thread itself closes every channel on stop."""

    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        *,
        threads: int = 8,
        underscore_headers: frozenset[str] = frozenset(),
        read_timeout_s: float | None = None,
    ) -> None:
        from waitress import wasyncore
        from waitress.channel import HTTPChannel
        from waitress.parser import HTTPRequestParser
        from waitress.server import create_server
        from waitress.task import ThreadedTaskDispatcher
        from waitress.trigger import trigger

        self._asyncore = wasyncore
        self._map: dict[int, Any] = {}
        dispatcher = ThreadedTaskDispatcher()
        dispatcher.queue_cv = LifoCondition(dispatcher.lock)
        # ``_dispatcher``: waitress's own hook for a dispatcher made outside (its tests use it); waitress then
        # leaves starting the threads to us, which happens once the port is bound.
        timeouts = {} if read_timeout_s is None else {'channel_timeout': max(1, int(read_timeout_s))}
        # waitress stops accepting at 100 open connections (its default), and a long-polling Socket.IO client
        # keeps two (its poll and its posts): past 50 clients new connections waited in the backlog, REST included.
        try:
            self._server = create_server(
                app,
                map=self._map,
                host=host,
                port=port,
                threads=threads,
                connection_limit=max(100, CONNECTIONS_PER_THREAD * threads),
                _dispatcher=dispatcher,
                **timeouts,
            )
        except ValueError as e:  # waitress's word for a host name that does not resolve
            raise socket.gaierror(socket.EAI_NONAME, f'{host}: {e}') from e
        dispatcher.set_thread_count(threads)
        if underscore_headers:

            class Parser(HTTPRequestParser):
                def parse_header(self, header_plus: bytes) -> None:
                    super().parse_header(header_plus)
                    lines = (line.decode('latin-1').partition(':') for line in header_plus.split(b'\r\n')[1:])
                    pairs = ((name, value) for name, colon, value in lines if colon)
                    for key, value in _underscore_headers(pairs, underscore_headers):
                        self.headers.setdefault(key, value)

            class Channel(HTTPChannel):
                parser_class = Parser

            self._server.channel_class = Channel
        self._adj = self._server.adj
        self._dispatcher = self._server.task_dispatcher
        self._trigger = trigger(self._map)  # wakes the loop at once on stop
        # Guards pulling against closing the trigger: a pull on a closed (maybe reused) descriptor must not happen.
        self._trigger_lock = threading.Lock()
        self._trigger_closed = False
        listen = getattr(self._server, 'effective_listen', None)
        if listen:
            self._address = (str(listen[0][0]), int(listen[0][1]))
        else:
            self._address = (str(self._server.effective_host), int(self._server.effective_port))
        self._stop = threading.Event()
        self._stop_deadline = 0.0
        self._thread = threading.Thread(target=self._serve, name='llnode-http-waitress', daemon=True)
        self._closed = False

    @property
    def address(self) -> tuple[str, int]:
        return self._address

    def start(self) -> None:
        self._thread.start()
        logger.info('serving on http://%s:%d (waitress, Socket.IO long-polling only)', *self._address)

    def stop(self, timeout: float) -> bool:
        self._stop_deadline = time.monotonic() + max(0.0, timeout)
        self._stop.set()
        if not self._thread.is_alive():
            if not self._thread.ident:  # never started: clean up here
                self._close()
            return True
        with self._trigger_lock:
            if not self._trigger_closed:
                self._trigger.pull_trigger()
        self._thread.join(max(0.0, timeout) + POLL_INTERVAL_S)
        if self._thread.is_alive():
            logger.warning('waitress did not stop within %.1f s', timeout)
            return False
        return True

    def _serve(self) -> None:
        try:
            while not self._stop.is_set():
                self._loop_once(POLL_INTERVAL_S)
        except Exception:
            logger.exception('waitress serving loop failed')
        finally:
            self._close()

    def _loop_once(self, timeout: float) -> None:
        self._asyncore.loop(timeout=timeout, map=self._map, use_poll=self._adj.asyncore_use_poll, count=1)

    def _close(self) -> None:
        """Stop listening, let running requests finish (flushing their answers), then close every channel."""
        if self._closed:
            return
        self._closed = True
        from waitress.server import BaseWSGIServer

        deadline = self._stop_deadline or time.monotonic()
        for obj in list(self._map.values()):
            if isinstance(obj, BaseWSGIServer):
                # Only the listening socket: the server's trigger must stay usable for workers still answering.
                self._asyncore.dispatcher.close(obj)
        dispatcher = self._dispatcher
        while (dispatcher.active_count > 0 or dispatcher.queue) and time.monotonic() < deadline:
            self._loop_once(0.05)
        dispatcher.shutdown(cancel_pending=True, timeout=max(0.1, deadline - time.monotonic()))
        flush_until = min(deadline, time.monotonic() + 1.0)
        while time.monotonic() < flush_until and any(
            obj.writable() for obj in self._map.values() if obj is not self._trigger
        ):
            self._loop_once(0.05)
        with self._trigger_lock:
            self._trigger_closed = True
            self._trigger.close()
        self._asyncore.close_all(self._map)


class WerkzeugServer:
    """werkzeug's threaded server with named, tracked request threads; carries WebSocket for Socket.IO."""

    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        *,
        underscore_headers: frozenset[str] = frozenset(),
        read_timeout_s: float | None = None,
    ) -> None:
        from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

        class RequestHandler(WSGIRequestHandler):
            protocol_version = 'HTTP/1.1'
            timeout = read_timeout_s  # socketserver sets it on each connection: a silent client frees its thread

            def make_environ(self) -> Any:
                environ = super().make_environ()
                if underscore_headers:
                    for key, value in _underscore_headers(self.headers.items(), underscore_headers):
                        environ.setdefault(f'HTTP_{key}', value)
                return environ

            def log(self, type: str, message: str, *args: Any) -> None:
                level = logging.ERROR if type == 'error' else logging.DEBUG
                logger.log(level, '%s %s', self.address_string(), message % args if args else message)

            def connection_dropped(self, error: BaseException, environ: Any = None) -> None:
                # Also what engineio raises once a WebSocket it took over has ended: never read that socket again.
                self.close_connection = True

        connections: dict[threading.Thread, socket.socket] = {}
        connections_lock = threading.Lock()
        counter = itertools.count(1)

        class Server(ThreadedWSGIServer):
            def process_request(self, request: Any, client_address: Any) -> None:
                thread = threading.Thread(
                    target=self._serve_connection,
                    args=(request, client_address),
                    name=f'llnode-http-{next(counter)}',
                    daemon=True,  # a connection that outlives stop() must not hold up interpreter exit
                )
                with connections_lock:
                    connections[thread] = request
                thread.start()

            def _serve_connection(self, request: Any, client_address: Any) -> None:
                try:
                    self.process_request_thread(request, client_address)
                finally:
                    with connections_lock:
                        connections.pop(threading.current_thread(), None)

            def handle_error(self, request: Any, client_address: Any) -> None:
                logger.exception('error while serving %s', client_address)

            def log(self, type: str, message: str, *args: Any) -> None:
                logger.log(logging.ERROR if type == 'error' else logging.DEBUG, message, *args)

        self._connections = connections
        self._connections_lock = connections_lock
        listener = bind(host, port)
        try:
            self._server = Server(host, port, app, handler=RequestHandler, fd=listener.fileno())
        finally:
            listener.close()  # werkzeug works on its own duplicate of the descriptor
        self._address = (str(self._server.server_address[0]), int(self._server.server_address[1]))
        self._thread = threading.Thread(target=self._serve, name='llnode-http-werkzeug', daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        return self._address

    def start(self) -> None:
        self._thread.start()
        logger.info('serving on http://%s:%d (werkzeug, Socket.IO with WebSocket)', *self._address)

    def stop(self, timeout: float) -> bool:
        deadline = time.monotonic() + max(0.0, timeout)
        if self._thread.is_alive():
            self._server.shutdown()  # returns once serve_forever has left its loop (one poll interval)
            self._thread.join(max(0.0, deadline - time.monotonic()))
        elif not self._thread.ident:
            self._server.server_close()
        # Idle keep-alive connections block their thread in recv(): shutting down the read side ends them, while
        # a response being written still goes out.
        with self._connections_lock:
            open_connections = list(self._connections.items())
        for _, conn in open_connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RD)
        for thread, _ in open_connections:
            if thread is not threading.current_thread():  # stop() called from a request handler
                thread.join(max(0.0, deadline - time.monotonic()))
        with self._connections_lock:
            left = [t.name for t in self._connections if t is not threading.current_thread()]
        if left or self._thread.is_alive():
            logger.warning('werkzeug did not stop within %.1f s; still running: %s', timeout, left)
            return False
        return True

    def _serve(self) -> None:
        try:
            self._server.serve_forever(poll_interval=POLL_INTERVAL_S)
        except Exception:
            logger.exception('werkzeug serving loop failed')


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``; an address in use or unknown host is an ``OSError`` here."""
    family = socket.AF_INET6 if ':' in host else socket.AF_INET
    infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(infos[0][4])
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock
