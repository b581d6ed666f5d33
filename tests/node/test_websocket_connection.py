"""The WebSocket connection's reading (llnode.node.websocket_connection): a binary message reaches the
application whole and byte-for-byte, however its bytes were cut into reads and frames; everything else passes."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from typing import Any

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, Message, Ping, Request, TextMessage

from llnode.config import Settings
from llnode.node import Node
from llnode.node.websocket_connection import _WholeBinaryMessages
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
