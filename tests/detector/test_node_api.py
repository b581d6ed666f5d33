"""The detector's REST API as a client sees it (loop-protocol §4.1-4.2, §4.4), over real servers on loopback.

Success payloads are the reference's; errors are llnode's JSON ``{"detail": ...}`` with a fitting status (no model
503, undecodable image 400, not multipart 415, too large 413, bad option or missing part 422) instead of the
reference's bare 500.
"""

from __future__ import annotations

import json
import logging
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from llnode.detector import DetectorNode
from llnode.localloop import LocalLoop
from tests.detector.conftest import Detector, offline_settings
from tests.detector.node_helpers import (
    ANSWER_KEYS,
    CATEGORIES,
    MODEL_VERSION,
    all_kinds,
    all_kinds_answer,
    cameras,
    jpeg_bytes,
    png_bytes,
)
from tests.loop.scripted_server import Reply, ScriptedServer, Seen

MakeDetector = Callable[..., Detector]

DATE = '2024-01-30T12:34:56'


def post_detect(
    url: str, data: bytes, *, headers: dict[str, str] | None = None, query: dict[str, str] | None = None, **params: str
) -> requests.Response:
    """``POST /detect`` with ``data`` as the part ``file``; options as ``headers`` or query parameters."""
    return requests.post(
        f'{url}/detect',
        files={'file': ('image.jpg', data, 'image/jpeg')},
        headers=headers,
        params={**(query or {}), **params},
        timeout=10,
    )


def post_upload(url: str, files: list[bytes], **params: str) -> requests.Response:
    parts = [('files', (f'image_{i}.jpg', data, 'image/jpeg')) for i, data in enumerate(files)]
    return requests.post(f'{url}/upload', files=parts, params=params, timeout=10)


def put(url: str, path: str, body: str) -> requests.Response:
    return requests.put(f'{url}{path}', data=body.encode(), timeout=10)


def get(url: str, path: str) -> requests.Response:
    return requests.get(f'{url}{path}', timeout=10)


def assert_json_error(response: requests.Response, status: int, detail: str | None = None) -> str:
    """``response`` is ``status`` with a JSON ``{"detail": ...}`` body (equal to ``detail`` where given)."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers['Content-Type'] == 'application/json'
    body = response.json()
    assert set(body) == {'detail'}, body
    if detail is not None:
        assert body['detail'] == detail
    return str(body['detail'])


def png_header(width: int, height: int) -> bytes:
    """A tiny PNG file that claims ``width`` x ``height`` pixels (Pillow reads the size without the pixels)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))

    header = struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0, 0)
    return (
        b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', zlib.compress(b'\0' * 64)) + chunk(b'IEND', b'')
    )


# ---------------------------------------------------------------------------------------------------------------
# POST /detect


def test_detect_answers_every_detection_kind(make_detector: MakeDetector, server: str) -> None:
    detector = make_detector(server)
    response = post_detect(detector.url, jpeg_bytes(32, 24))
    assert response.status_code == 200, response.text
    assert response.headers['Content-Type'] == 'application/json'
    answer = response.json()
    assert answer == all_kinds_answer()  # segmentation flattened, created null, no tags, no source
    assert list(answer) == ANSWER_KEYS
    assert detector.factory.shapes == [(24, 32, 3)]


@pytest.mark.parametrize('where', ['header', 'query'])
@pytest.mark.parametrize('separator', ['-', '_'])
def test_detect_options_from_headers_or_query(
    make_detector: MakeDetector, server: str, where: str, separator: str
) -> None:
    """Camera id, creation date, tags, source and autoupload, as headers or query parameters, ``-`` or ``_``.

    The reference only reads ``camera-id`` and ``creation-date`` headers; its README's ``camera_id`` and
    ``creation_date`` are dropped (quirk Q4, Appendix C item 1). Both servers drop underscore headers by default.
    """
    detector = make_detector(server)
    options = {
        f'camera{separator}id': 'cam-7',
        f'creation{separator}date': DATE,
        'tags': 'x, y,z',
        'source': 'robot',
        'autoupload': 'filtered',
    }

    def send(**changes: str) -> requests.Response:
        values = {**options, **changes}
        if where == 'header':
            return post_detect(detector.url, jpeg_bytes(), headers=values)
        return post_detect(detector.url, jpeg_bytes(), query=values)

    response = send()
    assert response.status_code == 200, response.text
    tags = ['x', ' y', 'z']  # split on ',' with no trimming (reference)
    assert response.json() == all_kinds_answer(tags=tags, source='robot', created=DATE)
    assert cameras(detector.node) == ['cam-7']
    (item,) = detector.outbox.snapshot()  # filtered: the segmentation and the uncertain detections make it go
    assert item.metadata['tags'] == [*tags, 'uncertain', 'segmentation_detection']
    assert (item.metadata['created'], item.metadata['source']) == (DATE, 'robot')

    assert send(autoupload='disabled').status_code == 200
    assert len(detector.outbox.snapshot()) == 1
    assert_json_error(send(autoupload='sometimes'), 422)


