"""The common routes and the JSON error handling, over both real servers (waitress and werkzeug)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from flask import Blueprint, request

from llnode.config import Settings
from llnode.node import BadRequest, Node, PayloadTooLarge, Unavailable, Unprocessable, UnsupportedMediaType
from tests.node.conftest import Served, new_threads_gone, wait_for


class RouteNode(Node):
    max_request_bytes = 10_000

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ready = True
        self.ready_error: Exception | None = None

    def is_ready(self) -> bool:
        if self.ready_error is not None:
            raise self.ready_error
        return self.ready

    def blueprints(self) -> list[Blueprint]:
        extra = Blueprint('test_extra', __name__)

        @extra.post('/echo')
        def echo() -> Any:
            return {'size': len(request.get_data())}

        @extra.get('/raise/<kind>')
        def raise_(kind: str) -> Any:
            errors = {
                'bad': BadRequest('no image part'),
                'media': UnsupportedMediaType('expected image/jpeg'),
                'unprocessable': Unprocessable('shape [2, 2] does not match 5 bytes'),
                'unavailable': Unavailable('updating model to version 1.2', retry_after=2),
                'large': PayloadTooLarge('image too large'),
            }
            if kind in errors:
                raise errors[kind]
            raise RuntimeError('secret internal detail')

        return [*super().blueprints(), extra]


@pytest.fixture
def llnode_logger_level() -> Iterator[None]:
    llnode_logger = logging.getLogger('llnode')
    level = llnode_logger.level
    yield
    llnode_logger.setLevel(level)


@pytest.fixture
def served(settings: Settings, server: str, serve: Callable[..., Served]) -> Served:
    return serve(RouteNode('routes', settings=settings, repeat_interval=0.05), server)


def test_health_and_readiness(served: Served) -> None:
    node = served.node
    assert isinstance(node, RouteNode)
    health = requests.get(f'{served.url}/healthz', timeout=5)
    assert health.status_code == 200 and health.json() == {'status': 'ok'}
    assert health.headers['Content-Type'] == 'application/json'
    ready = requests.get(f'{served.url}/readyz', timeout=5)
    assert ready.status_code == 200 and ready.json() == {'status': 'ready'}
    node.ready = False
    not_ready = requests.get(f'{served.url}/readyz', timeout=5)
    assert not_ready.status_code == 503 and not_ready.json() == {'detail': 'node is not ready'}
    node.ready_error = Unavailable('no model loaded')
    assert requests.get(f'{served.url}/readyz', timeout=5).json() == {'detail': 'no model loaded'}
    node.ready_error = KeyError('oops')
    failed = requests.get(f'{served.url}/readyz', timeout=5)
    assert failed.status_code == 503 and 'readiness check failed' in failed.json()['detail']


class SectionNode(RouteNode):
    """Adds a section whose source the test swaps: a value, an exception, or something JSON cannot carry."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.source: Callable[[], Any] = lambda: {'answered': 1}

    def stats(self) -> dict[str, Any]:
        stats = super().stats()
        stats['extra'] = self.stats_section('extra', self.source)
        return stats


def test_stats_of_a_plain_node(served: Served) -> None:
    response = requests.get(f'{served.url}/stats', timeout=5)
    assert response.status_code == 200 and response.headers['Content-Type'] == 'application/json'
    stats = response.json()
    assert set(stats) == {'name', 'uuid', 'node_type', 'uptime_s', 'state', 'muted'}  # no Loop socket: no 'loop'
    assert (stats['name'], stats['uuid'], stats['node_type']) == ('routes', served.node.uuid, 'node')
    assert (stats['state'], stats['muted']) == ('running', False)
    assert isinstance(stats['uptime_s'], float) and stats['uptime_s'] >= 0
    served.node.mute()
    assert requests.get(f'{served.url}/stats', timeout=5).json()['muted'] is True


def test_stats_of_a_node_that_is_not_running(settings: Settings) -> None:
    node = RouteNode('external', settings=settings)
    client = node.flask_app.test_client()
    response = client.get('/stats')
    assert response.status_code == 200
    assert (response.get_json()['state'], response.get_json()['uptime_s']) == ('new', 0.0)


