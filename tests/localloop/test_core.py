"""The local Loop's core REST API: login, status, data, images, image files, restart."""

from __future__ import annotations

import io

import requests
from PIL import Image

from llnode.localloop import LocalLoop
from tests.conftest import SMALL_DEMO_IMAGES
from tests.localloop.helpers import PROJECT, login


def test_status_is_open_and_login_sets_a_session_cookie(local_loop: LocalLoop) -> None:
    assert requests.get(f'{local_loop.url}/api/status', timeout=10).status_code == 200
    response = requests.post(f'{local_loop.url}/api/login', data={'username': 'u', 'password': 'p'}, timeout=10)
    assert response.status_code == 200
    assert response.cookies.get('session')


def test_bad_credentials_are_401_json(local_loop: LocalLoop) -> None:
    for form in ({'username': 'u', 'password': 'wrong'}, {'username': 'nobody', 'password': 'p'}, {}):
        response = requests.post(f'{local_loop.url}/api/login', data=form, timeout=10)
        assert response.status_code == 401
        assert isinstance(response.json()['detail'], str)
        assert 'session' not in response.cookies


def test_authenticated_routes_need_the_cookie(local_loop: LocalLoop) -> None:
    for path in (
        '/data?state=complete',
        '/images?ids=a',
        '/images/a/main',
        '/models',
        '/deployment/target',
        '/trainings',
    ):
        response = requests.get(f'{local_loop.url}{PROJECT}{path}', timeout=10)
        assert response.status_code == 401, path
        assert 'detail' in response.json()
    response = requests.post(f'{local_loop.url}{PROJECT}/detections', json=[], timeout=10)
    assert response.status_code == 401


def test_logout_ends_the_session(local_loop: LocalLoop) -> None:
    session = login(local_loop)
    assert session.get(f'{local_loop.url}{PROJECT}/data', timeout=10).status_code == 200
    token = session.cookies.get('session')
    assert session.post(f'{local_loop.url}/api/logout', timeout=10).status_code == 200
    response = requests.get(f'{local_loop.url}{PROJECT}/data', cookies={'session': token}, timeout=10)
    assert response.status_code == 401


def test_data_lists_ids_by_state_with_categories(loop_session: requests.Session) -> None:
    url = f'{loop_session.loop_url}{PROJECT}/data'  # type: ignore[attr-defined]
    complete = loop_session.get(url, params={'state': 'complete'}, timeout=10).json()
    assert set(complete) == {'image_ids', 'categories'}
    assert len(complete['image_ids']) == SMALL_DEMO_IMAGES
    assert all(isinstance(i, str) for i in complete['image_ids'])
    names = {c['name'] for c in complete['categories']}
    assert {'circle', 'square', 'triangle', 'purple point'} <= names
    for c in complete['categories']:
        assert set(c) == {'id', 'name', 'description', 'hotkey', 'color', 'point_size', 'type'}
    every = loop_session.get(url, timeout=10).json()['image_ids']
    per_state = [
        loop_session.get(url, params={'state': s}, timeout=10).json()['image_ids']
        for s in ('inbox', 'annotate', 'review', 'complete')
    ]
    assert all(per_state[:3])
    assert sorted(every) == sorted(i for ids in per_state for i in ids)
    bad = loop_session.get(url, params={'state': 'nonsense'}, timeout=10)
    assert bad.status_code == 400
    assert 'state' in bad.json()['detail']


def test_images_items_have_the_protocol_shape(loop_session: requests.Session) -> None:
    base = f'{loop_session.loop_url}{PROJECT}'  # type: ignore[attr-defined]
    ids = loop_session.get(f'{base}/data', params={'state': 'complete'}, timeout=10).json()['image_ids']
    response = loop_session.get(f'{base}/images', params={'ids': ','.join([*ids[:5], 'unknown'])}, timeout=10)
    assert response.status_code == 200
    items = response.json()['images']
    assert [i['id'] for i in items] == ids[:5]
    for item in items:
        assert set(item) == {
            'id',
            'set',
            'width',
            'height',
            'state',
            'tags',
            'source',
            'created',
            'box_annotations',
            'point_annotations',
            'segmentation_annotations',
            'classification_annotation',
        }
        assert item['set'] in ('train', 'test')
        assert (item['width'], item['height']) == (640, 480)
        assert item['state'] == 'complete'
        for box in item['box_annotations']:
            assert set(box) == {'id', 'category_id', 'category_name', 'x', 'y', 'width', 'height'}
            assert all(isinstance(box[k], int) for k in ('x', 'y', 'width', 'height'))
        for point in item['point_annotations']:
            assert set(point) == {'id', 'category_id', 'category_name', 'x', 'y'}
    assert any(item['box_annotations'] for item in items)
    too_many = loop_session.get(f'{base}/images', params={'ids': ','.join(f'x{n}' for n in range(101))}, timeout=10)
    assert too_many.status_code == 400
    assert loop_session.get(f'{base}/images', timeout=10).status_code == 400