def test_detect_hyphenated_header_wins_over_underscore(make_detector: MakeDetector, server: str) -> None:
    detector = make_detector(server)
    headers = {'camera_id': 'under', 'camera-id': 'hyphen', 'creation_date': 'd1', 'creation-date': 'd2'}
    assert post_detect(detector.url, jpeg_bytes(), headers=headers).json()['created'] == 'd2'
    assert cameras(detector.node) == ['hyphen']


def test_detect_tags_are_split_on_commas_as_they_are(detector: Detector) -> None:
    answer = post_detect(detector.url, jpeg_bytes(), tags='a, b,,c ').json()
    assert answer['tags'] == ['a', ' b', '', 'c ']
    assert post_detect(detector.url, jpeg_bytes(), tags='').json()['tags'] == []


def test_detect_keeps_the_files_own_channel_layout(detector: Detector) -> None:
    """PNG works as well as JPEG; RGBA stays 4 channels, greyscale stays HxW, a palette becomes RGB."""
    for data in (png_bytes(16, 8, 'RGBA'), png_bytes(16, 8, 'L'), png_bytes(16, 8, 'P')):
        assert post_detect(detector.url, data).status_code == 200
    assert detector.factory.shapes == [(8, 16, 4), (8, 16), (8, 16, 3)]


def test_detect_honours_the_exif_orientation_and_uploads_the_clients_bytes(detector: Detector) -> None:
    """A 10x20 picture tagged orientation 6 reaches the logic as 20x10 (reference 0.27); the outbox gets the
    client's file unchanged, EXIF included."""
    data = jpeg_bytes(10, 20, orientation=6)
    response = post_detect(detector.url, data, autoupload='all')
    assert response.status_code == 200, response.text
    assert detector.factory.shapes == [(10, 20, 3)]
    (item,) = detector.outbox.snapshot()
    assert item.image == data
    assert item.priority is False  # autoupload goes to the normal queue


def test_detect_autoupload_modes(detector: Detector) -> None:
    """``all`` queues the image with the answer's metadata and no cause tags, ``disabled`` queues nothing,
    ``filtered`` (the default) queues what the relevance filter picks, with its causes as tags."""
    first, second, third = jpeg_bytes(seed=1), jpeg_bytes(seed=2), jpeg_bytes(seed=3)
    answer = post_detect(detector.url, first, autoupload='all', tags='t').json()
    (item,) = detector.outbox.snapshot()
    assert item.image == first
    assert item.metadata == answer
    assert item.metadata['tags'] == ['t']

    assert post_detect(detector.url, second, autoupload='disabled').status_code == 200
    assert len(detector.outbox.snapshot()) == 1

    assert post_detect(detector.url, third).status_code == 200  # filtered by default
    items = detector.outbox.snapshot()
    assert len(items) == 2
    assert items[1].image == third
    assert items[1].metadata['tags'] == ['uncertain', 'segmentation_detection']


def test_detect_without_a_model_is_503_before_decoding(make_detector: MakeDetector, server: str) -> None:
    detector = make_detector(server, model=False)
    for data in (jpeg_bytes(), b'not an image'):
        response = post_detect(detector.url, data, autoupload='all')
        assert_json_error(response, 503, 'detector not yet initialized')
        assert response.headers['Retry-After'] == '5'
    assert detector.outbox.snapshot() == []


