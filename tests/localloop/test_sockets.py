"""Socket.IO on the local Loop, with a real python-socketio client acting as trainer or annotator."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import socketio

from llnode.localloop import LocalLoop
from tests.localloop.helpers import CONTROL, PROJECT, connect_node, login
from tests.polling import wait_for

OK = {'success': True, 'error_msg': None, 'payload': None}
IDLE = {
    'id': 'trainer-1',
    'name': 'test trainer',
    'state': 'idle',
    'uptime': None,
    'errors': {},
    'progress': None,
    'pretrained_models': [{'name': 'small', 'label': 'Small', 'description': 'a small model'}],
    'architecture': 'mocked',
    'context': None,
}


# python-engineio's polling client can lose its CLOSE packet when it disconnects (its write loop checks the state
# before sending); its pending long-poll then ends only with the server's next ping. A 1 s ping keeps that short.
PING_INTERVAL = 1.0


@pytest.fixture
def local_loop(make_local_loop: Any) -> LocalLoop:
    """The demo loop with a short Engine.IO ping interval."""
    loop: LocalLoop = make_local_loop(demo=True, demo_images=3, ping_interval=PING_INTERVAL)
    return loop


@pytest.fixture(params=['polling', 'websocket'])
def any_transport_loop(request: pytest.FixtureRequest, make_local_loop: Any) -> LocalLoop:
    """The demo loop on waitress (long-polling) and on werkzeug (WebSocket)."""
    loop: LocalLoop = make_local_loop(
        demo=True, demo_images=3, websocket=request.param == 'websocket', ping_interval=PING_INTERVAL
    )
    loop.transport = request.param  # type: ignore[attr-defined]
    return loop


def test_trainer_with_cookie_connects_and_its_status_is_stored(any_transport_loop: LocalLoop) -> None:
    loop = any_transport_loop
    session = login(loop)
    client = connect_node(loop, 'trainer', cookie=session.cookies['session'])
    try:
        wait_for(lambda: client.transport() == loop.transport)  # type: ignore[attr-defined]
        assert client.call('update_trainer', IDLE, timeout=10) == OK
        node = loop.store.node('trainer-1')
        assert node is not None
        assert node['status'] == IDLE
        assert (node['node_type'], node['organization'], node['project']) == ('trainer', 'zauberzeug', 'demo')
        listed = session.get(f'{loop.url}/control/nodes', timeout=10).json()['nodes']
        assert [(n['id'], n['connected'], n['name']) for n in listed] == [('trainer-1', True, 'test trainer')]
    finally:
        client.disconnect()
    wait_for(lambda: not session.get(f'{loop.url}/control/nodes', timeout=10).json()['nodes'][0]['connected'])


@pytest.mark.parametrize('node_type', ['trainer', 'annotation_node'])
def test_trainer_and_annotator_without_valid_cookie_are_refused(local_loop: LocalLoop, node_type: str) -> None:
    for cookie in (None, 'forged'):
        with pytest.raises(socketio.exceptions.ConnectionError):
            connect_node(local_loop, node_type, cookie=cookie)
    assert local_loop.hub is not None
    assert local_loop.hub.connected() == []


def test_other_node_types_may_connect_without_login(local_loop: LocalLoop) -> None:
    client = connect_node(local_loop, 'node')
    try:
        assert local_loop.hub is not None
        assert [n['node_type'] for n in local_loop.hub.connected()] == ['node']
    finally:
        client.disconnect()


def test_begin_training_from_the_control_api_reaches_the_trainer_and_returns_its_ack(local_loop: LocalLoop) -> None:
    session = login(local_loop)
    received: list[tuple[Any, ...]] = []
    answers = iter([OK, {'success': False, 'error_msg': 'training 1 is still active', 'payload': 'refused'}, OK])

    def begin_training(*args: Any) -> dict[str, Any]:
        received.append(args)
        return next(answers)

    client = connect_node(
        local_loop, 'trainer', cookie=session.cookies['session'], handlers={'begin_training': begin_training}
    )
    try:
        assert client.call('update_trainer', IDLE, timeout=10) == OK
        body = {
            'model_variant': 'small',
            'hyperparameters': {'resolution': 832, 'fliplr': 0.5, 'flipud': 0.5},
            'base_model_version': '1.1',
        }
        answer = session.post(f'{local_loop.url}{CONTROL}/trainings', json=body, timeout=30).json()
        assert answer['ack'] == OK
        assert answer['accepted'] is True
        assert answer['node'] == 'trainer-1'
        organization, project, details = received[0]
        assert (organization, project) == ('zauberzeug', 'demo')
        assert set(details) == {'categories', 'training_number', 'model_variant', 'hyperparameters', 'base_model_uuid'}
        assert details['training_number'] == 4  # the demo models came from trainings 1-3
        assert details['model_variant'] == 'small'
        assert details['hyperparameters'] == body['hyperparameters']
        assert details['base_model_uuid'] == '00000000-0000-0000-0000-000000000011'
        assert [c['name'] for c in details['categories']] == ['circle', 'square', 'triangle', 'purple point']
        assert set(details['categories'][0]) == {'id', 'name', 'description', 'hotkey', 'color', 'point_size', 'type'}

        refused = session.post(f'{local_loop.url}{CONTROL}/trainings', json={'node': 'trainer-1'}, timeout=30).json()
        assert refused['ack']['payload'] == 'refused'
        assert refused['accepted'] is False
        assert refused['training_number'] == 5
        again = session.post(f'{local_loop.url}{CONTROL}/trainings', json={'node': 'trainer-1'}, timeout=30).json()
        assert again['accepted'] is True and again['training_number'] == 5  # the refusal used up no number
        trainings = session.get(f'{local_loop.url}{CONTROL}/trainings', timeout=10).json()['trainings']
        assert [(t['number'], t['accepted']) for t in trainings] == [(4, True), (5, False), (5, True)]
    finally:
        client.disconnect()


def test_node_commands_reach_the_node_and_return_the_ack(local_loop: LocalLoop) -> None:
    session = login(local_loop)
    calls: list[str] = []
    stopped = threading.Event()

    def stop_training() -> bool:
        calls.append('stop_training')
        stopped.set()
        return True

    def abort_training() -> None:
        calls.append('abort_training')

    client = connect_node(
        local_loop,
        'trainer',
        cookie=session.cookies['session'],
        handlers={'stop_training': stop_training, 'abort_training': abort_training},
    )
    try:
        client.call('update_trainer', IDLE, timeout=10)
        stop = session.post(f'{local_loop.url}/control/nodes/trainer-1/stop_training', timeout=30)
        assert stop.json() == {'node': 'trainer-1', 'event': 'stop_training', 'ack': True}
        assert stopped.is_set()
        abort = session.post(f'{local_loop.url}/control/nodes/{client.get_sid()}/abort_training', timeout=30)
        assert abort.json()['ack'] is None  # the handler acked without arguments
        assert calls == ['stop_training', 'abort_training']
        unknown = session.post(f'{local_loop.url}/control/nodes/nobody/stop_training', timeout=30)
        assert unknown.status_code == 404
        bad = session.post(f'{local_loop.url}/control/nodes/trainer-1/explode', timeout=30)
        assert bad.status_code == 404
    finally:
        client.disconnect()


def test_begin_training_without_a_connected_trainer_is_409(local_loop: LocalLoop) -> None:
    response = login(local_loop).post(f'{local_loop.url}{CONTROL}/trainings', json={}, timeout=10)
    assert response.status_code == 409
    assert 'no trainer' in response.json()['detail']


def test_update_training_and_malformed_payloads(local_loop: LocalLoop) -> None:
    session = login(local_loop)
    client = connect_node(local_loop, 'trainer', cookie=session.cookies['session'])
    try:
        out = {
            'trainer_id': 'trainer-1',
            'trainer_name': 'test trainer',
            'confusion_matrix': {'c1': {'tp': 1, 'fp': 2, 'fn': 3}},
            'train_image_count': 8,
            'test_image_count': 2,
            'hyperparameters': {'resolution': 320},
            'best_epoch': 4,
        }
        assert client.call('update_training', ('zauberzeug', 'demo', out), timeout=10) == OK
        assert local_loop.store.training_updates('zauberzeug', 'demo') == [out]
        for args in (('zauberzeug', 'demo'), ('zauberzeug', 'demo', {'no': 'trainer id'}), ('zauberzeug', 'nope', out)):
            ack = client.call('update_training', args, timeout=10)
            assert ack['success'] is False
            assert isinstance(ack['error_msg'], str) and ack['error_msg']
            assert ack['payload'] is None
        assert client.call('update_trainer', ['not', 'a', 'status'], timeout=10)['success'] is False
    finally:
        client.disconnect()


def test_annotator_status_and_segmentation_annotations_are_stored(local_loop: LocalLoop) -> None:
    session = login(local_loop)
    client = connect_node(local_loop, 'annotation_node', cookie=session.cookies['session'])
    try:
        status = {
            'id': 'annotator-1',
            'name': 'segmentation tool',
            'state': 'online',
            'uptime': 0,
            'errors': {},
            'capabilities': ['segmentation'],
        }
        assert client.call('update_annotation_node', status, timeout=10) == OK
        assert local_loop.store.node('annotator-1')['node_type'] == 'annotation_node'  # type: ignore[index]
        image_id = local_loop.store.image_ids('zauberzeug', 'demo', 'annotate')[0]
        annotation = {
            'id': 'seg1',
            'shape': {'points': [{'x': 1, 'y': 2}, {'x': 3, 'y': 4}, {'x': 1, 'y': 6}]},
            'image_id': image_id,
            'category_id': 'c3',
        }
        assert client.call('update_segmentation_annotation', ('zauberzeug', 'demo', annotation), timeout=10) == OK
        item = session.get(f'{local_loop.url}{PROJECT}/images', params={'ids': image_id}, timeout=10).json()
        assert item['images'][0]['segmentation_annotations'] == [
            {'id': 'seg1', 'category_id': 'c3', 'shape': annotation['shape']}
        ]
        unknown_image = {**annotation, 'image_id': 'nope'}
        ack = client.call('update_segmentation_annotation', ('zauberzeug', 'demo', unknown_image), timeout=10)
        assert ack['success'] is False
        assert 'nope' in ack['error_msg']
        no_points = {**annotation, 'shape': {}}
        ack = client.call('update_segmentation_annotation', ('zauberzeug', 'demo', no_points), timeout=10)
        assert ack['success'] is False
    finally:
        client.disconnect()