def test_a_failing_stats_section_never_fails_the_answer(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    node = SectionNode('sections', settings=settings)
    client = node.flask_app.test_client()
    assert client.get('/stats').get_json()['extra'] == {'answered': 1}

    def raises() -> Any:
        raise KeyError('camera')

    node.source = raises
    with caplog.at_level(logging.WARNING, logger='llnode.node'):
        for _ in range(5):
            response = client.get('/stats')
            assert response.status_code == 200
            assert response.get_json()['extra'] == {'error': "KeyError: 'camera'"}
            assert response.get_json()['name'] == 'sections'
        node.source = lambda: {'when': float('nan')}  # strict JSON has no NaN
        response = client.get('/stats')
        assert response.status_code == 200 and response.get_json()['extra']['error'].startswith('ValueError: ')
        node.source = lambda: {'path': object()}
        response = client.get('/stats')
        assert response.status_code == 200 and response.get_json()['extra']['error'].startswith('TypeError: ')
    logged = [record.getMessage() for record in caplog.records if 'stats section' in record.getMessage()]
    assert len(logged) == 3, logged  # each distinct failure once, however often it is asked for


@pytest.mark.usefixtures('llnode_logger_level')
def test_debug_logging_switch(served: Served) -> None:
    on = requests.put(f'{served.url}/debug_logging', data='on', timeout=5)
    assert on.status_code == 200 and on.json() == 'on' and on.text == '"on"'
    assert logging.getLogger('llnode').level == logging.DEBUG
    assert logging.getLogger('llnode.node.anything').getEffectiveLevel() == logging.DEBUG
    off = requests.put(f'{served.url}/debug_logging', data=' off\n', timeout=5)
    assert off.json() == 'off'
    assert logging.getLogger('llnode').level == logging.INFO
    for body in ('maybe', '', 'ON', b'\xff'):
        bad = requests.put(f'{served.url}/debug_logging', data=body, timeout=5)
        assert bad.status_code == 400 and bad.json() == {'detail': 'Invalid state'}
    assert logging.getLogger('llnode').level == logging.INFO


def test_socketio_switch(served: Served) -> None:
    assert requests.put(f'{served.url}/socketio', data='off', timeout=5).json() == 'off'
    assert served.node.muted
    bad = requests.put(f'{served.url}/socketio', data='pause', timeout=5)
    assert bad.status_code == 400 and bad.json() == {'detail': 'Invalid state'}
    assert served.node.muted  # unchanged by a bad request
    assert requests.put(f'{served.url}/socketio', data='on', timeout=5).json() == 'on'
    assert not served.node.muted


def test_routing_errors_are_json(served: Served) -> None:
    missing = requests.get(f'{served.url}/no/such/route', timeout=5)
    assert missing.status_code == 404 and 'not found' in missing.json()['detail'].lower()
    wrong_method = requests.post(f'{served.url}/healthz', timeout=5)
    assert wrong_method.status_code == 405 and wrong_method.json()['detail']
    assert 'GET' in wrong_method.headers['Allow']
    assert wrong_method.headers['Content-Type'] == 'application/json'


@pytest.mark.parametrize(
    ('kind', 'status', 'detail'),
    [
        ('bad', 400, 'no image part'),
        ('media', 415, 'expected image/jpeg'),
        ('unprocessable', 422, 'shape [2, 2] does not match 5 bytes'),
        ('unavailable', 503, 'updating model to version 1.2'),
        ('large', 413, 'image too large'),
    ],
)
def test_node_errors_map_to_their_status(served: Served, kind: str, status: int, detail: str) -> None:
    response = requests.get(f'{served.url}/raise/{kind}', timeout=5)
    assert response.status_code == status
    assert response.json() == {'detail': detail}
    if kind == 'unavailable':
        assert response.headers['Retry-After'] == '2'


def test_unexpected_error_is_a_json_500_with_the_traceback_logged(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    response = requests.get(f'{served.url}/raise/other', timeout=5)
    assert response.status_code == 500
    assert response.json() == {'detail': 'internal error'}
    assert 'secret' not in response.text
    wait_for(lambda: 'secret internal detail' in caplog.text, what='the traceback in the log')
    assert 'Traceback' in caplog.text


def test_oversized_body_is_a_json_413(served: Served) -> None:
    assert requests.post(f'{served.url}/echo', data=b'x' * 9_000, timeout=5).json() == {'size': 9_000}
    too_big = requests.post(f'{served.url}/echo', data=b'x' * 20_000, timeout=5)
    assert too_big.status_code == 413 and too_big.json()['detail']


def test_stop_with_an_idle_keep_alive_connection_is_bounded(
    settings: Settings, server: str, serve: Callable[..., Served]
) -> None:
    before = set(threading.enumerate())
    served = serve(RouteNode('keepalive', settings=settings), server)
    with requests.Session() as session:  # keeps its connection open after the answer
        assert session.get(f'{served.url}/healthz', timeout=5).status_code == 200
        assert served.stop(timeout=5) == 0
        assert served.node.server_address is None
        with pytest.raises(requests.ConnectionError):
            requests.get(f'{served.url}/healthz', timeout=2)
    new_threads_gone(before, timeout=3)


def test_readyz_is_503_after_stop_for_an_external_server(settings: Settings) -> None:
    node = RouteNode('external', settings=settings)
    client = node.flask_app.test_client()  # what an external WSGI server would call; the node is not started
    response = client.get('/readyz')
    assert response.status_code == 503 and response.get_json() == {'detail': 'node is not running'}
    with node:
        assert client.get('/readyz').status_code == 200
    assert client.get('/readyz').get_json() == {'detail': 'node is stopping'}


def test_serve_refuses_an_unknown_server_and_a_busy_port(
    settings: Settings, serve: Callable[..., Served], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ValueError, match='gunicorn, waitress, werkzeug'):
        RouteNode('x', settings=settings).serve('127.0.0.1', 0, server='tornado')
    served = serve(RouteNode('first', settings=settings), 'waitress')
    port = int(served.url.rsplit(':', 1)[1])
    for kind in ('gunicorn', 'waitress', 'werkzeug'):
        second = RouteNode('second', settings=settings)
        assert second.serve('127.0.0.1', port, server=kind) == 2  # a start-up error (llnode.startup)
        assert f'port {port} on 127.0.0.1 is in use' in capsys.readouterr().err
        assert not second.running
