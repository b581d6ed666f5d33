"""The local Loop's fault injection (``inject_fault`` and ``/control/faults``) and its counters of trainer uploads
(model uploads with 200/409, detections POSTs with their image ids), over real HTTP."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable

import pytest
import requests

from llnode.localloop import LocalLoop
from tests.localloop.helpers import PROJECT, login

MODEL_UPLOAD = f'{PROJECT}/trainings/5/models/latest/mocked/file'


def upload_model(session: requests.Session, loop: LocalLoop, model_format: str = 'mocked') -> requests.Response:
    files = [('files', ('weights.bin', b'\x01\x02')), ('files', ('model.json', b'{"categories": []}'))]
    url = f'{loop.url}{PROJECT}/trainings/5/models/latest/{model_format}/file'
    return session.put(url, files=files, timeout=10)


def test_injected_faults_answer_the_next_matching_requests_then_pass(local_loop: LocalLoop) -> None:
    session = login(local_loop)
    rule = local_loop.inject_fault('GET', r'/data$', 503, count=2, retry_after=1)
    assert rule['left'] == 2
    for _ in range(2):
        response = session.get(f'{local_loop.url}{PROJECT}/data', timeout=10)
        assert response.status_code == 503
        assert response.headers['Retry-After'] == '1'
        assert response.json() == {'detail': f'injected fault (rule {rule["id"]})'}
    assert session.get(f'{local_loop.url}{PROJECT}/data', timeout=10).status_code == 200
    (described,) = local_loop.fault_rules()
    assert (described['left'], described['hits']) == (0, 2)


def test_after_lets_matching_requests_through_first(local_loop: LocalLoop) -> None:
    session = login(local_loop)
    local_loop.inject_fault('GET', r'/data$', 500, count=1, after=2)
    statuses = [session.get(f'{local_loop.url}{PROJECT}/data', timeout=10).status_code for _ in range(4)]
    assert statuses == [200, 200, 500, 200]


def test_lose_answer_lets_the_api_do_the_work_and_replaces_its_answer(local_loop: LocalLoop) -> None:
    session = login(local_loop)
    local_loop.inject_fault('PUT', r'/models/latest/mocked/file$', 502, lose_answer=True)
    lost = upload_model(session, local_loop)
    assert lost.status_code == 502
    again = upload_model(session, local_loop)
    assert again.status_code == 409  # the first upload was stored
    uploads = local_loop.store.model_uploads('zauberzeug', 'demo')
    assert [u['status'] for u in uploads] == [200, 409]
    assert again.json()['detail']['id'] == uploads[0]['model_id']


def test_a_rule_matches_its_method_and_path_only(local_loop: LocalLoop) -> None:
    session = login(local_loop)
    local_loop.inject_fault('PUT', r'/models/latest/', 429, count=1)
    assert session.get(f'{local_loop.url}{PROJECT}/data', timeout=10).status_code == 200
    assert session.get(f'{local_loop.url}{PROJECT}/models', timeout=10).status_code == 200
    response = upload_model(session, local_loop)
    assert response.status_code == 429
    assert 'Retry-After' not in response.headers
    assert upload_model(session, local_loop).status_code == 200  # the session's connection is still in step


def test_a_faulted_request_never_reaches_the_api(local_loop: LocalLoop) -> None:
    session = login(local_loop)
    local_loop.inject_fault(None, r'/detections$', 500, count=1, detail='boom')
    body = [{'image_id': local_loop.store.image_ids('zauberzeug', 'demo')[0]}]
    response = session.post(f'{local_loop.url}{PROJECT}/detections', json=body, timeout=10)
    assert (response.status_code, response.json()) == (500, {'detail': 'boom'})
    assert local_loop.store.detection_posts('zauberzeug', 'demo') == []


def test_control_routes_add_list_and_clear_rules_and_are_never_faulted(local_loop: LocalLoop) -> None:
    session = login(local_loop)
    url = f'{local_loop.url}/control/faults'
    created = session.post(url, json={'method': '*', 'path': '.*', 'status': 502, 'count': 3}, timeout=10)
    assert created.status_code == 201, created.text
    assert created.json()['method'] is None
    listed = session.get(url, timeout=10)  # a catch-all rule does not lock the control routes out
    assert listed.status_code == 200
    assert [r['left'] for r in listed.json()['faults']] == [3]
    assert session.get(f'{local_loop.url}{PROJECT}/data', timeout=10).status_code == 502
    assert session.delete(url, timeout=10).json() == {'faults': []}
    assert session.get(f'{local_loop.url}{PROJECT}/data', timeout=10).status_code == 200


@pytest.mark.parametrize(
    'body',
    [
        {'path': '(', 'status': 503},
        {'path': 'x', 'status': 42},
        {'path': 'x', 'status': 503, 'count': 0},
        {'path': 'x', 'status': 503, 'retry_after': -1},
        {'path': 'x', 'status': 503, 'surprise': 1},
        {'path': 'x', 'status': 503, 'after': -1},
        {'path': 'x', 'status': 503, 'lose_answer': 'yes'},
        ['not', 'an', 'object'],
    ],
)
def test_bad_rules_are_refused(local_loop: LocalLoop, body: object) -> None:
    session = login(local_loop)
    response = session.post(f'{local_loop.url}/control/faults', json=body, timeout=10)
    assert response.status_code == 400, response.text
    assert local_loop.fault_rules() == []


def test_control_faults_need_a_login(local_loop: LocalLoop) -> None:
    response = requests.post(f'{local_loop.url}/control/faults', json={'path': 'x', 'status': 503}, timeout=10)
    assert response.status_code == 401


def test_rules_outlive_a_restart_and_work_with_werkzeug(make_local_loop: Callable[..., LocalLoop]) -> None:
    loop = make_local_loop(demo=True, demo_images=2, websocket=True)
    loop.inject_fault('POST', r'/detections$', 503, count=2)
    loop.stop()
    loop.start()
    session = login(loop)
    image_id = loop.store.image_ids('zauberzeug', 'demo')[0]
    url = f'{loop.url}{PROJECT}/detections'
    assert session.post(url, json=[{'image_id': image_id}], timeout=10).status_code == 503
    assert session.post(url, json=[{'image_id': image_id}], timeout=10).status_code == 503
    assert session.post(url, json=[{'image_id': image_id}], timeout=10).status_code == 200


def test_model_uploads_are_counted_and_a_second_upload_of_a_format_answers_409_with_the_id(
    local_loop: LocalLoop,
) -> None:
    session = login(local_loop)
    first = upload_model(session, local_loop)
    assert first.status_code == 200, first.text
    model_id = first.json()['id']
    again = upload_model(session, local_loop)
    assert again.status_code == 409
    assert again.json()['detail']['id'] == model_id
    other = upload_model(session, local_loop, 'mocked_2')
    assert other.json()['id'] == model_id  # one model per training, one zip per format
    uploads = local_loop.store.model_uploads('zauberzeug', 'demo')
    assert [(u['training_number'], u['format'], u['status'], u['model_id']) for u in uploads] == [
        (5, 'mocked', 200, model_id),
        (5, 'mocked', 409, model_id),
        (5, 'mocked_2', 200, model_id),
    ]
    stored = session.get(f'{local_loop.url}{PROJECT}/models/{model_id}/mocked/file', timeout=10)
    with zipfile.ZipFile(io.BytesIO(stored.content)) as archive:
        assert sorted(archive.namelist()) == ['model.json', 'weights.bin']
    listed = session.get(f'{local_loop.url}/control/projects/zauberzeug/demo/model_uploads', timeout=10)
    assert listed.json()['model_uploads'] == uploads


def test_detection_posts_are_counted_with_their_image_ids(local_loop: LocalLoop) -> None:
    session = login(local_loop)
    ids = local_loop.store.image_ids('zauberzeug', 'demo')[:3]
    url = f'{local_loop.url}{PROJECT}/detections'
    assert session.post(url, json=[{'image_id': i} for i in ids], timeout=10).status_code == 200
    bad = session.post(url, data=json.dumps([{'image_id': ids[0]}, {'no': 'id'}]), timeout=10)
    assert bad.status_code == 422
    posts = local_loop.store.detection_posts('zauberzeug', 'demo')
    assert [(p['status'], p['image_ids'], p['stored']) for p in posts] == [
        (200, ids, 3),
        (422, [ids[0], 'None'], 0),
    ]
    listed = session.get(f'{local_loop.url}/control/projects/zauberzeug/demo/detection_posts', timeout=10)
    assert listed.json()['detection_posts'] == posts
