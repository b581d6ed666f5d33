"""The reference's own detector tests, re-created as black-box tests against an llnode detector.

reference-behaviour §7.4 (``learning_loop_node/tests/detector``), §7.7 (``mock_detector`` app tests) and §7.10
item 1 (the detector's REST and Socket.IO contract). The reference's tests need the hosted Loop or poke private
attributes; here every one talks to a served detector over HTTP and Socket.IO and checks files on disk, with the
local Loop standing in where the reference needs the hosted one (``test_about_endpoint``,
``test_model_version_api``). Where llnode answers differently on purpose (a JSON 503 instead of a bare 500 when
no model is loaded), the test says so.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from llnode.localloop import LocalLoop
from llnode.schema import BoxDetection, ImageMetadata, PointDetection
from tests.detector.conftest import Detector
from tests.detector.node_helpers import (
    ANSWER_KEYS,
    FLAT_SHAPE,
    SioClient,
    TestingFactory,
    all_kinds_answer,
    box_and_point,
    cameras,
    connect_client,
    jpeg_bytes,
    nothing,
    raw_dict,
)
from tests.polling import wait_for
from tests.samples import sample_process

MakeDetector = Callable[..., Detector]
Connect = Callable[[Detector], SioClient]


#: the camera id of the reference's filter test
CAMERA = '00:.....'


def outbox_files(detector: Detector) -> list[Path]:
    """The files in the real outbox's queues (relative to ``outbox/``) once its writer stored all it was given.

    The detector's Loop is unreachable, so nothing leaves the outbox.
    """
    detector.outbox.settle()
    root = detector.outbox.root
    return sorted(
        path.relative_to(root)
        for queue_name in ('priority', 'normal')
        for path in (root / queue_name).rglob('*')
        if path.is_file()
    )


def detect_rest(url: str, data: bytes, headers: dict[str, str] | None = None) -> requests.Response:
    return requests.post(f'{url}/detect', files={'file': data}, headers=headers, timeout=10)


# ---------------------------------------------------------------------------------------------------------------
# §7.4 test_client_communication.py (TestingDetectorLogic: one detection of each kind at 0.42)


def test_sio_detect(make_detector: MakeDetector, sio_connect: Connect, server: str) -> None:
    """A numpy image dict (bytes, shape, dtype) gives exactly one detection of each kind."""
    detector = make_detector(server)
    client = sio_connect(detector)
    image = np.zeros((48, 64, 3), dtype=np.uint8)
    answer = client.call('detect', {'image': raw_dict(image)}, timeout=5)
    assert len(answer['box_detections']) == 1
    assert len(answer['point_detections']) == 1
    assert len(answer['segmentation_detections']) == 1
    assert len(answer['classification_detections']) == 1
    assert answer['box_detections'][0]['category_name'] == 'some_category_name'
    assert answer['box_detections'][0]['category_id'] == 'some_id'
    assert answer['point_detections'][0]['category_name'] == 'some_category_name_2'
    assert answer['point_detections'][0]['category_id'] == 'some_id_2'
    assert answer['segmentation_detections'][0]['category_name'] == 'some_category_name_3'
    assert answer['segmentation_detections'][0]['category_id'] == 'some_id_3'
    assert answer['classification_detections'][0]['category_name'] == 'some_category_name_4'
    assert answer['classification_detections'][0]['category_id'] == 'some_id_4'


@pytest.mark.parametrize('grouping_key', ['mac', 'camera_id'])
def test_rest_detect(detector: Detector, grouping_key: str) -> None:
    """``POST /detect`` with a camera header (which the reference ignores) and ``tags``."""
    response = detect_rest(detector.url, jpeg_bytes(), {grouping_key: '0:0:0:0', 'tags': 'some_tag'})
    assert response.status_code == 200
    answer = response.json()
    assert answer['box_detections'][0]['category_name'] == 'some_category_name'
    assert answer['point_detections'][0]['category_name'] == 'some_category_name_2'
    assert answer['segmentation_detections'][0]['category_name'] == 'some_category_name_3'
    assert 'some_tag' in answer['tags']


def test_rest_upload(make_detector: MakeDetector) -> None:
    """An empty outbox, one ``POST /upload``: exactly two files, the jpg and the json."""
    detector = make_detector()
    assert outbox_files(detector) == []
    response = requests.post(f'{detector.url}/upload', files={'files': jpeg_bytes()}, timeout=10)
    assert response.status_code == 200
    files = outbox_files(detector)
    assert len(files) == 2
    assert sorted(path.suffix for path in files) == ['.jpg', '.json']


def test_sio_upload(make_detector: MakeDetector, sio_connect: Connect) -> None:
    detector = make_detector()
    assert outbox_files(detector) == []
    client = sio_connect(detector)
    image = np.zeros((24, 32, 3), dtype=np.uint8)
    assert client.call('upload', {'image': raw_dict(image)}, timeout=5) == {'status': 'OK'}
    files = outbox_files(detector)
    assert len(files) == 2
    assert sorted(path.suffix for path in files) == ['.jpg', '.json']


def test_about_endpoint(make_detector: MakeDetector, local_loop: LocalLoop, tmp_path: Path) -> None:
    """The detector downloads the Loop's deployed model (demo 1.1) and reports it (reference: LIVE, here the
    local Loop)."""
    settings = local_loop.settings(data_folder=tmp_path / 'about-node')
    detector = make_detector(model=False, settings=settings)

    def about() -> dict[str, Any] | None:
        body: dict[str, Any] = requests.get(f'{detector.url}/about', timeout=5).json()
        return body if body['model_info'] is not None else None

    body = wait_for(about, timeout=20, what='the detector to load the deployed model')
    assert body['operation_mode'] == 'idle'
    assert body['state'] == 'online'
    assert body['target_model'] == '1.1'
    assert body['model_info']['version'] == '1.1'
    assert 'purple point' in [c['name'] for c in body['model_info']['categories']]
    assert detector.factory.built == ['1.1']


def test_model_version_api(make_detector: MakeDetector, local_loop: LocalLoop, tmp_path: Path) -> None:
    """follow_loop -> PUT 1.0 -> specific_version switches to 1.0 -> pause -> follow_loop back to 1.1, every
    state checked in full (the reference's helper returned after the first 200 whatever the content)."""
    settings = local_loop.settings(data_folder=tmp_path / 'versions-node')
    detector = make_detector(model=False, settings=settings)
    url = detector.url

    def expect(current: str, target: str, local: list[str], mode: str) -> None:
        expected = {
            'current_version': current,
            'target_version': target,
            'loop_version': '1.1',
            'local_versions': local,
            'version_control': mode,
        }
        last: list[Any] = []

        def matches() -> bool:
            last[:] = [requests.get(f'{url}/model_version', timeout=5).json()]
            return bool(last[0] == expected)

        try:
            wait_for(matches, timeout=20, what=f'/model_version == {expected}', interval=0.05)
        except AssertionError:
            raise AssertionError(f'/model_version is {last[0]}, expected {expected}') from None

    expect('1.1', '1.1', ['1.1'], 'follow_loop')
    assert requests.put(f'{url}/model_version', data='1.0', timeout=10).status_code == 200
    expect('1.0', '1.0', ['1.0', '1.1'], 'specific_version')
    assert requests.put(f'{url}/model_version', data='pause', timeout=10).status_code == 200
    expect('1.0', '1.0', ['1.0', '1.1'], 'pause')
    assert requests.put(f'{url}/model_version', data='follow_loop', timeout=10).status_code == 200
    expect('1.1', '1.1', ['1.0', '1.1'], 'follow_loop')
    assert detector.factory.built == ['1.1', '1.0', '1.1']


def test_rest_outbox_mode(make_detector: MakeDetector) -> None:
    detector = make_detector()
    url = detector.url

    def check(mode: str) -> None:
        response = requests.put(f'{url}/outbox_mode', data=mode, timeout=10)
        assert response.status_code == 200
        response = requests.get(f'{url}/outbox_mode', timeout=10)
        assert response.status_code == 200
        assert response.text == mode

    check('stopped')
    check('continuous_upload')
    check('stopped')


# ---------------------------------------------------------------------------------------------------------------
# §7.4 test_detector_node.py and test_relevance_filter.py: autoupload counted in the outbox folders


def one_confident_box(version: str, image: np.ndarray) -> ImageMetadata:
    """The reference's MockDetectorLogic: one box ``test`` at 0.9."""
    return ImageMetadata(box_detections=[BoxDetection('test', 10, 10, 30, 30, version, 0.9, 'c')], created=None)


@pytest.mark.parametrize(('autoupload', 'expected_files'), [('filtered', 0), ('all', 2), ('disabled', 0)])
def test_get_detections(make_detector: MakeDetector, autoupload: str, expected_files: int) -> None:
    """``filtered`` consults the filter (a confident box is not uploaded), ``all`` saves the image with its
    metadata, ``disabled`` saves nothing; the answer always has the box ``test``."""
    detector = make_detector(factory=TestingFactory(one_confident_box))
    response = detect_rest(detector.url, jpeg_bytes(), {'autoupload': autoupload, 'camera-id': 'cam'})
    assert response.status_code == 200
    answer = response.json()
    assert [box['category_name'] for box in answer['box_detections']] == ['test']
    files = outbox_files(detector)
    assert len(files) == expected_files
    assert cameras(detector.node) == (['cam'] if autoupload == 'filtered' else [])  # only filtered asks the filter
    if files:
        (json_file,) = [path for path in files if path.suffix == '.json']
        assert json.loads((detector.data_folder / 'outbox' / json_file).read_text()) == answer


@pytest.mark.parametrize(('autoupload', 'expected_files'), [('filtered', 2), ('all', 4)])
def test_filter_is_used_by_node(make_detector: MakeDetector, autoupload: str, expected_files: int) -> None:
    """One box and one point at 0.42, the same image twice from one camera: ``filtered`` uploads only the first
    image (2 files), ``all`` both (4 files). Through REST with the header ``camera-id``."""
    detector = make_detector(factory=TestingFactory(box_and_point))
    data = jpeg_bytes()
    for _ in range(2):
        response = detect_rest(detector.url, data, {'camera-id': CAMERA, 'autoupload': autoupload})
        assert response.status_code == 200
    assert len(outbox_files(detector)) == expected_files


def crowd(boxes: int, box_confidence: float, points: int, point_confidence: float) -> Callable[..., ImageMetadata]:
    """A logic result with far-apart boxes and points (none similar to another)."""

    def result(version: str, image: np.ndarray) -> ImageMetadata:
        return ImageMetadata(
            box_detections=[BoxDetection('dirt', 100 * i, 0, 10, 10, version, box_confidence) for i in range(boxes)],
            point_detections=[
                PointDetection('weed', 100.0 * i, 500.0, version, point_confidence) for i in range(points)
            ],
            created=None,
        )

    return result


@pytest.mark.parametrize(
    ('detections', 'expected_tags'),
    [
        ((40, 0.9, 40, 0.9), ['unexpected_observations_count']),
        ((1, 0.9, 1, 0.9), None),
        ((40, 0.9, 40, 0.3), ['uncertain', 'unexpected_observations_count']),
        ((1, 0.3, 1, 0.3), ['uncertain']),
    ],
)
def test_unexpected_observations_count(
    make_detector: MakeDetector, detections: tuple[int, float, int, float], expected_tags: list[str] | None
) -> None:
    """The reference's vectors for camera ``0:0:0:0``, driven through ``/detect``: an image is saved (with the
    causes as tags) or not."""
    detector = make_detector(factory=TestingFactory(crowd(*detections)))
    assert detect_rest(detector.url, jpeg_bytes(), {'camera-id': '0:0:0:0'}).status_code == 200
    files = outbox_files(detector)
    if expected_tags is None:
        assert files == []
        return
    (json_file,) = [path for path in files if path.suffix == '.json']
    assert json.loads((detector.data_folder / 'outbox' / json_file).read_text())['tags'] == expected_tags


# ---------------------------------------------------------------------------------------------------------------
# §7.7 mock_detector/app_code/tests


def test_mock_detector_sio_detect(make_detector: MakeDetector, sio_connect: Connect, tmp_path: Path) -> None:
    """The mock detector (empty metadata) answers sio ``detect`` with empty lists, no tags and a null
    ``created``, over WebSocket; its data folder is a temporary one (``test_assert_data_folder_for_tests``)."""
    detector = make_detector('werkzeug', factory=TestingFactory(nothing))
    assert detector.data_folder.is_relative_to(tmp_path) and str(detector.data_folder) != '/data'
    client = sio_connect(detector)
    assert client.transport() == 'websocket'
    answer = client.call('detect', {'image': raw_dict(np.zeros((20, 30, 3), np.uint8))}, timeout=5)
    assert answer['box_detections'] == []
    assert answer['point_detections'] == []
    assert answer['segmentation_detections'] == []
    assert answer['classification_detections'] == []
    assert answer['tags'] == []
    assert 'created' in answer and answer['created'] is None


def test_mock_detector_sample_in_a_subprocess(local_loop: LocalLoop, tmp_path: Path) -> None:
    """``samples/mock_detector.py`` as a real process: it downloads the deployed demo model from the Loop, answers
    sio ``detect`` over WebSocket with its box and point, and ends with code 0 on SIGTERM."""
    with sample_process('mock_detector.py', local_loop, tmp_path / 'sample-data', '--server', 'werkzeug') as sample:
        wait_for(
            lambda: requests.get(f'{sample.url}/readyz', timeout=5).status_code == 200,
            timeout=30,
            what='the sample to load the deployed model',
            interval=0.1,
        )
        client = connect_client(sample.url, 'werkzeug')
        try:
            answer = client.call('detect', {'image': raw_dict(np.zeros((20, 30, 3), np.uint8))}, timeout=5)
        finally:
            client.disconnect()
        assert [(b['model_name'], b['confidence']) for b in answer['box_detections']] == [('1.1', 0.42)]
        assert [(p['model_name'], p['confidence']) for p in answer['point_detections']] == [('1.1', 0.9)]
        assert (answer['tags'], answer['created']) == ([], None)
        sample.process.send_signal(signal.SIGTERM)
        assert sample.process.wait(timeout=20) == 0
    assert 'Traceback' not in sample.text(), sample.text()


# ---------------------------------------------------------------------------------------------------------------
# §7.10 item 1: the detector's REST and Socket.IO contract


def test_contract_detect_answers(make_detector: MakeDetector, sio_connect: Connect, server: str) -> None:
    """REST ``/detect``, sio ``detect`` and ``batch_detect`` answer the same ImageMetadata shape, segmentation
    shapes flattened to a string; ``batch_detect`` wraps the answers in ``items``, in input order."""
    detector = make_detector(server)
    rest = detect_rest(detector.url, jpeg_bytes()).json()
    client = sio_connect(detector)
    image = raw_dict(np.zeros((24, 32, 3), dtype=np.uint8))
    sio = client.call('detect', {'image': image}, timeout=5)
    batch = client.call('batch_detect', {'images': [image, image]}, timeout=5)
    assert rest == sio == all_kinds_answer()
    assert list(rest) == ANSWER_KEYS
    assert rest['segmentation_detections'][0]['shape'] == FLAT_SHAPE
    assert batch == {'items': [all_kinds_answer(), all_kinds_answer()]}


def test_contract_no_model(make_detector: MakeDetector, sio_connect: Connect, server: str) -> None:
    """No model: the reference answers REST with a bare 500; llnode with 503 and the reference's sio message as
    JSON. Socket.IO is the reference's, word for word."""
    detector = make_detector(server, model=False)
    response = detect_rest(detector.url, jpeg_bytes())
    assert response.status_code == 503
    assert response.json() == {'detail': 'detector not yet initialized'}
    client = sio_connect(detector)
    image = raw_dict(np.zeros((4, 4, 3), dtype=np.uint8))
    assert client.call('detect', {'image': image}, timeout=5) == {'error': 'detector not yet initialized'}
    assert client.call('batch_detect', {'images': [image]}, timeout=5) == {'error': 'detector not yet initialized'}
    assert client.call('info', timeout=5) == {'status': 'No model loaded'}
    assert requests.get(f'{detector.url}/about', timeout=5).json()['model_info'] is None
    assert requests.get(f'{detector.url}/model_version', timeout=5).json()['current_version'] == 'None'


def test_contract_upload_folder(make_detector: MakeDetector) -> None:
    """``/upload``: ``[200,"OK"]`` and one folder ``<id>`` holding ``image_<id>.jpg`` (the client's bytes) and
    ``image_<id>.json`` (tag ``picked_by_system``, source, created)."""
    detector = make_detector()
    data = jpeg_bytes(seed=9)
    response = requests.post(
        f'{detector.url}/upload',
        files={'files': data},
        params={'source': 'cam', 'creation_date': '2024-01-30T12:34:56'},
        timeout=10,
    )
    assert response.status_code == 200
    assert response.text.replace(' ', '') == '[200,"OK"]'
    files = outbox_files(detector)
    folders = {path.parent for path in files}
    assert len(folders) == 1
    (folder,) = folders
    item_id = folder.name
    assert folder.parent == Path('normal')
    assert sorted(path.name for path in files) == [f'image_{item_id}.jpg', f'image_{item_id}.json']
    root = detector.data_folder / 'outbox' / folder
    assert (root / f'image_{item_id}.jpg').read_bytes() == data
    metadata = json.loads((root / f'image_{item_id}.json').read_text())
    assert metadata['tags'] == ['picked_by_system']
    assert (metadata['source'], metadata['created']) == ('cam', '2024-01-30T12:34:56')


def test_contract_modes_and_shapes(detector: Detector) -> None:
    """``/about``, ``/model_version``, ``/operation_mode`` and ``/outbox_mode``: shapes, plain-text GETs, and the
    422/400 rules with the reference's messages."""
    url = detector.url
    about = requests.get(f'{url}/about', timeout=5).json()
    assert list(about) == ['operation_mode', 'state', 'model_info', 'target_model', 'version_control']
    versions = requests.get(f'{url}/model_version', timeout=5).json()
    assert list(versions) == ['current_version', 'target_version', 'loop_version', 'local_versions', 'version_control']
    assert versions['target_version'] == 'None'  # a string, not null

    assert requests.get(f'{url}/operation_mode', timeout=5).text == 'idle'
    bad_mode = requests.put(f'{url}/operation_mode', data='check_for_updates', timeout=5)
    assert (bad_mode.status_code, bad_mode.json()) == (
        422,
        {'detail': "'check_for_updates' is not a valid OperationMode"},
    )
    assert requests.get(f'{url}/outbox_mode', timeout=5).text == 'continuous_upload'
    bad_outbox = requests.put(f'{url}/outbox_mode', data='x', timeout=5)
    assert (bad_outbox.status_code, bad_outbox.json()) == (
        422,
        {'detail': "Could not set outbox mode: 'x' is not a valid OutboxMode"},
    )
    bad_version = requests.put(f'{url}/model_version', data='abc', timeout=5)
    assert (bad_version.status_code, bad_version.json()) == (400, {'detail': 'Invalid version number'})
    for path, body in (('/operation_mode', 'detecting'), ('/outbox_mode', 'stopped'), ('/model_version', 'pause')):
        response = requests.put(f'{url}{path}', data=body, timeout=5)
        assert (response.status_code, response.json()) == (200, 'OK'), path
