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
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.test import Client

from llnode.detector import DetectorNode
from llnode.node.admission import ServingLimits
from llnode.node.app import PING_CHECK_S
from llnode.node.threadpool import IDLE_S
from tests.detector.conftest import offline_settings
from tests.detector.node_helpers import TestingFactory, jpeg_bytes, nothing
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


def socketio_sessions(url: str) -> float:
    """The open Socket.IO sessions, as /metrics counts them (every transport)."""
    text = requests.get(f'{url}/metrics', timeout=5).text
    for family in text_string_to_metric_families(text):
        if family.name == 'llnode_socketio_sessions':
            return sum(sample.value for sample in family.samples)
    raise AssertionError(f'no llnode_socketio_sessions in /metrics:\n{text}')


@pytest.mark.slow
def test_vanished_clients_are_given_up_within_the_ping_timeout_and_free_their_threads(
    server: str, served: Callable[..., ServedProcess]
) -> None:
    """Clients that vanish (their process stopped) without closing: engine.io gives their sessions up within the
    ping interval plus the ping timeout (plus the one-second check), and the threads they held end soon after.
    engine.io's own check visits one session per ``ping_timeout / sessions`` seconds: up to a whole ping timeout
    later."""
    ping_interval, ping_timeout = 0.5, 3.0
    node = served(server, '--threads', '32', '--ping-interval', str(ping_interval), '--ping-timeout', str(ping_timeout))
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
    assert socketio_sessions(node.url) == 10
    os.kill(clients.pid, signal.SIGSTOP)  # their connections stay open and silent: no close, no FIN
    vanished = time.monotonic()
    try:
        detect(node.url)
        wait_for(lambda: socketio_sessions(node.url) == 0, ping_interval + ping_timeout + 5, 'sessions given up')
        given_up_after = time.monotonic() - vanished
        # the check runs each second; another second of slack for a loaded machine
        assert given_up_after <= ping_interval + ping_timeout + PING_CHECK_S + 1.0, given_up_after
        # the pool's threads end IDLE_S after their last work
        wait_for(lambda: node.threads() <= idle + 2, IDLE_S + 3, f'{server} threads back to {idle} (+2)')
        detect(node.url)
    finally:
        clients.kill()
        clients.wait(10)


def test_the_handshake_tells_clients_the_ping_settings(served: Callable[..., ServedProcess], tmp_path: Path) -> None:
    """A client learns engine.io's heartbeat from the handshake: the documented defaults, or the limits given to
    ``serve()`` (here under gunicorn, whose worker is forked after they were set)."""
    app = DetectorNode('pings', TestingFactory(nothing), settings=offline_settings(tmp_path / 'in-process')).wsgi_app
    opened = Client(app).get('/ws/socket.io/', query_string={'EIO': '4', 'transport': 'polling'})
    defaults = json.loads(opened.get_data(as_text=True)[1:])
    assert (defaults['pingInterval'], defaults['pingTimeout']) == (5000, 20000)
    assert (ServingLimits().ping_interval_s, ServingLimits().ping_timeout_s) == (5.0, 20.0)
    node = served('gunicorn', '--ping-interval', '2', '--ping-timeout', '7')
    with requests.Session() as session:
        handshaken = json.loads(handshake(session, node.url).text[1:])
    assert (handshaken['pingInterval'], handshaken['pingTimeout']) == (2000, 7000)


@pytest.mark.parametrize(
    ('field', 'value'),
    [('ping_interval_s', 0), ('ping_timeout_s', -1.0), ('ping_interval_s', float('inf')), ('ping_timeout_s', True)],
)
def test_ping_settings_must_be_positive_seconds(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=f'{field} must be a positive number of seconds'):
        ServingLimits(**{field: value})
