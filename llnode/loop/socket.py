"""The node's Socket.IO link to the Learning Loop (trainer and annotator), synchronous and threaded.

Why this module exists instead of using ``socketio.Client`` directly:

- **One reconnect mechanism.** python-socketio's own reconnection is switched off. A link that broke is rebuilt
  by :meth:`LoopSocket.ensure_connected`, called from the node's repeat cycle, with the reference's full procedure
  (readiness probe, forced login, a brand-new client) and an exponential backoff with jitter, so a Loop that is
  down never sees a reconnect storm.
- **The ack envelope.** Every handler registered with :meth:`LoopSocket.on` has its return value turned into the
  ``{"success", "error_msg", "payload"}`` envelope the Loop expects (:func:`envelope`).
- **Bounded shutdown.** :meth:`LoopSocket.close` disconnects within a timeout and leaves no thread of its own.

Threads. The sync engineio client runs one reader and one writer thread per connection. By itself it would decode
and handle every incoming Socket.IO packet in a thread of its own (``_trigger_event('message', ..., run_async=True)``
in engineio's ``Client._receive_packet``), so two events that arrive back to back could be handled in either order.
Here each client puts incoming packets in an inbox drained by one dispatcher thread, which decodes them in arrival
order, hands acks to waiting :meth:`LoopSocket.call` and routes each event, but never runs an event handler itself:
an event whose handler has a ``lane`` (see :meth:`LoopSocket.on`) runs in that lane's thread after the earlier
events with the same key, in the order they arrived; any other event runs in a thread of its own. So a slow handler
does not block ping/pong, acks or other events, a handler may itself ``call()`` the Loop, and handlers outside one
lane may run at the same time: a handler must guard the state it shares. Handlers of ``connect`` and
``connect_error`` run in the dispatcher thread and ``disconnect`` handlers in whichever thread noticed the end: they
must be quick. All these threads are named ``llnode-sio-*``.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import queue
import ssl
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from typing import Any, Protocol

import engineio
import engineio.packet
import engineio.payload
import requests
import socketio
import websocket

from llnode.backoff import Backoff
from llnode.failure_log import FailureLog
from llnode.logs import QuietLogger, socketio_loggers
from llnode.loop.causes import loop_cause
from llnode.loop.errors import LoopConnectionError, LoopError, LoopTimeout
from llnode.loop.tls_duplex import SerialTlsSocket
from llnode.polling_limit import raise_polling_packet_limit

logger = logging.getLogger('llnode.loop.socket')

#: Engine.IO path of the Loop's Socket.IO endpoint (on the same host and port as the REST API).
SOCKETIO_PATH = '/ws/socket.io'

#: ``nodeType`` handshake header values: ``node`` is the reference base-class default, ``detector`` what older
#: detectors sent, ``converter`` what :mod:`llnode.converter` nodes send.
NODE_TYPES = ('trainer', 'annotation_node', 'node', 'detector', 'converter')

#: Events handled by the link itself; a handler registered for one of them is called, but never wrapped.
INTERNAL_EVENTS = frozenset({'connect', 'disconnect', 'connect_error'})

ENVELOPE_KEYS = frozenset({'success', 'error_msg', 'payload'})

#: Budget of the readiness probe: one failed ``GET /api/status`` aborts the attempt.
READINESS_TIMEOUT = 5.0

#: Events that may wait in one lane behind the one it runs; one more is refused with an error ack.
LANE_CAPACITY = 64

#: Seconds an event may wait in its lane. One that waited longer (behind a stuck handler) is stale: it is answered
#: with an error ack instead of being run, so the lane catches up instead of replaying old input.
LANE_MAX_WAIT = 30.0


#: How long a disconnect waits for the client's dispatcher thread to finish the packet it is on.
DISPATCH_JOIN_TIMEOUT = 5.0

#: What a lane function returns: a key (events with equal keys run one after another), or None (no lane).
LaneFunction = Callable[..., Hashable | None]


def check_handler(event: Any, handler: Any, lane: Any = None) -> None:
    """Refuse what :meth:`LoopSocket.on` cannot register (a node checks at once, before any socket exists)."""
    if not isinstance(event, str) or not event:
        raise ValueError(f'event must be a non-empty string, got {event!r}')
    if not callable(handler):
        raise TypeError(f'handler for {event!r} must be callable, got {type(handler).__name__}')
    if lane is not None:
        if not callable(lane):
            raise TypeError(f'lane for {event!r} must be callable or None, got {type(lane).__name__}')
        if event in INTERNAL_EVENTS:
            raise ValueError(f'{event!r} is an event of the Loop socket itself; it takes no lane')


class _SettingsLike(Protocol):
    @property
    def socket_url(self) -> str: ...

    @property
    def organization(self) -> str: ...

    @property
    def project(self) -> str: ...

    @property
    def ssl_cert_path(self) -> str: ...


class LoopClientLike(Protocol):
    """What :class:`LoopSocket` needs from ``llnode.loop.http.LoopClient``."""

    @property
    def settings(self) -> _SettingsLike: ...

    def login(self) -> None: ...

    def backend_ready(self, timeout: float = 5.0) -> bool: ...

    def cookies(self) -> dict[str, str]: ...


def envelope(value: Any) -> dict[str, Any] | None:
    """The ack payload the Loop expects for a handler's return value (the reference's ``SocketResponse``).

    ``str`` -> success with the string as payload; ``bool`` -> that success, no payload; ``None`` -> no ack
    arguments (``None``); a mapping or dataclass that already is an envelope (exactly the keys ``success``,
    ``error_msg``, ``payload``) -> a plain dict copy of it. Anything else is a handler bug and becomes a failure
    envelope, so the Loop never receives a shape it does not know.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        return {'success': value, 'error_msg': None, 'payload': None}
    if isinstance(value, str):
        return {'success': True, 'error_msg': None, 'payload': value}
    candidate: dict[str, Any] | None = None
    if isinstance(value, Mapping) and set(value.keys()) == ENVELOPE_KEYS:
        candidate = dict(value)
    elif (
        dataclasses.is_dataclass(value)
        and not isinstance(value, type)
        and {f.name for f in dataclasses.fields(value)} == ENVELOPE_KEYS
    ):
        candidate = dataclasses.asdict(value)
    if candidate is not None:
        if isinstance(candidate['success'], bool) and (
            candidate['error_msg'] is None or isinstance(candidate['error_msg'], str)
        ):
            return candidate
        message = 'handler returned a malformed envelope (success must be bool, error_msg str or None)'
    else:
        message = f'handler returned unsupported type {type(value).__name__}'
    logger.error('%s: %r', message, value)
    return {'success': False, 'error_msg': message, 'payload': None}


