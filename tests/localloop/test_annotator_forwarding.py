"""``POST /control/nodes/{node}/handle_user_input`` and ``.../user_logout``: a person's events reach a connected
annotator node through the local Loop, as from the hosted Loop's UI (loop-protocol §3.6); ``llnode control
handle-user-input`` and ``user-logout`` do the same from a shell."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from llnode.annotator import AnnotatorNode
from llnode.localloop import LocalLoop
from llnode.localloop.command import control_main
from tests.annotator.support import RecordingLogic, category, demo_image, user_input
from tests.linked_nodes import NodeFactory


@pytest.fixture
def annotator(local_loop: LocalLoop) -> Iterator[tuple[AnnotatorNode, RecordingLogic]]:
    logic = RecordingLogic()
    factory = NodeFactory(AnnotatorNode, RecordingLogic, 'forwarded annotator', {'repeat_interval': 0.1})
    node = factory(local_loop, logic)
    yield node, logic
    factory.stop_all()


def test_user_input_and_logout_reach_the_annotator_and_its_annotation_is_stored(
    local_loop: LocalLoop, loop_session: requests.Session, annotator: tuple[AnnotatorNode, RecordingLogic]
) -> None:
    node, logic = annotator
    image = demo_image(local_loop)
    base = f'{local_loop.url}/control/nodes/{node.uuid}'
    down = user_input('frontend-1', 'left_mouse_down', image['id'], category(local_loop))
    answer = loop_session.post(f'{base}/handle_user_input', json=down, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        'node': node.uuid,
        'event': 'handle_user_input',
        'ack': {'success': True, 'error_msg': None, 'payload': '<text>1</text>'},
    }
    up = user_input('frontend-1', 'left_mouse_up', image['id'], category(local_loop))
    assert loop_session.post(f'{base}/handle_user_input', json=up, timeout=30).json()['ack']['success']
    stored = local_loop.store.image('zauberzeug', 'demo', image['id'])['segmentation_annotations']
    assert [a['id'] for a in stored] == ['seg-frontend-1-2']
    assert [(f, e) for f, e, _ in logic.seen] == [('frontend-1', 'left_mouse_down'), ('frontend-1', 'left_mouse_up')]
    answer = loop_session.post(f'{base}/user_logout', json={'frontend_id': 'frontend-1'}, timeout=30)
    assert answer.json()['ack'] == {'success': True, 'error_msg': None, 'payload': None}  # as the reference acks
    assert logic.logged_out == ['frontend-1']


def test_bad_user_input_and_unknown_nodes_get_clear_errors(
    local_loop: LocalLoop, loop_session: requests.Session, annotator: tuple[AnnotatorNode, RecordingLogic]
) -> None:
    node, _logic = annotator
    base = f'{local_loop.url}/control/nodes'
    for body in ({}, {'frontend_id': 'f'}, {'frontend_id': 3, 'data': {}}, {'frontend_id': 'f', 'data': []}):
        answer = loop_session.post(f'{base}/{node.uuid}/handle_user_input', json=body, timeout=10)
        assert answer.status_code == 400, body
        assert 'UserInput' in answer.json()['detail']
    answer = loop_session.post(f'{base}/{node.uuid}/user_logout', json={}, timeout=10)
    assert answer.status_code == 400
    answer = loop_session.post(
        f'{base}/nobody/handle_user_input', json={'frontend_id': 'f', 'data': {'x': 1}}, timeout=10
    )
    assert answer.status_code == 404
    assert 'not connected' in answer.json()['detail']
    # the node answers a malformed input with a failure ack, passed back as it came
    answer = loop_session.post(
        f'{base}/{node.uuid}/handle_user_input', json={'frontend_id': 'f', 'data': {'x': 1}}, timeout=30
    )
    assert answer.status_code == 200
    assert answer.json()['ack']['success'] is False
    # other commands are still unknown, and the message lists the new ones
    answer = loop_session.post(f'{base}/{node.uuid}/dance', json={}, timeout=10)
    assert answer.status_code == 404
    assert 'handle_user_input' in answer.json()['detail']


def test_llnode_control_forwards_user_input_and_logout(
    local_loop: LocalLoop,
    annotator: tuple[AnnotatorNode, RecordingLogic],
    capsys: Any,
    tmp_path: Any,
) -> None:
    node, logic = annotator
    image = demo_image(local_loop)
    event = tmp_path / 'event.json'
    event.write_text(json.dumps(user_input('shell', 'mouse_move', image['id'], category(local_loop))))
    common = ['--url', local_loop.url, '--user', 'u:p']
    assert control_main([*common, 'handle-user-input', node.uuid, f'@{event}']) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed['ack'] == {'success': True, 'error_msg': None, 'payload': '<text>1</text>'}
    assert control_main([*common, 'user-logout', node.uuid, 'shell', '--ack-timeout', '10']) == 0
    assert json.loads(capsys.readouterr().out)['ack']['success'] is True
    assert logic.logged_out == ['shell']
    # mistakes are one line on stderr and exit code 2, as every llnode command's start-up errors
    for argument, message in [
        ('[1, 2]', 'must be a JSON object'),
        ('{nope', 'is not valid JSON'),
        (f'@{tmp_path / "missing.json"}', 'cannot read'),
    ]:
        assert control_main([*common, 'handle-user-input', node.uuid, argument]) == 2
        err = capsys.readouterr().err
        assert err.count('\n') == 1 and err.startswith('llnode control: ') and message in err, err