def test_detect_undecodable_image_is_400(detector: Detector) -> None:
    truncated = jpeg_bytes(64, 64)[:300]
    for data, detail in (
        (b'not an image', 'could not decode the image: not a format Pillow reads'),
        (b'', 'image data is empty'),
        (truncated, None),
    ):
        assert_json_error(post_detect(detector.url, data, autoupload='all'), 400, detail)
    assert detector.factory.shapes == []
    assert detector.outbox.snapshot() == []


def test_detect_needs_a_multipart_body_with_a_file_part(detector: Detector) -> None:
    raw = requests.post(f'{detector.url}/detect', data=jpeg_bytes(), headers={'Content-Type': 'image/jpeg'}, timeout=10)
    assert 'multipart/form-data' in assert_json_error(raw, 415)
    assert_json_error(requests.post(f'{detector.url}/detect', json={'file': 'x'}, timeout=10), 415)
    wrong_part = requests.post(f'{detector.url}/detect', files={'image': jpeg_bytes()}, timeout=10)
    assert_json_error(wrong_part, 422, 'the multipart body has no part named "file"')


def test_detect_bad_autoupload_is_422(detector: Detector) -> None:
    detail = assert_json_error(post_detect(detector.url, jpeg_bytes(), headers={'autoupload': 'sometimes'}), 422)
    assert 'autoupload' in detail and 'sometimes' in detail
    assert detector.factory.shapes == []


class SmallRequestsDetector(DetectorNode):
    max_request_bytes = 64 * 1024


def test_request_over_max_request_bytes_is_413(make_detector: MakeDetector, server: str) -> None:
    """``max_request_bytes`` (64 MiB by default) is the configurable limit of a request body."""
    assert DetectorNode.max_request_bytes == 64 * 1024 * 1024
    detector = make_detector(server, node_class=SmallRequestsDetector)
    big = jpeg_bytes(200, 200) + bytes(70 * 1024)  # Pillow ignores what follows the JPEG
    assert_json_error(post_detect(detector.url, big, autoupload='all'), 413)
    assert_json_error(post_upload(detector.url, [big]), 413)
    assert detector.outbox.snapshot() == []
    assert post_detect(detector.url, jpeg_bytes(200, 200)).status_code == 200
    assert detector.factory.shapes == [(200, 200, 3)]


def test_detect_picture_with_too_many_pixels_is_413(detector: Detector) -> None:
    assert_json_error(post_detect(detector.url, png_header(12_000, 8_000)), 413)
    assert_json_error(post_upload(detector.url, [png_header(12_000, 8_000)]), 413)
    assert detector.factory.shapes == []


def test_inference_error_is_a_json_500_and_the_node_goes_on(detector: Detector) -> None:
    def broken(version: str, image: Any) -> Any:
        raise RuntimeError('the model fell over')

    detector.factory.result = broken
    assert_json_error(post_detect(detector.url, jpeg_bytes()), 500, 'internal error')
    detector.factory.result = all_kinds
    assert post_detect(detector.url, jpeg_bytes()).json() == all_kinds_answer()


def test_unknown_routes_and_methods_answer_json(detector: Detector) -> None:
    assert_json_error(get(detector.url, '/nothing-here'), 404)
    response = get(detector.url, '/detect')
    assert_json_error(response, 405)
    assert 'POST' in response.headers['Allow']


# ---------------------------------------------------------------------------------------------------------------
# POST /upload


def test_upload_queues_every_file_as_sent(make_detector: MakeDetector, server: str) -> None:
    detector = make_detector(server)
    files = [jpeg_bytes(seed=1), png_bytes(16, 8, 'RGB')]
    response = post_upload(detector.url, files, source='cam', creation_date=DATE, upload_priority='true')
    assert response.status_code == 200, response.text
    assert response.json() == [200, 'OK']
    items = detector.outbox.snapshot(settle=False)  # on disk when the answer comes
    assert [item.image for item in items] == files  # stored as they came (reference 0.27: no re-encode)
    for item in items:
        assert item.priority is True
        assert item.metadata['tags'] == ['picked_by_system']
        assert (item.metadata['source'], item.metadata['created']) == ('cam', DATE)
        assert item.metadata['box_detections'] == []

    assert post_upload(detector.url, [jpeg_bytes(seed=2)]).status_code == 200
    last = detector.outbox.snapshot(settle=False)[-1]
    assert last.priority is False
    assert (last.metadata['source'], last.metadata['created']) == (None, None)  # created null unless given


