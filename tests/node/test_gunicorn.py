"""gunicorn as llnode runs it (``serve(server='gunicorn')``) and as a user's own command line runs it with
``llnode.node.gunicorn_hooks``: WebSocket for Socket.IO, the node in the worker, clean stops."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from llnode.config import Settings
from llnode.node import Node
from llnode.node.admission import ServingLimits
from llnode.node.gunicorn_serving import _TimedSocket
from tests.detector.node_helpers import jpeg_bytes, raw_dict
from tests.node.served_process import REPO, ServedProcess
from tests.polling import wait_for
from tests.sio_client import SioClient


def test_socketio_runs_over_websocket_and_a_stop_closes_the_clients(tmp_path: Path) -> None:
    node = ServedProcess('gunicorn', tmp_path / 'data')
    client = SioClient()
    try:
        opened = requests.get(f'{node.url}/ws/socket.io/', params={'EIO': '4', 'transport': 'polling'}, timeout=5)
        assert '"upgrades":["websocket"]' in opened.text.replace(' ', '')
        client.connect(node.url, socketio_path='/ws/socket.io', wait_timeout=5)  # polling first, as robots do
        wait_for(lambda: client.transport() == 'websocket', what='the upgrade to WebSocket')
        frame = np.zeros((480, 640, 3), dtype=np.uint8)
        answer = client.call('detect', {'image': raw_dict(frame), 'autoupload': 'disabled'}, timeout=5)
        assert answer['box_detections'] == []
        assert node.proc.pid != node.serving_pid  # the node runs in the forked worker
        started = time.monotonic()
        assert node.stop() == 0, node.output
        assert time.monotonic() - started < 5  # the open WebSocket did not hold the worker's graceful stop
        wait_for(lambda: not client.connected, what='the client to see the end')
        assert 'test detector: stopped' in node.output
    finally:
        node.kill()
        client.disconnect()


def test_headers_with_underscores_reach_the_node_as_on_the_other_servers(tmp_path: Path) -> None:
    node = ServedProcess('gunicorn', tmp_path / 'data')
    try:

        def created(headers: dict[str, str]) -> str:
            response = requests.post(
                f'{node.url}/detect', files={'file': ('a.jpg', jpeg_bytes(), 'image/jpeg')}, headers=headers, timeout=5
            )
            assert response.status_code == 200, response.text
            return str(response.json()['created'])

        assert created({'creation_date': '2024-01-01T00:00:00'}) == '2024-01-01T00:00:00'
        assert created({'creation_date': 'under', 'creation-date': '2024-02-02T00:00:00'}) == '2024-02-02T00:00:00'
        assert created({'x_other': '1'})  # an underscore header nobody asked for is dropped without harm
    finally:
        assert node.stop() == 0


def _arrives(sock: socket.socket, within_s: float) -> bool:
    return bool(select.select([sock], [], [], within_s)[0])


@contextlib.contextmanager
def _timed_pair(*, nodelay: bool = False) -> Iterator[tuple[socket.socket, _TimedSocket]]:
    """A loopback client and the server's end of its connection as the worker wraps it (``nodelay``: the
    listener sets ``TCP_NODELAY``, as gunicorn's does)."""
    with socket.create_server(('127.0.0.1', 0)) as listener:
        if nodelay:
            listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with socket.create_connection(listener.getsockname()[:2], timeout=5) as client:
            accepted, _ = listener.accept()
            with _TimedSocket(accepted.family, accepted.type, accepted.proto, fileno=accepted.detach()) as server:
                yield client, server


@pytest.mark.skipif(not hasattr(socket, 'MSG_MORE'), reason='heads are held with MSG_MORE (Linux)')
def test_an_answers_head_leaves_with_its_body_and_a_head_without_one_is_pushed() -> None:
    with _timed_pair(nodelay=True) as (client, server):
        head = b'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n'
        server.sendall(head)
        assert not _arrives(client, 0.05)  # held for its body (the kernel holds it 200 ms at most)
        server.sendall(b'{}')
        assert _arrives(client, 1.0)
        assert client.recv(1024) == head + b'{}'

        server.sendall(head.replace(b'2', b'0'))  # an empty body: gunicorn writes nothing after the head
        server.sendall(b'')
        server.push()  # as the worker does after every request
        assert _arrives(client, 0.1)  # well before the kernel's 200 ms
        assert client.recv(1024) == head.replace(b'2', b'0')

        upgrade = b'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n'
        server.sendall(upgrade)  # announces no body: sent at once
        assert _arrives(client, 0.1)
        assert client.recv(1024) == upgrade


def test_a_connection_keeps_the_blocking_mode_and_timeouts_it_was_given() -> None:
    with _timed_pair() as (client, server):
        server.setblocking(False)  # as gthread's poller
        with pytest.raises(BlockingIOError):
            server.recv(10)
        server.setblocking(True)  # as gthread's thread, twice per request
        server.setblocking(True)
        assert server.gettimeout() is None
        server.settimeout(0.05)  # as gunicorn's drain of an unread body (set at the next read or write)
        assert server.gettimeout() == 0.05
        with pytest.raises(TimeoutError):
            server.recv(10)
        server.settimeout(None)
        server.settimeout(None)
        client.sendall(b'x')
        assert server.recv(10) == b'x'  # blocking again
        server.settimeout(0.05)
        server.settimeout(None)  # the drain read nothing: blocking as before
        assert server.gettimeout() is None
        client.sendall(b'y')
        assert server.recv(10) == b'y'
        server.settimeout(0.05)
        buffer = bytearray(10)
        with pytest.raises(TimeoutError):
            server.recv_into(buffer)
        server.setblocking(True)
        server.set_read_timeout(0.05)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            server.recv(10)  # the kernel's read timeout, in blocking mode
        assert time.monotonic() - started < 2.0


