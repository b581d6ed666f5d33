"""The base every llnode node shares: lifecycle, the repeat thread, the web app, and the Loop link.

Lifecycle (DESIGN.md, "Threads and lifecycle"):

- ``start()`` returns at once: it runs ``on_start()`` and starts the repeat thread. ``stop()`` ends everything
  within a bounded time and runs ``on_stop()``. ``with node:`` does both. A node runs once.
- ``run()`` starts the node and blocks until SIGINT/SIGTERM, ``stop()`` or ``request_restart()``, then stops it
  and returns the exit code. ``serve(host, port, server=...)`` does the same while serving ``wsgi_app``.
- Signals (only when ``run()``/``serve()`` run in the main thread; the previous handlers come back afterwards):
  the first SIGINT/SIGTERM starts a warm shutdown (exit code 0), a second one forces: ``run()`` returns 1 at
  once, without waiting for threads (python-rq's worker does the same).
- Nothing calls ``sys.exit()``: a restart wish (the Loop's ``restart`` event, a node that needs a fresh
  process) is ``request_restart(code)``, which ends ``run()``/``serve()`` with that code; a supervisor restarts
  the process. A :class:`~llnode.node.restart.NodeNeedsRestartError` raised by a hook (or a logic, see the
  node types) is ``restart_needed(error)``: ``run()``/``serve()`` return ``EXIT_NEEDS_RESTART`` (75).

Hooks a node overrides (no leading underscores): ``on_start()``, ``on_repeat()``, ``on_stop()``, ``is_ready()``,
``stats()``, ``metric_families()``, ``api_description()`` and ``blueprints()``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any, ClassVar

import socketio
from flask import Blueprint, Flask

from llnode.config import ConfigError, Settings
from llnode.node.admission import ServingLimits, SocketIOAdmission
from llnode.node.app import SOCKETIO_PATH, common_blueprint, create_app, create_socketio_server
from llnode.node.errors import NodeHTTPError
from llnode.node.identity import node_key, node_uuid
from llnode.node.memory import IdleTrimmer, RequestActivity, tune_allocator
from llnode.node.metrics import Metric, NodeMetrics, loop_link_families, node_families, socketio_families
from llnode.node.openapi import ApiDescription, describe_common_routes
from llnode.node.repeat import REPEAT_INTERVAL, RepeatThread
from llnode.node.restart import EXIT_FORCED, EXIT_NEEDS_RESTART, EXIT_OK, NodeNeedsRestartError
from llnode.node.serving import SERVERS, HTTPServer, bind, default_server, default_threads, make_server
from llnode.node.wsmask import install as install_numpy_unmasking
from llnode.startup import bind_error, report

if TYPE_CHECKING:
    from llnode.loop.http import LoopClient
    from llnode.loop.socket import LaneFunction, LoopSocket
    from llnode.node.gunicorn_serving import NodeApplication

logger = logging.getLogger('llnode.node')

#: Total time ``stop()`` gives its steps (HTTP server, repeat thread, ``on_stop``, Loop link) by default.
STOP_TIMEOUT = 10.0

#: Longest wait for the Loop socket to disconnect (``PUT /socketio off``, ``stop()``).
SOCKET_CLOSE_TIMEOUT = 5.0

#: How often ``run()`` looks for a signal while it waits (signal handlers only count; they take no locks).
SIGNAL_POLL_S = 0.1

#: Distinct failures of ``stats()`` sections remembered, so each is logged once however often ``/stats`` is
#: scraped (beyond this many the oldest is forgotten, and logged again should it come back).
STATS_FAILURES_KEPT = 64

_NEW, _STARTING, _RUNNING, _STOPPING, _STOPPED = 'new', 'starting', 'running', 'stopping', 'stopped'
_STATES = (_NEW, _STARTING, _RUNNING, _STOPPING, _STOPPED)


class _ForcedShutdown(BaseException):
    """Raised by the signal handler on the second signal; unwinds whatever the main thread is doing."""


def _default_loop_client(settings: Settings) -> LoopClient:
    from llnode.loop.http import LoopClient

    return LoopClient(settings)


def _default_loop_socket(client: LoopClient, node_type: str) -> LoopSocket:
    from llnode.loop.socket import LoopSocket

    return LoopSocket(client, node_type)


class Node:
    """A Learning Loop node: a name, a stable uuid, a repeat cycle, a Flask app and a Socket.IO server.

    ``settings`` default to ``Settings.from_env()``. ``uuid`` overrides the one kept in ``uuids.json``.
    ``repeat_interval`` is the pause between repeat cycles (5 s as the reference; tests use less).
    ``loop_client_factory(settings)`` and ``loop_socket_factory(client, node_type)`` build the Loop link of
    nodes that need one (default: :class:`llnode.loop.http.LoopClient` and :class:`llnode.loop.socket.LoopSocket`).
    """

    #: ``nodeType`` the node announces to the Loop: ``node`` (base), ``trainer``, ``annotation_node``.
    node_type: ClassVar[str] = 'node'
    #: Whether ``start()`` creates a Loop HTTP client (``loop_client``); implied by ``needs_loop_socket``.
    needs_loop_client: ClassVar[bool] = False
    #: Whether the node keeps a Socket.IO link to the Loop (trainer, annotator), connected by the repeat cycle.
    needs_loop_socket: ClassVar[bool] = False
    #: Largest request body the web app accepts (413 above it); None: no limit.
    max_request_bytes: int | None = 64 * 1024 * 1024
    #: Request headers with ``_`` in their names that ``serve()`` passes to the app (both servers drop them
    #: otherwise); they arrive under their hyphenated names.
    underscore_headers: ClassVar[tuple[str, ...]] = ()
    #: Bounds on Socket.IO's long-lived connections and on hung requests under ``serve()``
    #: (:class:`llnode.node.admission.ServingLimits`); ``serve(limits=...)`` overrides them.
    serving_limits: ClassVar[ServingLimits] = ServingLimits()

    def __init__(
        self,
        name: str,
        *,
        settings: Settings | None = None,
        uuid: str | None = None,
        repeat_interval: float = REPEAT_INTERVAL,
        loop_client_factory: Callable[[Settings], LoopClient] | None = None,
        loop_socket_factory: Callable[[LoopClient, str], LoopSocket] | None = None,
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f'a node name must be a non-empty string, got {name!r}')
        if uuid is not None and not isinstance(uuid, str):
            raise TypeError(f'uuid must be a string, got {type(uuid).__name__}')
        self._name = name
        self._settings = settings if settings is not None else Settings.from_env()
        data_folder = self._settings.ensure_data_folder()
        self._uuid = uuid or node_uuid(data_folder, name)  # an empty uuid counts as "not given" (reference)

        self._loop_client_factory = loop_client_factory or _default_loop_client
        self._loop_socket_factory = loop_socket_factory or _default_loop_socket
        self._repeat = RepeatThread(
            self._cycle,
            interval=repeat_interval,
            name=f'llnode-repeat-{node_key(name)}',
            muted=self._settings.skip_repeat_on_start,
        )
        limits = self.serving_limits
        self._sio = create_socketio_server(limits.ping_interval_s, limits.ping_timeout_s)

        # Lifecycle state; ``_lifecycle_lock`` guards _state, _http, _exit_code and _started_at.
        self._lifecycle_lock = threading.Lock()
        self._state = _NEW
        self._http: HTTPServer | None = None
        # While this process is gunicorn's master for the node: the application and the master's pid (a forked
        # worker has a copy of this node, which runs there).
        self._gunicorn: tuple[NodeApplication, int] | None = None
        self._serving_address: tuple[str, int] | None = None
        self._exit_code: int | None = None
        self._started_at: float | None = None
        self._exit_event = threading.Event()  # run()/serve() return when it is set
        self._start_done = threading.Event()
        self._stopped = threading.Event()
        self._signals = 0  # written only by the signal handler (main thread), read by run()

        # The Loop link; ``_link_lock`` guards _loop_socket and _loop_handlers (the client is set once in start()).
        self._link_lock = threading.Lock()
        self._loop_client: LoopClient | None = None
        self._loop_socket: LoopSocket | None = None
        self._loop_handlers: dict[str, tuple[Callable[..., Any], LaneFunction | None]] = {}
        if self.needs_loop_socket:
            self._loop_handlers['restart'] = (self._on_loop_restart, None)

        # Failed stats sections already logged; ``_stats_lock`` guards _stats_failures.
        self._stats_lock = threading.Lock()
        self._stats_failures: OrderedDict[tuple[str, str], None] = OrderedDict()

        self._metrics = NodeMetrics(self.metric_families)

        self._app_lock = threading.Lock()
        self._flask_app: Flask | None = None
        self._wsgi_app: socketio.WSGIApp | None = None

    def __repr__(self) -> str:
        return f'<{type(self).__name__} {self._name!r} {self._uuid} {self._state}>'

    # ------------------------------------------------------------------ identity and parts

    @property
    def name(self) -> str:
        return self._name

    @property
    def uuid(self) -> str:
        """The id the Loop knows this node by (stable across restarts through ``uuids.json``)."""
        return self._uuid

    @property
    def settings(self) -> Settings:
        return self._settings

    @property
    def sio(self) -> socketio.Server:
        """The node's Socket.IO server (mounted at ``/ws/socket.io``); register events with ``node.sio.on``."""
        return self._sio

    @property
    def metrics(self) -> NodeMetrics:
        """The node's Prometheus registry (``GET /metrics``); ``metrics.registry`` takes collectors of your own."""
        return self._metrics

    @property
    def flask_app(self) -> Flask:
        """The Flask app, built on first use from ``blueprints()``."""
        with self._app_lock:
            if self._flask_app is None:
                self._flask_app = create_app(self.blueprints(), max_request_bytes=self.max_request_bytes)
            return self._flask_app

    @property
    def wsgi_app(self) -> socketio.WSGIApp:
        """The WSGI app for an external server: Socket.IO at ``/ws/socket.io``, the Flask app for the rest.

        A server that cannot hand connections over to WebSocket (waitress, most plain WSGI servers) needs
        ``node.websocket_enabled = False``; ``serve()`` sets it for its server.
        """
        flask_app = self.flask_app
        with self._app_lock:
            if self._wsgi_app is None:
                self._wsgi_app = socketio.WSGIApp(self._sio, flask_app, socketio_path=SOCKETIO_PATH)
                self._wsgi_app.llnode_node = self  # how llnode.node.gunicorn_hooks finds the node
            return self._wsgi_app

    @property
    def websocket_enabled(self) -> bool:
        """Whether Socket.IO clients may use (and upgrade to) WebSocket; otherwise long-polling only."""
        return bool(self._sio.eio.allow_upgrades)

    @websocket_enabled.setter
    def websocket_enabled(self, enabled: bool) -> None:
        # Read by engineio at each handshake, so it takes effect for the next connection.
        self._sio.eio.allow_upgrades = bool(enabled)
        self._sio.eio.transports = ['polling', 'websocket'] if enabled else ['polling']

    @property
    def loop_client(self) -> LoopClient | None:
        """The Loop HTTP client while running (nodes with ``needs_loop_client`` or ``needs_loop_socket``)."""
        return self._loop_client

    @property
    def loop_socket(self) -> LoopSocket | None:
        """The current Socket.IO link to the Loop, or None (not needed, not started, or muted)."""
        with self._link_lock:
            return self._loop_socket

    # ------------------------------------------------------------------ state

    @property
    def running(self) -> bool:
        """True between a successful ``start()`` and the beginning of ``stop()``."""
        return self._state == _RUNNING

    @property
    def muted(self) -> bool:
        """Whether the repeat cycle is muted (``SKIP_REPEAT_ON_START`` or ``PUT /socketio off``)."""
        return self._repeat.muted

    @property
    def exit_code(self) -> int | None:
        """The code ``run()``/``serve()`` return, once a restart or shutdown was asked for; else None."""
        return self._exit_code

    @property
    def uptime(self) -> int:
        """Whole seconds since ``start()`` (0 before)."""
        started = self._started_at
        return 0 if started is None else int(time.monotonic() - started)

    @property
    def server_address(self) -> tuple[str, int] | None:
        """``(host, port)`` while ``serve()`` serves (the real port when 0 was asked for), else None."""
        return self._serving_address

    # ------------------------------------------------------------------ hooks

    def on_start(self) -> None:
        """Called by ``start()`` before the repeat thread starts; an exception aborts the start.

        Keep it short: ``start()`` (and a server's readiness) waits for it. Long work belongs in a thread.
        """

    def on_repeat(self) -> None:
        """Called every repeat cycle (after the Loop link is ensured, for nodes that need one); exceptions are logged."""

    def on_stop(self) -> None:
        """Called by ``stop()`` after the repeat thread has ended, while the Loop link is still open."""

    def is_ready(self) -> bool:
        """Whether the node can do its job now (``GET /readyz``); raise ``Unavailable('why')`` to say why not."""
        return True

    def blueprints(self) -> list[Blueprint]:
        """The blueprints the app is built from; subclasses extend ``super().blueprints()``."""
        return [common_blueprint(self)]

    def api_description(self) -> ApiDescription:
        """The node's REST routes (and Socket.IO events) for ``GET /openapi.json`` and ``/docs``.

        Subclasses that add routes in ``blueprints()`` describe them here, on ``super().api_description()``; a
        test compares the document with the routes the app serves (:mod:`llnode.node.openapi`).
        """
        from llnode import __version__

        api = ApiDescription(
            f'llnode {self.node_type} node "{self._name}"',
            __version__,
            f'A Learning Loop node of type `{self.node_type}`, built on llnode. Errors are JSON `{{"detail": "..."}}` '
            'with the status each route lists.',
        )
        describe_common_routes(api, self)
        return api

    def openapi(self) -> dict[str, Any]:
        """The OpenAPI 3.1 document of this node (``GET /openapi.json``)."""
        return self.api_description().document()

    def stats(self) -> dict[str, Any]:
        """How the node is doing, as one JSON-able dict (``GET /stats`` answers it).

        Here: ``name``, ``uuid``, ``node_type``, ``uptime_s`` (seconds since ``start()``, 0 before), ``state``
        (``new``, ``starting``, ``running``, ``stopping`` or ``stopped``), ``muted`` (the repeat cycle) and, for
        nodes with a Loop socket, ``loop``: ``connected``, ``last_error`` (why the link is down, or None) and
        ``problem`` (the same in an operator's words, e.g. ``the Loop refused login for user 'x' (401)``).
        Subclasses add their sections to ``super().stats()``, each built with :meth:`stats_section`, so a section
        that fails reads ``{"error": "..."}`` and the rest still answers.
        """
        with self._lifecycle_lock:
            state, started = self._state, self._started_at
        stats: dict[str, Any] = {
            'name': self._name,
            'uuid': self._uuid,
            'node_type': self.node_type,
            'uptime_s': 0.0 if started is None else round(time.monotonic() - started, 3),
            'state': state,
            'muted': self.muted,
        }
        if self.needs_loop_socket:
            stats['loop'] = self.stats_section('loop', self._loop_stats)
        return stats

    def metric_families(self) -> Iterator[Metric]:
        """The node's own Prometheus metric families, built at each scrape (``GET /metrics``; the process
        collector's figures come besides).

        Here: ``llnode_node_info`` (name, uuid, node type, llnode version), ``llnode_node_state``, ``llnode_node_muted``,
        ``llnode_repeat_cycles_total``, ``llnode_repeat_failures_total``, the REST API's
        ``llnode_http_requests_total`` (by method, route and status) and ``llnode_http_requests_in_flight``,
        ``llnode_socketio_sessions`` (by transport), ``llnode_socketio_events_total`` (by event and outcome) and,
        for nodes with a Loop socket, ``llnode_loop_connected``.
        Subclasses yield from ``super().metric_families()`` and add their sections, each through
        :meth:`metrics_section`.
        """
        yield from self.metrics_section('node', lambda: node_families(self, _STATES, self._state, self._repeat))
        yield from self.metrics_section('http', self._metrics.requests.families)
        yield from self.metrics_section('socketio', lambda: socketio_families(self._sio))
        yield from self.metrics_section('socketio_events', lambda: [self._metrics.events.family()])
        if self.needs_loop_socket:
            yield from self.metrics_section('loop', lambda: loop_link_families(self.loop_socket))

    def metrics_section(self, name: str, source: Callable[[], Iterable[Metric]]) -> list[Metric]:
        """The families ``source()`` gives, or none when it raises (each distinct failure is logged once, as for
        :meth:`stats_section`), so one failing section never fails the scrape."""
        try:
            return list(source())
        except Exception as e:
            self._log_stats_failure(f'metrics {name}', f'{type(e).__name__}: {e}', e)
            return []

    def stats_section(self, name: str, source: Callable[[], Any]) -> Any:
        """``source()`` as the section ``name`` of :meth:`stats`, or ``{"error": "<Type>: <message>"}`` when it
        raises or returns something JSON cannot carry. Each distinct failure is logged once (with its traceback),
        not at every scrape."""
        try:
            value = source()
            json.dumps(value, allow_nan=False)  # a section that cannot be sent fails here, not the whole answer
        except Exception as e:
            message = f'{type(e).__name__}: {e}'
            self._log_stats_failure(name, message, e)
            return {'error': message}
        return value

    # ------------------------------------------------------------------ control

    def request_restart(self, exit_code: int = 0) -> None:
        """Ask ``run()``/``serve()`` to stop the node and return ``exit_code``; safe from any thread.

        The first request wins. A node started with ``start()`` only records the code (see ``exit_code``).
        """
        if isinstance(exit_code, bool) or not isinstance(exit_code, int) or not 0 <= exit_code <= 255:
            raise ValueError(f'exit_code must be an integer from 0 to 255, got {exit_code!r}')
        with self._lifecycle_lock:
            if self._exit_code is None:
                self._exit_code = exit_code
            code = self._exit_code
        logger.info('%s: restart requested (exit code %d)', self._name, code)
        self._exit_event.set()

    def restart_needed(self, error: BaseException) -> None:
        """Stop the node for a fresh process: ``run()``/``serve()`` return ``EXIT_NEEDS_RESTART``; any thread.

        What a :class:`~llnode.node.restart.NodeNeedsRestartError` from a hook or a logic leads to (a restart wish
        made before keeps its code).
        """
        logger.error('%s: needs a restart: %s', self._name, error or type(error).__name__)
        self.request_restart(EXIT_NEEDS_RESTART)

    def mute(self) -> None:
        """Mute the repeat cycle and disconnect the Loop socket (``PUT /socketio off``)."""
        self._repeat.mute()
        with self._link_lock:
            link, self._loop_socket = self._loop_socket, None
        if link is not None:
            logger.info('%s: muted; disconnecting from the Loop', self._name)
            self._close_quietly(link, SOCKET_CLOSE_TIMEOUT)
        else:
            logger.info('%s: muted', self._name)

    def unmute(self) -> None:
        """Run the repeat cycle again, the next one at once (it reconnects to the Loop where needed)."""
        self._repeat.unmute()
        logger.info('%s: unmuted', self._name)

    def handle_loop_event(self, event: str, handler: Callable[..., Any], *, lane: LaneFunction | None = None) -> None:
        """Handle ``event`` from the Loop on every Loop socket this node builds (its return value is the ack).

        ``lane`` orders events as :meth:`LoopSocket.on <llnode.loop.socket.LoopSocket.on>` describes: it maps an
        event's arguments to a key, and events with the same key run one after another in arrival order.
        """
        if not self.needs_loop_socket:
            raise RuntimeError(f'{type(self).__name__} has no Loop socket (needs_loop_socket is False)')
        from llnode.loop.socket import check_handler

        check_handler(event, handler, lane)
        with self._link_lock:
            self._loop_handlers[event] = (handler, lane)
            link = self._loop_socket
            if link is not None:
                link.on(event, handler, lane=lane)

    def readiness_problem(self) -> str | None:
        """Why the node is not ready (for ``GET /readyz``), or None when it is."""
        state = self._state
        if state != _RUNNING:
            return 'node is stopping' if state in (_STOPPING, _STOPPED) else 'node is not running'
        if self.needs_loop_socket:
            link = self.loop_socket
            if link is None or not link.connected:
                cause = None if link is None else getattr(link, 'problem', None) or link.last_error
                return 'not connected to the Loop' + (f': {cause}' if cause else '')
        try:
            ready = self.is_ready()
        except NodeHTTPError:
            raise
        except Exception as e:
            logger.exception('%s: is_ready() failed', self._name)
            return f'readiness check failed: {type(e).__name__}: {e}'
        return None if ready else 'node is not ready'

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Node:
        """Run ``on_start()`` and start the repeat thread; returns the node. A node starts once."""
        with self._lifecycle_lock:
            if self._state != _NEW:
                raise RuntimeError(f'{self!r} cannot start: a node starts once (create a new one)')
            self._state = _STARTING
        try:
            if self.needs_loop_client or self.needs_loop_socket:
                self._loop_client = self._loop_client_factory(self._settings)
            if self.needs_loop_socket:
                with self._link_lock:
                    self._loop_socket = self._build_loop_socket()
            self.on_start()
            with self._lifecycle_lock:
                self._started_at = time.monotonic()
                self._state = _RUNNING  # before the repeat thread: its first cycle must see a running node
            self._repeat.start()
        except BaseException as e:
            if isinstance(e, ConfigError):  # the user's to fix, said in one line by serve()/run(): no traceback
                logger.debug('%s: start failed', self._name, exc_info=True)
            else:
                logger.exception('%s: start failed', self._name)
            self._close_loop_link(SOCKET_CLOSE_TIMEOUT)
            with self._lifecycle_lock:
                self._state = _STOPPED
            self._stopped.set()
            self._start_done.set()
            raise
        self._start_done.set()
        logger.info('%s: started (uuid %s, type %s)', self._name, self._uuid, self.node_type)
        return self

    def stop(self, timeout: float = STOP_TIMEOUT) -> bool:
        """Stop everything within about ``timeout`` seconds; True if every thread ended in time. Idempotent."""
        deadline = time.monotonic() + max(0.0, timeout)
        self._exit_event.set()
        master = self._gunicorn
        if master is not None and master[1] == os.getpid():  # gunicorn's master (the node runs in the worker)
            master[0].request_stop()
            return self._stopped.wait(max(0.0, deadline - time.monotonic()))
        with self._lifecycle_lock:
            state = self._state
            if state == _NEW:
                self._state = _STOPPED
                self._stopped.set()
        if state == _NEW:
            return True
        if state == _STARTING:
            self._start_done.wait(max(0.0, deadline - time.monotonic()))
        with self._lifecycle_lock:
            state = self._state
            if state == _RUNNING:
                self._state = _STOPPING
        if state != _RUNNING:  # another caller stops it (or start failed): wait for that
            return self._stopped.wait(max(0.0, deadline - time.monotonic()))

        logger.info('%s: stopping', self._name)
        clean = True
        self._repeat.request_stop()
        self._disconnect_socketio_clients()
        with self._lifecycle_lock:
            http = self._http
            self._serving_address = None
        if http is not None:
            clean &= http.stop(max(0.0, deadline - time.monotonic()))
        clean &= self._repeat.stop(max(0.0, deadline - time.monotonic()))
        try:
            self.on_stop()
        except Exception:
            logger.exception('%s: on_stop() failed', self._name)
            clean = False
        self._close_loop_link(min(SOCKET_CLOSE_TIMEOUT, max(0.5, deadline - time.monotonic())))
        with self._lifecycle_lock:
            self._state = _STOPPED
        self._stopped.set()
        logger.info('%s: stopped%s', self._name, '' if clean else ' (some threads did not end in time)')
        return clean

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for_exit_request(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for ``stop()`` or ``request_restart()``; True once one was asked for."""
        return self._exit_event.wait(timeout)

    def run(self) -> int:
        """Start (unless started), block until a signal, ``stop()`` or ``request_restart()``, stop; the exit code.

        Exit codes (:mod:`llnode.node.restart`): 0 after a signal, ``stop()`` or a restart wish with code 0; 1 when
        a second signal forced the shutdown; 75 (``EXIT_NEEDS_RESTART``) after a ``NodeNeedsRestartError``
        (from ``on_start`` too); otherwise the code given to ``request_restart()``.

        A start-up error (:class:`~llnode.config.ConfigError`: a missing setting, a folder it cannot write) is one
        line on stderr and exit code 2 (:mod:`llnode.startup`); its traceback is logged at DEBUG only.
        """
        return self._block(None)

    def serve(
        self,
        host: str = '0.0.0.0',
        port: int = 80,
        *,
        server: str | None = None,
        threads: int | None = None,
        limits: ServingLimits | None = None,
    ) -> int:
        """Run the node and serve ``wsgi_app`` on ``host:port`` until it stops; returns the exit code like ``run()``.

        ``server``: ``'gunicorn'`` (the default on Linux when called from the main thread: gunicorn's threaded
        worker in one forked worker process, Socket.IO with WebSocket; the node runs in the worker),
        ``'waitress'`` (the default elsewhere; Socket.IO long-polling only: waitress cannot upgrade to
        WebSocket, so the node stops advertising upgrades) or ``'werkzeug'`` (threaded development server,
        carries WebSocket). ``threads``: the server's most threads (gunicorn 256, started on demand and ended
        when idle; waitress 32, all started; werkzeug: one per connection). ``limits``: bounds on Socket.IO
        sessions, waiting long-polls, WebSockets and hung requests (default ``serving_limits``); past one the
        next connection gets 503 with ``Retry-After``, so the REST API always keeps threads. See docs/serving.rst.
        A start-up error (a port in use, a missing setting) is one line on stderr naming it and the fix, and exit
        code 2, as in ``run()``; the node does not start.
        """
        server = default_server() if server is None else server
        if server not in SERVERS:
            raise ValueError(f'server must be one of {", ".join(SERVERS)}, got {server!r}')
        threads = default_threads(server) if threads is None else threads
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f'threads must be a positive integer, got {threads!r}')
        limits = self.serving_limits if limits is None else limits
        if not isinstance(limits, ServingLimits):
            raise TypeError(f'limits must be a ServingLimits, got {type(limits).__name__}')
        with self._lifecycle_lock:
            if self._http is not None:
                raise RuntimeError(f'{self!r} is already served')
            if self._state in (_STOPPING, _STOPPED):
                raise RuntimeError(f'{self!r} was stopped; create a new node')
        self.websocket_enabled = server != 'waitress'
        self._sio.eio.ping_interval = limits.ping_interval_s  # read by engine.io at each handshake and ping
        self._sio.eio.ping_timeout = limits.ping_timeout_s
        limits = limits.for_threads(None if server == 'werkzeug' else threads, websocket=self.websocket_enabled)
        admission = SocketIOAdmission(self.wsgi_app, self._sio.eio, SOCKETIO_PATH, limits)
        activity = RequestActivity(admission)
        if server == 'gunicorn':
            return self._serve_gunicorn(activity, host, port, threads, limits)
        if server == 'werkzeug':
            install_numpy_unmasking()  # a third of the server's work for a raw image frame (llnode.node.wsmask)
        tune_allocator()  # before any server thread exists: the arena cap applies to threads created after it
        try:
            http = make_server(
                activity,
                host,
                port,
                server=server,
                threads=threads,
                underscore_headers=self.underscore_headers,
                read_timeout_s=limits.read_timeout_s,
            )
        except OSError as e:
            return report(bind_error(host, port, e))
        with self._lifecycle_lock:
            self._http = http
        return self._block(http, IdleTrimmer(activity, release=self._release_cached_memory))

    def _serve_gunicorn(self, app: Any, host: str, port: int, threads: int, limits: ServingLimits) -> int:
        """This process becomes gunicorn's master; the node starts in the forked worker (llnode.node.gunicorn_hooks)."""
        if self._state != _NEW:
            raise RuntimeError(f"{self!r} is already started: server='gunicorn' starts the node in its worker")
        from llnode.node.gunicorn_serving import NodeApplication, underscore_header_app

        try:
            listener = bind(host, port)
        except OSError as e:
            return report(bind_error(host, port, e))
        address = listener.getsockname()[:2]
        application = NodeApplication(
            underscore_header_app(app, self.underscore_headers),
            listener,
            threads=threads,
            graceful_timeout=STOP_TIMEOUT + 5,
            read_timeout_s=limits.read_timeout_s,
        )
        self._serving_address = (str(address[0]), int(address[1]))
        self._gunicorn = (application, os.getpid())
        logger.info(
            'serving on http://%s:%d (gunicorn, 1 worker, up to %d threads, Socket.IO with WebSocket)',
            *self._serving_address,
            threads,
        )
        try:
            return application.run()
        finally:
            self._serving_address = None
            self._gunicorn = None
            with self._lifecycle_lock:
                self._state = _STOPPED
            self._stopped.set()

    # ------------------------------------------------------------------ internals

    def _block(self, http: HTTPServer | None, trimmer: IdleTrimmer | None = None) -> int:
        previous = self._install_signal_handlers() if threading.current_thread() is threading.main_thread() else {}
        try:
            try:
                if self._state == _NEW:
                    try:
                        self.start()
                    except BaseException as e:
                        if http is not None:
                            http.stop(1.0)
                        if isinstance(e, NodeNeedsRestartError):
                            self.restart_needed(e)
                            return EXIT_NEEDS_RESTART
                        if isinstance(e, ConfigError):
                            return report(e)
                        raise
                if http is not None:
                    http.start()
                    self._serving_address = http.address
                while self._signals == 0 and not self._exit_event.wait(SIGNAL_POLL_S):
                    if trimmer is not None:
                        trimmer.poll()  # hands free memory back once requests pause (llnode.node.memory)
                self.stop()
                if http is not None:
                    http.stop(STOP_TIMEOUT)  # a no-op unless the node was stopped before it was served
            except _ForcedShutdown:
                logger.warning('%s: forced shutdown; not waiting for threads', self._name)
                self._exit_event.set()
                self._repeat.request_stop()
                return EXIT_FORCED
            return self._exit_code if self._exit_code is not None else EXIT_OK
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

    def _install_signal_handlers(self) -> dict[int, Any]:
        self._signals = 0
        previous: dict[int, Any] = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._on_signal)
        return previous

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Runs in the main thread between bytecodes: it must take no lock that the main thread may hold.
        self._signals += 1
        name = signal.Signals(signum).name
        if self._signals == 1:
            logger.warning('%s: %s received: warm shutdown (send it again to force)', self._name, name)
            return
        logger.warning('%s: %s received again: forcing shutdown', self._name, name)
        raise _ForcedShutdown

    def _cycle(self) -> None:
        if self.needs_loop_socket and not self._ensure_loop_link():
            return
        try:
            self.on_repeat()
        except NodeNeedsRestartError as e:
            self.restart_needed(e)

    def _ensure_loop_link(self) -> bool:
        with self._link_lock:
            if self._repeat.muted or self._state != _RUNNING:
                return False
            link = self._loop_socket
            if link is None:
                link = self._loop_socket = self._build_loop_socket()
        return bool(link.ensure_connected())

    def _build_loop_socket(self) -> LoopSocket:
        """A new Loop socket with every registered handler (caller holds ``_link_lock``)."""
        if self._loop_client is None:
            raise RuntimeError('the Loop client is not created yet')
        link = self._loop_socket_factory(self._loop_client, self.node_type)
        for event, (handler, lane) in self._loop_handlers.items():
            link.on(event, handler, lane=lane)
        return link

    def _loop_stats(self) -> dict[str, Any]:
        link = self.loop_socket
        if link is None:  # not started yet, stopped, or muted
            return {'connected': False, 'last_error': None, 'problem': None}
        return {'connected': link.connected, 'last_error': link.last_error, 'problem': getattr(link, 'problem', None)}

    def _log_stats_failure(self, section: str, message: str, error: Exception) -> None:
        key = (section, message)
        with self._stats_lock:
            if key in self._stats_failures:
                self._stats_failures.move_to_end(key)
                return
            self._stats_failures[key] = None
            while len(self._stats_failures) > STATS_FAILURES_KEPT:
                self._stats_failures.popitem(last=False)
        logger.warning('%s: stats section %r failed: %s', self._name, section, message, exc_info=error)

    def _on_loop_restart(self, *args: Any) -> None:
        logger.warning('%s: the Loop asked for a restart', self._name)
        self.request_restart(0)

    def _release_cached_memory(self) -> None:
        """Free what this node keeps for reuse between requests; ``serve()`` calls it once requests pause."""

    def _close_loop_link(self, timeout: float) -> None:
        with self._link_lock:
            link, self._loop_socket = self._loop_socket, None
        if link is not None:
            self._close_quietly(link, timeout)
        client, self._loop_client = self._loop_client, None
        if client is not None:
            try:
                client.close()
            except Exception:
                logger.exception('%s: closing the Loop client failed', self._name)

    def _close_quietly(self, link: LoopSocket, timeout: float) -> None:
        try:
            link.close(timeout=timeout)
        except Exception:
            logger.exception('%s: closing the Loop socket failed', self._name)

    def _disconnect_socketio_clients(self) -> None:
        """Close every client of the node's Socket.IO server without waiting for them to read the close.

        ``eio.disconnect()`` would wait on each client's queue, forever for a polling client that is gone.
        """
        eio = self._sio.eio
        for client in list(eio.sockets.values()):
            try:
                client.close(wait=False)
            except Exception:
                logger.exception('%s: closing a Socket.IO client failed', self._name)
        try:
            self._sio.shutdown()
        except Exception:
            logger.exception('%s: stopping the Socket.IO server failed', self._name)