def test_upload_priority_is_a_boolean(detector: Detector) -> None:
    """pydantic's spellings of a bool (the reference's parser); anything else is 422 and queues nothing."""
    for value, expected in (('1', True), ('yes', True), ('on', True), ('0', False), ('false', False), ('off', False)):
        assert post_upload(detector.url, [jpeg_bytes()], upload_priority=value).status_code == 200
        assert detector.outbox.snapshot()[-1].priority is expected, value
    count = len(detector.outbox.snapshot())
    detail = assert_json_error(post_upload(detector.url, [jpeg_bytes()], upload_priority='maybe'), 422)
    assert 'upload_priority' in detail
    assert len(detector.outbox.snapshot()) == count


def test_upload_with_a_bad_file_queues_nothing(detector: Detector) -> None:
    response = post_upload(detector.url, [jpeg_bytes(), b'garbage', jpeg_bytes(seed=3)])
    assert assert_json_error(response, 400).startswith('file 1: ')
    assert detector.outbox.snapshot() == []


def test_upload_needs_files_parts(detector: Detector) -> None:
    wrong_part = requests.post(f'{detector.url}/upload', files={'file': jpeg_bytes()}, timeout=10)
    assert_json_error(wrong_part, 422, 'the multipart body has no part named "files"')
    raw = requests.post(f'{detector.url}/upload', data=jpeg_bytes(), headers={'Content-Type': 'image/jpeg'}, timeout=10)
    assert_json_error(raw, 415)
    assert detector.outbox.snapshot() == []


def test_upload_works_without_a_model(make_detector: MakeDetector) -> None:
    detector = make_detector(model=False)
    assert post_upload(detector.url, [jpeg_bytes()]).json() == [200, 'OK']
    assert len(detector.outbox.snapshot()) == 1


# ---------------------------------------------------------------------------------------------------------------
# GET /about, /model_version; PUT /model_version


def test_about(make_detector: MakeDetector, server: str) -> None:
    detector = make_detector(server)
    response = get(detector.url, '/about')
    assert response.status_code == 200
    about = response.json()
    assert list(about) == ['operation_mode', 'state', 'model_info', 'target_model', 'version_control']
    info = about.pop('model_info')
    assert about.pop('state') in ('online', 'offline')  # no Loop here: offline once a call to it failed
    assert about == {
        'operation_mode': 'idle',
        'target_model': None,
        'version_control': 'follow_loop',
    }
    assert (info['id'], info['version'], info['organization'], info['project']) == (
        f'model-{MODEL_VERSION}',
        MODEL_VERSION,
        'zauberzeug',
        'demo',
    )
    assert [c['name'] for c in info['categories']] == [c.name for c in CATEGORIES]
    assert Path(info['model_root_path']) == (detector.data_folder / 'models' / MODEL_VERSION).absolute()


def test_about_and_model_version_without_a_model(make_detector: MakeDetector) -> None:
    detector = make_detector(model=False)
    about = get(detector.url, '/about').json()
    assert about.pop('state') in ('online', 'offline')  # no Loop here: offline once a call to it failed
    assert about == {
        'operation_mode': 'idle',
        'model_info': None,
        'target_model': None,
        'version_control': 'follow_loop',
    }
    assert get(detector.url, '/model_version').json() == {
        'current_version': 'None',
        'target_version': 'None',
        'loop_version': 'None',
        'local_versions': [],
        'version_control': 'follow_loop',
    }


def test_model_version_get_uses_none_strings(detector: Detector) -> None:
    response = get(detector.url, '/model_version')
    assert response.status_code == 200
    assert response.headers['Content-Type'] == 'application/json'
    body = response.json()
    assert list(body) == ['current_version', 'target_version', 'loop_version', 'local_versions', 'version_control']
    assert body == {
        'current_version': MODEL_VERSION,
        'target_version': 'None',
        'loop_version': 'None',
        'local_versions': [MODEL_VERSION],
        'version_control': 'follow_loop',
    }


def version_control(url: str) -> str:
    return str(get(url, '/model_version').json()['version_control'])