def test_the_wait_for_a_kept_alive_clients_next_request_leaves_the_read_timeout_as_it_was() -> None:
    with _timed_pair() as (client, server):
        server.set_read_timeout(0.5)
        server.setblocking(True)
        assert server.recv_next_request(0.01) is None  # none came: back to the poller
        assert not server.timed_out
        client.sendall(b'GET / HTTP/1.1\r\n')
        assert _arrives(server, 1.0)
        assert server.recv_next_request(0.01) == b'GET / HTTP/1.1\r\n'
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            server.recv(10)  # the rest of the request never comes: the read timeout, not the short wait
        assert time.monotonic() - started > 0.3
        client.close()
        assert server.recv_next_request(1.0) == b''  # the client closed


def test_answers_without_a_body_are_not_held_on_a_kept_alive_connection(tmp_path: Path) -> None:
    node = ServedProcess('gunicorn', tmp_path / 'data')
    try:
        with requests.Session() as session:
            about = session.get(f'{node.url}/about', timeout=5)
            assert about.status_code == 200 and about.json()
            took = []
            for _ in range(5):
                started = time.monotonic()
                answer = session.head(f'{node.url}/about', timeout=5)
                took.append(time.monotonic() - started)
                assert answer.status_code == 200 and answer.content == b''
                assert answer.headers['Content-Length'] == about.headers['Content-Length']
            assert statistics.median(took) < 0.1, took  # a held head would leave after 200 ms
            assert session.get(f'{node.url}/about', timeout=5).status_code == 200  # the connection goes on
        # Two requests in one write: the first read takes both (and an image's body), the second is answered too.
        host, port = node.url.removeprefix('http://').rsplit(':', 1)
        with socket.create_connection((host, int(port)), timeout=5) as raw:
            detect = _detect_request(jpeg_bytes())
            raw.sendall(detect + b'GET /about HTTP/1.1\r\nHost: x\r\n\r\n')
            stream = raw.makefile('rb')
            first, second = _answer(stream), _answer(stream)
        assert first[0] == 200 and b'box_detections' in first[1]
        assert second == (200, about.content)
    finally:
        assert node.stop() == 0


def _detect_request(jpeg: bytes) -> bytes:
    body = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
        + jpeg
        + b'\r\n--b--\r\n'
    )
    head = f'POST /detect HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: {len(body)}'
    return head.encode() + b'\r\n\r\n' + body


def _answer(stream: Any) -> tuple[int, bytes]:
    status = int(stream.readline().split()[1])
    length = 0
    while (line := stream.readline()) != b'\r\n':
        name, _, value = line.decode().partition(':')
        if name.lower() == 'content-length':
            length = int(value)
    return status, stream.read(length)


def test_a_users_own_gunicorn_command_line_runs_the_node_with_the_hooks(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            '-m',
            'gunicorn',
            '-c',
            'python:llnode.node.gunicorn_hooks',
            '--bind',
            '127.0.0.1:0',
            '--log-level',
            'info',
            '--no-control-socket',
            'tests.node.gunicorn_app:app',
        ],
        cwd=REPO,
        env={**os.environ, 'TEST_DATA_FOLDER': str(tmp_path / 'data')},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        lines.extend(line.rstrip('\n') for line in proc.stdout)

    reader = threading.Thread(target=read, name='test-gunicorn-reader', daemon=True)
    reader.start()
    try:
        line = wait_for(lambda: next((x for x in list(lines) if 'Listening at: ' in x), None), 20, 'gunicorn')
        url = line.split('Listening at: ', 1)[1].split()[0]
        wait_for(lambda: _ready(url), 20, 'the node to be ready')
        client = SioClient()
        client.connect(url, socketio_path='/ws/socket.io', wait_timeout=5)
        try:
            wait_for(lambda: client.transport() == 'websocket', what='WebSocket')
            assert client.call('get_outbox_mode', timeout=5) == {'outbox_mode': 'continuous_upload'}
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0, '\n'.join(lines)
        finally:
            client.disconnect()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        reader.join(5)


def _ready(url: str) -> bool:
    try:
        return requests.get(f'{url}/readyz', timeout=2).status_code == 200
    except requests.RequestException:
        return False


@pytest.mark.parametrize('server', ['gunicorn', 'waitress'])
def test_serve_refuses_bad_threads_and_limits_before_anything_starts(settings: Settings, server: str) -> None:
    node = Node('x', settings=settings)
    with pytest.raises(ValueError, match='threads must be a positive integer'):
        node.serve('127.0.0.1', 0, server=server, threads=0)
    with pytest.raises(TypeError, match='limits must be a ServingLimits'):
        node.serve('127.0.0.1', 0, server=server, limits={'max_sessions': 3})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match='max_sessions must be a positive integer'):
        ServingLimits(max_sessions=0)
    with pytest.raises(ValueError, match='read_timeout_s'):
        ServingLimits(read_timeout_s=-1)
    assert not node.running and node.server_address is None


def test_limits_left_open_leave_threads_for_the_rest_api() -> None:
    assert ServingLimits().for_threads(32, websocket=False).max_long_polls == 24
    both = ServingLimits().for_threads(256, websocket=True)
    assert (both.max_long_polls, both.max_websockets) == (124, 124)
    assert ServingLimits().for_threads(4, websocket=False).max_long_polls == 3
    assert ServingLimits(max_long_polls=7).for_threads(32).max_long_polls == 7
