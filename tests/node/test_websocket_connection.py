"""The WebSocket connection's reading (llnode.node.websocket_connection): a binary message reaches the
application whole and byte-for-byte, however its bytes were cut into reads and frames; everything else passes."""

from __future__ import annotations

import hashlib
import random
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import simple_websocket
from engineio.async_drivers._websocket_wsgi import SimpleWebSocketWSGI
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    Pong,
    Request,
    TextMessage,
)

from llnode.config import Settings
from llnode.node import Node
from llnode.node.websocket_connection import MessageSizedServer, _WholeBinaryMessages, closing_websocket_driver
from tests.node.conftest import Served, wait_for
from tests.sio_client import SioClient


def connected_pair() -> tuple[WSConnection, _WholeBinaryMessages]:
    client, server = WSConnection(ConnectionType.CLIENT), _WholeBinaryMessages(WSConnection(ConnectionType.SERVER))
    server.receive_data(client.send(Request(host='x', target='/')))
    assert isinstance(next(server.events()), Request)
    client.receive_data(server.send(AcceptConnection()))
    assert isinstance(next(client.events()), AcceptConnection)
    return client, server


def test_binary_messages_come_whole_from_any_reads_and_frames() -> None:
    rng = random.Random(7)
    client, server = connected_pair()
    big, fragmented = rng.randbytes(921_601), [rng.randbytes(n) for n in (1, 70_000, 3, 200_000)]
    wire = client.send(Message(data=big))
    wire += client.send(TextMessage(data='between'))
    for index, part in enumerate(fragmented):
        wire += client.send(Message(data=part, message_finished=index == len(fragmented) - 1))
    wire += client.send(Ping(payload=b'p'))
    events: list[Any] = []
    seen_in_message = False
    position = 0
    while position < len(wire):
        step = rng.choice([1, 7, 4096, 65536, 300_000])
        server.receive_data(wire[position : position + step])
        position += step
        events.extend(server.events())
        seen_in_message = seen_in_message or server.in_message
    assert seen_in_message  # parts came, and were held back until the message's end
    assert not server.in_message
    assert [type(event) for event in events] == [BytesMessage, TextMessage, BytesMessage, Ping]
    assert events[0].data == big and type(events[0].data) is bytes and events[0].message_finished
    assert events[1].data == 'between'
    assert events[2].data == b''.join(fragmented) and events[2].message_finished
    assert events[3].payload == b'p'


def test_a_single_read_message_passes_unchanged() -> None:
    client, server = connected_pair()
    server.receive_data(client.send(Message(data=b'abc')))
    (event,) = list(server.events())
    assert isinstance(event, BytesMessage) and event.data == b'abc' and event.message_finished


def test_large_binary_attachments_over_a_real_websocket(settings: Settings, serve: Callable[..., Served]) -> None:
    node = Node('ws', settings=settings, repeat_interval=0.05)
    node.sio.on(
        'digest', lambda sid, data: {'size': len(data['bytes']), 'sha256': hashlib.sha256(data['bytes']).hexdigest()}
    )
    served = serve(node, 'werkzeug')
    client = SioClient()
    client.connect(served.url, socketio_path='/ws/socket.io', transports=['websocket'], wait_timeout=5)
    try:
        wait_for(lambda: client.transport() == 'websocket', what='WebSocket')
        rng = random.Random(3)
        for size in (921_600, 10, 3_000_001, 65_536):
            data = rng.randbytes(size)
            answer = client.call('digest', {'bytes': data}, timeout=10)
            assert answer == {'size': size, 'sha256': hashlib.sha256(data).hexdigest()}
        assert served.stop() == 0
    finally:
        client.disconnect()