def test_model_version_put_modes_and_errors(detector: Detector) -> None:
    url = detector.url
    assert put(url, '/model_version', 'pause').json() == 'OK'
    assert version_control(url) == 'pause'
    assert put(url, '/model_version', 'follow_loop').json() == 'OK'
    assert version_control(url) == 'follow_loop'

    for bad in ('abc', '1.x', '', '../1'):
        assert_json_error(put(url, '/model_version', bad), 400, 'Invalid version number')
        assert version_control(url) == 'follow_loop'  # unchanged (the reference keeps specific_version, Q5)

    # the Loop is unreachable: an installed version is used as it is, another one fails with the transport error
    assert put(url, '/model_version', MODEL_VERSION).json() == 'OK'
    body = get(url, '/model_version').json()
    assert (body['version_control'], body['target_version']) == ('specific_version', MODEL_VERSION)
    assert assert_json_error(put(url, '/model_version', '9.9'), 400)


def test_model_version_put_against_the_loop(make_detector: MakeDetector, local_loop: LocalLoop, tmp_path: Path) -> None:
    detector = make_detector(settings=local_loop.settings(data_folder=tmp_path / 'with-loop'))
    url = detector.url
    assert_json_error(put(url, '/model_version', '9.9'), 400, 'No Model with version 9.9')
    assert version_control(url) == 'follow_loop'
    assert put(url, '/model_version', '1.0').json() == 'OK'
    body = get(url, '/model_version').json()
    assert (body['version_control'], body['target_version']) == ('specific_version', '1.0')


def test_model_version_put_with_the_loops_model_list(make_detector: MakeDetector, tmp_path: Path) -> None:
    """The reference's three lookup failures (``GET …/models``), from a scripted Loop; none changes the mode."""
    answer: dict[str, Any] = {'status': 500, 'models': []}

    def models(seen: Seen) -> Reply:
        return Reply(answer['status'], json.dumps({'models': answer['models']}).encode(), {'Content-Type': 'json'})

    with ScriptedServer({('GET', '/api/zauberzeug/projects/demo/models'): models}) as loop:
        detector = make_detector(settings=offline_settings(tmp_path / 'scripted', host=f'127.0.0.1:{loop.port}'))
        url = detector.url
        assert_json_error(put(url, '/model_version', '2.0'), 400, 'Failed to load models from learning loop')
        answer.update(status=200, models=[{'id': 'a', 'version': '2.0'}, {'id': 'b', 'version': '2.0'}])
        assert_json_error(put(url, '/model_version', '2.0'), 400, 'Multiple models with version 2.0')
        assert_json_error(put(url, '/model_version', '2.1'), 400, 'No Model with version 2.1')
        assert version_control(url) == 'follow_loop'
        answer['models'] = [{'id': 'a', 'version': '2.0'}, {'id': 'b', 'version': '2.1'}]
        assert put(url, '/model_version', '2.1').json() == 'OK'
        body = get(url, '/model_version').json()
        assert (body['version_control'], body['target_version']) == ('specific_version', '2.1')
        assert loop.count('GET', '/api/zauberzeug/projects/demo/models') == 4


# ---------------------------------------------------------------------------------------------------------------
# /operation_mode, /outbox_mode


def test_operation_mode(make_detector: MakeDetector, server: str) -> None:
    detector = make_detector(server)
    url = detector.url
    response = get(url, '/operation_mode')
    assert (response.status_code, response.text) == (200, 'idle')
    assert response.headers['Content-Type'].startswith('text/plain')
    assert put(url, '/operation_mode', 'detecting').json() == 'OK'
    assert get(url, '/operation_mode').text == 'detecting'
    assert post_detect(url, jpeg_bytes()).status_code == 200  # inference works in every mode
    assert_json_error(
        put(url, '/operation_mode', 'check_for_updates'), 422, "'check_for_updates' is not a valid OperationMode"
    )
    assert get(url, '/operation_mode').text == 'detecting'
    assert put(url, '/operation_mode', 'idle').json() == 'OK'
    assert get(url, '/about').json()['operation_mode'] == 'idle'


def test_outbox_mode(make_detector: MakeDetector, server: str) -> None:
    detector = make_detector(server)
    url = detector.url
    response = get(url, '/outbox_mode')
    assert (response.status_code, response.text) == (200, 'continuous_upload')
    assert response.headers['Content-Type'].startswith('text/plain')
    assert put(url, '/outbox_mode', 'stopped').json() == 'OK'
    assert get(url, '/outbox_mode').text == 'stopped'
    assert detector.outbox.mode.value == 'stopped'
    assert_json_error(
        put(url, '/outbox_mode', 'paused'), 422, "Could not set outbox mode: 'paused' is not a valid OutboxMode"
    )
    assert get(url, '/outbox_mode').text == 'stopped'
    assert put(url, '/outbox_mode', 'continuous_upload').json() == 'OK'
    assert get(url, '/outbox_mode').text == 'continuous_upload'


