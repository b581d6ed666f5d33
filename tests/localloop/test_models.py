"""Models on the local Loop: trainer upload (#8), download (#7), listing (#13), deployment target (#12)."""

from __future__ import annotations

import io
import json
import uuid
import zipfile

import requests

from llnode.localloop import LocalLoop
from tests.localloop.helpers import CONTROL, PROJECT, login


def upload(
    session: requests.Session, loop: LocalLoop, training: object, model_format: str, files: list[tuple[str, bytes]]
) -> requests.Response:
    parts = [('files', (name, content)) for name, content in files]
    return session.put(
        f'{loop.url}{PROJECT}/trainings/{training}/models/latest/{model_format}/file', files=parts, timeout=10
    )


def zip_entries(content: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_first_upload_of_a_training_creates_the_next_version_and_formats_attach(local_loop: LocalLoop) -> None:
    session = login(local_loop)
    categories = [{'id': 'c1', 'name': 'circle', 'type': 'box'}]
    first = upload(
        session,
        local_loop,
        7,
        'mocked',
        [
            ('weights.bin', b'\x00\x01'),
            ('model.json', json.dumps({'categories': categories, 'resolution': 320}).encode()),
        ],
    )
    assert first.status_code == 200, first.text
    model_id = first.json()['id']
    assert uuid.UUID(model_id).version == 4
    assert first.json()['version'] == '1.3'  # the demo holds 1.0, 1.1 and 1.2
    second = upload(session, local_loop, 7, 'other', [('other.bin', b'x')])
    assert second.status_code == 200
    assert second.json() == {'id': model_id, 'version': '1.3'}
    third = upload(session, local_loop, 8, 'mocked', [('weights.bin', b'y')])
    assert third.json()['version'] == '1.4'
    duplicate = upload(session, local_loop, 7, 'mocked', [('weights.bin', b'z')])
    assert duplicate.status_code == 409
    assert duplicate.json()['detail']['id'] == model_id
    assert 'mocked' in duplicate.json()['detail']['message']

    download = requests.get(f'{local_loop.url}{PROJECT}/models/{model_id}/mocked/file', timeout=10)  # no login
    assert download.status_code == 200
    assert download.headers['Content-Type'] == 'application/zip'
    assert download.headers['Content-Disposition'] == 'attachment; filename="zauberzeug_demo_1.3_mocked.zip"'
    entries = zip_entries(download.content)
    assert set(entries) == {'weights.bin', 'model.json'}
    assert entries['weights.bin'] == b'\x00\x01'
    info = json.loads(entries['model.json'])
    assert info['id'] == model_id
    assert info['version'] == '1.3'
    assert info['organization'] == 'zauberzeug'
    assert info['project'] == 'demo'
    assert info['format'] == 'mocked'
    assert info['host'] == local_loop.host_port
    assert info['categories'] == categories
    assert info['resolution'] == 320

    created = json.loads(
        zip_entries(session.get(f'{local_loop.url}{PROJECT}/models/{model_id}/other/file', timeout=10).content)[
            'model.json'
        ]
    )
    assert created['format'] == 'other'
    assert [c['name'] for c in created['categories']] == ['circle', 'square', 'triangle', 'purple point']


def test_model_upload_rejects_bad_requests_with_json(local_loop: LocalLoop) -> None:
    session = login(local_loop)
    for training, status in (('abc', 422), (0, 422), ('-3', 422)):
        response = upload(session, local_loop, training, 'mocked', [('a.bin', b'a')])
        assert response.status_code == status, (training, response.text)
        assert isinstance(response.json()['detail'], str)
    no_files = session.put(
        f'{local_loop.url}{PROJECT}/trainings/3/models/latest/mocked/file',
        files=[('other', ('a.bin', b'a'))],
        timeout=10,
    )
    assert no_files.status_code == 400
    assert 'files' in no_files.json()['detail']
    bad_json = upload(session, local_loop, 9, 'mocked', [('model.json', b'{not json')])
    assert bad_json.status_code == 422
    assert session.get(f'{local_loop.url}{PROJECT}/models', timeout=10).json()['models'][-1]['version'] == '1.2'
    anonymous = requests.put(
        f'{local_loop.url}{PROJECT}/trainings/9/models/latest/mocked/file',
        files=[('files', ('a.bin', b'a'))],
        timeout=10,
    )
    assert anonymous.status_code == 401


def test_download_of_unknown_model_or_format_is_404_with_a_body(local_loop: LocalLoop) -> None:
    unknown_model = requests.get(f'{local_loop.url}{PROJECT}/models/{uuid.uuid4()}/mocked/file', timeout=10)
    assert unknown_model.status_code == 404
    assert 'not found' in unknown_model.json()['detail']
    unknown_format = requests.get(
        f'{local_loop.url}{PROJECT}/models/00000000-0000-0000-0000-000000000011/nope/file', timeout=10
    )
    assert unknown_format.status_code == 404
    assert 'mocked' in unknown_format.json()['detail']


def test_demo_models_match_the_reference_fixtures(local_loop: LocalLoop) -> None:
    session = login(local_loop)
    listing = session.get(f'{local_loop.url}{PROJECT}/models', timeout=10).json()['models']
    assert [(m['id'], m['version']) for m in listing] == [
        ('00000000-0000-0000-0000-000000000010', '1.0'),
        ('00000000-0000-0000-0000-000000000011', '1.1'),
        ('00000000-0000-0000-0000-000000000012', '1.2'),
    ]
    for m in listing:
        assert set(m) == {'id', 'version', 'formats', 'created', 'comment', 'host'}
        assert m['formats'] == ['mocked']
    entries = zip_entries(
        requests.get(
            f'{local_loop.url}{PROJECT}/models/00000000-0000-0000-0000-000000000011/mocked/file', timeout=10
        ).content
    )
    assert entries['file_1.txt'] == b'content of file one'
    assert entries['file_2.txt'] == b'content of file two'
    assert json.loads(entries['model.json'])['format'] == 'mocked'
    target = session.get(f'{local_loop.url}{PROJECT}/deployment/target', timeout=10)
    assert target.json() == {'model_uuid': '00000000-0000-0000-0000-000000000011', 'version': '1.1'}
    charts = session.get(f'{local_loop.url}{PROJECT}/trainings', timeout=10).json()
    assert charts['charts'][0]['data'][0]['model_id'] == '00000000-0000-0000-0000-000000000012'


def test_model_listing_by_format_and_converter_uploads(local_loop: LocalLoop) -> None:
    session = login(local_loop)
    new = session.post(f'{local_loop.url}{PROJECT}/onnx', files=[('files', ('m.onnx', b'onnx'))], timeout=10)
    assert new.status_code == 200
    assert new.json()['version'] == '1.3'
    converted = session.put(
        f'{local_loop.url}{PROJECT}/models/00000000-0000-0000-0000-000000000012/onnx/file',
        files=[('files', ('m.onnx', b'converted'))],
        timeout=10,
    )
    assert converted.status_code == 200
    assert converted.json() == {'id': '00000000-0000-0000-0000-000000000012', 'version': '1.2'}
    again = session.put(
        f'{local_loop.url}{PROJECT}/models/00000000-0000-0000-0000-000000000012/onnx/file',
        files=[('files', ('m.onnx', b'again'))],
        timeout=10,
    )
    assert again.status_code == 409
    onnx = session.get(f'{local_loop.url}{PROJECT}/models', params={'format': 'onnx'}, timeout=10).json()['models']
    assert [m['version'] for m in onnx] == ['1.2', '1.3']
    assert session.get(f'{local_loop.url}{PROJECT}/models', params={'format': 'tensorrt'}, timeout=10).json() == {
        'models': []
    }


def test_deployment_target_follows_the_control_api(local_loop: LocalLoop) -> None:
    session = login(local_loop)
    target_url = f'{local_loop.url}{PROJECT}/deployment/target'
    assert session.put(f'{local_loop.url}{CONTROL}/deployment', json={'version': '1.2'}, timeout=10).ok
    assert session.get(target_url, timeout=10).json()['version'] == '1.2'
    assert session.delete(f'{local_loop.url}{CONTROL}/deployment', timeout=10).ok
    missing = session.get(target_url, timeout=10)
    assert missing.status_code == 404
    assert 'detail' in missing.json()
    unknown = session.put(f'{local_loop.url}{CONTROL}/deployment', json={'version': '9.9'}, timeout=10)
    assert unknown.status_code == 404