_STOP_DISPATCH = object()


class _ClientLogger(QuietLogger):
    """An engineio client's logger: INFO as DEBUG (:class:`QuietLogger`), and the one warning that a clean goodbye
    over long-polling causes as DEBUG too: the server answers the poll that was waiting for it with a 400."""

    def __init__(self, logger: logging.Logger, client: _EngineIOClient) -> None:
        super().__init__(logger, {})
        self._client = client

    def warning(self, msg: object, *args: Any, **kwargs: Any) -> None:
        if self._client.goodbye_sent and isinstance(msg, str) and msg.startswith('Unexpected status code'):
            self.debug(msg, *args, **kwargs)
        else:
            super().warning(msg, *args, **kwargs)


class _EngineIOClient(engineio.Client):
    """engineio's threading client with named threads, incoming packets in arrival order, a prompt disconnect.

    Incoming messages go to an inbox that one dispatcher thread (started with the first message) drains in order;
    the inbox closes when the connection ends, and later messages are dropped. A client connects once: LoopSocket
    builds a new one for every connection. Overrides rely on engineio 4.x internals (``queue``, ``state``,
    ``current_transport``, ``_send_request``, ``_trigger_event``, ``_reset``); the tests in
    ``tests/loop/test_socket.py`` catch a change there.
    """

    _server_closed = False
    #: True once this client posted its long-polling CLOSE (see ``_send_packet``)
    goodbye_sent = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # ``_inbox_lock`` guards _inbox_open and _dispatch_thread; the inbox itself is a thread-safe queue.
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._inbox_lock = threading.Lock()
        self._inbox_open = True
        self._dispatch_thread: threading.Thread | None = None
        super().__init__(*args, **kwargs)
        current: Any = self.logger  # type: ignore[has-type]
        base = current.logger if isinstance(current, logging.LoggerAdapter) else current
        self.logger = _ClientLogger(base, self)

    def start_background_task(self, target: Callable[..., Any], *args: Any, **kwargs: Any) -> threading.Thread:
        name = getattr(target, '__name__', 'task').strip('_')
        thread = threading.Thread(target=target, args=args, kwargs=kwargs, daemon=True, name=f'llnode-sio-{name}')
        thread.start()
        return thread

    def _trigger_event(self, event: str, *args: Any, **kwargs: Any) -> Any:
        """Queue incoming messages for the dispatcher instead of a thread each; close the inbox on disconnect."""
        if event == 'message' and kwargs.get('run_async'):
            self._post(args)
            return None
        result = super()._trigger_event(event, *args, **kwargs)
        if event == 'disconnect':
            self._close_inbox()
        return result

    def _reset(self) -> None:
        # Every end of a connection passes here (disconnect, a transport error, a failed connect).
        super()._reset()
        self._close_inbox()

    def _post(self, args: tuple[Any, ...]) -> None:
        with self._inbox_lock:
            if not self._inbox_open:
                logger.debug('a Socket.IO packet after the end of the connection dropped')
                return
            self._inbox.put(args)
            if self._dispatch_thread is None:
                self._dispatch_thread = self.start_background_task(self._dispatch)

    def _close_inbox(self) -> threading.Thread | None:
        """Refuse further messages and let the dispatcher end after those queued; returns the dispatcher."""
        with self._inbox_lock:
            if self._inbox_open:
                self._inbox_open = False
                if self._dispatch_thread is not None:
                    self._inbox.put(_STOP_DISPATCH)
            return self._dispatch_thread

    def _dispatch(self) -> None:
        """The dispatcher thread: python-socketio's message handler for each queued message, in arrival order."""
        while True:
            args = self._inbox.get()
            if args is _STOP_DISPATCH:
                return
            super()._trigger_event('message', *args, run_async=False)

    def disconnect(self, abort: bool = False, reason: Any = None) -> None:
        """Disconnect, make sure the writer thread hears about it, and stop the dispatcher thread.

        engineio wakes its writer thread with a ``None`` in the send queue, but ``_reset()`` empties that queue
        right after; on a server-initiated close (``abort=True``, from the reader thread) the writer usually
        misses the ``None`` and waits for a packet until ``ping_interval + ping_timeout + 5`` s, and the reader
        and any thread calling ``disconnect()`` wait for it.
        """
        # abort=True means the server sent CLOSE: it has closed the session, a CLOSE back would only earn a 400.
        self._server_closed = abort
        super().disconnect(abort=abort, reason=reason)
        self.queue.put(None)
        dispatcher = self._close_inbox()
        # With abort=True the reader thread itself is here, and the dispatcher may be waiting for it in a
        # disconnect of its own: only a caller that waited for the reader waits for the dispatcher too.
        if dispatcher is not None and not abort and dispatcher is not threading.current_thread():
            dispatcher.join(DISPATCH_JOIN_TIMEOUT)
            if dispatcher.is_alive():
                logger.warning('the Socket.IO dispatcher did not end within %.1f s', DISPATCH_JOIN_TIMEOUT)

    def _send_packet(self, pkt: Any) -> None:
        """Send the long-polling CLOSE packet at once instead of through the writer thread.

        engineio queues CLOSE and flags the connection as closing. A writer thread that is in the middle of a
        POST at that moment sees the flag and ends without sending CLOSE; the reader's long-poll GET then only
        returns at the server's next ping (25 s by default), and so does ``disconnect()``. Posting CLOSE here,
        with whatever is still queued before it, lets the server end the long-poll right away.
        """
        state: str = self.state  # type: ignore[has-type]
        if pkt.packet_type != engineio.packet.CLOSE or state != 'connected' or self.current_transport != 'polling':
            super()._send_packet(pkt)
            return
        if self._server_closed:
            return
        packets = []
        while True:
            try:
                queued = self.queue.get_nowait()
            except queue.Empty:
                break
            self.queue.task_done()
            if queued is not None:
                packets.append(queued)
        packets.append(pkt)
        # The reader's long-poll returns once the server has the CLOSE; were the state still 'connected' it would
        # poll again with the ended session ("Invalid session" on the server, a 400 here). engineio sets this
        # state itself right after this method returns.
        self.state = 'disconnecting'
        self.goodbye_sent = True
        self._send_request(
            'POST',
            self.base_url,
            body=engineio.payload.Payload(packets=packets).encode(),
            headers={'Content-Type': 'text/plain'},
            timeout=self.request_timeout,
        )


