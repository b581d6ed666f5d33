"""``LocalLoop``: the local Learning Loop as an object you start, use and stop (tests, demos, ``llnode loop``).

It serves the Flask app and the Socket.IO server (path ``/ws/socket.io``) from one WSGI server in a named
background thread: waitress by default, which cannot upgrade to WebSocket (so Engine.IO does not offer upgrades
and clients stay on long-polling), or werkzeug's threaded server with ``websocket=True``, which carries WebSocket
through simple-websocket.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import socketio

from llnode.config import Settings, user_path, writable_folder
from llnode.localloop.app import UI_SESSION_SECONDS, LoopContext, create_app
from llnode.localloop.faults import FaultMiddleware, FaultRules
from llnode.localloop.generator import DEMO_ORGANIZATION, DEMO_PROJECT, seed_demo
from llnode.localloop.sockets import NodeHub
from llnode.localloop.store import Store
from llnode.startup import bind_error

logger = logging.getLogger('llnode.localloop.server')

DEFAULT_DEMO_IMAGES = 120
#: waitress task threads; every long-polling Socket.IO client holds one while it waits for packets
WAITRESS_THREADS = 24
#: Engine.IO heartbeat. Shorter than python-engineio's 25 s / 20 s: a dead node shows as disconnected within
#: 15 s, and a polling client whose disconnect races its own long-poll (python-engineio's client can leave one
#: GET waiting for the next ping) is released within 5 s instead of 25 s.
PING_INTERVAL = 5.0
PING_TIMEOUT = 10.0


class DelayMiddleware:
    """Delays every HTTP answer by ``delay_ms`` so the local Loop behaves like a remote one."""

    def __init__(self, app: Callable[..., Iterable[bytes]], delay_ms: int, stopping: threading.Event) -> None:
        self.app = app
        self.delay = delay_ms / 1000.0
        self.stopping = stopping

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if self.delay > 0:
            self.stopping.wait(self.delay)
        return self.app(environ, start_response)


class LocalLoop:
    """A local Learning Loop on ``host:port`` backed by ``data_dir``; restartable on the same folder and port."""

    def __init__(
        self,
        data_dir: str | Path,
        *,
        host: str = '127.0.0.1',
        port: int = 0,
        websocket: bool = False,
        delay_ms: int = 0,
        users: Sequence[tuple[str, str]] = (('u', 'p'),),
        demo: bool = False,
        demo_images: int = DEFAULT_DEMO_IMAGES,
        seed: int = 0,
        threads: int = WAITRESS_THREADS,
        ping_interval: float = PING_INTERVAL,
        ping_timeout: float = PING_TIMEOUT,
        session_seconds: float = UI_SESSION_SECONDS,
    ) -> None:
        if delay_ms < 0:
            raise ValueError(f'delay_ms must not be negative, got {delay_ms}')
        self.data_dir = user_path(data_dir)  # resolved once: the loop never depends on the working directory
        self.host = host
        self.requested_port = port
        self.websocket = websocket
        self.delay_ms = delay_ms
        self.users = [(str(name), str(password)) for name, password in users]
        self.demo = demo
        self.demo_images = demo_images
        self.seed = seed
        self.threads = threads
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        if session_seconds <= 0:
            raise ValueError(f'session_seconds must be positive, got {session_seconds}')
        self.session_seconds = session_seconds
        self.port = 0
        self.store: Store = None  # type: ignore[assignment]  # set by start()
        self.sio: socketio.Server = None  # set by start()
        self.hub: NodeHub | None = None
        #: fault rules (see :meth:`inject_fault`); they outlive a restart of the server
        self.faults = FaultRules()
        self._context: LoopContext | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # owns start/stop transitions

    # ------------------------------------------------------------------ addresses

    @property
    def host_port(self) -> str:
        return f'{self.host}:{self.port}'

    @property
    def url(self) -> str:
        return f'http://{self.host_port}'

    @property
    def ui_url(self) -> str:
        """The address of the web UI (log in with one of ``users``)."""
        return f'{self.url}/'

    def settings(self, **overrides: Any) -> Settings:
        """Settings for a node talking to this Loop: first user's credentials, project ``zauberzeug/demo``."""
        username, password = self.users[0] if self.users else ('', '')
        values: dict[str, Any] = {
            'host': self.host_port,
            'username': username,
            'password': password,
            'organization': DEMO_ORGANIZATION,
            'project': DEMO_PROJECT,
            'data_folder': self.data_dir.with_name(f'{self.data_dir.name}-node'),
        }
        values.update(overrides)
        return Settings(**values)

    # ------------------------------------------------------------------ lifecycle

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> LocalLoop:
        """Open the store, seed, bind the port and serve in a background thread; returns once it serves.

        A folder it cannot write or a port it cannot bind is a :class:`~llnode.config.ConfigError` naming it.
        """
        with self._lock:
            if self.running:
                raise RuntimeError('this LocalLoop is running already')
            writable_folder(self.data_dir, 'data_dir', 'give the local Loop a folder this user may write')
            self.store = Store(self.data_dir)
            try:
                self.store.mark_all_nodes_disconnected()
                for name, password in self.users:
                    self.store.set_user(name, password)
                self._bind_and_serve()
            except BaseException:
                self.store.close()
                raise
        return self

    def _bind_and_serve(self) -> None:
        hub = NodeHub(
            self.store, allow_upgrades=self.websocket, ping_interval=self.ping_interval, ping_timeout=self.ping_timeout
        )
        context = LoopContext(self.store, hub, faults=self.faults, session_seconds=self.session_seconds)
        wsgi: Any = socketio.WSGIApp(hub.sio, create_app(context), socketio_path='ws/socket.io')
        wsgi = FaultMiddleware(wsgi, self.faults)
        if self.delay_ms:
            wsgi = DelayMiddleware(wsgi, self.delay_ms, context.stopping)
        try:
            server, target = self._make_server(wsgi)
        except OSError as e:
            raise bind_error(self.host, self.requested_port, e) from e
        if self.demo:
            seed_demo(self.store, images=self.demo_images, seed=self.seed, host=self.host_port)
        self.hub, self.sio, self._context, self._server = hub, hub.sio, context, server
        self.requested_port = self.requested_port or self.port  # a restart reuses the port
        self._thread = threading.Thread(target=target, name=f'llnode-localloop-{self.port}', daemon=True)
        self._thread.start()
        _wait_until_listening(self.host, self.port)
        logger.info('local loop serving at %s (%s)', self.url, 'werkzeug+websocket' if self.websocket else 'waitress')

    def _make_server(self, wsgi: Any) -> tuple[Any, Callable[[], Any]]:
        """Bind the port (an ``OSError`` when it cannot) with the chosen server; (server, its serving loop)."""
        if self.websocket:
            from werkzeug.serving import make_server

            server = make_server(
                self.host, self.requested_port, wsgi, threaded=True, request_handler=_quiet_request_handler()
            )
            self.port = server.server_port
            return server, server.serve_forever
        import waitress

        server = waitress.create_server(
            wsgi,
            host=self.host,
            port=self.requested_port,
            threads=self.threads,
            channel_timeout=120,
            ident='llnode-localloop',
        )
        self.port = int(server.effective_port)
        return server, server.run

    def stop(self, timeout: float = 10.0) -> None:
        """Disconnect nodes, stop serving and release the port, within about ``timeout`` seconds."""
        with self._lock:
            if self._server is None:
                return
            server, thread, hub, context = self._server, self._thread, self.hub, self._context
            self._server = None
            if context is not None:
                context.stopping.set()
            if hub is not None:
                hub.shutdown()
            deadline = time.monotonic() + timeout
            if self.websocket:
                server.shutdown()  # returns once serve_forever has left its loop (it polls every 0.5 s)
                server.server_close()
            else:
                _stop_waitress(server, timeout / 2)
            if thread is not None:
                thread.join(max(0.1, deadline - time.monotonic()))
                if thread.is_alive():
                    logger.warning('server thread %s did not stop within %.1f s', thread.name, timeout)
            self._thread = None
            self.store.close()
            logger.info('local loop at port %d stopped', self.port)

    # ------------------------------------------------------------------ acting like the Loop's web UI

    def _running_hub(self) -> NodeHub:
        if self.hub is None or self._server is None:
            raise RuntimeError('the LocalLoop is not running')
        return self.hub

    def send(self, node: str, event: str, *args: Any, timeout: float = 20.0) -> Any:
        """Call ``event`` on a connected node (by node id or sid); its ack, or None when none came in time."""
        return self._running_hub().send(node, event, *args, timeout=timeout)

    def begin_training(
        self, organization: str = DEMO_ORGANIZATION, project: str = DEMO_PROJECT, **options: Any
    ) -> dict[str, Any]:
        """Start a training on a connected trainer, as the web UI does; see
        :func:`llnode.localloop.trainings.begin_training` for ``options`` and the result."""
        from llnode.localloop.trainings import begin_training

        return begin_training(self.store, self._running_hub(), organization, project, **options)

    def nodes(self) -> list[dict[str, Any]]:
        """Nodes with their last status and live connection state."""
        return self._running_hub().nodes()

    # ------------------------------------------------------------------ faults for tests

    def inject_fault(
        self,
        method: str | None,
        path: str,
        status: int,
        *,
        count: int = 1,
        retry_after: float | None = None,
        detail: Any = None,
        after: int = 0,
        lose_answer: bool = False,
    ) -> dict[str, Any]:
        """Answer ``count`` requests matching ``method`` (``*``/None: any) and the regex ``path`` (searched in the
        request path) with ``status`` (and ``Retry-After``), after letting ``after`` matching requests through;
        with ``lose_answer`` the request is handled first and only its answer is replaced. Returns the rule; see
        :mod:`llnode.localloop.faults`."""
        return self.faults.add(
            method,
            path,
            status,
            count=count,
            retry_after=retry_after,
            detail=detail,
            after=after,
            lose_answer=lose_answer,
        )

    def clear_faults(self) -> None:
        """Remove every fault rule."""
        self.faults.clear()

    def fault_rules(self) -> list[dict[str, Any]]:
        """Every fault rule with how many faults it has ``left`` and how many ``hits`` it answered."""
        return self.faults.rules()

    def __enter__(self) -> LocalLoop:
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _quiet_request_handler() -> type:
    """werkzeug's request handler, logging to ``llnode.localloop.server`` (debug) instead of its own logger."""
    from werkzeug.serving import WSGIRequestHandler

    class QuietRequestHandler(WSGIRequestHandler):
        def log(self, type: str, message: str, *args: Any) -> None:
            logger.debug('%s %s', self.address_string(), message % args)

    return QuietRequestHandler


def _stop_waitress(server: Any, timeout: float) -> None:
    """Let waitress's task threads finish (long-polls were released by the hub), then close its sockets from
    inside its own loop thread, so that its loop ends with an empty socket map; about ``timeout`` seconds at most."""
    from waitress import wasyncore

    server.task_dispatcher.shutdown(timeout=timeout / 2)
    done = threading.Event()

    def close_everything() -> None:
        try:
            wasyncore.close_all(server._map)
        finally:
            done.set()

    try:
        server.trigger.pull_trigger(close_everything)
    except OSError:
        close_everything()
    if not done.wait(timeout / 2):
        logger.warning('waitress did not close its sockets within %.1f s; closing them from here', timeout)
        close_everything()


def _wait_until_listening(host: str, port: int, timeout: float = 10.0) -> None:
    """The server thread binds before it starts; this confirms it accepts connections."""
    with socket.create_connection((host, port), timeout=timeout):
        pass
