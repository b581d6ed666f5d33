"""Many Socket.IO clients, hung uploads and vanished clients never starve the REST API, on every server.

Each server runs a test detector in its own process (gunicorn forks and handles signals in the main thread).
The counts are small (tens, not hundreds); bench/serving.py measures the real figures.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.detector.node_helpers import jpeg_bytes
from tests.node.served_process import REPO, ServedProcess
from tests.polling import wait_for

SERVERS = ['waitress', 'werkzeug', 'gunicorn']
JPEG = jpeg_bytes(64, 48)


@pytest.fixture(params=SERVERS)
def server(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Callable[..., ServedProcess]]:
    started: list[ServedProcess] = []

    def start(server: str, *args: str) -> ServedProcess:
        process = ServedProcess(server, tmp_path / f'data-{len(started)}', *args)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


def detect(url: str, timeout: float = 5.0) -> requests.Response:
    response = requests.post(f'{url}/detect', files={'file': ('image.jpg', JPEG, 'image/jpeg')}, timeout=timeout)
    assert response.status_code == 200, response.text
    return response


def handshake(session: requests.Session, url: str) -> requests.Response:
    return session.get(f'{url}/ws/socket.io/', params={'EIO': '4', 'transport': 'polling'}, timeout=5)


def open_session(session: requests.Session, url: str) -> str:
    response = handshake(session, url)
    assert response.status_code == 200 and response.text.startswith('0'), response.text
    return str(json.loads(response.text[1:])['sid'])


def post_packet(session: requests.Session, url: str, sid: str, body: str) -> requests.Response:
    return session.post(
        f'{url}/ws/socket.io/',
        params={'EIO': '4', 'transport': 'polling', 'sid': sid},
        data=body.encode(),
        headers={'Content-Type': 'text/plain;charset=UTF-8'},
        timeout=5,
    )


def test_engineio_packets_nobody_takes_are_answered_at_once(server: str, served: Callable[..., ServedProcess]) -> None:
    """``6``, ``2probe`` and ``7`` POSTed on long-polling once held a thread for good (32 froze waitress)."""
    node = served(server, '--threads', '4')
    started = time.monotonic()
    with requests.Session() as session:
        for number in range(100):
            sid = open_session(session, node.url)
            answer = post_packet(session, node.url, sid, ('6', '2probe', '7')[number % 3])
            assert answer.status_code in (200, 400), answer.text
    assert time.monotonic() - started < 30
    detect(node.url)
    assert requests.get(f'{node.url}/healthz', timeout=5).status_code == 200


def test_a_post_to_a_session_the_client_closed_is_a_400_with_json(
    server: str, served: Callable[..., ServedProcess]
) -> None:
    node = served(server)
    with requests.Session() as session:
        sid = open_session(session, node.url)
        assert post_packet(session, node.url, sid, '40').status_code == 200
        assert post_packet(session, node.url, sid, '1').status_code == 200
        answer = post_packet(session, node.url, sid, '42["about"]')
    assert answer.status_code == 400
    assert answer.headers['Content-Type'] == 'application/json' and 'closed' in answer.json()['detail']


def test_sessions_beyond_the_limit_are_refused_with_retry_after(
    server: str, served: Callable[..., ServedProcess]
) -> None:
    node = served(server, '--max-sessions', '5')
    with requests.Session() as session:
        for _ in range(5):
            open_session(session, node.url)
        refused = handshake(session, node.url)
    assert refused.status_code == 503
    assert refused.headers['Retry-After'] == '5' and 'sessions' in refused.json()['detail']
    detect(node.url)


def test_idle_clients_leave_rest_served(server: str, served: Callable[..., ServedProcess]) -> None:
    """40 connected clients, each holding a long-poll or a WebSocket, and the REST API still answers; those
    beyond the long-poll or WebSocket limit are refused, never queued behind the threads."""
    node = served(server, '--threads', '16')
    clients = subprocess.Popen(
        [sys.executable, '-m', 'tests.node.idle_clients', node.url, '40'],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert clients.stdout is not None
        report: dict[str, Any] = json.loads(clients.stdout.readline())
        assert report['connected'] >= 6, report
        assert report['connected'] + report['refused'] == 40, report
        for _ in range(10):
            detect(node.url, timeout=2)
    finally:
        clients.kill()
        clients.wait(10)


def hung_post(url: str) -> socket.socket:
    """A POST /detect whose body stops half-way; the connection stays open."""
    host, port = url.removeprefix('http://').rsplit(':', 1)
    sock = socket.create_connection((host, int(port)), timeout=5)
    head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
    sock.sendall(
        b'POST /detect HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n'
        b'Content-Length: 100000\r\n\r\n' + head + bytes(50000)
    )
    return sock


@pytest.mark.slow
def test_hung_uploads_neither_starve_rest_nor_keep_their_threads(
    server: str, served: Callable[..., ServedProcess]
) -> None:
    node = served(server, '--threads', '8', '--read-timeout', '1')
    detect(node.url)
    idle = node.threads()
    sockets = [hung_post(node.url) for _ in range(12)]  # more than the threads
    try:
        for _ in range(5):
            detect(node.url, timeout=4)
        wait_for(lambda: node.threads() <= idle + 2, 15, f'{server} threads back to {idle} (+2)')
    finally:
        for sock in sockets:
            sock.close()


@pytest.mark.slow
def test_vanished_clients_free_their_threads(server: str, served: Callable[..., ServedProcess]) -> None:
    """Clients that vanish (their process stopped) without closing: engine.io gives their sessions up after the ping
    timeout, and the threads they held end soon after."""
    node = served(server, '--threads', '32', '--ping', '1')
    detect(node.url)
    idle = node.threads()
    clients = subprocess.Popen(
        [sys.executable, '-m', 'tests.node.idle_clients', node.url, '10'],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert clients.stdout is not None
    report = json.loads(clients.stdout.readline())
    assert report['connected'] == 10, report
    assert node.threads() > idle
    os.kill(clients.pid, signal.SIGSTOP)  # their connections stay open and silent: no close, no FIN
    try:
        detect(node.url)
        wait_for(lambda: node.threads() <= idle + 2, 1 + 1 + 10, f'{server} threads back to {idle} (+2)')
        detect(node.url)
    finally:
        clients.kill()
        clients.wait(10)
