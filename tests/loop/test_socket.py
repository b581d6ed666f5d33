"""LoopSocket against real Socket.IO servers on 127.0.0.1: handshake, ack envelope, calls, event order and lanes,
reconnects, backoff."""

from __future__ import annotations

import http.server
import itertools
import logging
import secrets
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Collection, Hashable, Iterator
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import socketio
from werkzeug.serving import WSGIRequestHandler, make_server

from llnode.config import Settings
from llnode.localloop import LocalLoop
from llnode.localloop.sockets import NodeHub
from llnode.loop.errors import LoopAuthError, LoopConnectionError, LoopTimeout
from llnode.loop.http import LoopClient
from llnode.loop.socket import LANE_CAPACITY, LoopSocket, envelope
from tests.polling import wait_for

DEADLINE = 10.0


def socket_threads(ignore: Collection[threading.Thread] = ()) -> list[threading.Thread]:
    """The running threads of LoopSockets (all are named ``llnode-sio-*``), except those in ``ignore``."""
    return [t for t in threading.enumerate() if t.name.startswith('llnode-sio') and t not in ignore]


# ---------------------------------------------------------------------------------------------- fake Loop


class _QuietHandler(WSGIRequestHandler):
    def log(self, *args: Any, **kwargs: Any) -> None:
        pass