# ---------------------------------------------------------------------------------------------------------------
# POST /reset (backdoor)


def test_reset_needs_the_backdoor_flag(detector: Detector) -> None:
    assert_json_error(requests.post(f'{detector.url}/reset', timeout=10), 404)
    assert get(detector.url, '/about').json()['model_info'] is not None  # nothing happened


def test_reset_starts_over(make_detector: MakeDetector, server: str, tmp_path: Path) -> None:
    """Empty data folder, no model, default version control and operation mode, an empty relevance filter and
    outbox; the outbox works afterwards (the reference's kept a deleted folder and dropped every later image)."""
    settings = offline_settings(tmp_path / 'reset-node', version_control_default='pause')
    detector = make_detector(server, settings=settings, use_backdoor_controls=True)
    url = detector.url
    assert version_control(url) == 'pause'
    assert put(url, '/model_version', 'follow_loop').json() == 'OK'
    assert put(url, '/operation_mode', 'detecting').json() == 'OK'
    assert post_detect(url, jpeg_bytes(), headers={'camera-id': 'cam'}).status_code == 200
    assert cameras(detector.node) == ['cam']
    assert post_upload(url, [jpeg_bytes()]).status_code == 200
    assert len(detector.outbox.snapshot()) == 2  # the upload and the filtered detection
    planted = detector.data_folder / 'planted.txt'
    planted.write_text('x')

    response = requests.post(f'{url}/reset', timeout=10)
    assert response.status_code == 200
    assert response.json() is True

    assert not planted.exists()
    assert not (detector.data_folder / 'models').exists()
    assert not (detector.data_folder / 'current_model').is_symlink()
    about = get(url, '/about').json()
    assert about.pop('state') in ('online', 'offline')  # no Loop here: offline once a call to it failed
    assert about == {'operation_mode': 'idle', 'model_info': None, 'target_model': None, 'version_control': 'pause'}
    assert get(url, '/model_version').json()['current_version'] == 'None'
    assert cameras(detector.node) == []
    assert not detector.node.muted
    assert_json_error(post_detect(url, jpeg_bytes()), 503, 'detector not yet initialized')
    assert get(url, '/readyz').status_code == 503
    assert get(url, '/healthz').status_code == 200
    assert detector.outbox.snapshot() == []
    data = jpeg_bytes(seed=8)
    assert post_upload(url, [data]).status_code == 200
    assert [item.image for item in detector.outbox.snapshot(settle=False)] == [data]


# ---------------------------------------------------------------------------------------------------------------
# Probes and switches every node has


def test_healthz_and_readyz(make_detector: MakeDetector) -> None:
    without = make_detector(model=False)
    assert get(without.url, '/healthz').json() == {'status': 'ok'}
    # and why, once known: here the Loop cannot be reached (test_operator_view.py has the causes)
    assert assert_json_error(get(without.url, '/readyz'), 503).startswith('detector not yet initialized')
    with_model = make_detector()
    assert get(with_model.url, '/healthz').json() == {'status': 'ok'}
    response = get(with_model.url, '/readyz')
    assert (response.status_code, response.json()) == (200, {'status': 'ready'})


def stats_of(detector: Detector) -> dict[str, Any]:
    response = get(detector.url, '/stats')
    assert response.status_code == 200, response.text
    assert response.headers['Content-Type'] == 'application/json'
    body = response.json()
    assert isinstance(body, dict)
    return body


