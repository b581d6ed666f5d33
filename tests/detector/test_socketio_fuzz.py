"""Malformed and unexpected Socket.IO input to a served detector: each bad packet is one WARNING line without a
traceback, no thread dies, the session goes on; wrong option types and unknown events get error acks; a batch of
many images works over long-polling."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator

import engineio
import numpy as np
import pytest

from tests.detector.conftest import Detector
from tests.detector.node_helpers import SioClient, raw_dict
from tests.detector.raw_polling import RawPolling
from tests.polling import wait_for

MakeDetector = Callable[..., Detector]
Connect = Callable[[Detector], SioClient]

#: packets a fuzzer sent; each reached a handler thread or the packet decoder and must end as one warning
MALFORMED = {
    'unterminated JSON': '42[',
    'an object, not a list': '42{}',
    'an empty event': '42[]',
    'a namespace without packet type': '4/,["about"]',
    'an event name that is a dict': '42[{"a":1}]',
    'JSON nested 1,000 deep': '42["detect",' + '[' * 1000 + ']' * 1000 + ']',
    'a number too large': '42["detect",' + '9' * 5000 + ']',
    'an attachment count out of range': '45123456789012-["detect"]',
}


@pytest.fixture
def thread_deaths() -> Iterator[list[str]]:
    """Names of threads that ended with an uncaught exception during the test."""
    deaths: list[str] = []
    previous = threading.excepthook

    def record(args: threading.ExceptHookArgs) -> None:
        deaths.append(f'{args.thread.name if args.thread else "?"}: {args.exc_type.__name__}: {args.exc_value}')

    threading.excepthook = record
    yield deaths
    threading.excepthook = previous


def socketio_records(records: list[logging.LogRecord]) -> list[logging.LogRecord]:
    """What the node's web app and Socket.IO server logged (not the offline detector's Loop warnings)."""
    return [r for r in records if r.name.startswith('llnode.node') and r.levelno >= logging.WARNING]


def problems(records: list[logging.LogRecord]) -> list[str]:
    """Records that would put a traceback or an error into the log."""
    return [f'{r.name} {r.levelname}: {r.getMessage()}' for r in records if r.exc_info or r.levelno >= logging.ERROR]


@pytest.mark.parametrize('packet', list(MALFORMED.values()), ids=list(MALFORMED))
def test_a_malformed_packet_is_one_warning_and_the_session_goes_on(
    make_detector: MakeDetector, packet: str, caplog: pytest.LogCaptureFixture, thread_deaths: list[str]
) -> None:
    detector = make_detector('waitress')
    client = RawPolling(detector.url)
    try:
        assert client.call('about')['operation_mode'] == 'idle'
        caplog.clear()
        with caplog.at_level(logging.INFO, logger='llnode'):
            client.send(packet)
            # the session still answers: the bad packet was dropped, not the connection nor a thread
            assert client.call('get_outbox_mode') == {'outbox_mode': 'continuous_upload'}
            wait_for(lambda: socketio_records(caplog.records), what='the log line of the bad packet')
        warnings = [r for r in socketio_records(caplog.records) if r.levelno >= logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in socketio_records(caplog.records)]
        message = warnings[0].getMessage()
        assert 'malformed Socket.IO packet' in message and '\n' not in message and len(message) < 400
        assert problems(caplog.records) == []
        assert thread_deaths == []
    finally:
        client.close()


def test_malformed_packets_over_websocket_from_a_real_client(
    make_detector: MakeDetector, sio_connect: Connect, caplog: pytest.LogCaptureFixture, thread_deaths: list[str]
) -> None:
    """The same packets through python-socketio's own client over WebSocket (werkzeug), one after another."""
    client = sio_connect(make_detector('werkzeug'))
    assert client.transport() == 'websocket'
    with caplog.at_level(logging.INFO, logger='llnode'):
        for packet in MALFORMED.values():
            client.eio.send(packet[1:])  # engineio adds the message type, the leading "4"
        assert client.call('get_outbox_mode', timeout=5) == {'outbox_mode': 'continuous_upload'}
        wait_for(lambda: len(socketio_records(caplog.records)) >= len(MALFORMED), what='a line per bad packet')
    assert len(socketio_records(caplog.records)) == len(MALFORMED)
    assert problems(caplog.records) == [] and thread_deaths == []
    assert client.connected


def test_an_unknown_event_gets_an_error_ack(make_detector: MakeDetector, sio_connect: Connect) -> None:
    client = sio_connect(make_detector('werkzeug'))
    assert client.call('x', {}, timeout=5) == {'error': "unknown event 'x'"}
    assert client.call('detect_all_the_things', timeout=5) == {'error': "unknown event 'detect_all_the_things'"}
    assert client.call('about', timeout=5)['state'] in ('online', 'offline')  # known events still answer


@pytest.mark.parametrize(
    ('option', 'value', 'expected'),
    [
        ('tags', 5, 'tags must be a list of strings, got int'),
        ('tags', 'a', 'tags must be a list of strings, got str'),
        ('tags', [1], 'tags must be a list of strings, got a list with int'),
        ('camera_id', 7, 'camera_id must be a string, got int'),
        ('source', ['s'], 'source must be a string, got list'),
        ('creation_date', 1.5, 'creation_date must be a string, got float'),
        ('autoupload', 3, 'autoupload must be one of filtered, all, disabled, got 3'),
    ],
)
def test_an_option_of_the_wrong_type_is_named_in_the_error(
    make_detector: MakeDetector,
    sio_connect: Connect,
    *,
    option: str,
    value: object,
    expected: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = sio_connect(make_detector('werkzeug'))
    image = raw_dict(np.zeros((4, 4, 3), np.uint8))
    with caplog.at_level(logging.INFO, logger='llnode'):
        assert client.call('detect', {'image': image, option: value}, timeout=5) == {'error': expected}
        assert client.call('batch_detect', {'images': [image], option: value}, timeout=5) == {'error': expected}
    assert problems(caplog.records) == []


def test_batch_detect_of_many_images_over_long_polling(
    make_detector: MakeDetector, monkeypatch: pytest.MonkeyPatch, sio_connect: Connect
) -> None:
    """32 raw images are 33 packets in one POST: more than engineio's default limit of 16 per payload."""
    monkeypatch.setattr(engineio.payload.Payload, 'max_decode_packets', 16)  # as in a process without a Loop socket
    detector = make_detector('waitress')
    client = sio_connect(detector)
    images = [raw_dict(np.full((6, 8, 3), n, np.uint8)) for n in range(32)]
    answer = client.call('batch_detect', {'images': images, 'autoupload': 'disabled'}, timeout=20)
    assert len(answer['items']) == 32


def test_batch_detect_over_the_queue_capacity_answers_an_error_without_a_traceback(
    make_detector: MakeDetector, sio_connect: Connect, caplog: pytest.LogCaptureFixture, thread_deaths: list[str]
) -> None:
    client = sio_connect(make_detector('werkzeug', max_queue=4))
    images = [raw_dict(np.zeros((4, 4, 3), np.uint8)) for _ in range(5)]
    with caplog.at_level(logging.INFO, logger='llnode'):
        answer = client.call('batch_detect', {'images': images}, timeout=5)
    assert answer == {'error': 'a batch of 5 images is more than the inference queue holds (4); send at most 4'}
    assert problems(caplog.records) == [] and thread_deaths == []
    assert len(client.call('batch_detect', {'images': images[:4]}, timeout=5)['items']) == 4
