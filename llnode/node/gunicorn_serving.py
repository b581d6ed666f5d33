"""``serve(server='gunicorn')``: gunicorn's threaded worker, one worker process, run from Python, WebSocket for
Socket.IO (simple-websocket takes the connection from ``environ['gunicorn.socket']``).

The calling process becomes gunicorn's master (:class:`NodeArbiter`); it binds the port (a port in use is an
``OSError`` before anything forks), forks one worker and supervises it. The worker runs the node (the hooks of
:mod:`llnode.node.gunicorn_hooks` start it after the fork, so its threads, model, outbox and Loop link live
there and nothing touched CUDA before) and serves with :class:`NodeThreadWorker`: gthread with a pool that
grows with the connections and shrinks when idle, SIGINT handled like SIGTERM (a warm stop), a read timeout
on every connection, so a client that stops sending in the middle of a request frees its thread, and each
answer's head sent in one segment with its body (gunicorn writes them apart: a segment more, and a wake-up of
the client more, per request).

The master differs from gunicorn's own in what a worker's end means: the worker ends when the node ends, so
the master stops too and returns the worker's exit code (a restart request's code included) instead of forking
a new worker. SIGINT or SIGTERM stop the worker warmly (exit code 0); a second one kills it (exit code 1), as
``run()`` does.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import queue
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any

from gunicorn import util
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.http.message import Request
from gunicorn.sock import TCP6Socket, TCPSocket
from gunicorn.workers.gthread import TConn, ThreadWorker

from llnode.node import gunicorn_hooks
from llnode.node.threadpool import ElasticThreadPool
from llnode.node.websocket_connection import readable

logger = logging.getLogger('llnode.node.http')

#: The exit code ``serve()`` returns after a second signal forced the worker down (as ``run()``).
FORCED_EXIT_CODE = 1

#: How long a worker thread that just answered on a kept-alive connection waits for that client's next request
#: before handing the connection back to the poller.
NEXT_REQUEST_WAIT_S = 0.002

#: Most bytes the first read of a request takes: its head and, for a camera image, its whole body (gunicorn's
#: parser reads 8 KiB, then the rest of the body: a second ``recv``, and a second release of the GIL, per request).
FIRST_READ_BYTES = 64 * 1024

#: Longest wait, in the worker's main loop, for a client to close after a connection's last answer.
GRACEFUL_CLOSE_S = 0.1


class NodeThreadWorker(ThreadWorker):
    """gunicorn's gthread worker with an elastic, named thread pool, a read timeout per connection, and SIGINT
    as a warm stop (Ctrl-C reaches the worker too; gunicorn's own worker quits at once on it)."""

    def get_thread_pool(self) -> Any:
        return ElasticThreadPool(self.cfg.threads, name='llnode-http')

    def init_signals(self) -> None:
        super().init_signals()
        signal.signal(signal.SIGINT, self.handle_exit)

    def handle(self, conn: Any) -> Any:
        """gthread's ``handle``, and the next request of a kept-alive connection in the same thread when it comes
        within :data:`NEXT_REQUEST_WAIT_S` (a client sending request after request); otherwise the connection
        goes back to the poller as usual. It saves handing the connection to the main loop and back (a pipe
        write, two ``epoll_ctl`` and two thread switches per request). The wait is a ``recv`` of the request's
        start (:meth:`_TimedSocket.recv_next_request`), handed to gunicorn's parser."""
        while True:
            result = super().handle(conn)
            if isinstance(conn.sock, _TimedSocket):
                conn.sock.push()
            if result is not True or not self.alive or not conn.initialized or conn.is_http2:
                return result
            if conn.parser.unreader.buf.getvalue():
                continue  # the next request was read with this one
            sock = conn.sock
            if not isinstance(sock, _TimedSocket) or not sock.plain_blocking:
                if not readable(sock, NEXT_REQUEST_WAIT_S):
                    return result
                continue
            try:
                start = sock.recv_next_request(NEXT_REQUEST_WAIT_S)
            except OSError:
                return False  # the client reset the connection
            if start is None:
                return result  # none came: back to the poller
            if not start:
                return False  # the client closed the connection
            conn.parser.unreader.unread(start)

    def _keepalive_after(self, conn: Any, keepalive: bool) -> bool:
        if getattr(conn.sock, 'timed_out', False):
            return False  # the rest of a hung body would be drained for another timeout first
        return bool(super()._keepalive_after(conn, keepalive))

    def accept(self, listener: Any) -> None:
        try:
            client, address = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        timed = _TimedSocket(client.family, client.type, client.proto, fileno=client.detach())
        timed.set_read_timeout(getattr(self.app, 'read_timeout_s', None))
        timed.setblocking(True)
        self.enqueue_req(_NodeConn(self.cfg, timed, address, listener.getsockname()))


#: Prefix under which the worker passes a header named in ``Node.underscore_headers`` to the app
#: (gunicorn drops headers with ``_``; :func:`underscore_header_app` gives them their hyphenated name).
_UNDERSCORE_PREFIX = 'X-LLNODE-UNDERSCORE-'


class _NodeRequest(Request):
    underscore_headers: frozenset[str] = frozenset()

    def _apply_header_policy(self, name: str, value: str, *args: Any, **kwargs: Any) -> Any:
        if '_' in name and name.lower() in self.underscore_headers:
            name = _UNDERSCORE_PREFIX + name.replace('_', '-')
        return super()._apply_header_policy(name, value, *args, **kwargs)


class _NodeConn(TConn):
    def close(self, graceful: bool = False) -> None:
        # gunicorn's graceful close lingers up to 2 s for the peer's FIN, in the worker's main loop: a hung
        # client would stop every other connection that long. A connection whose read timed out is dropped;
        # the others linger briefly.
        if graceful and not getattr(self.sock, 'timed_out', False):
            util.close_graceful(self.sock, timeout=GRACEFUL_CLOSE_S)
        else:
            util.close(self.sock)

    def init(self) -> None:
        fresh = self.parser is None
        super().init()
        if fresh and self.parser is not None and hasattr(self.parser, 'mesg_class'):
            self.parser.mesg_class = _NodeRequest
            unreader: Any = getattr(self.parser, 'unreader', None)
            if isinstance(getattr(unreader, 'mxchunk', None), int):  # a socket's (gunicorn's SocketUnreader)
                unreader.mxchunk = max(unreader.mxchunk, FIRST_READ_BYTES)


def underscore_header_app(app: Any, names: Iterable[str]) -> Any:
    """Set the request class up to pass ``names`` (headers with ``_``) and wrap ``app`` to receive them under
    their hyphenated name, unless the hyphenated header is there too (as the other servers do)."""
    allowed = frozenset(name.lower() for name in names)
    _NodeRequest.underscore_headers = allowed
    if not allowed:
        return app
    keys = [(f'HTTP_{_UNDERSCORE_PREFIX}{name}'.upper().replace('-', '_'), f'HTTP_{name.upper()}') for name in allowed]

    def with_underscore_headers(environ: dict[str, Any], start_response: Any) -> Any:
        for marked, key in keys:
            value = environ.pop(marked, None)
            if value is not None:
                environ.setdefault(key, value)
        return app(environ, start_response)

    with_underscore_headers.app = app  # type: ignore[attr-defined]
    return with_underscore_headers


#: ``MSG_MORE`` where the platform has it (Linux); elsewhere a head is sent on its own, as gunicorn does.
_MSG_MORE = getattr(socket, 'MSG_MORE', 0)


def _head_with_body(data: Any) -> bool:
    """Whether ``data`` is a whole HTTP/1 response head that announces a body by its length, as gunicorn's
    ``Response.send_headers`` writes it right before the body."""
    return (
        _MSG_MORE != 0
        and isinstance(data, bytes)
        and data.startswith(b'HTTP/1.')
        and data.endswith(b'\r\n\r\n')
        and b'\r\ncontent-length:' in data.lower()
    )


@functools.lru_cache(maxsize=8)
def _timeval(seconds: float) -> bytes:
    """``seconds`` as the ``struct timeval`` that ``SO_RCVTIMEO`` takes."""
    whole = int(seconds)
    return struct.pack('ll', whole, int((seconds - whole) * 1e6))


class _TimedSocket(socket.socket):
    """A connection whose blocking reads give up after ``read_timeout_s`` of silence (the kernel's
    ``SO_RCVTIMEO``, which survives gthread's switches between non-blocking mode in its poller and blocking mode
    in a thread, and costs no extra system call per read as a Python-level timeout does), and whose answers
    leave in one segment, head and body together (:meth:`sendall`)."""

    #: Set once a read timed out: the connection is closed after its answer, never kept alive.
    timed_out = False
    #: Set while a response head waits in the kernel for its body (:meth:`sendall`).
    holding = False
    #: Set while the connection is blocking without a timeout, as last set through this object.
    plain_blocking = False
    #: A timeout asked for while blocking, set at the next read or write (:meth:`settimeout`).
    pending_timeout: float | None = None

    #: ``SO_RCVTIMEO`` as :meth:`set_read_timeout` set it (zero: reads wait for ever).
    read_timeout = _timeval(0.0)

    def set_read_timeout(self, seconds: float | None) -> None:
        if seconds:
            self.read_timeout = _timeval(seconds)
            self.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, self.read_timeout)

    def recv_next_request(self, wait_s: float) -> bytes | None:
        """The first bytes of the client's next request (up to :data:`FIRST_READ_BYTES`; empty if the client
        closed) if they come within ``wait_s``, else None. One ``recv`` with the kernel's read timeout shortened
        for it, instead of a ``poll`` and then a ``recv``: setting the timeout does not release the GIL, and
        each ``poll`` or ``recv`` does (a thread switch when other threads wait for it)."""
        self.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(wait_s))
        try:
            return super().recv(FIRST_READ_BYTES)  # not self.recv: an empty wait is no read timeout
        except (BlockingIOError, TimeoutError):
            return None
        finally:
            self.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, self.read_timeout)

    def setblocking(self, flag: bool) -> None:
        """``socket.setblocking``, without a system call when the connection is blocking already: gthread and
        gunicorn's parser ask for blocking mode twice per request, and each call releases the GIL, which costs
        the thread a switch when other threads wait for it (8 busy clients)."""
        self.pending_timeout = None
        if flag and self.plain_blocking:
            return
        super().setblocking(flag)
        self.plain_blocking = bool(flag)

    def settimeout(self, value: float | None) -> None:
        """``socket.settimeout``, without a system call when it sets the blocking mode the connection has, and
        with a timeout asked for on a blocking connection set only at the next read or write: gunicorn bounds
        the drain of a body's unread rest by one after every request, and then neither reads nor writes when the
        application read the whole body (two system calls, each releasing the GIL, for nothing)."""
        if value is None:
            self.pending_timeout = None
            if self.plain_blocking:
                return
        elif self.plain_blocking and isinstance(value, (int, float)) and value > 0:
            self.pending_timeout = float(value)
            return
        self.pending_timeout = None
        super().settimeout(value)
        self.plain_blocking = value is None

    def gettimeout(self) -> float | None:
        """``socket.gettimeout``, a timeout :meth:`settimeout` left for the next read or write included."""
        pending = self.pending_timeout
        return pending if pending is not None else super().gettimeout()

    def _apply_pending_timeout(self) -> None:
        """Set the timeout :meth:`settimeout` left for the next read or write (every read and write calls it)."""
        pending, self.pending_timeout = self.pending_timeout, None
        if pending is not None:
            super().settimeout(pending)
            self.plain_blocking = False

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        self._apply_pending_timeout()
        return super().recv_into(buffer, nbytes, flags)

    def send(self, data: Any, flags: int = 0) -> int:
        self._apply_pending_timeout()
        return super().send(data, flags)

    def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        self._apply_pending_timeout()
        return super().sendfile(file, offset, count)

    def sendall(self, data: Any, flags: int = 0) -> None:
        """``socket.sendall``, but a response head that announces a body is sent with ``MSG_MORE``: the kernel
        holds it and sends it in one segment with the body gunicorn writes next, instead of a segment of its own
        (one packet and one wake-up of the client fewer per answer). The bytes and their order stay as written;
        the next non-empty write sends both, and :meth:`push` sends a head that no body followed."""
        if self.pending_timeout is not None:
            self._apply_pending_timeout()
        if not flags and _head_with_body(data):
            super().sendall(data, _MSG_MORE)
            self.holding = True
            return
        super().sendall(data, flags)
        if data:
            self.holding = False

    def push(self) -> None:
        """Send a held head now (the worker calls it after each request: a ``HEAD`` request or an empty body
        writes nothing after the head, and the kernel would hold it up to 200 ms)."""
        if self.holding:
            self.holding = False
            with contextlib.suppress(OSError):  # the connection is gone: nothing left to send
                self.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # pushes what is queued (Linux)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        if self.pending_timeout is not None:
            self._apply_pending_timeout()
        try:
            return super().recv(bufsize, flags)
        except BlockingIOError:
            if self.gettimeout() is not None:
                raise  # non-blocking or a timeout of Python's own: not ours
            self.timed_out = True
            raise TimeoutError('the client sent nothing within the read timeout') from None
        except TimeoutError:
            self.timed_out = True
            raise


