"""SerialTlsSocket over a real TLS connection (a socket pair, the peer in a thread of its own)."""

from __future__ import annotations

import selectors
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from llnode.loop.tls_duplex import SerialTlsSocket
from tests.polling import wait_for

DEADLINE = 10.0


@pytest.fixture(scope='module')
def server_context(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    if shutil.which('openssl') is None:
        pytest.skip('openssl is needed to make a test certificate')
    folder = tmp_path_factory.mktemp('tls')
    cert, key = folder / 'peer.pem', folder / 'peer.key'
    subprocess.run(
        ['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=peer',
         '-keyout', str(key), '-out', str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


class Pair:
    """A client SerialTlsSocket and the peer's plain ``ssl.SSLSocket``, connected and past the handshake."""

    def __init__(self, server_context: ssl.SSLContext) -> None:
        near, far = socket.socketpair()
        accepted: list[ssl.SSLSocket] = []
        peer = threading.Thread(
            target=lambda: accepted.append(server_context.wrap_socket(far, server_side=True)), name='test-tls-peer'
        )
        peer.start()
        client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client_context.check_hostname = False
        client_context.verify_mode = ssl.CERT_NONE
        raw = client_context.wrap_socket(near)
        raw.settimeout(DEADLINE)
        peer.join(DEADLINE)
        (self.peer,) = accepted
        self.peer.settimeout(DEADLINE)
        self.sock = SerialTlsSocket(raw)

    def close(self) -> None:
        self.sock.close()
        self.peer.close()


@pytest.fixture
def pair(server_context: ssl.SSLContext) -> Iterator[Pair]:
    made = Pair(server_context)
    yield made
    made.close()


def read_exactly(sock: ssl.SSLSocket, count: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < count:
        chunk = sock.recv(count - len(chunks))
        assert chunk, 'the connection closed early'
        chunks += chunk
    return bytes(chunks)


def test_a_send_goes_out_while_another_thread_waits_in_recv(pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    waiting = threading.Event()

    class WatchedSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
        def select(self, timeout: float | None = None) -> Any:
            waiting.set()
            return super().select(timeout)

    monkeypatch.setattr(selectors, 'DefaultSelector', WatchedSelector)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(pair.sock.recv(100)), name='test-tls-reader')
    reader.start()
    wait_for(waiting.is_set, what='the reader to wait for the socket')
    started = time.monotonic()
    assert pair.sock.send(b'ping') == 4
    assert time.monotonic() - started < 1.0  # the waiting reader does not hold the lock
    assert read_exactly(pair.peer, 4) == b'ping'
    pair.peer.sendall(b'pong')
    reader.join(DEADLINE)
    assert received == [b'pong']


def test_recv_times_out_after_the_timeout_set_on_the_wrapper(pair: Pair) -> None:
    pair.sock.settimeout(0.3)
    assert pair.sock.gettimeout() == 0.3
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        pair.sock.recv(10)
    assert 0.3 <= time.monotonic() - started < 2.0


def test_recv_returns_nothing_once_the_peer_closed(pair: Pair) -> None:
    pair.peer.sendall(b'last words')
    pair.peer.close()
    assert pair.sock.recv(100) == b'last words'
    assert pair.sock.recv(100) == b''


def test_a_large_send_to_a_slow_reader_arrives_whole_while_the_other_direction_flows(pair: Pair) -> None:
    payload = bytes(range(256)) * 16384  # 4 MiB: many times what the socket buffers hold
    sent = bytearray()
    echoed: list[bytes] = []

    def write() -> None:
        view = memoryview(payload)
        while view:
            count = pair.sock.send(bytes(view[:65536]))
            sent.extend(view[:count])
            view = view[count:]

    writer = threading.Thread(target=write, name='test-tls-writer')
    reader = threading.Thread(target=lambda: echoed.append(pair.sock.recv(100)), name='test-tls-reader')
    writer.start()
    reader.start()
    pair.peer.sendall(b'meanwhile')  # the client reads this while its writer is stuck on a full buffer
    reader.join(DEADLINE)
    assert echoed == [b'meanwhile']
    assert read_exactly(pair.peer, len(payload)) == payload
    writer.join(DEADLINE)
    assert bytes(sent) == payload


def test_the_wrapper_starts_with_the_sockets_timeout_and_hands_other_calls_to_it(pair: Pair) -> None:
    assert pair.sock.gettimeout() == DEADLINE  # taken from the socket it wraps
    assert pair.sock.fileno() >= 0
    assert pair.sock.version() in ('TLSv1.2', 'TLSv1.3')  # any other attribute: the wrapped socket's