class FakeLoop:
    """A minimal Loop: ``/api/status``, ``/api/login`` (cookie ``session``) and Socket.IO on ``/ws/socket.io``.

    Records every status probe, login and Socket.IO connect (with its headers and cookie) in order. ``stop()``
    drops every client and closes the port; ``start()`` again serves on the same port with fresh sessions, like
    a restarted Loop.
    """

    def __init__(
        self, *, port: int = 0, certfile: str | None = None, keyfile: str | None = None, post_delay: float = 0.0
    ) -> None:
        self.port = port
        self.post_delay = post_delay
        self.handshake_delay = 0.0
        self.handshake_started = threading.Event()
        self.certfile, self.keyfile = certfile, keyfile
        self.ready = True
        self.log: list[str] = []
        self.connects: list[dict[str, Any]] = []
        self.disconnects: list[str] = []
        self.received: list[tuple[str, tuple[Any, ...]]] = []
        self.sessions: set[str] = set()
        self.sids: list[str] = []
        self.release = threading.Event()
        self._lock = threading.Lock()
        self._httpd: Any = None
        self._thread: threading.Thread | None = None
        self.sio: socketio.Server

    # -- lifecycle

    def start(self) -> FakeLoop:
        self.release.clear()
        self.sio = socketio.Server(async_mode='threading', cors_allowed_origins='*')
        self.sio.on('connect', self._on_connect)
        self.sio.on('disconnect', self._on_disconnect)
        self.sio.on('echo', self._on_echo)
        self.sio.on('hang', self._on_hang)
        self.sio.on('update_annotation_node', self._on_record)
        sio_app = socketio.WSGIApp(self.sio, self._rest, socketio_path='ws/socket.io')

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            if environ['PATH_INFO'].startswith('/ws/') and 'sid=' not in environ.get('QUERY_STRING', ''):
                self.handshake_started.set()
                time.sleep(self.handshake_delay)  # a slow Loop: the Engine.IO handshake takes a while
            result = sio_app(environ, start_response)
            if self.post_delay and environ['REQUEST_METHOD'] == 'POST' and environ['PATH_INFO'].startswith('/ws/'):
                time.sleep(self.post_delay)  # a slow network: the POST was handled, its answer comes late
            return result

        ssl_context = None
        if self.certfile:
            ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ssl_context.load_cert_chain(self.certfile, self.keyfile)
        self._httpd = make_server(
            '127.0.0.1', self.port, app, threaded=True, request_handler=_QuietHandler, ssl_context=ssl_context
        )
        self.port = self._httpd.server_port
        with self._lock:
            self.sessions = set()
        self._thread = threading.Thread(target=self._httpd.serve_forever, name='fakeloop-http', daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        with self._lock:
            sids = list(self.sids)
        for sid in sids:
            self.sio.disconnect(sid)
        self._httpd.shutdown()
        self._httpd.server_close()
        assert self._thread is not None
        self._thread.join(5)

    def settings(self, **overrides: Any) -> Settings:
        scheme = 'https' if self.certfile else 'http'
        values: dict[str, Any] = {
            'host': f'{scheme}://127.0.0.1:{self.port}',
            'username': 'u',
            'password': 'p',
            'organization': 'zauberzeug',
            'project': 'demo',
        }
        values.update(overrides)
        return Settings(**values)

    # -- REST

    def _rest(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        path, method = environ['PATH_INFO'], environ['REQUEST_METHOD']
        if path == '/api/status' and method == 'GET':
            with self._lock:
                self.log.append('status')
            status = '200 OK' if self.ready else '503 Service Unavailable'
            start_response(status, [('Content-Type', 'application/json')])
            return [b'{}']
        if path == '/api/login' and method == 'POST':
            size = int(environ.get('CONTENT_LENGTH') or 0)
            form = parse_qs(environ['wsgi.input'].read(size).decode())
            with self._lock:
                self.log.append('login')
            if form.get('username') != ['u'] or form.get('password') != ['p']:
                start_response('401 Unauthorized', [('Content-Type', 'text/plain')])
                return [b'bad credentials']
            token = secrets.token_hex(8)
            with self._lock:
                self.sessions.add(token)
            start_response('200 OK', [('Set-Cookie', f'session={token}; Path=/; HttpOnly')])
            return [b'']
        start_response('404 Not Found', [('Content-Type', 'text/plain')])
        return [b'not found']

    # -- Socket.IO

    def _on_connect(self, sid: str, environ: dict[str, Any], auth: Any) -> bool:
        cookie = SimpleCookie(environ.get('HTTP_COOKIE', ''))
        token = cookie['session'].value if 'session' in cookie else None
        with self._lock:
            self.log.append('connect')
            accepted = token in self.sessions
            self.connects.append(
                {
                    'sid': sid,
                    'organization': environ.get('HTTP_ORGANIZATION'),
                    'project': environ.get('HTTP_PROJECT'),
                    'nodeType': environ.get('HTTP_NODETYPE'),
                    'cookie': environ.get('HTTP_COOKIE'),
                    'token': token,
                    'auth': auth,
                    'accepted': accepted,
                }
            )
            if accepted:
                self.sids.append(sid)
        return accepted

    def _on_disconnect(self, sid: str, *args: Any) -> None:
        with self._lock:
            self.disconnects.append(sid)
            if sid in self.sids:
                self.sids.remove(sid)

    def _on_echo(self, sid: str, *args: Any) -> Any:
        return {'success': True, 'error_msg': None, 'payload': list(args)}

    def _on_hang(self, sid: str, *args: Any) -> bool:
        """Never acks while the test runs (the handler blocks until the Loop stops)."""
        with self._lock:
            self.received.append(('hang', args))
        self.release.wait(30)
        return True

    def _on_record(self, sid: str, *args: Any) -> None:
        with self._lock:
            self.received.append(('update_annotation_node', args))

    def last_sid(self) -> str:
        with self._lock:
            return self.sids[-1]

    def count(self, entry: str) -> int:
        with self._lock:
            return self.log.count(entry)


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def no_socket_thread_survives() -> Iterator[None]:
    """Every test ends with its sockets closed (``make_socket`` closes them); their threads must end soon after."""
    before = set(socket_threads())
    yield
    end = time.monotonic() + 5
    while (left := socket_threads(before)) and time.monotonic() < end:
        time.sleep(0.02)
    assert not left, f'socket threads still running 5 s after the test: {left}'


@pytest.fixture
def loop() -> Iterator[FakeLoop]:
    server = FakeLoop().start()
    yield server
    server.stop()


@pytest.fixture
def make_socket() -> Iterator[Callable[..., LoopSocket]]:
    """``make_socket(settings_or_client, node_type='trainer', **kwargs)``; closes sockets and clients at the end."""
    sockets: list[LoopSocket] = []
    clients: list[LoopClient] = []

    def make(target: Settings | LoopClient, node_type: str = 'trainer', **kwargs: Any) -> LoopSocket:
        client = target if isinstance(target, LoopClient) else LoopClient(target, timeout=10)
        clients.append(client)
        sock = LoopSocket(client, node_type, **kwargs)
        sockets.append(sock)
        return sock

    yield make
    for sock in sockets:
        sock.close()
    for client in clients:
        client.close()


def forged_cookie_client(settings: Settings, cookies: dict[str, str]) -> LoopClient:
    """A client that logs in but hands the socket other cookies than the Loop gave it."""
    client = LoopClient(settings, timeout=10)
    client.cookies = lambda: dict(cookies)  # type: ignore[method-assign]
    return client


# ---------------------------------------------------------------------------------------------- envelope


def test_envelope_maps_handler_results() -> None:
    assert envelope('abc') == {'success': True, 'error_msg': None, 'payload': 'abc'}
    assert envelope('') == {'success': True, 'error_msg': None, 'payload': ''}
    assert envelope(True) == {'success': True, 'error_msg': None, 'payload': None}
    assert envelope(False) == {'success': False, 'error_msg': None, 'payload': None}
    assert envelope(None) is None
    refused = {'success': False, 'error_msg': 'slot held by node x', 'payload': 'refused'}
    assert envelope(refused) == refused
    assert envelope(refused) is not refused
    for bad in ({'a': 1}, [1, 2], 3, 1.5, {'success': True, 'error_msg': None}):
        result = envelope(bad)
        assert result is not None
        assert result['success'] is False
        assert result['error_msg'] == f'handler returned unsupported type {type(bad).__name__}'
        assert result['payload'] is None
    malformed = envelope({'success': 'yes', 'error_msg': None, 'payload': None})
    assert malformed is not None
    assert malformed['success'] is False
    assert 'malformed envelope' in malformed['error_msg']


def test_envelope_accepts_an_envelope_dataclass() -> None:
    from dataclasses import dataclass

    @dataclass
    class SocketResponse:
        success: bool
        error_msg: str | None
        payload: Any

    assert envelope(SocketResponse(False, 'busy', 'refused')) == {
        'success': False,
        'error_msg': 'busy',
        'payload': 'refused',
    }


def test_bad_arguments_are_clear_errors(loop: FakeLoop) -> None:
    with LoopClient(loop.settings()) as client:
        with pytest.raises(ValueError, match='node_type'):
            LoopSocket(client, 'robot')
        with pytest.raises(ValueError, match='backoff'):
            LoopSocket(client, 'trainer', backoff_initial=5, backoff_max=1)
        with pytest.raises(ValueError, match='transports'):
            LoopSocket(client, 'trainer', transports=['carrier-pigeon'])
        sock = LoopSocket(client, 'trainer')
        with pytest.raises(TypeError):
            sock.on('x', 'not callable')  # type: ignore[arg-type]
        with pytest.raises(ValueError, match='non-empty'):
            sock.on('', lambda: None)


# ---------------------------------------------------------------------------------------------- handshake


@pytest.mark.parametrize(
    ('transports', 'expected'), [(None, 'websocket'), (['polling'], 'polling'), (['websocket'], 'websocket')]
)
def test_connect_sends_headers_and_login_cookie(
    loop: FakeLoop, make_socket: Callable[..., LoopSocket], transports: list[str] | None, expected: str
) -> None:
    sock = make_socket(loop.settings(), 'annotation_node', transports=transports)
    assert not sock.connected
    sock.connect()
    assert sock.connected
    assert sock.attempts == 1
    assert sock.transport == expected
    assert loop.log == ['status', 'login', 'connect']
    (seen,) = loop.connects
    assert seen['accepted']
    assert seen['organization'] == 'zauberzeug'
    assert seen['project'] == 'demo'
    assert seen['nodeType'] == 'annotation_node'
    assert seen['token'] in loop.sessions
    assert seen['cookie'] == f'session={seen["token"]}'
    assert seen['auth'] is None


def test_loop_refusing_the_handshake_is_a_connection_error(
    loop: FakeLoop, make_socket: Callable[..., LoopSocket]
) -> None:
    sock = make_socket(forged_cookie_client(loop.settings(), {'session': 'forged'}))
    with pytest.raises(LoopConnectionError, match=r'Socket\.IO connection'):
        sock.connect()
    assert not sock.connected
    assert loop.connects[-1]['accepted'] is False
    assert sock.last_error is not None


def test_bad_credentials_raise_auth_error(loop: FakeLoop, make_socket: Callable[..., LoopSocket]) -> None:
    sock = make_socket(loop.settings(password='wrong'))
    with pytest.raises(LoopAuthError):
        sock.connect()
    assert loop.log == ['status', 'login']
    assert not sock.ensure_connected()  # backoff: no second attempt right away
    assert sock.attempts == 1


def test_loop_not_ready_aborts_before_login(loop: FakeLoop, make_socket: Callable[..., LoopSocket]) -> None:
    loop.ready = False
    sock = make_socket(loop.settings())
    with pytest.raises(LoopConnectionError, match='not ready'):
        sock.connect()
    assert loop.log == ['status']


# ---------------------------------------------------------------------------------------------- acks


def test_server_calls_get_the_ack_envelope(loop: FakeLoop, make_socket: Callable[..., LoopSocket]) -> None:
    sock = make_socket(loop.settings())
    seen: list[tuple[Any, ...]] = []

    def begin_training(organization: str, project: str, details: dict[str, Any]) -> bool:
        seen.append((organization, project, details))
        return True

    def failing() -> None:
        raise RuntimeError('training 7 is still active')

    sock.on('begin_training', begin_training)
    sock.on('as_str', lambda: 'some payload')
    sock.on('as_false', lambda: False)
    sock.on('as_none', lambda: None)
    sock.on('failing', failing)
    sock.on('unsupported', lambda: {'id': 1})
    sock.on('refused', lambda: {'success': False, 'error_msg': 'slot held by node 1', 'payload': 'refused'})
    sock.connect()
    sid = loop.last_sid()

    def call(event: str, data: Any = None) -> Any:
        return loop.sio.call(event, data, to=sid, timeout=5)

    assert call('begin_training', ('zauberzeug', 'demo', {'training_number': 7})) == {
        'success': True,
        'error_msg': None,
        'payload': None,
    }
    assert seen == [('zauberzeug', 'demo', {'training_number': 7})]
    assert call('as_str') == {'success': True, 'error_msg': None, 'payload': 'some payload'}
    assert call('as_false') == {'success': False, 'error_msg': None, 'payload': None}
    assert call('as_none') is None
    assert call('failing') == {'success': False, 'error_msg': 'training 7 is still active', 'payload': None}
    assert call('unsupported') == {
        'success': False,
        'error_msg': 'handler returned unsupported type dict',
        'payload': None,
    }
    assert call('refused') == {'success': False, 'error_msg': 'slot held by node 1', 'payload': 'refused'}
    assert call('nobody_handles_this') is None
    assert sock.connected


def test_handler_registered_after_connect_and_replaced(loop: FakeLoop, make_socket: Callable[..., LoopSocket]) -> None:
    sock = make_socket(loop.settings())
    sock.connect()
    sock.on('late', lambda: 'first')
    sid = loop.last_sid()
    assert loop.sio.call('late', to=sid, timeout=5)['payload'] == 'first'
    sock.on('late', lambda: 'second')
    assert loop.sio.call('late', to=sid, timeout=5)['payload'] == 'second'


def test_slow_handler_does_not_block_other_events(loop: FakeLoop, make_socket: Callable[..., LoopSocket]) -> None:
    sock = make_socket(loop.settings())
    release = threading.Event()
    sock.on('slow', lambda: release.wait(10) and 'slow done')
    sock.on('quick', lambda: 'quick done')
    sock.connect()
    sid = loop.last_sid()
    slow_answer: list[Any] = []
    caller = threading.Thread(target=lambda: slow_answer.append(loop.sio.call('slow', to=sid, timeout=10)))
    caller.start()
    try:
        assert loop.sio.call('quick', to=sid, timeout=5)['payload'] == 'quick done'
        assert sock.call('echo', 1) == {'success': True, 'error_msg': None, 'payload': [1]}
    finally:
        release.set()
        caller.join(10)
    assert slow_answer == [{'success': True, 'error_msg': None, 'payload': 'slow done'}]


def test_call_says_why_it_cannot_send_before_during_and_after_the_connection(
    loop: FakeLoop, make_socket: Callable[..., LoopSocket]
) -> None:
    sock = make_socket(loop.settings())
    with pytest.raises(LoopConnectionError, match=r"cannot send 'echo': .*\(connect\(\) has not succeeded yet\)"):
        sock.call('echo', 1)
    in_handler: list[str] = []

    def on_connect() -> None:  # runs before connect() returns: the link is not ready for calls yet
        try:
            sock.call('echo', 1, timeout=DEADLINE)
        except LoopConnectionError as e:
            in_handler.append(str(e))

    sock.on('connect', on_connect)
    sock.connect()
    assert in_handler == [
        "cannot send 'echo': not connected to the Loop "
        '(a connection attempt is under way; connect() has not succeeded yet)'
    ]
    assert sock.call('echo', 2)['payload'] == [2]
    sock.close()
    with pytest.raises(LoopConnectionError, match=r'\(the Loop socket is closed\)'):
        sock.call('echo', 3)


def test_call_returns_the_loop_ack_and_emit_arrives(loop: FakeLoop, make_socket: Callable[..., LoopSocket]) -> None:
    sock = make_socket(loop.settings())
    sock.connect()
    status = {'id': 'n1', 'state': 'idle', 'errors': {}}
    assert sock.call('echo', status) == {'success': True, 'error_msg': None, 'payload': [status]}
    assert sock.call('echo', 'org', 'project', {'x': 1}) == {
        'success': True,
        'error_msg': None,
        'payload': ['org', 'project', {'x': 1}],
    }
    sock.emit('update_annotation_node', {'a': 1}, 'b')
    wait_for(lambda: ('update_annotation_node', ({'a': 1}, 'b')) in loop.received, what='the emitted event')


def test_call_without_ack_times_out_and_marks_the_link_broken(
    loop: FakeLoop, make_socket: Callable[..., LoopSocket]
) -> None:
    sock = make_socket(loop.settings(), backoff_initial=0.1)
    sock.connect()
    first_sid = loop.last_sid()
    started = time.monotonic()
    with pytest.raises(LoopTimeout, match="no ack for 'hang'"):
        sock.call('hang', {'state': 'idle'}, timeout=0.5)
    assert 0.5 <= time.monotonic() - started < 3
    assert not sock.connected
    with pytest.raises(LoopConnectionError, match='not connected'):
        sock.call('echo', 1)
    wait_for(sock.ensure_connected, what='the reconnect after a timeout')
    assert loop.last_sid() != first_sid
    wait_for(lambda: first_sid in loop.disconnects, what='the old connection to be closed')
    assert sock.call('echo', 2)['payload'] == [2]


def test_call_fails_fast_when_the_connection_drops(loop: FakeLoop, make_socket: Callable[..., LoopSocket]) -> None:
    sock = make_socket(loop.settings())
    sock.connect()
    sid = loop.last_sid()
    result: list[Any] = []

    def waiting_call() -> None:
        try:
            sock.call('hang', timeout=20)
        except LoopConnectionError as e:
            result.append(e)

    caller = threading.Thread(target=waiting_call)
    started = time.monotonic()
    caller.start()
    wait_for(lambda: loop.received, what='the call to arrive')
    loop.sio.disconnect(sid)
    caller.join(10)
    assert len(result) == 1
    assert not isinstance(result[0], LoopTimeout)
    assert time.monotonic() - started < 10
    assert not sock.connected


def test_emit_and_call_when_not_connected(loop: FakeLoop, make_socket: Callable[..., LoopSocket]) -> None:
    sock = make_socket(loop.settings())
    with pytest.raises(LoopConnectionError):
        sock.emit('x')
    with pytest.raises(LoopConnectionError):
        sock.call('x', timeout=1)


# ---------------------------------------------------------------------------------------------- order and lanes


def work(n: int) -> None:
    """A handler's work, of a length that varies from event to event (0-2 ms; not a wait for anything)."""
    time.sleep((n * 7 % 3) / 1000)


class Recorder:
    """What handlers saw, guarded by a lock: ``record(entry)`` from any thread, ``entries()`` for the test."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[Any] = []

    def record(self, entry: Any) -> None:
        with self._lock:
            self._entries.append(entry)

    def entries(self) -> list[Any]:
        with self._lock:
            return list(self._entries)

    def record_and_key(self, entry: Any, key: Hashable) -> Hashable:
        """For lane functions: record the event's arrival, answer its lane key."""
        self.record(entry)
        return key


def received(recorder: Recorder, count: int) -> Callable[[], bool]:
    return lambda: len(recorder.entries()) >= count


@pytest.mark.parametrize('transports', [['polling'], ['websocket']])
def test_events_of_one_lane_run_in_arrival_order(
    loop: FakeLoop, make_socket: Callable[..., LoopSocket], transports: list[str]
) -> None:
    sock = make_socket(loop.settings(), transports=transports)
    seen = Recorder()

    def handle(n: int, blob: bytes | None) -> None:
        work(n)
        seen.record((n, blob, threading.current_thread().name))

    sock.on('seq', handle, lane=lambda n, blob: 'one')
    sock.connect()
    sid = loop.last_sid()
    count = 200
    expected = [(n, bytes([n % 256]) * 3 if n % 3 == 0 else None) for n in range(count)]
    # Back to back, in bursts a lane can hold (LANE_CAPACITY); every third one is a binary packet with an
    # attachment. Over polling a burst reaches the client in one answer of ~67 packets (engineio's client alone
    # drops the connection above 16: POLLING_MAX_PACKETS).
    burst = 50
    for start in range(0, count, burst):
        for n, blob in expected[start : start + burst]:
            loop.sio.emit('seq', (n, blob), to=sid)
        wait_for(received(seen, min(start + burst, count)), what=f'events {start} and on')
    assert [(n, blob) for n, blob, _ in seen.entries()] == expected
    assert {thread for _, _, thread in seen.entries()} <= {'llnode-sio-lane'}


def test_each_lane_keeps_its_own_order(loop: FakeLoop, make_socket: Callable[..., LoopSocket]) -> None:
    sock = make_socket(loop.settings())
    seen = Recorder()

    def handle(key: str, n: int) -> None:
        work(n)
        seen.record((key, n))

    sock.on('keyed', handle, lane=lambda key, n: key)
    sock.on('also_keyed', handle, lane=lambda key, n: key)
    sock.connect()
    sid = loop.last_sid()
    count = 60  # per key: a lane holds them all (LANE_CAPACITY)
    for n in range(count):
        for key in ('a', 'b'):  # two events, and two event names sharing each key's lane
            loop.sio.emit('keyed' if n % 2 else 'also_keyed', (key, n), to=sid)
    wait_for(lambda: len(seen.entries()) == 2 * count, what='every event')
    for key in ('a', 'b'):
        assert [n for k, n in seen.entries() if k == key] == list(range(count))


def test_events_without_a_lane_still_run_side_by_side(loop: FakeLoop, make_socket: Callable[..., LoopSocket]) -> None:
    sock = make_socket(loop.settings())
    second_ran = threading.Event()

    def first() -> str:
        # Answers only once the event sent after it has run: a deadlock (or serial handling) fails the bound.
        return 'saw second' if second_ran.wait(DEADLINE) else 'second never ran'

    def second() -> str:
        second_ran.set()
        return 'second done'

    sock.on('first', first, lane=lambda: None)  # a lane function answering None: no lane
    sock.on('second', second)
    sock.connect()
    sid = loop.last_sid()
    acks: dict[str, Any] = {}
    loop.sio.emit('first', to=sid, callback=lambda answer: acks.__setitem__('first', answer))
    loop.sio.emit('second', to=sid, callback=lambda answer: acks.__setitem__('second', answer))
    wait_for(lambda: len(acks) == 2, timeout=DEADLINE + 5, what='both acks')
    assert acks == {
        'first': {'success': True, 'error_msg': None, 'payload': 'saw second'},
        'second': {'success': True, 'error_msg': None, 'payload': 'second done'},
    }


@pytest.mark.parametrize('lane', [None, 'k'])
def test_a_handler_may_call_the_loop(loop: FakeLoop, make_socket: Callable[..., LoopSocket], lane: str | None) -> None:
    sock = make_socket(loop.settings())
    # The Loop's ack of the handler's own call comes through the dispatcher while the handler waits for it.
    sock.on('ask', lambda value: sock.call('echo', value, timeout=5)['payload'][0], lane=lambda value: lane)
    sock.connect()
    sid = loop.last_sid()
    answers = [loop.sio.call('ask', f'question {n}', to=sid, timeout=DEADLINE) for n in range(3)]
    assert answers == [{'success': True, 'error_msg': None, 'payload': f'question {n}'} for n in range(3)]


class HeldLane:
    """A connected socket whose ``work(n)`` events share one lane; event 0 holds it until ``gate`` is set.

    Records the events as they arrive (``arrived``), as the handler runs them (``ran``) and the Loop's acks.
    """

    def __init__(self, loop: FakeLoop, sock: LoopSocket) -> None:
        self.gate = threading.Event()
        self.arrived = Recorder()
        self.ran = Recorder()
        self.acks: dict[int, Any] = {}
        self._loop = loop
        sock.on('work', self._handle, lane=lambda n: self.arrived.record_and_key(n, 'work'))
        sock.connect()
        self._sid = loop.last_sid()

    def _handle(self, n: int) -> str:
        self.ran.record(n)
        if n == 0:
            self.gate.wait(DEADLINE)
        return f'done {n}'

    def emit(self, n: int) -> None:
        self._loop.sio.emit('work', n, to=self._sid, callback=lambda answer: self.acks.__setitem__(n, answer))

    def hold(self) -> None:
        """Send event 0 and wait until it holds the lane."""
        self.emit(0)
        wait_for(lambda: self.ran.entries() == [0], what='the first event to hold the lane')

    def done(self, n: int) -> dict[str, Any]:
        return {'success': True, 'error_msg': None, 'payload': f'done {n}'}


def test_a_full_lane_refuses_with_the_error_envelope(
    loop: FakeLoop, make_socket: Callable[..., LoopSocket], caplog: pytest.LogCaptureFixture
) -> None:
    lane = HeldLane(loop, make_socket(loop.settings()))
    try:
        lane.hold()
        for n in range(1, LANE_CAPACITY + 1):
            lane.emit(n)
        wait_for(lambda: len(lane.arrived.entries()) == LANE_CAPACITY + 1, what='a full lane')
        refused = LANE_CAPACITY + 1
        lane.emit(refused)
        wait_for(lambda: refused in lane.acks, what='the refusal')  # at once, while the lane is still held
        assert lane.acks == {
            refused: {
                'success': False,
                'error_msg': f"'work' refused: {LANE_CAPACITY} events wait in their lane already",
                'payload': None,
            }
        }
        assert "'work' refused" in caplog.text
    finally:
        lane.gate.set()
    wait_for(lambda: len(lane.acks) == LANE_CAPACITY + 2, what='every other ack')
    assert lane.ran.entries() == list(range(LANE_CAPACITY + 1))
    assert all(lane.acks[n] == lane.done(n) for n in range(LANE_CAPACITY + 1))


def test_an_event_that_waited_too_long_in_its_lane_is_answered_stale_and_the_lane_catches_up(
    loop: FakeLoop, make_socket: Callable[..., LoopSocket], monkeypatch: pytest.MonkeyPatch
) -> None:
    max_wait = 0.3
    monkeypatch.setattr('llnode.loop.socket.LANE_MAX_WAIT', max_wait)
    lane = HeldLane(loop, make_socket(loop.settings()))
    try:
        lane.hold()
        lane.emit(1)
        lane.emit(2)
        wait_for(lambda: lane.arrived.entries() == [0, 1, 2], what='two events waiting in the lane')
        queued_by = time.monotonic()
        wait_for(lambda: time.monotonic() - queued_by > max_wait, what='the waiting events to grow stale')
    finally:
        lane.gate.set()
    wait_for(lambda: len(lane.acks) == 3, what='three acks')
    assert lane.acks[0] == lane.done(0)
    for n in (1, 2):
        assert lane.acks[n]['success'] is False and lane.acks[n]['payload'] is None
        assert lane.acks[n]['error_msg'].startswith("'work' refused: it waited ")
        assert lane.acks[n]['error_msg'].endswith(f'in its lane (at most {max_wait:g} s)')
    assert lane.ran.entries() == [0]  # the stale events never reached the handler
    lane.emit(3)  # the lane caught up: a fresh event runs at once
    wait_for(lambda: 3 in lane.acks, what='the fresh event')
    assert lane.acks[3] == lane.done(3)
    assert lane.ran.entries() == [0, 3]


def test_a_failing_lane_function_is_logged_and_the_event_runs_without_a_lane(
    loop: FakeLoop, make_socket: Callable[..., LoopSocket], caplog: pytest.LogCaptureFixture
) -> None:
    sock = make_socket(loop.settings())

    def lane(value: Any) -> Any:
        if value == 'boom':
            raise KeyError('no key for this one')
        return value  # a list is no key either

    sock.on('keyed', lambda value: threading.current_thread().name, lane=lane)
    sock.connect()
    sid = loop.last_sid()
    assert loop.sio.call('keyed', 'boom', to=sid, timeout=5)['payload'] == 'llnode-sio-event'
    assert loop.sio.call('keyed', ['un', 'hashable'], to=sid, timeout=5)['payload'] == 'llnode-sio-event'
    assert loop.sio.call('keyed', 'fine', to=sid, timeout=5)['payload'] == 'llnode-sio-lane'
    assert caplog.text.count("the lane function of 'keyed' failed") == 2


def test_lane_arguments_are_checked(loop: FakeLoop, make_socket: Callable[..., LoopSocket]) -> None:
    sock = make_socket(loop.settings())
    with pytest.raises(TypeError, match='lane'):
        sock.on('x', lambda: None, lane='key')  # type: ignore[arg-type]
    with pytest.raises(ValueError, match='takes no lane'):
        sock.on('disconnect', lambda *args: None, lane=lambda *args: 'k')


def test_a_lane_keeps_its_order_across_a_reconnect(loop: FakeLoop, make_socket: Callable[..., LoopSocket]) -> None:
    sock = make_socket(loop.settings(), backoff_initial=0.1)
    gate = threading.Event()
    arrived = Recorder()
    ran = Recorder()

    def handler(n: int) -> None:
        ran.record(n)
        if n == 0:
            gate.wait(DEADLINE)

    sock.on('work', handler, lane=lambda n: arrived.record_and_key(n, 'k'))
    sock.connect()
    first_sid = loop.last_sid()
    try:
        loop.sio.emit('work', 0, to=first_sid)
        wait_for(lambda: ran.entries() == [0], what='the first event to hold the lane')
        sock.mark_broken('test: a new connection')
        wait_for(sock.ensure_connected, what='the reconnect')
        assert loop.last_sid() != first_sid
        loop.sio.emit('work', 1, to=loop.last_sid())
        wait_for(lambda: arrived.entries() == [0, 1], what='the second event to arrive on the new connection')
        assert ran.entries() == [0]  # it waits behind the one the old connection brought
    finally:
        gate.set()
    wait_for(lambda: ran.entries() == [0, 1], what='the second event to run')


def test_close_drops_waiting_lane_events_and_leaves_no_thread(
    loop: FakeLoop, make_socket: Callable[..., LoopSocket]
) -> None:
    before = set(socket_threads())
    sock = make_socket(loop.settings())
    gate = threading.Event()
    arrived = Recorder()
    ran = Recorder()

    def handler(n: int) -> None:
        ran.record(n)
        gate.wait(DEADLINE)

    sock.on('work', handler, lane=lambda n: arrived.record_and_key(n, 'k'))
    sock.connect()
    sid = loop.last_sid()
    try:
        for n in range(5):
            loop.sio.emit('work', n, to=sid)
        wait_for(lambda: len(arrived.entries()) == 5 and ran.entries() == [0], what='four events waiting')
        started = time.monotonic()
        sock.close(timeout=2)
        assert time.monotonic() - started < 3
    finally:
        gate.set()  # the running handler ends on its own; the waiting ones were dropped
    wait_for(lambda: not socket_threads(before), timeout=5, what='the socket threads to end')
    assert ran.entries() == [0]


# ---------------------------------------------------------------------------------------------- reconnect


def test_reconnects_after_the_loop_restarts(loop: FakeLoop, make_socket: Callable[..., LoopSocket]) -> None:
    sock = make_socket(loop.settings(), backoff_initial=0.2, backoff_max=0.5)
    disconnected = threading.Event()
    sock.on('disconnect', lambda *args: disconnected.set())
    sock.on('echo_back', lambda value: value)
    sock.connect()
    first = loop.connects[-1]
    loop.stop()
    wait_for(lambda: not sock.connected, what='the drop to be noticed')
    assert disconnected.is_set()
    assert not sock.ensure_connected()  # the Loop is down
    loop.start()  # same port, fresh sessions: the old cookie is worthless now
    wait_for(sock.ensure_connected, what='the reconnect')
    second = loop.connects[-1]
    assert second['accepted']
    assert second['token'] != first['token']
    assert loop.log[-3:] == ['status', 'login', 'connect']
    assert loop.sio.call('echo_back', 'x', to=second['sid'], timeout=5) == {
        'success': True,
        'error_msg': None,
        'payload': 'x',
    }


def test_backoff_while_the_loop_is_down(make_socket: Callable[..., LoopSocket]) -> None:
    hits: list[float] = []

    class Unavailable(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(time.monotonic())
            self.send_response(503)
            self.send_header('Content-Length', '0')
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Unavailable)
    serving = threading.Thread(target=server.serve_forever, name='unavailable-http', daemon=True)
    serving.start()
    try:
        settings = Settings(host=f'127.0.0.1:{server.server_address[1]}', username='u', password='p')
        sock = make_socket(settings, backoff_initial=0.5, backoff_max=60)
        end = time.monotonic() + 3.0
        calls = 0
        while time.monotonic() < end:
            assert sock.ensure_connected() is False
            calls += 1
        assert calls > 1000  # a tight loop: ensure_connected returned at once while the backoff ran
        # delays of 0.375-0.5, 0.75-1 and 1.5-2 s between attempts: 3 or 4 attempts in 3 s
        assert 3 <= sock.attempts <= 4
        assert len(hits) == sock.attempts
        gaps = [b - a for a, b in itertools.pairwise(hits)]
        assert all(later > earlier for earlier, later in itertools.pairwise(gaps))
        assert 'not ready' in (sock.last_error or '')
    finally:
        server.shutdown()
        server.server_close()
        serving.join(5)


def test_reconnect_delays_are_jittered_so_nodes_do_not_retry_in_lockstep(
    make_socket: Callable[..., LoopSocket],
) -> None:
    """Eight nodes that lose the Loop at the same moment must not come back at the same moment."""
    settings = Settings(host='127.0.0.1:1', username='u', password='p')  # nothing listens: refused at once
    delays = []
    for _ in range(8):
        sock = make_socket(settings, backoff_initial=10, backoff_max=10)
        assert sock.ensure_connected() is False
        delays.append(sock.retry_in)
    assert all(7.4 <= delay <= 10 for delay in delays), delays  # 10 s less up to a quarter
    assert max(delays) - min(delays) > 0.1, delays  # without jitter all eight would wait 10 s


def test_mark_broken_forces_a_full_reconnect(loop: FakeLoop, make_socket: Callable[..., LoopSocket]) -> None:
    sock = make_socket(loop.settings(), backoff_initial=0.1)
    sock.connect()
    first_sid = loop.last_sid()
    assert sock.ensure_connected()
    assert sock.attempts == 1
    sock.mark_broken('update_trainer ack had success false')
    assert not sock.connected
    assert sock.last_error == 'update_trainer ack had success false'
    wait_for(sock.ensure_connected, what='the reconnect')
    assert sock.attempts == 2
    assert loop.log == ['status', 'login', 'connect', 'status', 'login', 'connect']
    assert loop.last_sid() != first_sid
    wait_for(lambda: first_sid in loop.disconnects, what='the old client to disconnect')


# ---------------------------------------------------------------------------------------------- close


def test_close_is_bounded_idempotent_and_leaves_no_threads(
    loop: FakeLoop, make_socket: Callable[..., LoopSocket]
) -> None:
    before = set(socket_threads())
    sock = make_socket(loop.settings())
    sock.on('quick', lambda: True)
    sock.connect()
    sid = loop.last_sid()
    assert loop.sio.call('quick', to=sid, timeout=5)['success'] is True
    assert socket_threads(before)
    started = time.monotonic()
    sock.close(timeout=5)
    assert time.monotonic() - started < 6
    wait_for(lambda: sid in loop.disconnects, what='the server to see the disconnect')
    wait_for(lambda: not socket_threads(before), timeout=5, what='the socket threads to end')
    sock.close(timeout=1)
    assert not sock.connected
    assert not sock.ensure_connected()
    with pytest.raises(LoopConnectionError, match='closed'):
        sock.connect()
    with pytest.raises(LoopConnectionError):
        sock.emit('x')


def test_polling_disconnect_is_prompt_while_a_post_is_in_flight(make_socket: Callable[..., LoopSocket]) -> None:
    loop = FakeLoop(post_delay=0.5).start()
    try:
        before = set(socket_threads())
        sock = make_socket(loop.settings(), transports=['polling'])
        sock.connect()
        sid = loop.last_sid()
        sock.emit('update_annotation_node', {'a': 1})
        # the server has the packet, but the writer thread still waits for the POST's answer
        wait_for(lambda: loop.received, what='the emitted event')
        started = time.monotonic()
        sock.close(timeout=10)
        assert time.monotonic() - started < 3
        wait_for(lambda: sid in loop.disconnects, timeout=3, what='the server to see the disconnect')
        wait_for(lambda: not socket_threads(before), timeout=5, what='the socket threads to end')

        # a refused namespace makes python-socketio disconnect while the CONNECT packet's POST is in flight
        refused = make_socket(forged_cookie_client(loop.settings(), {'session': 'forged'}), transports=['polling'])
        started = time.monotonic()
        with pytest.raises(LoopConnectionError, match='refused'):
            refused.connect()
        assert time.monotonic() - started < 5
    finally:
        loop.stop()


def test_ensure_connected_never_runs_two_attempts_at_once(
    loop: FakeLoop, make_socket: Callable[..., LoopSocket]
) -> None:
    loop.handshake_delay = 0.5
    sock = make_socket(loop.settings())
    results: list[bool] = []
    first = threading.Thread(target=lambda: results.append(sock.ensure_connected()), name='test-first')
    first.start()
    assert loop.handshake_started.wait(DEADLINE)
    started = time.monotonic()
    assert sock.ensure_connected() is False  # another thread is connecting: answer at once
    assert time.monotonic() - started < 0.2
    first.join(DEADLINE)
    assert results == [True]
    assert sock.attempts == 1
    assert sock.ensure_connected() is True
    assert loop.count('login') == 1


def test_close_during_a_connection_attempt(loop: FakeLoop, make_socket: Callable[..., LoopSocket]) -> None:
    loop.handshake_delay = 1.0
    sock = make_socket(loop.settings())
    outcome: list[BaseException | None] = []

    def connect() -> None:
        try:
            sock.connect()
            outcome.append(None)
        except LoopConnectionError as e:
            outcome.append(e)

    connecting = threading.Thread(target=connect, name='test-connect')
    connecting.start()
    assert loop.handshake_started.wait(DEADLINE)
    started = time.monotonic()
    sock.close(timeout=5)
    assert time.monotonic() - started < 6
    connecting.join(DEADLINE)
    (error,) = outcome
    assert isinstance(error, LoopConnectionError)
    assert 'closed while connecting' in str(error)
    assert not sock.connected
    # the attempt's client got as far as the Loop, and was disconnected
    wait_for(lambda: loop.connects and loop.connects[-1]['sid'] in loop.disconnects, what='the disconnect')


# ---------------------------------------------------------------------------------------------- TLS


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[str, str]:
    if shutil.which('openssl') is None:
        pytest.skip('openssl is needed to make a test certificate')
    cert, key = tmp_path / 'loop.pem', tmp_path / 'loop.key'
    subprocess.run(
        [
            'openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=127.0.0.1',
            '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', str(key), '-out', str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return str(cert), str(key)


@pytest.mark.parametrize('transports', [None, ['polling'], ['websocket']])
def test_tls_verifies_against_the_given_ca(
    certificate: tuple[str, str],
    make_socket: Callable[..., LoopSocket],
    transports: list[str] | None,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    cert, key = certificate
    # requests lets these override a session's CA path; the socket's CA must win over them
    monkeypatch.setenv('REQUESTS_CA_BUNDLE', str(tmp_path / 'no-such-bundle.pem'))
    monkeypatch.setenv('CURL_CA_BUNDLE', str(tmp_path / 'no-such-bundle.pem'))
    loop = FakeLoop(certfile=cert, keyfile=key).start()
    try:
        sock = make_socket(loop.settings(ssl_cert_path=cert), transports=transports)
        sock.connect()
        assert sock.transport == ('polling' if transports == ['polling'] else 'websocket')
        assert sock.call('echo', 'tls')['payload'] == ['tls']
        assert loop.connects[-1]['accepted']
    finally:
        loop.stop()


def test_tls_without_the_ca_is_refused(certificate: tuple[str, str], make_socket: Callable[..., LoopSocket]) -> None:
    cert, key = certificate
    loop = FakeLoop(certfile=cert, keyfile=key).start()
    try:
        settings = loop.settings(ssl_cert_path=cert)
        client = LoopClient(settings, timeout=10)
        # the REST part trusts the CA (it read the path at construction), the socket part must not connect without it
        client.settings = settings.replace(ssl_cert_path='')
        sock = make_socket(client, transports=['websocket'])
        with pytest.raises(LoopConnectionError):
            sock.connect()
        assert loop.connects == []
    finally:
        loop.stop()


# ---------------------------------------------------------------------------------------------- the local Loop


def hub(local: LocalLoop) -> NodeHub:
    assert local.hub is not None, 'the LocalLoop is not running'
    return local.hub


@pytest.mark.parametrize('websocket', [False, True], ids=['waitress-polling', 'werkzeug-websocket'])
def test_local_loop_accepts_the_node_and_acks_its_status(
    make_local_loop: Callable[..., LocalLoop], make_socket: Callable[..., LoopSocket], websocket: bool
) -> None:
    local = make_local_loop(websocket=websocket)
    client = LoopClient(local.settings(), timeout=10)
    sock = make_socket(client)
    sock.connect()
    assert sock.transport == ('websocket' if websocket else 'polling')
    (node,) = hub(local).connected()
    assert (node['node_type'], node['organization'], node['project'], node['user']) == (
        'trainer',
        'zauberzeug',
        'demo',
        'u',
    )
    environ = local.sio.get_environ(node['sid'])
    assert environ['HTTP_COOKIE'] == f'session={client.cookies()["session"]}'
    status = {'id': 'trainer-1', 'name': 'test trainer', 'state': 'idle', 'errors': {}}
    assert sock.call('update_trainer', status) == {'success': True, 'error_msg': None, 'payload': None}
    assert any(n.get('id') == 'trainer-1' for n in local.store.nodes())
    refused = sock.call('update_trainer', {'no': 'id'})
    assert refused['success'] is False


def test_local_loop_refuses_a_trainer_without_login_cookie(
    make_local_loop: Callable[..., LocalLoop], make_socket: Callable[..., LoopSocket]
) -> None:
    local = make_local_loop()
    sock = make_socket(forged_cookie_client(local.settings(), {}))
    with pytest.raises(LoopConnectionError, match='log in'):
        sock.connect()
    assert hub(local).connected() == []


def test_local_loop_calls_reach_the_node_handlers(
    make_local_loop: Callable[..., LocalLoop], make_socket: Callable[..., LoopSocket]
) -> None:
    local = make_local_loop()
    sock = make_socket(local.settings())
    sock.on('begin_training', lambda organization, project, details: True)
    sock.on('stop_training', lambda: {'success': False, 'error_msg': 'nothing to stop', 'payload': 'refused'})
    sock.connect()
    sid = hub(local).resolve(node_type='trainer', organization='zauberzeug', project='demo')
    ack = hub(local).send(sid, 'begin_training', 'zauberzeug', 'demo', {'training_number': 1}, timeout=5)
    assert ack == {'success': True, 'error_msg': None, 'payload': None}
    ack = hub(local).send(sid, 'stop_training', timeout=5)
    assert ack == {'success': False, 'error_msg': 'nothing to stop', 'payload': 'refused'}


def test_reconnects_after_the_local_loop_restarts(
    make_local_loop: Callable[..., LocalLoop], make_socket: Callable[..., LoopSocket]
) -> None:
    first_loop = make_local_loop()
    client = LoopClient(first_loop.settings(), timeout=10)
    sock = make_socket(client, backoff_initial=0.2, backoff_max=0.5)
    sock.connect()
    first_cookie = client.cookies()['session']
    first_loop.stop()
    wait_for(lambda: not sock.connected, what='the drop to be noticed')
    second_loop = make_local_loop(data_dir=first_loop.data_dir, port=first_loop.port)
    assert second_loop.port == first_loop.port
    wait_for(sock.ensure_connected, what='the reconnect')
    (node,) = hub(second_loop).connected()
    assert node['user'] == 'u'
    assert second_loop.sio.get_environ(node['sid'])['HTTP_COOKIE'] != f'session={first_cookie}'
    assert sock.attempts >= 2
    status = {'id': 'trainer-1', 'state': 'idle', 'errors': {}}
    assert sock.call('update_trainer', status)['success'] is True


def test_a_clean_close_over_polling_sends_no_poll_after_the_goodbye(
    loop: FakeLoop, make_socket: Callable[..., LoopSocket], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    for _ in range(10):
        sock = make_socket(loop.settings(), transports=['polling'])
        sock.connect()
        sock.close()
    # A long-poll sent after the CLOSE would carry a session the Loop has ended: "Invalid session" there. The poll
    # that was waiting when the CLOSE arrived gets a 400, which is expected: DEBUG, not a warning.
    assert not [r.getMessage() for r in caplog.records if 'Invalid session' in r.getMessage()]
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and '400' in r.getMessage()]