class _CASession(requests.Session):
    """A session whose ``verify`` CA path wins over ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE``.

    engineio sends its polling requests without a per-request ``verify``, and requests then lets those
    environment variables (set in many container images) override ``session.verify``: the Loop's CA would be
    ignored. Proxy settings from the environment still apply.
    """

    def merge_environment_settings(self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any) -> Any:
        merged = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if isinstance(self.verify, str) and verify in (None, True):
            merged['verify'] = self.verify
        return merged


class _LoopWebSocket(websocket.WebSocket):
    """websocket-client's socket with a short closing handshake, and TLS calls that never overlap.

    ``WebSocket.close()`` waits up to 3 s for the peer's close frame, but engineio's reader thread is reading the
    same socket and consumes that frame, so every disconnect took the full 3 s. The peer has our close frame
    either way; waiting briefly for its answer is enough. Over ``wss://`` the connected socket is wrapped in a
    :class:`~llnode.loop.tls_duplex.SerialTlsSocket` (engineio reads and writes it from two threads).
    """

    def connect(self, url: str, **options: Any) -> None:
        super().connect(url, **options)
        if isinstance(self.sock, ssl.SSLSocket):
            self.sock = SerialTlsSocket(self.sock)  # type: ignore[assignment]  # has what websocket-client uses

    def close(
        self, status: int = websocket.STATUS_NORMAL, reason: bytes | str = b'', timeout: float | None = 0.2
    ) -> None:
        super().close(status, reason, timeout)


