"""Faults a real server cannot easily produce, injected with ``responses`` into the Loop client's transport."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests
import responses
from responses import registries

from llnode.config import Settings
from llnode.loop.errors import LoopConnectionError, LoopHTTPError, LoopProtocolError, LoopTimeout
from llnode.loop.exchange import DataExchange
from llnode.loop.http import LoopClient

BASE = 'http://loop.test'
PROJECT = f'{BASE}/api/o/projects/p'


@pytest.fixture
def client() -> LoopClient:
    settings = Settings(host='loop.test', username='u', password='p', organization='o', project='p')
    with LoopClient(settings, timeout=2.0) as c:
        yield c


def _login() -> None:
    responses.add(responses.POST, f'{BASE}/api/login', status=200, headers={'Set-Cookie': 'session=s1; Path=/'})


@responses.activate
def test_connection_reset_becomes_a_connection_error(client: LoopClient) -> None:
    _login()
    responses.add(responses.GET, f'{PROJECT}/data', body=requests.ConnectionError('connection reset by peer'))
    with pytest.raises(LoopConnectionError, match='connection reset by peer') as info:
        client.get('/o/projects/p/data')
    assert not isinstance(info.value, LoopTimeout)
    assert isinstance(info.value.__cause__, requests.ConnectionError)


@responses.activate
def test_read_timeout_becomes_a_timeout(client: LoopClient) -> None:
    _login()
    responses.add(responses.GET, f'{PROJECT}/data', body=requests.ReadTimeout('read timed out'))
    with pytest.raises(LoopTimeout):
        client.get('/o/projects/p/data', timeout=0.5)


@responses.activate
def test_json_on_a_body_that_is_not_json_is_a_protocol_error(client: LoopClient) -> None:
    _login()
    responses.add(responses.GET, f'{PROJECT}/deployment/target', body='<html>proxy error page</html>', status=200)
    with pytest.raises(LoopProtocolError):
        client.json('GET', '/o/projects/p/deployment/target')


@responses.activate
def test_json_on_a_server_error_carries_status_and_body(client: LoopClient) -> None:
    _login()
    responses.add(responses.GET, f'{PROJECT}/models', json={'detail': 'database is down'}, status=500)
    with pytest.raises(LoopHTTPError) as info:
        client.json('GET', '/o/projects/p/models')
    assert info.value.status == 500 and 'database is down' in info.value.body


@responses.activate(registry=registries.OrderedRegistry)
def test_429_then_success_waits_for_retry_after(client: LoopClient) -> None:
    _login()
    responses.add(responses.GET, f'{PROJECT}/data', status=429, headers={'Retry-After': '0.3'})
    responses.add(responses.GET, f'{PROJECT}/data', json={'image_ids': []}, status=200)
    started = time.monotonic()
    assert client.json('GET', '/o/projects/p/data') == {'image_ids': []}
    assert time.monotonic() - started >= 0.25
    assert [c.request.method for c in responses.calls] == ['POST', 'GET', 'GET']


@responses.activate
def test_backend_ready_is_false_on_errors_not_an_exception(client: LoopClient) -> None:
    responses.add(responses.GET, f'{BASE}/api/status', body=requests.ConnectionError('refused'))
    assert client.backend_ready(timeout=0.5) is False
    responses.replace(responses.GET, f'{BASE}/api/status', status=503)
    assert client.backend_ready(timeout=0.5) is False
    responses.replace(responses.GET, f'{BASE}/api/status', status=200)
    assert client.backend_ready(timeout=0.5) is True


@responses.activate(registry=registries.OrderedRegistry)
def test_a_metadata_chunk_that_breaks_midway_fails_the_whole_call(client: LoopClient) -> None:
    """Reference weak point C18: a failed chunk must never yield a silently smaller dataset."""
    ids = [f'img{i:03d}' for i in range(150)]
    _login()
    responses.add(responses.GET, f'{PROJECT}/images', json={'images': [{'id': i, 'set': 'train'} for i in ids[:100]]})
    responses.add(responses.GET, f'{PROJECT}/images', body=requests.ConnectionError('reset in chunk 2'))
    with pytest.raises(LoopConnectionError, match='reset in chunk 2'):
        DataExchange(client).image_metadata(ids)


@responses.activate
def test_model_download_without_content_disposition_is_refused(client: LoopClient, tmp_path: Path) -> None:
    responses.add(responses.GET, f'{PROJECT}/models/m1/mocked/file', body=b'PK\x05\x06' + b'\0' * 18)
    with pytest.raises(LoopProtocolError, match='Content-Disposition'):
        DataExchange(client).download_model('m1', 'mocked', tmp_path / 'model')
    assert not (tmp_path / 'model').exists()