def test_image_file_is_the_jpeg_of_its_annotations(loop_session: requests.Session) -> None:
    base = f'{loop_session.loop_url}{PROJECT}'  # type: ignore[attr-defined]
    image_id = loop_session.get(f'{base}/data', params={'state': 'complete'}, timeout=10).json()['image_ids'][0]
    response = loop_session.get(f'{base}/images/{image_id}/main', timeout=10)
    assert response.status_code == 200
    assert response.headers['Content-Type'] == 'image/jpeg'
    with Image.open(io.BytesIO(response.content)) as image:
        assert image.format == 'JPEG'
        assert image.size == (640, 480)
    again = loop_session.get(f'{base}/images/{image_id}/main', timeout=10)
    assert again.content == response.content
    missing = loop_session.get(f'{base}/images/unknown/main', timeout=10)
    assert missing.status_code == 404
    assert 'detail' in missing.json()


def test_unknown_project_is_404_json(loop_session: requests.Session) -> None:
    response = loop_session.get(f'{loop_session.loop_url}/api/zauberzeug/projects/nope/data', timeout=10)  # type: ignore[attr-defined]
    assert response.status_code == 404
    assert 'nope' in response.json()['detail']


def test_bad_requests_get_clear_4xx_json(loop_session: requests.Session) -> None:
    url: str = loop_session.loop_url  # type: ignore[attr-defined]
    raw_json = {'Content-Type': 'application/json'}
    cases = [
        ('GET', '/api/nothing/here', {}, 404),
        ('DELETE', '/api/status', {}, 405),
        ('POST', '/api/zauberzeug/projects/generator', {'data': b'{"a": ', 'headers': raw_json}, 400),
        ('POST', '/api/zauberzeug/projects/generator', {}, 400),
        ('POST', f'{PROJECT}/bad%20format', {'files': [('files', ('a', b'a'))]}, 400),
        ('PUT', f'{PROJECT}/trainings/5/models/latest/mocked/file', {'files': [('files', ('', b'a'))]}, 400),
        ('PUT', f'{PROJECT}/trainings/5/models/latest/mocked/file', {'data': b'raw'}, 400),
        ('POST', f'{PROJECT}/detectors', {'data': b'', 'headers': raw_json}, 400),
        (
            'POST',
            f'{PROJECT}/images',
            {'data': b'--x\r\nbroken', 'headers': {'Content-Type': 'multipart/form-data; boundary=x'}},
            400,
        ),
        ('POST', '/control/users', {'json': {'username': '', 'password': 'x'}}, 400),
        ('PUT', '/control/projects/zauberzeug/demo/deployment', {'json': {}}, 400),
    ]
    for method, path, kwargs, status in cases:
        response = loop_session.request(method, f'{url}{path}', timeout=10, **kwargs)
        assert response.status_code == status, (method, path, response.text)
        detail = response.json()['detail']
        assert isinstance(detail, str) and detail, (method, path)
    assert (
        'line 1 column'
        in loop_session.post(
            f'{url}/api/zauberzeug/projects/generator', data=b'{"a": ', headers=raw_json, timeout=10
        ).json()['detail']
    )


def test_prerender_draws_each_demo_image_once(local_loop: LocalLoop) -> None:
    ids = local_loop.store.image_ids('zauberzeug', 'demo')
    assert local_loop.store.prerender('zauberzeug', 'demo') == len(ids)
    assert all(local_loop.store.image_path('zauberzeug', 'demo', i).exists() for i in ids)
    assert local_loop.store.prerender('zauberzeug', 'demo') == 0