#: ``runner(event, args, run, refuse)``: called by the dispatcher thread for each incoming event, in arrival order;
#: it must call ``run()`` (the handler and its ack) in some other thread, or ``refuse(answer)`` (acks ``answer``).
EventRunner = Callable[[str, tuple[Any, ...], Callable[[], None], Callable[[Any], None]], None]


class _SocketIOClient(socketio.Client):
    #: What the Loop said when it refused the namespace connection (``connect_error``), for the error message.
    refusal: str | None = None
    #: Where events run (LoopSocket sets it); None: each event in a thread of its own.
    event_runner: EventRunner | None = None

    def _engineio_client_class(self) -> type[engineio.Client]:
        return _EngineIOClient

    def _handle_event(self, namespace: str | None, id: int | None, data: Any) -> None:
        """Hand the handler call and its ack (python-socketio's own ``_handle_event``) to the event runner.

        Called in the dispatcher thread, which must not wait for a handler: acks of ``call()`` and later events
        come through it.
        """
        if not isinstance(data, list) or not data or not isinstance(data[0], str):
            super()._handle_event(namespace, id, data)  # malformed: python-socketio reports it as before
            return
        handle = super()._handle_event

        def run() -> None:
            try:
                handle(namespace, id, data)
            except Exception:
                logger.exception('handling the event %r failed', data[0])

        def refuse(answer: Any) -> None:
            if id is not None:
                self._send_packet(
                    self.packet_class(socketio.packet.ACK, namespace=namespace or '/', id=id, data=[answer])
                )

        runner = self.event_runner
        if runner is None:
            threading.Thread(target=run, name='llnode-sio-event', daemon=True).start()
        else:
            runner(data[0], tuple(data[1:]), run, refuse)


@dataclasses.dataclass(eq=False)
class _PendingCall:
    """One ``call()`` waiting for its ack; failed at once when its connection drops."""

    sio: Any
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    ack: tuple[Any, ...] | None = None
    lost: str | None = None


@dataclasses.dataclass(frozen=True)
class _LaneRun:
    """One event waiting in a lane: ``run()`` handles it, ``stale(why)`` answers it when it waited too long."""

    run: Callable[[], None]
    stale: Callable[[str], None]
    queued_at: float


class _Lanes:
    """Per-key queues of event runs: runs with one key go one after another, in the order they were submitted.

    A lane's thread starts with its first run and ends when the lane's queue is empty. A run that waited more than
    ``max_wait`` seconds is not run; its ``stale`` callback says why. ``_lock`` guards the queues and the closed
    flag; the threads only take it between two runs.
    """

    def __init__(self, capacity: int, max_wait: float) -> None:
        self.capacity = capacity
        self.max_wait = max_wait
        self._lock = threading.Lock()
        self._waiting: dict[Hashable, collections.deque[_LaneRun]] = {}
        self._closed = False

    def submit(self, key: Hashable, run: Callable[[], None], stale: Callable[[str], None]) -> str | None:
        """Run ``run`` in ``key``'s lane once the runs before it are done; why not, or None when accepted."""
        with self._lock:
            if self._closed:
                return 'the Loop socket is closed'
            waiting = self._waiting.get(key)
            if waiting is not None:
                if len(waiting) >= self.capacity:
                    return f'{len(waiting)} events wait in their lane already'
                waiting.append(_LaneRun(run, stale, time.monotonic()))
                return None
            self._waiting[key] = collections.deque()  # the lane is busy: the thread below runs ``run`` now
        threading.Thread(target=self._drain, args=(key, run), name='llnode-sio-lane', daemon=True).start()
        return None

    def close(self) -> int:
        """Drop every waiting run (running ones finish) and refuse new ones; returns how many were dropped."""
        with self._lock:
            self._closed = True
            dropped = sum(len(waiting) for waiting in self._waiting.values())
            for waiting in self._waiting.values():
                waiting.clear()
        return dropped

    def _drain(self, key: Hashable, run: Callable[[], None]) -> None:
        while True:
            try:
                run()
            except BaseException:  # even a handler's sys.exit() must not leave the lane busy for good
                logger.exception('an event in lane %r failed', key)
            with self._lock:
                waiting = self._waiting[key]
                if not waiting:
                    del self._waiting[key]
                    return
                queued = waiting.popleft()
            waited = time.monotonic() - queued.queued_at
            if waited <= self.max_wait:
                run = queued.run
                continue
            why = f'it waited {waited:.1f} s in its lane (at most {self.max_wait:g} s)'
            run = functools.partial(queued.stale, why)


