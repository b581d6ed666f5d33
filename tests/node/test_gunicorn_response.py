"""gunicorn's answers under llnode's worker: a small body leaves in one write with the head; every other answer
is written as gunicorn writes it, byte for byte."""

from __future__ import annotations

import pytest
from gunicorn.config import Config
from gunicorn.http import wsgi
from gunicorn.http.message import Request
from gunicorn.http.unreader import IterUnreader

from llnode.node.gunicorn_serving import HEAD_WITH_BODY_MAX, _HeadWithBodyResponse


class RecordingSocket:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.writes.append(bytes(data))


def answer(kind: type, method: str, headers: list[tuple[str, str]], body: list[bytes]) -> list[bytes]:
    """What ``kind`` writes for one answer, one entry per write."""
    request = Request(Config(), IterUnreader([f'{method} /about HTTP/1.1\r\nHost: x\r\n\r\n'.encode()]), ('1.2.3.4', 5))
    sock = RecordingSocket()
    response = kind(request, sock, Config())
    response.start_response('200 OK', headers)
    for part in body:
        response.write(part)
    response.close()
    return sock.writes


def without_date(writes: list[bytes]) -> bytes:
    return b''.join(line for line in b''.join(writes).splitlines(keepends=True) if not line.startswith(b'Date:'))


def test_a_small_body_leaves_with_the_head_in_one_write() -> None:
    headers = [('Content-Type', 'application/json'), ('Content-Length', '11')]
    ours = answer(_HeadWithBodyResponse, 'GET', headers, [b'{"a": "bc"}'])
    theirs = answer(wsgi.Response, 'GET', headers, [b'{"a": "bc"}'])
    assert len(ours) == 1 and len(theirs) == 2
    assert ours[0].endswith(b'\r\n\r\n{"a": "bc"}')
    assert without_date(ours) == without_date(theirs)


@pytest.mark.parametrize(
    ('method', 'headers', 'body'),
    [
        ('HEAD', [('Content-Length', '11')], [b'{"a": "bc"}']),  # no body on the wire: the head alone
        ('GET', [('Content-Length', '0')], []),  # no write at all: close() sends the head
        ('GET', [('Content-Length', '0')], [b'']),
        ('GET', [], [b'one', b'two']),  # no length: chunked
        ('GET', [('Content-Length', str(HEAD_WITH_BODY_MAX + 1))], [bytes(HEAD_WITH_BODY_MAX + 1)]),
        ('GET', [('Content-Length', '6')], [b'abc', b'def']),  # the first part with the head, the rest after
    ],
)
def test_every_other_answer_is_written_as_gunicorn_writes_it(
    method: str, headers: list[tuple[str, str]], body: list[bytes]
) -> None:
    ours = answer(_HeadWithBodyResponse, method, headers, body)
    theirs = answer(wsgi.Response, method, headers, body)
    assert without_date(ours) == without_date(theirs)
    assert len(ours) <= len(theirs)