def test_stats_follow_detections_and_the_outbox(make_detector: MakeDetector, server: str) -> None:
    detector = make_detector(server)
    stats = stats_of(detector)
    assert {key: stats[key] for key in ('name', 'uuid', 'node_type', 'state', 'muted', 'operation_mode')} == {
        'name': 'test detector',
        'uuid': detector.node.uuid,
        'node_type': 'detector',
        'state': 'running',
        'muted': False,
        'operation_mode': 'idle',
    }
    assert stats['uptime_s'] >= 0
    assert set(stats['loop']) == {'problem', 'status_sync', 'deployment_target'}  # the periodic Loop calls
    assert stats['model'] == {
        'current_version': MODEL_VERSION,
        'target_version': None,
        'version_control': 'follow_loop',
        'model_format': 'mocked',
        'update_error': None,
    }
    inference = stats['inference']
    assert inference['model_version'] == MODEL_VERSION
    assert (inference['requests'], inference['images'], inference['batches']) == (0, 0, 0)
    assert (inference['max_batch_size'], inference['max_queue']) == (8, 256)
    saved = stats['outbox']['saved']
    assert stats['relevance_filter'] == {'cameras': 0}

    for seed in range(3):
        assert post_detect(detector.url, jpeg_bytes(seed=seed), autoupload='disabled').status_code == 200
    assert post_detect(detector.url, jpeg_bytes(seed=3), autoupload='all').status_code == 200
    assert post_detect(detector.url, jpeg_bytes(seed=4), camera_id='cam-1').status_code == 200  # filtered
    detector.node.batch_detect([jpeg_bytes(seed=5), jpeg_bytes(seed=6)], autoupload='disabled')
    detector.outbox.settle()
    stats = stats_of(detector)
    inference = stats['inference']
    assert (inference['requests'], inference['images']) == (6, 7)
    assert inference['batches'] == len(detector.factory.batch_sizes)
    assert inference['largest_batch'] == max(detector.factory.batch_sizes) == 2
    assert inference['failed_batches'] == 0 and inference['queued'] == 0
    assert stats['outbox']['saved'] == saved + 2  # the autoupload=all image and the uncertain filtered one
    assert stats['outbox']['mode'] == 'continuous_upload'
    assert stats['relevance_filter'] == {'cameras': 1}

    def broken(version: str, image: Any) -> Any:
        raise RuntimeError('the model fell over')

    detector.factory.result = broken
    assert_json_error(post_detect(detector.url, jpeg_bytes()), 500, 'internal error')
    inference = stats_of(detector)['inference']
    assert (inference['requests'], inference['failed_batches']) == (7, 1)


def test_stats_without_a_model(make_detector: MakeDetector) -> None:
    stats = stats_of(make_detector(model=False))
    assert stats['inference'] is None
    assert stats['model']['current_version'] is None
    assert stats['state'] == 'running' and 'saved' in stats['outbox']


def test_a_failing_stats_section_reads_as_an_error_and_is_logged_once(
    detector: Detector, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_stats() -> dict[str, Any]:
        raise OSError('the outbox folder is gone')

    monkeypatch.setattr(detector.node.outbox, 'stats', broken_stats)
    with caplog.at_level(logging.WARNING, logger='llnode.node'):
        for _ in range(3):  # a scraper asks again and again
            stats = stats_of(detector)
            assert stats['outbox'] == {'error': 'OSError: the outbox folder is gone'}
            assert stats['model']['current_version'] == MODEL_VERSION  # the other sections still answer
            assert stats['inference']['requests'] == 0
    failures = [record for record in caplog.records if 'stats section' in record.getMessage()]
    assert len(failures) == 1, [record.getMessage() for record in failures]
    assert "'outbox'" in failures[0].getMessage()


def test_socketio_switch_mutes_and_unmutes(detector: Detector) -> None:
    assert not detector.node.muted
    assert put(detector.url, '/socketio', 'off').json() == 'off'
    assert detector.node.muted
    assert put(detector.url, '/socketio', 'on').json() == 'on'
    assert not detector.node.muted
    assert_json_error(put(detector.url, '/socketio', 'maybe'), 400, 'Invalid state')


@pytest.fixture
def llnode_log_level() -> Iterator[None]:
    logger = logging.getLogger('llnode')
    level = logger.level
    yield
    logger.setLevel(level)


@pytest.mark.usefixtures('llnode_log_level')
def test_debug_logging_switch(detector: Detector) -> None:
    logger = logging.getLogger('llnode')
    assert put(detector.url, '/debug_logging', 'on').json() == 'on'
    assert logger.level == logging.DEBUG
    assert put(detector.url, '/debug_logging', 'off').json() == 'off'
    assert logger.level == logging.INFO
    assert_json_error(put(detector.url, '/debug_logging', 'loud'), 400, 'Invalid state')
    assert logger.level == logging.INFO