class NodeArbiter(Arbiter):
    """gunicorn's master for one node worker: the worker's end is the end, with the worker's exit code."""

    def __init__(self, app: Any, listener: socket.socket) -> None:
        super().__init__(app)
        self._listener = listener
        self.stopping = False
        self.forced = False
        self.worker_exit_code: int | None = None

    def start(self) -> None:
        kind = TCP6Socket if self._listener.family == socket.AF_INET6 else TCPSocket
        address = self._listener.getsockname()[:2]
        self.LISTENERS = [kind(address, self.cfg, self.log, fd=os.dup(self._listener.fileno()))]
        self._listener.close()
        super().start()

    def handle_term(self) -> None:
        logger.warning('SIGTERM received: warm shutdown (send it again to force)')
        raise StopIteration

    def handle_int(self) -> None:
        logger.warning('SIGINT received: warm shutdown (send it again to force)')
        raise StopIteration  # a warm stop, as SIGTERM (gunicorn's own master quits at once)

    def spawn_worker(self) -> int:
        master = os.getpid()
        try:
            return int(super().spawn_worker())
        except SystemExit as e:
            if os.getpid() == master:
                raise
            # The worker ends here: it must not unwind into the caller of serve(), which runs in the master.
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def reap_workers(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if not pid:
                return
            worker = self.WORKERS.pop(pid, None)
            if worker is None:
                continue
            worker.tmp.close()
            code = os.waitstatus_to_exitcode(status)
            if code < 0:
                name = signal.Signals(-code).name
                if not self.forced:
                    logger.error('the worker (pid %d) was killed by %s', pid, name)
                code = FORCED_EXIT_CODE
            if self.worker_exit_code is None:
                self.worker_exit_code = code
            if not self.stopping:
                raise StopIteration  # the node ended: the master ends too (halt() stops and exits)

    def manage_workers(self) -> None:
        if self.worker_exit_code is None and not self.WORKERS:
            self.spawn_workers()

    def stop(self, graceful: bool = True) -> None:
        """Stop the worker warmly; a second SIGINT/SIGTERM while waiting kills it (exit code 1)."""
        self.stopping = True
        for listener in self.LISTENERS:
            listener.close()
        self.LISTENERS = []
        self.kill_workers(signal.SIGTERM if graceful else signal.SIGQUIT)
        deadline = time.monotonic() + self.cfg.graceful_timeout
        while self.WORKERS and time.monotonic() < deadline:
            try:
                sig = self.SIG_QUEUE.get(timeout=0.05)
            except queue.Empty:
                sig = None
            if sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT) and not self.forced:
                logger.warning('%s received again: forcing shutdown', signal.Signals(sig).name)
                self.forced = True
                self.kill_workers(signal.SIGKILL)
            self.reap_workers()
        if self.WORKERS:
            logger.warning('the worker did not stop within %d s; killing it', self.cfg.graceful_timeout)
            self.kill_workers(signal.SIGKILL)
            deadline = time.monotonic() + 5.0
            while self.WORKERS and time.monotonic() < deadline:
                time.sleep(0.05)
                self.reap_workers()

    def request_stop(self) -> None:
        """Stop as on SIGTERM; safe from any thread of the master."""
        self.SIG_QUEUE.put_nowait(signal.SIGTERM)


