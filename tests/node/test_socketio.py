"""The node's Socket.IO server at /ws/socket.io over both servers: WebSocket under werkzeug, long-polling only
under waitress (which cannot upgrade), events registered on ``node.sio``, and a bounded stop with clients on."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests
import socketio

from llnode.config import Settings
from llnode.node import Node
from tests.node.conftest import Served, new_threads_gone, wait_for
from tests.sio_client import CLIENT_THREADS, SioClient

EXPECTED_TRANSPORT = {'waitress': 'polling', 'werkzeug': 'websocket'}


def echo_node(settings: Settings) -> Node:
    node = Node('sio', settings=settings, repeat_interval=0.05)

    @node.sio.on('echo')
    def echo(sid: str, data: Any) -> dict[str, Any]:
        return {'echo': data}

    @node.sio.on('shape')
    def shape(sid: str, data: dict[str, Any]) -> dict[str, Any]:
        return {'bytes': len(data['bytes']), 'shape': data['shape']}

    return node


def handshake(url: str) -> dict[str, Any]:
    """The Engine.IO open packet of a fresh polling handshake."""
    response = requests.get(f'{url}/ws/socket.io/', params={'EIO': '4', 'transport': 'polling'}, timeout=5)
    assert response.status_code == 200 and response.text.startswith('0'), response.text
    return dict(json.loads(response.text[1:]))


def test_client_calls_an_event_over_the_expected_transport(
    settings: Settings, server: str, serve: Callable[..., Served]
) -> None:
    before = set(threading.enumerate())
    served = serve(echo_node(settings), server)
    opened = handshake(served.url)
    assert opened['upgrades'] == (['websocket'] if server == 'werkzeug' else [])
    assert opened['maxPayload'] == 64 * 1024 * 1024

    client = SioClient()
    client.connect(served.url, socketio_path='/ws/socket.io', wait_timeout=5)
    try:
        wait_for(lambda: client.transport() == EXPECTED_TRANSPORT[server], what=f'{EXPECTED_TRANSPORT[server]}')
        assert client.call('echo', {'x': [1, 2]}, timeout=5) == {'echo': {'x': [1, 2]}}
        payload = {'bytes': bytes(range(256)) * 4, 'dtype': 'uint8', 'shape': [32, 32]}  # a binary attachment
        assert client.call('shape', payload, timeout=5) == {'bytes': 1024, 'shape': [32, 32]}
        assert client.transport() == EXPECTED_TRANSPORT[server]  # waitress never upgrades
        # the node stops first: it closes the session, so the client sees the end at once (a long-polling client
        # that disconnects first may wait for the server's next ping, 25 s; see tests/detector/conftest.py)
        assert served.stop() == 0
    finally:
        client.disconnect()
    new_threads_gone(before, ignore=CLIENT_THREADS)


def test_waitress_refuses_a_websocket_only_client(settings: Settings, serve: Callable[..., Served]) -> None:
    served = serve(echo_node(settings), 'waitress')
    client = SioClient()
    with pytest.raises(socketio.exceptions.ConnectionError):
        client.connect(served.url, socketio_path='/ws/socket.io', transports=['websocket'], wait_timeout=3)
    client.disconnect()


def test_stop_disconnects_connected_clients_within_bounds(
    settings: Settings, server: str, serve: Callable[..., Served]
) -> None:
    before = set(threading.enumerate())
    node = echo_node(settings)
    disconnected = threading.Event()
    node.sio.on('disconnect', lambda sid, *reason: disconnected.set())
    served = serve(node, server)
    client = SioClient()
    client.connect(served.url, socketio_path='/ws/socket.io', wait_timeout=5)
    wait_for(lambda: client.transport() == EXPECTED_TRANSPORT[server], what='the transport')
    assert client.call('echo', 1, timeout=5) == {'echo': 1}
    started = time.monotonic()
    assert served.stop() == 0
    assert time.monotonic() - started < 3
    assert disconnected.is_set()
    wait_for(lambda: not client.connected, what='the client to see the disconnect')
    client.disconnect()
    new_threads_gone(before, ignore=CLIENT_THREADS)


def test_external_server_can_switch_websocket_off(settings: Settings) -> None:
    node = echo_node(settings)
    assert node.websocket_enabled  # default for an external server that can upgrade (werkzeug, gunicorn+ws)
    node.websocket_enabled = False
    assert node.sio.eio.transports == ['polling'] and not node.sio.eio.allow_upgrades
    node.websocket_enabled = True
    assert node.sio.eio.allow_upgrades
