"""What nodes send to the local Loop: outbox batches (#10), detections (#9), detector statuses (#11)."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
import requests
from PIL import Image

from llnode.localloop import LocalLoop
from tests.localloop.helpers import CONTROL, PROJECT, login

OUTBOX_ID = '2024-01-30_12:34:56.123456'


def jpeg(color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new('RGB', size, color).save(buffer, 'JPEG')
    return buffer.getvalue()


def metadata(**changes: Any) -> bytes:
    meta: dict[str, Any] = {
        'box_detections': [
            {
                'category_name': 'circle',
                'x': 1,
                'y': 2,
                'width': 10,
                'height': 12,
                'model_name': '1.1',
                'confidence': 0.42,
                'category_id': 'c1',
            }
        ],
        'point_detections': [],
        'segmentation_detections': [],
        'classification_detections': [],
        'box_annotations': [],
        'point_annotations': [],
        'classification_annotation': None,
        'tags': ['picked_by_system', 'uncertain'],
        'created': '2024-01-30_12:34:56.123',
        'source': 'robot1',
    }
    meta.update(changes)
    return json.dumps(meta).encode()


def item_parts(stem: str, meta: bytes, image: bytes) -> list[tuple[str, tuple[str, bytes, str]]]:
    """Parts as the reference outbox sends them: json (text/plain) then jpg, ':' percent-encoded."""
    encoded = stem.replace(':', '%3A')
    return [
        ('files', (f'{encoded}.json', meta, 'text/plain; charset=utf-8')),
        ('files', (f'{encoded}.jpg', image, 'image/jpeg')),
    ]


def post_batch(loop: LocalLoop, parts: list[Any], project: str = PROJECT) -> requests.Response:
    return requests.post(f'{loop.url}{project}/images', files=parts, timeout=10)


def test_outbox_batch_is_accepted_without_login_and_paired_by_stem(local_loop: LocalLoop) -> None:
    session = login(local_loop)
    inbox_before = session.get(f'{local_loop.url}{PROJECT}/data', params={'state': 'inbox'}, timeout=10).json()
    first = item_parts(f'image_{OUTBOX_ID}', metadata(), jpeg())
    second = item_parts('image_2024-01-30_12:34:57.000001', metadata(state='annotate', tags=[]), jpeg((0, 0, 255)))
    # the jpg of the second item comes first: pairing is by stem, not by position
    response = post_batch(local_loop, [first[0], second[1], first[1], second[0]])
    assert response.status_code == 200, response.text
    new_ids = response.json()['image_ids']
    assert len(new_ids) == 2
    inbox = session.get(f'{local_loop.url}{PROJECT}/data', params={'state': 'inbox'}, timeout=10).json()
    assert inbox['image_ids'] == [*inbox_before['image_ids'], new_ids[0]]
    annotate = session.get(f'{local_loop.url}{PROJECT}/data', params={'state': 'annotate'}, timeout=10).json()
    assert new_ids[1] in annotate['image_ids']
    items = session.get(f'{local_loop.url}{PROJECT}/images', params={'ids': ','.join(new_ids)}, timeout=10).json()
    first_item = items['images'][0]
    assert first_item['tags'] == ['picked_by_system', 'uncertain']
    assert first_item['source'] == 'robot1'
    assert first_item['created'] == '2024-01-30_12:34:56.123'
    assert (first_item['width'], first_item['height']) == (64, 48)
    main = session.get(f'{local_loop.url}{PROJECT}/images/{new_ids[0]}/main', timeout=10)
    assert main.content == jpeg()
    detail = session.get(f'{local_loop.url}{CONTROL}/images/{new_ids[0]}', timeout=10).json()
    assert detail['detections'][0]['box_detections'][0]['confidence'] == 0.42

    batches = local_loop.store.upload_batches('zauberzeug', 'demo')
    assert len(batches) == 1
    assert batches[0]['status'] == 200
    assert batches[0]['image_ids'] == new_ids
    assert [(p['name'], p['filename'], p['content_type']) for p in batches[0]['parts']] == [
        ('files', 'image_2024-01-30_12%3A34%3A56.123456.json', 'text/plain; charset=utf-8'),
        ('files', 'image_2024-01-30_12%3A34%3A57.000001.jpg', 'image/jpeg'),
        ('files', 'image_2024-01-30_12%3A34%3A56.123456.jpg', 'image/jpeg'),
        ('files', 'image_2024-01-30_12%3A34%3A57.000001.json', 'text/plain; charset=utf-8'),
    ]


def test_plain_colons_in_file_names_pair_too(local_loop: LocalLoop) -> None:
    parts = [
        ('files', (f'image_{OUTBOX_ID}.json', metadata(), 'text/plain')),
        ('files', (f'image_{OUTBOX_ID}.jpg', jpeg(), 'image/jpeg')),
    ]
    response = post_batch(local_loop, parts)
    assert response.status_code == 200, response.text
    assert len(response.json()['image_ids']) == 1


@pytest.mark.parametrize(
    ('case', 'parts', 'message'),
    [
        ('invalid json', item_parts('image_a', b'{nope', jpeg()), 'not valid JSON'),
        ('not metadata', item_parts('image_a', b'[1, 2]', jpeg()), 'JSON object'),
        ('bad tags', item_parts('image_a', metadata(tags='x'), jpeg()), 'tags'),
        ('bad state', item_parts('image_a', metadata(state='nowhere'), jpeg()), 'state'),
        ('bad box', item_parts('image_a', metadata(box_detections=[{'category_name': 'c'}]), jpeg()), 'numeric'),
        ('broken jpeg', item_parts('image_a', metadata(), jpeg()[:200]), 'JPEG'),
        ('png', item_parts('image_a', metadata(), b'\x89PNG\r\n\x1a\n' + b'\x00' * 50), 'JPEG'),
        ('missing jpg', item_parts('image_a', metadata(), jpeg())[:1], 'image_a.jpg missing'),
        ('missing json', item_parts('image_a', metadata(), jpeg())[1:], 'image_a.json missing'),
        ('other part', [('file', ('image_a.jpg', jpeg(), 'image/jpeg'))], 'unexpected part'),
    ],
)
def test_a_bad_item_fails_the_whole_batch_and_nothing_is_stored(
    local_loop: LocalLoop, case: str, parts: list[Any], message: str
) -> None:
    good = item_parts(f'image_{OUTBOX_ID}', metadata(), jpeg())
    before = local_loop.store.image_ids('zauberzeug', 'demo')
    response = post_batch(local_loop, good + parts)
    assert response.status_code == 422, case
    assert message in response.json()['detail'], response.json()
    assert local_loop.store.image_ids('zauberzeug', 'demo') == before
    batches = local_loop.store.upload_batches('zauberzeug', 'demo')
    assert [b['status'] for b in batches] == [422]
    assert len(batches[0]['parts']) == len(good) + len(parts)


def test_outbox_upload_needs_a_multipart_body_and_a_known_project(local_loop: LocalLoop) -> None:
    not_multipart = requests.post(f'{local_loop.url}{PROJECT}/images', json={'a': 1}, timeout=10)
    assert not_multipart.status_code == 400
    assert 'multipart' in not_multipart.json()['detail']
    unknown = post_batch(local_loop, item_parts('image_a', metadata(), jpeg()), '/api/zauberzeug/projects/nope')
    assert unknown.status_code == 404


def test_detections_are_stored_per_image_and_model(local_loop: LocalLoop) -> None:
    session = login(local_loop)
    image_id = local_loop.store.image_ids('zauberzeug', 'demo', 'inbox')[0]
    box = {
        'category_name': 'circle',
        'x': 1,
        'y': 2,
        'width': 30,
        'height': 40,
        'model_name': '1.3',
        'confidence': 0.9,
        'category_id': 'c1',
    }
    item = {
        'box_detections': [box],
        'point_detections': [],
        'segmentation_detections': [],
        'classification_detections': [],
        'image_id': image_id,
    }
    url = f'{local_loop.url}{PROJECT}/detections'
    assert session.post(url, json=[item], timeout=10).status_code == 200
    assert session.post(url, json=[{**item, 'box_detections': [{**box, 'x': 5}]}], timeout=10).status_code == 200
    other_model = {**item, 'box_detections': [{**box, 'model_name': '1.4'}]}
    assert session.post(url, json=[other_model], timeout=10).status_code == 200
    stored = local_loop.store.detections('zauberzeug', 'demo', image_id)
    assert sorted((d['box_detections'][0]['model_name'], d['box_detections'][0]['x']) for d in stored) == [
        ('1.3', 5),
        ('1.4', 1),
    ]


@pytest.mark.parametrize(
    ('body', 'status', 'message'),
    [
        ({'image_id': 'a'}, 422, 'JSON array'),
        ([{'box_detections': []}], 422, 'image_id'),
        ([{'image_id': 'a', 'box_detections': 'x'}], 422, 'box_detections'),
        ([{'image_id': 'a'}] * 101, 422, 'at most 100'),
    ],
)
def test_bad_detections_are_4xx_with_a_message(local_loop: LocalLoop, body: Any, status: int, message: str) -> None:
    response = login(local_loop).post(f'{local_loop.url}{PROJECT}/detections', json=body, timeout=10)
    assert response.status_code == status
    assert message in response.json()['detail']


def test_invalid_json_is_400(local_loop: LocalLoop) -> None:
    response = login(local_loop).post(
        f'{local_loop.url}{PROJECT}/detections', data=b'[{', headers={'Content-Type': 'application/json'}, timeout=10
    )
    assert response.status_code == 400
    assert 'JSON' in response.json()['detail']


def test_detector_status_is_kept_by_uuid(local_loop: LocalLoop) -> None:
    session = login(local_loop)
    status = {
        'uuid': 'det-1',
        'name': 'probe detector',
        'state': 'online',
        'uptime': 3,
        'model_format': 'mocked',
        'current_model': '1.1',
        'target_model': '1.1',
        'errors': {},
        'operation_mode': 'idle',
    }
    url = f'{local_loop.url}{PROJECT}/detectors'
    assert session.post(url, json=status, timeout=10).status_code == 200
    assert session.post(url, json={**status, 'uptime': 9}, timeout=10).status_code == 200
    node = local_loop.store.node('det-1')
    assert node is not None
    assert node['status']['uptime'] == 9
    assert node['node_type'] == 'detector'
    bad = session.post(url, json={'name': 'no uuid'}, timeout=10)
    assert bad.status_code == 422
    assert 'uuid' in bad.json()['detail']