class NodeApplication(BaseApplication):
    """gunicorn configured from Python for one node: no config files, no command line."""

    def __init__(
        self, app: Any, listener: socket.socket, *, threads: int, graceful_timeout: float, read_timeout_s: float
    ) -> None:
        self._app = app
        #: Longest wait for the next bytes of a request (the worker reads it).
        self.read_timeout_s = read_timeout_s
        self._listener = listener
        self._threads = threads
        self._graceful_timeout = graceful_timeout
        self.arbiter: NodeArbiter | None = None
        super().__init__()

    def load_config(self) -> None:
        host, port = self._listener.getsockname()[:2]
        settings: dict[str, Any] = {
            'bind': [f'[{host}]:{port}' if ':' in host else f'{host}:{port}'],
            'workers': 1,
            'worker_class': 'llnode.node.gunicorn_serving.NodeThreadWorker',
            'threads': self._threads,
            'worker_connections': max(1000, 4 * self._threads),
            'graceful_timeout': int(self._graceful_timeout),
            'timeout': 60,
            'keepalive': 5,
            'max_requests': 0,
            'preload_app': False,
            'control_socket_disable': True,
            'loglevel': 'warning',
            'proc_name': 'llnode',
            'post_fork': gunicorn_hooks.post_fork,
            'post_worker_init': gunicorn_hooks.post_worker_init,
            'worker_exit': gunicorn_hooks.worker_exit,
        }
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return self._app

    def request_stop(self) -> None:
        """Stop serving as on SIGTERM (the worker stops its node warmly); safe from any thread of the master."""
        arbiter = self.arbiter
        if arbiter is not None:
            arbiter.request_stop()

    def run(self) -> int:
        """Serve until the worker ends; the worker's exit code (1 when a second signal forced it)."""
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError(
                "server='gunicorn' forks a worker and handles signals: call serve() from the main thread, "
                "or use server='waitress'"
            )
        self.arbiter = arbiter = NodeArbiter(self, self._listener)
        handled = [*arbiter.SIGNALS, signal.SIGCHLD]
        previous = {signum: signal.getsignal(signum) for signum in handled}
        try:
            arbiter.run()
        except SystemExit:
            pass
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        if arbiter.forced:
            return FORCED_EXIT_CODE
        return arbiter.worker_exit_code if arbiter.worker_exit_code is not None else 0