class LoopSocket:
    """The Socket.IO link of a trainer or annotator to its Loop.

    Owns its locks: ``_connect_lock`` serialises the reconnect procedure, ``_state_lock`` guards the current
    client, the broken flag, the backoff state, the handler and lane tables and the pending calls, ``_emit_lock``
    keeps multi-packet emits from interleaving. The lanes (:class:`_Lanes`, with a lock of their own) belong to the
    socket, not to one client, so one lane's order holds across a reconnect.
    """

    def __init__(
        self,
        client: LoopClientLike,
        node_type: str,
        *,
        request_timeout: float = 20.0,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        transports: list[str] | None = None,
    ) -> None:
        if node_type not in NODE_TYPES:
            raise ValueError(f'node_type must be one of {", ".join(NODE_TYPES)}, got {node_type!r}')
        if request_timeout <= 0:
            raise ValueError(f'request_timeout must be positive, got {request_timeout}')
        if backoff_initial <= 0 or backoff_max < backoff_initial:
            raise ValueError(
                f'need 0 < backoff_initial <= backoff_max, got backoff_initial={backoff_initial}, '
                f'backoff_max={backoff_max}'
            )
        if transports is not None:
            unknown = [t for t in transports if t not in ('polling', 'websocket')]
            if unknown or not transports:
                raise ValueError(f'transports must be a non-empty list of polling/websocket, got {transports!r}')
        self._client = client
        self._node_type = node_type
        self._request_timeout = request_timeout
        self._backoff_initial = backoff_initial
        # jittered (llnode.backoff), so that many nodes that lost the Loop together do not retry in lockstep
        self._backoff = Backoff(base=backoff_initial, cap=backoff_max)
        # a Loop that stays away is logged when it goes, once a minute while it is away, and when it is back
        self._connect_failures = FailureLog(logger, f'connecting to the Loop as {node_type}')
        self._transports = list(transports) if transports is not None else None

        self._connect_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._emit_lock = threading.Lock()
        self._closed = threading.Event()

        self._sio: Any = None
        self._http: requests.Session | None = None
        self._broken = False
        self._handlers: dict[str, Callable[..., Any]] = {}
        self._lane_functions: dict[str, LaneFunction] = {}
        self._lanes = _Lanes(LANE_CAPACITY, LANE_MAX_WAIT)
        self._pending: set[_PendingCall] = set()
        self._attempts = 0
        self._failures = 0
        self._next_attempt_at = 0.0
        self._last_error: str | None = None

    # ------------------------------------------------------------------ public API

    @property
    def node_type(self) -> str:
        return self._node_type

    @property
    def connected(self) -> bool:
        """True while the current client is connected and nothing marked the link broken."""
        with self._state_lock:
            return self._is_connected_locked()

    @property
    def attempts(self) -> int:
        """Connection attempts made so far (each runs the whole reconnect procedure)."""
        with self._state_lock:
            return self._attempts

    @property
    def retry_in(self) -> float:
        """Seconds until the back-off allows the next connection attempt (0 when one may run now)."""
        with self._state_lock:
            return max(0.0, self._next_attempt_at - time.monotonic())

    @property
    def problem(self) -> str | None:
        """Why connecting fails, in an operator's words (``the Loop refused login for user 'x' (401)``), or None."""
        return self._connect_failures.cause

    @property
    def last_error(self) -> str | None:
        """Why the link is down, or None; for status pages and logs."""
        with self._state_lock:
            return self._last_error

    @property
    def transport(self) -> str | None:
        """``'polling'`` or ``'websocket'`` while connected, else None."""
        with self._state_lock:
            sio = self._sio if self._is_connected_locked() else None
        return sio.transport() if sio is not None else None

    def on(self, event: str, handler: Callable[..., Any], *, lane: LaneFunction | None = None) -> None:
        """Handle ``event`` from the Loop; the return value becomes the ack envelope (see :func:`envelope`).

        Works before and after ``connect()``; the handler is registered on every client built later. Handlers
        for ``connect``, ``disconnect`` and ``connect_error`` are called after the link's own bookkeeping, with
        the raw arguments, and their return value is ignored.

        Without ``lane`` each event runs in a thread of its own. ``lane`` is called with the event's arguments as
        the event arrives and returns a hashable key or None: events with the same key (of any event name) run
        one after another in the order they arrived, in one thread; with None the event runs in a thread of its
        own; a lane function that raises is logged and the event runs without a lane. It must be quick: the
        next packets wait for it. At most :data:`LANE_CAPACITY` events wait in a lane; one more is refused (an
        ack with ``success: false`` when the Loop asked for one), and so is one that waited more than
        :data:`LANE_MAX_WAIT` seconds behind the others by the time its turn comes.
        """
        check_handler(event, handler, lane)
        with self._state_lock:
            known = event in self._handlers
            self._handlers[event] = handler
            if lane is None:
                self._lane_functions.pop(event, None)
            else:
                self._lane_functions[event] = lane
            sio = self._sio
        if sio is not None and not known and event not in INTERNAL_EVENTS:
            sio.on(event, self._dispatcher(event))

    def connect(self) -> None:
        """Run the reconnect procedure once; raises ``LoopConnectionError`` (or ``LoopAuthError``) on failure."""
        if self._closed.is_set():
            raise LoopConnectionError('the Loop socket is closed')
        with self._connect_lock:
            self._attempt()

    def ensure_connected(self) -> bool:
        """Reconnect if the link is broken or absent and the backoff allows an attempt now.

        Meant for the node's repeat cycle: never raises, never blocks longer than one attempt, and returns
        False at once while the backoff delay runs or another thread is connecting.
        """
        if self._closed.is_set():
            return False
        with self._state_lock:
            if self._is_connected_locked():
                return True
            if time.monotonic() < self._next_attempt_at:
                return False
        if not self._connect_lock.acquire(blocking=False):
            return False
        try:
            with self._state_lock:
                if self._is_connected_locked():
                    return True
                if self._closed.is_set() or time.monotonic() < self._next_attempt_at:
                    return False
            try:
                self._attempt()
            except LoopError:
                return False
            except Exception:
                logger.exception('unexpected error while connecting to the Loop')
                return False
            return True
        finally:
            self._connect_lock.release()

    def mark_broken(self, reason: str) -> None:
        """Declare the link unusable; the next ``ensure_connected`` runs the full reconnect procedure."""
        with self._state_lock:
            if self._broken or self._sio is None:
                self._last_error = reason
                return
            self._broken = True
            self._last_error = reason
        logger.warning('Loop socket marked broken: %s', reason)

    def emit(self, event: str, *args: Any) -> None:
        """Send ``event`` with positional ``args`` without waiting for an ack."""
        sio = self._require_connected(event)
        try:
            with self._emit_lock:
                sio.emit(event, data=tuple(args))
        except socketio.exceptions.SocketIOError as e:
            self._mark_broken_if_current(sio, f'emit of {event!r} failed: {e}')
            raise LoopConnectionError(f'emit of {event!r} failed: {e}') from e

    def call(self, event: str, *args: Any, timeout: float = 30.0) -> Any:
        """Send ``event`` and return the Loop's ack (one value, None for an empty ack, a tuple for several).

        Raises ``LoopConnectionError`` when not connected or the connection drops while waiting, and
        ``LoopTimeout`` when no ack arrives within ``timeout``; a timeout marks the link broken, as the
        reference disconnects when a status call times out.
        """
        sio = self._require_connected(event)
        pending = _PendingCall(sio)

        def on_ack(*ack: Any) -> None:
            pending.ack = ack
            pending.done.set()

        with self._state_lock:
            self._pending.add(pending)
        try:
            try:
                with self._emit_lock:
                    sio.emit(event, data=tuple(args), callback=on_ack)
            except socketio.exceptions.SocketIOError as e:
                self._mark_broken_if_current(sio, f'emit of {event!r} failed: {e}')
                raise LoopConnectionError(f'emit of {event!r} failed: {e}') from e
            if not pending.done.wait(timeout):
                message = f'no ack for {event!r} within {timeout:g} s'
                self._mark_broken_if_current(sio, message)
                raise LoopTimeout(message)
        finally:
            with self._state_lock:
                self._pending.discard(pending)
        if pending.ack is None:
            raise LoopConnectionError(f'connection lost while waiting for the ack of {event!r}: {pending.lost}')
        if len(pending.ack) == 0:
            return None
        if len(pending.ack) == 1:
            return pending.ack[0]
        return pending.ack

    def close(self, timeout: float = 5.0) -> None:
        """Disconnect and stop; returns within about ``timeout`` seconds. Idempotent.

        Events waiting in lanes are dropped; handlers that run already finish in their threads.
        """
        deadline = time.monotonic() + timeout
        self._closed.set()
        dropped = self._lanes.close()
        if dropped:
            logger.info('%d Loop event(s) waiting in lanes dropped: the Loop socket is closed', dropped)
        with self._state_lock:
            sio, http = self._sio, self._http
            self._sio, self._http = None, None
            self._fail_pending_locked(None, 'the Loop socket was closed')
        if sio is not None:
            self._dispose(sio, http, max(0.0, deadline - time.monotonic()))
        # An attempt running in another thread sees the closed flag and disposes of its own client.
        if self._connect_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            self._connect_lock.release()
        else:
            logger.warning('a connection attempt was still running when the Loop socket was closed')

    def __enter__(self) -> LoopSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ reconnect procedure

    def _attempt(self) -> None:
        """One run of the reconnect procedure (caller holds ``_connect_lock``), with backoff bookkeeping."""
        started = time.monotonic()
        with self._state_lock:
            self._attempts += 1
            attempt = self._attempts
        try:
            self._procedure()
        except Exception as e:
            with self._state_lock:
                self._failures += 1
                delay = self._backoff.delay(self._failures)
                self._next_attempt_at = time.monotonic() + delay
                self._last_error = str(e) or type(e).__name__
                if self._sio is not None:
                    self._broken = True
            self._connect_failures.failed(loop_cause(e, self._client.settings), exc_info=e)
            logger.debug('connecting to the Loop failed (attempt %d): %s; next attempt in %.1f s', attempt, e, delay)
            raise
        with self._state_lock:
            self._failures = 0
            self._next_attempt_at = started + self._backoff_initial
            self._last_error = None
        self._connect_failures.succeeded()
        logger.info('connected to the Loop at %s as %s', self._client.settings.socket_url, self._node_type)

    def _procedure(self) -> None:
        settings = self._client.settings
        if not self._client.backend_ready(timeout=READINESS_TIMEOUT):
            raise LoopConnectionError(f'the Loop at {settings.socket_url} is not ready (GET /api/status)')
        self._client.login()

        with self._state_lock:
            old_sio, old_http = self._sio, self._http
            self._sio, self._http = None, None
            self._broken = False
        if old_sio is not None:
            self._dispose(old_sio, old_http, self._request_timeout)

        sio, http = self._build(settings)
        try:
            sio.connect(
                settings.socket_url,
                headers=self._headers(settings),
                transports=self._transports,
                socketio_path=SOCKETIO_PATH,
                wait_timeout=self._request_timeout,
            )
        except (socketio.exceptions.SocketIOError, ValueError, OSError) as e:
            self._dispose(sio, http, self._request_timeout)
            reason = f'the Loop refused it: {sio.refusal}' if sio.refusal else str(e)
            raise LoopConnectionError(f'Socket.IO connection to {settings.socket_url} failed: {reason}') from e
        except BaseException:
            self._dispose(sio, http, self._request_timeout)
            raise
        with self._state_lock:
            accepted = sio.connected and not self._closed.is_set()
            if accepted:
                self._sio, self._http = sio, http
                self._broken = False
                # Handlers registered while the handshake ran (registering again is harmless).
                for event in self._handlers:
                    if event not in INTERNAL_EVENTS:
                        sio.on(event, self._dispatcher(event))
        if not accepted:
            self._dispose(sio, http, self._request_timeout)
            if self._closed.is_set():
                raise LoopConnectionError('the Loop socket was closed while connecting')
            raise LoopConnectionError(f'Socket.IO connection to {settings.socket_url} did not complete')

    def _headers(self, settings: _SettingsLike) -> dict[str, str]:
        return {'organization': settings.organization, 'project': settings.project, 'nodeType': self._node_type}

    def _build(self, settings: _SettingsLike) -> tuple[Any, requests.Session]:
        """A new client whose HTTP session carries the login cookies, the headers and the CA file.

        The cookies go into the session's jar, so requests sends them as the ``Cookie`` header on the handshake
        and on every later polling request, and engineio copies them into the WebSocket handshake. A CA path
        becomes ``session.verify``: requests verifies against it, and engineio passes it to websocket-client
        as ``sslopt['ca_certs']``.
        """
        http = _CASession()
        http.headers.update(self._headers(settings))
        for name, value in self._client.cookies().items():
            http.cookies.set(name, value)
        if settings.ssl_cert_path:
            http.verify = settings.ssl_cert_path
        sio = _SocketIOClient(
            reconnection=False,
            request_timeout=self._request_timeout,
            http_session=http,
            handle_sigint=False,
            websocket_extra_options={'class_': _LoopWebSocket},
            **socketio_loggers('llnode.loop.socket'),
        )
        sio.event_runner = self._run_event
        raise_polling_packet_limit()  # a burst of queued events arrives in one long-polling answer
        sio.on('connect', self._internal('connect', sio))
        sio.on('disconnect', self._internal('disconnect', sio))
        sio.on('connect_error', self._internal('connect_error', sio))
        with self._state_lock:
            events = [e for e in self._handlers if e not in INTERNAL_EVENTS]
        for event in events:
            sio.on(event, self._dispatcher(event))
        return sio, http

    def _dispose(self, sio: Any, http: requests.Session | None, timeout: float) -> None:
        """Disconnect ``sio`` and wait (bounded) until its reader and writer threads have ended."""

        def run() -> None:
            try:
                sio.disconnect()
            except Exception:
                logger.debug('disconnecting an old Socket.IO client failed', exc_info=True)
            if http is not None:
                http.close()

        worker = threading.Thread(target=run, name='llnode-sio-close', daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            logger.warning('the Socket.IO client did not disconnect within %.1f s; leaving it behind', timeout)

    # ------------------------------------------------------------------ event plumbing

    def _internal(self, event: str, sio: Any) -> Callable[..., None]:
        def handle(*args: Any) -> None:
            if event == 'disconnect':
                reason = args[0] if args else 'unknown'
                with self._state_lock:
                    current = sio is self._sio
                    if current:
                        self._broken = True
                        self._last_error = f'disconnected: {reason}'
                    self._fail_pending_locked(sio, f'disconnected: {reason}')
                if current:
                    logger.warning('lost the Socket.IO connection to the Loop (%s)', reason)
            elif event == 'connect_error':
                data = args[0] if args else None
                message = data.get('message') if isinstance(data, dict) else data
                sio.refusal = str(message) if message is not None else 'no reason given'
                logger.debug('the Loop refused the Socket.IO connection: %s', sio.refusal)
            with self._state_lock:
                user = self._handlers.get(event)
            if user is not None:
                try:
                    user(*args)
                except Exception:
                    logger.exception('%s handler failed', event)

        return handle

    def _run_event(
        self, event: str, args: tuple[Any, ...], run: Callable[[], None], refuse: Callable[[Any], None]
    ) -> None:
        """Start one incoming event in its lane or a thread of its own (a client's dispatcher thread calls it)."""
        with self._state_lock:
            lane = self._lane_functions.get(event)
        key: Hashable | None = None
        if lane is not None:
            try:
                key = lane(*args)
                hash(key)
            except Exception:
                logger.exception('the lane function of %r failed; the event runs without a lane', event)
                key = None
        if key is None:
            threading.Thread(target=run, name='llnode-sio-event', daemon=True).start()
            return

        def refuse_with(problem: str) -> None:
            message = f'{event!r} refused: {problem}'
            logger.warning('Loop event %s (lane %r)', message, key)
            refuse({'success': False, 'error_msg': message, 'payload': None})

        problem = self._lanes.submit(key, run, stale=refuse_with)
        if problem is not None:
            refuse_with(problem)

    def _dispatcher(self, event: str) -> Callable[..., Any]:
        def dispatch(*args: Any) -> dict[str, Any] | None:
            with self._state_lock:
                handler = self._handlers.get(event)
            if handler is None:
                return None
            try:
                result = handler(*args)
            except Exception as e:
                logger.exception('handler for %r failed', event)
                return {'success': False, 'error_msg': str(e), 'payload': None}
            return envelope(result)

        dispatch.__name__ = f'dispatch_{event}'
        return dispatch

    # ------------------------------------------------------------------ helpers

    def _is_connected_locked(self) -> bool:
        return self._sio is not None and bool(self._sio.connected) and not self._broken and not self._closed.is_set()

    def _require_connected(self, event: str) -> Any:
        with self._state_lock:
            if not self._is_connected_locked():
                why = self._last_error or 'connect() has not succeeded yet'
                if self._closed.is_set():
                    why = 'the Loop socket is closed'
                elif self._connect_lock.locked():  # also a connect handler's call: the attempt is not done yet
                    why = f'a connection attempt is under way; {why}'
                raise LoopConnectionError(f'cannot send {event!r}: not connected to the Loop ({why})')
            return self._sio

    def _mark_broken_if_current(self, sio: Any, reason: str) -> None:
        with self._state_lock:
            current = sio is self._sio
        if current:
            self.mark_broken(reason)

    def _fail_pending_locked(self, sio: Any, reason: str) -> None:
        for pending in self._pending:
            if (sio is None or pending.sio is sio) and not pending.done.is_set():
                pending.lost = reason
                pending.done.set()
