"""A node's web app: one Flask app built from blueprints, one place that turns exceptions into JSON, and the
python-socketio server mounted beside it at ``/ws/socket.io``.

Each node builds its app in one function, :func:`create_app`, from the blueprints its ``blueprints()`` hook
returns (the common routes here; detect, models and outbox routes come from the detector). Errors never leave
as HTML: llnode's :class:`~llnode.node.errors.NodeHTTPError` keeps its status, werkzeug's HTTP errors (404, 405,
413 from ``MAX_CONTENT_LENGTH``) keep theirs, and anything else is a 500 ``{"detail": "internal error"}`` with
the traceback in the log.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from concurrent.futures import wait as futures_wait
from typing import IO, TYPE_CHECKING, Any

import engineio
import socketio
from flask import Blueprint, Flask, Request, Response, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as WerkzeugResponse

from llnode.logs import socketio_loggers
from llnode.node.docs_page import docs_page
from llnode.node.errors import BadRequest, NodeHTTPError
from llnode.node.metrics import UNMATCHED_ROUTE
from llnode.node.multipart import InMemoryFormDataParser
from llnode.node.threadpool import ElasticThreadPool
from llnode.node.websocket_connection import WEBSOCKET_RECEIVE_BYTES, closing_websocket_driver
from llnode.polling_limit import raise_polling_packet_limit

if TYPE_CHECKING:
    from llnode.node.node import Node

logger = logging.getLogger('llnode.node.app')

#: Where the Socket.IO server answers (the path the reference's clients use), without the leading slash as
#: ``socketio.WSGIApp`` wants it.
SOCKETIO_PATH = 'ws/socket.io'

#: Largest Socket.IO message accepted (reference v0.18.2+): a batch of images travels in one message.
SOCKETIO_MAX_BUFFER = 64 * 1024 * 1024


#: Most Socket.IO task threads at once (events being handled, ping timers, WebSocket writers): a bound that is
#: never reached in practice (the session limits come first), since a task must never wait for a thread.
TASK_THREADS_MAX = 10_000
_IDLE_TASK_THREAD = 'llnode-node-sio-idle'

#: How often every session's ping timeout is checked. engine.io's own service task visits the sessions one by one
#: over a whole ping timeout, so a client that vanished was given up as late as twice the ping timeout after its
#: last ping.
PING_CHECK_S = 1.0


class _EngineIOServer(engineio.Server):
    """engineio's threading server whose threads carry a name, so a leaked or stuck one is attributable, whose
    ``sleep`` (a ping thread per client waits the ping interval with it) ends at ``shutdown()``, and whose
    WebSockets read in large parts and end their reader thread when they close
    (:mod:`llnode.node.websocket_connection`), and which checks every session's ping timeout each
    :data:`PING_CHECK_S`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._shutting_down = threading.Event()
        self._tasks = ElasticThreadPool(TASK_THREADS_MAX, name=_IDLE_TASK_THREAD)
        super().__init__(*args, **kwargs)
        drivers: dict[str, Any] = dict(self._async)  # type: ignore[has-type]
        if drivers.get('websocket') is not None:
            drivers['websocket'] = functools.partial(
                closing_websocket_driver(drivers['websocket']), receive_bytes=WEBSOCKET_RECEIVE_BYTES
            )
        self._async = drivers

    def sleep(self, seconds: float = 0) -> None:
        self._shutting_down.wait(seconds)

    def shutdown(self) -> None:
        self._shutting_down.set()
        super().shutdown()
        self._tasks.shutdown(wait=False)  # idle task threads end now, busy ones after their task

    def _service_task(self) -> None:
        """Give up every client whose pong is overdue, within :data:`PING_CHECK_S` (replaces engine.io's service
        task, which checks one session per ``ping_timeout / sessions`` seconds); ends at ``shutdown()``."""
        self.service_task_event = stop = self.create_event()
        while not stop.wait(PING_CHECK_S):
            for sid, socket in list(self.sockets.items()):
                try:
                    if socket.closed:
                        self.sockets.pop(sid, None)
                    elif not socket.closing:
                        socket.check_ping_timeout()
                except engineio.exceptions.SocketIsClosedError:
                    pass  # closed since the look above
                except Exception:
                    logger.exception('checking the ping timeout of Socket.IO session %s failed', sid)

    def disconnect(self, sid: str | None = None) -> None:
        """Close a session (or all) without waiting for the client to read the close.

        engine.io's own ``disconnect`` waits until a poll has taken every queued packet, which never happens
        for a client that does not poll: a long-polling POST of a packet engine.io does not take (``6``,
        ``2probe``, ``7``) disconnected its session that way and held the server thread for good.
        """
        for key in [sid] if sid is not None else list(self.sockets):
            socket = self.sockets.pop(key, None)
            if socket is not None:
                socket.close(wait=False, reason=self.reason.SERVER_DISCONNECT)

    def start_background_task(self, target: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``target`` at once on an idle task thread, or a new one (never queued: tasks may run for a
        session's life). Every event a client sends is one task: starting a thread for each cost about 0.2 ms of a
        2-3 ms ``detect`` call. The handle has ``join()``, as a thread's."""
        name = f'llnode-node-sio-{getattr(target, "__name__", "task").strip("_")}'

        def task() -> None:
            thread = threading.current_thread()
            thread.name = name
            try:
                target(*args, **kwargs)
            except Exception:
                logger.exception('Socket.IO task %s failed', name)
            finally:
                thread.name = _IDLE_TASK_THREAD

        try:
            return _TaskHandle(self._tasks.submit(task))
        except RuntimeError:  # shut down: late tasks (a disconnect handler) get a thread of their own
            thread = threading.Thread(target=task, daemon=True, name=name)
            thread.start()
            return thread


class _TaskHandle:
    """What ``start_background_task`` returns: ``join()`` waits for the task, as for a thread."""

    def __init__(self, future: Future[Any]) -> None:
        self._future = future

    def join(self, timeout: float | None = None) -> None:
        futures_wait([self._future], timeout)

    def is_alive(self) -> bool:
        return not self._future.done()


#: Characters of a malformed packet quoted in its log line.
PACKET_PREVIEW_CHARS = 60


class MalformedPacket(ValueError):
    """A Socket.IO packet that decodes but cannot be an event (no list, no name, a name that is no string)."""


class _SocketIOServer(socketio.Server):
    """python-socketio's server that drops a malformed packet with one warning line.

    python-socketio lets decoding errors escape into engineio's handler thread (a traceback per packet) and
    hands an event whose name is not a string to a thread that dies on it (``42[{"a":1}]``: unhashable dict).
    """

    def _engineio_server_class(self) -> type[engineio.Server]:
        return _EngineIOServer

    def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        try:
            super()._handle_eio_message(eio_sid, data)
        except Exception as e:  # only decoding and dispatch run here; the handlers run in threads of their own
            reason = ' '.join(str(e).split())[:200] or type(e).__name__
            logger.warning('dropped a malformed Socket.IO packet from %s (%s): %s', eio_sid, _preview(data), reason)

    def _handle_event(self, eio_sid: str, namespace: str | None, id: int | None, data: Any) -> None:
        if not isinstance(data, list) or not data or not isinstance(data[0], str):
            raise MalformedPacket('an event must be a JSON list that starts with the event name, a string')
        super()._handle_event(eio_sid, namespace, id, data)


def _preview(data: Any) -> str:
    if isinstance(data, (bytes, bytearray)):
        return f'{len(data)} bytes of binary attachment'
    text = str(data)
    return repr(text[:PACKET_PREVIEW_CHARS]) + (
        f' ... {len(text)} characters' if len(text) > PACKET_PREVIEW_CHARS else ''
    )


def _unknown_event(event: str, sid: str, *args: Any) -> dict[str, str]:
    """The answer to an event no handler is registered for (python-socketio would not acknowledge it at all)."""
    logger.info('Socket.IO client %s sent the unknown event %r', sid, event[:PACKET_PREVIEW_CHARS])
    return {'error': f'unknown event {event!r}'}


def create_socketio_server(ping_interval: float = 5.0, ping_timeout: float = 20.0) -> socketio.Server:
    """The node's Socket.IO server (threading mode, 64 MiB messages, the library's default CORS policy, engine.io's
    ping every ``ping_interval`` s, a client given up after ``ping_timeout`` s without its pong: see
    :class:`~llnode.node.admission.ServingLimits`).

    WebSocket upgrades are allowed; a node served by waitress switches them off (see ``Node.websocket_enabled``).
    A long-polling POST may carry up to :data:`~llnode.polling_limit.POLLING_MAX_PACKETS` packets (a batch of
    images with binary attachments), a malformed packet is dropped with one warning, and an unknown event is
    acknowledged with ``{"error": "unknown event 'x'"}``.
    """
    raise_polling_packet_limit()
    server = _SocketIOServer(
        async_mode='threading',
        max_http_buffer_size=SOCKETIO_MAX_BUFFER,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        **socketio_loggers('llnode.node'),
    )
    server.on('*', _unknown_event)
    return server


class _InMemoryRequest(Request):
    """Keeps uploaded file parts in memory: werkzeug spools parts of large bodies to temp files, which would put
    disk I/O on the detect path; the body size is bounded by ``MAX_CONTENT_LENGTH`` anyway. Well-formed multipart
    bodies are split directly (:mod:`llnode.node.multipart`)."""

    form_data_parser_class = InMemoryFormDataParser
    #: werkzeug refuses a body of more than 1,000 parts with 413; a form with 1,000 small fields before its file
    #: is fine for the reference. The body's size stays bounded by ``MAX_CONTENT_LENGTH``.
    max_form_parts = 10_000

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        return io.BytesIO()


def create_app(blueprints: Iterable[Blueprint], *, max_request_bytes: int | None = None) -> Flask:
    """The node's Flask app: the given blueprints, JSON errors, and a request size limit (413 above it)."""
    app = Flask('llnode.node', static_folder=None)  # a node serves no files (no /static/<path> route)
    app.request_class = _InMemoryRequest
    app.config['MAX_CONTENT_LENGTH'] = max_request_bytes
    if isinstance(app.json, DefaultJSONProvider):
        app.json.sort_keys = False  # keys in the order the payload builds them, as the reference sends them
    for blueprint in blueprints:
        app.register_blueprint(blueprint)
    register_error_handlers(app)
    return app


def register_error_handlers(app: Flask) -> None:
    """Every error becomes JSON ``{"detail": ...}`` with a fitting status; never an HTML page."""
    app.register_error_handler(NodeHTTPError, _node_error)
    app.register_error_handler(HTTPException, _http_exception)
    app.register_error_handler(Exception, _unexpected_error)


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """``payload`` as a JSON response (strings become JSON strings, as the reference answers ``"on"``)."""
    return Response(json.dumps(payload), status=status, headers=headers, mimetype='application/json')


def _node_error(error: NodeHTTPError) -> Response:
    if error.status >= 500:
        logger.warning('%s %s -> %d: %s', request.method, request.path, error.status, error.detail)
    else:
        logger.info('%s %s -> %d: %s', request.method, request.path, error.status, error.detail)
    return json_response({'detail': error.detail}, error.status, error.headers)


def _http_exception(error: HTTPException) -> WerkzeugResponse:
    response = error.get_response()  # keeps headers such as Allow (405) and Location (redirects)
    response.set_data(json.dumps({'detail': error.description or error.name}))
    response.mimetype = 'application/json'
    return response


def _unexpected_error(error: Exception) -> Response:
    logger.error('%s %s failed', request.method, request.path, exc_info=error)
    return json_response({'detail': 'internal error'}, 500)


def common_blueprint(node: Node) -> Blueprint:
    """Routes every node serves: the reference's ``/debug_logging`` and ``/socketio``, plus health probes,
    ``/stats``, ``/metrics``, ``/openapi.json`` and ``/docs``; its request hooks count every request of the app for ``/metrics``."""
    blueprint = Blueprint('llnode_common', __name__)
    requests = node.metrics.requests

    @blueprint.before_app_request
    def count_started() -> None:
        requests.started()

    @blueprint.after_app_request
    def count_answered(response: WerkzeugResponse) -> WerkzeugResponse:
        rule = request.url_rule
        requests.answered(request.method, rule.rule if rule is not None else UNMATCHED_ROUTE, response.status_code)
        return response

    @blueprint.teardown_app_request
    def count_finished(error: BaseException | None) -> None:
        requests.finished()

    @blueprint.get('/openapi.json')
    def openapi() -> Response:
        """The node's OpenAPI 3.1 document (``Node.api_description()``)."""
        return json_response(node.openapi())

    @blueprint.get('/docs')
    def docs() -> Response:
        """The document as a page of its own: no script or style from elsewhere (:mod:`llnode.node.docs_page`)."""
        return Response(docs_page(node.openapi()), mimetype='text/html')

    @blueprint.get('/metrics')
    def metrics() -> Response:
        """Prometheus text format: the node's metrics and the process collector's (``llnode.node.metrics``)."""
        body, content_type = node.metrics.exposition(request.headers.get('Accept'))
        return Response(body, content_type=content_type)

    @blueprint.get('/healthz')
    def healthz() -> Response:
        """Liveness: the process serves requests."""
        return json_response({'status': 'ok'})

    @blueprint.get('/readyz')
    def readyz() -> Response:
        """Readiness: the node can do its job now (running, Loop link up where needed, its own ``is_ready()``)."""
        try:
            problem = node.readiness_problem()
        except NodeHTTPError as e:  # the node's own reason (no model yet): a probe's answer, not a failure to log
            logger.debug('GET /readyz -> %d: %s', e.status, e.detail)
            return json_response({'detail': e.detail}, e.status, e.headers)
        if problem is not None:
            logger.debug('GET /readyz -> 503: %s', problem)
            return json_response({'detail': problem}, 503)
        return json_response({'status': 'ready'})

    @blueprint.get('/stats')
    def stats() -> Response:
        """How the node is doing (``Node.stats()``); a section that fails reads ``{"error": ...}``, never a 5xx."""
        return json_response(node.stats())

    @blueprint.put('/debug_logging')
    def debug_logging() -> Response:
        """``on``/``off`` switches the ``llnode`` logger tree between DEBUG and INFO."""
        state = _on_off()
        logging.getLogger('llnode').setLevel(logging.DEBUG if state == 'on' else logging.INFO)
        logger.info('debug logging %s', state)
        return json_response(state)

    @blueprint.put('/socketio')
    def socketio_switch() -> Response:
        """``off`` disconnects the Loop socket (if any) and mutes the repeat cycle; ``on`` unmutes it."""
        state = _on_off()
        if state == 'off':
            node.mute()
        else:
            node.unmute()
        return json_response(state)

    return blueprint


def _on_off() -> str:
    """The raw body ``on`` or ``off`` (surrounding whitespace ignored); anything else is a 400."""
    try:
        state = request.get_data(cache=False).decode('utf-8').strip()
    except UnicodeDecodeError:
        state = ''
    if state not in ('on', 'off'):
        raise BadRequest('Invalid state')
    return state