class SocketPairWebSocket:
    """A :class:`MessageSizedServer` over one end of a socket pair (as werkzeug hands it over) and a wsproto
    client on the other end, driven by the test."""

    def __init__(self, **server_args: Any) -> None:
        self.client_sock, server_sock = socket.socketpair()
        self.client_sock.settimeout(5)
        self.client = WSConnection(ConnectionType.CLIENT)
        request = self.client.send(Request(host='x', target='/ws'))
        head = request.decode().split('\r\n')
        headers = dict(line.split(': ', 1) for line in head[1:] if line)
        environ = {'werkzeug.socket': server_sock, 'REQUEST_METHOD': 'GET', 'PATH_INFO': '/ws', 'QUERY_STRING': ''}
        environ.update({'HTTP_' + name.upper().replace('-', '_'): value for name, value in headers.items()})
        self.server = MessageSizedServer(environ, **server_args)
        self.client.receive_data(self.client_sock.recv(65536))
        assert isinstance(next(self.client.events()), AcceptConnection)

    def send(self, event: Any) -> None:
        self.client_sock.sendall(self.client.send(event))

    def client_events(self) -> list[Any]:
        self.client.receive_data(self.client_sock.recv(65536))
        return list(self.client.events())

    def close(self) -> None:
        self.client_sock.close()
        self.server.sock.close()


def test_the_thread_that_receives_reads_the_socket_and_no_reader_thread_starts() -> None:
    before = set(threading.enumerate())
    pair = SocketPairWebSocket(receive_bytes=4096)
    try:
        assert set(threading.enumerate()) == before  # simple-websocket would start one per connection
        data = random.Random(5).randbytes(921_600)
        sender = threading.Thread(target=pair.send, args=(Message(data=data),), name='test-ws-sender')
        sender.start()
        received = pair.server.receive()
        sender.join(5)
        assert received == data and type(received) is bytes
        pair.send(TextMessage(data='42["about"]'))
        assert pair.server.receive() == '42["about"]'
        assert pair.server.receive(timeout=0.05) is None  # nothing came: no message, no error
        pair.send(Ping(payload=b'are you there'))
        pair.send(TextMessage(data='after the ping'))
        assert pair.server.receive() == 'after the ping'
        (pong,) = pair.client_events()
        assert isinstance(pong, Pong) and pong.payload == b'are you there'
    finally:
        pair.close()


def test_a_client_close_ends_receive_with_connection_closed() -> None:
    pair = SocketPairWebSocket()
    try:
        pair.send(TextMessage(data='last'))
        pair.send(CloseConnection(code=1000, reason='bye'))
        assert pair.server.receive() == 'last'
        with pytest.raises(simple_websocket.ConnectionClosed):
            pair.server.receive()
        assert not pair.server.connected
        (closed,) = pair.client_events()
        assert isinstance(closed, CloseConnection)  # the server answered the close
    finally:
        pair.close()


def _blocked_in_recv(thread: threading.Thread) -> bool:
    """Whether Linux has ``thread`` asleep in a system call other than a futex wait (its only other way to block
    here is waiting for the GIL): in ``recv``."""
    task = Path(f'/proc/self/task/{thread.native_id}')
    sleeping = (task / 'stat').read_text().rsplit(')', 1)[1].split()[0] == 'S'
    return sleeping and 'futex' not in (task / 'wchan').read_text()


def test_closing_from_another_thread_wakes_a_receive_on_a_silent_connection() -> None:
    """engine.io's writer thread closes a session whose client vanished; the thread in receive() must return
    (engine.io's driver shuts the socket down after the close frame)."""
    pair = SocketPairWebSocket()
    driver = closing_websocket_driver(SimpleWebSocketWSGI)(lambda ws: None, None)
    driver.ws = pair.server
    outcome: list[Any] = []
    receiver = threading.Thread(target=lambda: outcome.append(driver.wait()), name='test-ws-receiver')
    receiver.start()
    try:
        # the receiver blocks in recv() on a connection where nothing comes
        wait_for(lambda: _blocked_in_recv(receiver), what='the receiver to block in recv()')
        assert receiver.is_alive()
        driver.close()
        receiver.join(5)
        assert not receiver.is_alive() and outcome == [None]  # engine.io's driver: None means closed
    finally:
        pair.close()


def test_a_read_timeout_ends_the_connection() -> None:
    pair = SocketPairWebSocket()
    pair.server.sock.settimeout(0.2)  # as a server's read timeout does
    try:
        with pytest.raises(simple_websocket.ConnectionClosed):
            pair.server.receive()
    finally:
        pair.close()


def test_websocket_pings_of_its_own_are_refused() -> None:
    with pytest.raises(ValueError, match='no pings of its own'):
        SocketPairWebSocket(ping_interval=5)
