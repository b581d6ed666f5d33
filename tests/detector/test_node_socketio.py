"""The detector's Socket.IO events as a client sees them (loop-protocol §4.3), with a real python-socketio client:
WebSocket only under werkzeug, long-polling under waitress (the transport is asserted when connecting).

Every event of the §4.3 table with its success and error acks (``{"error": ...}``, no envelope), raw and jpeg
images, several clients at once sharing inference batches, and the 64 MiB message limit.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from llnode.detector.images import MAX_PIXELS
from llnode.localloop import LocalLoop
from llnode.node.app import SOCKETIO_MAX_BUFFER
from tests.detector.conftest import Detector
from tests.detector.node_helpers import (
    CATEGORIES,
    MODEL_VERSION,
    SioClient,
    TestingFactory,
    all_kinds_answer,
    cameras,
    decoded,
    jpeg_bytes,
    jpeg_dict,
    pixel_echo,
    png_bytes,
    raw_dict,
)
from tests.polling import wait_for

MakeDetector = Callable[..., Detector]
Connect = Callable[[Detector], SioClient]

DATE = '2024-01-30T12:34:56'
PARSE_ERROR = 'could not parse image from data'


def close_to(picture: np.ndarray, array: np.ndarray) -> bool:
    """Whether a JPEG-decoded ``picture`` is ``array`` up to compression noise."""
    return picture.shape == array.shape and float(np.abs(picture.astype(int) - array.astype(int)).mean()) < 4


def image(height: int = 24, width: int = 32, value: int = 0, channels: int = 3) -> np.ndarray:
    array = np.full((height, width, channels), value, dtype=np.uint8)
    array[-1, -1] = 255 - value  # not uniform
    return array


# ---------------------------------------------------------------------------------------------------------------
# detect


def test_detect_raw_and_jpeg_images(make_detector: MakeDetector, sio_connect: Connect, server: str) -> None:
    detector = make_detector(server)
    client = sio_connect(detector)
    assert client.call('detect', {'image': raw_dict(image())}, timeout=5) == all_kinds_answer()
    jpeg = {'image': jpeg_dict(jpeg_bytes(32, 24))}
    assert client.call('detect', jpeg, timeout=5) == all_kinds_answer()
    explicit_raw = {'image': {**raw_dict(image(8, 6, channels=1)), 'format': 'raw'}}
    assert client.call('detect', explicit_raw, timeout=5) == all_kinds_answer()
    grey16 = np.arange(12 * 10, dtype=np.uint16).reshape(12, 10)
    assert client.call('detect', {'image': raw_dict(grey16)}, timeout=5) == all_kinds_answer()
    assert detector.factory.shapes == [(24, 32, 3), (24, 32, 3), (8, 6, 1), (12, 10)]
    assert detector.factory.dtypes == ['uint8', 'uint8', 'uint8', 'uint16']


def test_detect_options(make_detector: MakeDetector, sio_connect: Connect, server: str) -> None:
    """Tags (a list), source, creation date, camera id (``camera_id`` or ``camera-id``) and autoupload."""
    detector = make_detector(server)
    client = sio_connect(detector)
    array = image(value=7)
    request = {
        'image': raw_dict(array),
        'camera_id': 'cam-a',
        'tags': ['x', ' y'],
        'source': 'robot',
        'creation_date': DATE,
        'autoupload': 'all',
    }
    answer = client.call('detect', request, timeout=5)
    assert answer == all_kinds_answer(tags=['x', ' y'], source='robot', created=DATE)
    (item,) = detector.outbox.snapshot()
    assert close_to(decoded(item.image), array)  # an array is stored as JPEG
    assert item.metadata == answer  # `all`: no cause tags
    assert item.priority is False

    assert client.call('detect', {'image': raw_dict(array), 'autoupload': 'disabled'}, timeout=5)['tags'] == []
    assert len(detector.outbox.snapshot()) == 1

    for key, camera in (('camera_id', 'cam-b'), ('camera-id', 'cam-c')):
        answer = client.call('detect', {'image': raw_dict(array), key: camera}, timeout=5)  # filtered by default
        assert answer['created'] is None
    assert cameras(detector.node) == ['cam-b', 'cam-c']
    items = detector.outbox.snapshot()
    assert len(items) == 3
    assert items[-1].metadata['tags'] == ['uncertain', 'segmentation_detection']


def test_detect_jpeg_goes_to_the_outbox_as_sent_and_honours_exif(detector: Detector, sio_connect: Connect) -> None:
    client = sio_connect(detector)
    data = jpeg_bytes(10, 20, orientation=6)
    answer = client.call('detect', {'image': jpeg_dict(data), 'autoupload': 'all'}, timeout=5)
    assert answer == all_kinds_answer()
    assert detector.factory.shapes == [(10, 20, 3)]  # 10x20 tagged orientation 6 decodes to 20x10
    (item,) = detector.outbox.snapshot()
    assert item.image == data


def test_detect_without_a_model(make_detector: MakeDetector, sio_connect: Connect, server: str) -> None:
    detector = make_detector(server, model=False)
    client = sio_connect(detector)
    expected = {'error': 'detector not yet initialized'}
    assert client.call('detect', {'image': raw_dict(image()), 'autoupload': 'all'}, timeout=5) == expected
    assert client.call('detect', {'image': {'bytes': b'123', 'dtype': 'uint8', 'shape': [9]}}, timeout=5) == expected
    assert client.call('batch_detect', {'images': [raw_dict(image())]}, timeout=5) == expected
    assert client.call('info', timeout=5) == {'status': 'No model loaded'}
    assert detector.outbox.snapshot() == []


BAD_IMAGES = {
    'wrong byte count': {'bytes': bytes(10), 'dtype': 'uint8', 'shape': [2, 2, 3]},
    'bad dtype': {'bytes': bytes(12), 'dtype': 'complex64', 'shape': [2, 2, 3]},
    'unknown dtype': {'bytes': bytes(12), 'dtype': 'uint8x', 'shape': [2, 2, 3]},
    'object dtype': {'bytes': bytes(12), 'dtype': 'object', 'shape': [2, 2, 3]},
    'shape of one axis': {'bytes': bytes(12), 'dtype': 'uint8', 'shape': [12]},
    'two channels': {'bytes': bytes(8), 'dtype': 'uint8', 'shape': [2, 2, 2]},
    'negative shape': {'bytes': bytes(12), 'dtype': 'uint8', 'shape': [-2, -2, 3]},
    'float shape': {'bytes': bytes(12), 'dtype': 'uint8', 'shape': [2.0, 2, 3]},
    'shape string': {'bytes': bytes(12), 'dtype': 'uint8', 'shape': '2,2,3'},
    'no shape': {'bytes': bytes(12), 'dtype': 'uint8'},
    'unknown format': {'format': 'png', 'bytes': png_bytes()},
    'bytes as text': {'bytes': 'AAAA', 'dtype': 'uint8', 'shape': [2, 2]},
    'jpeg garbage': {'format': 'jpeg', 'bytes': b'not a jpeg'},
    'jpeg empty': {'format': 'jpeg', 'bytes': b''},
    'too many pixels': {'bytes': bytes(3), 'dtype': 'uint8', 'shape': [MAX_PIXELS, 2, 1]},
    'not a dict': [1, 2, 3],
}


def test_detect_bad_image_dicts(make_detector: MakeDetector, sio_connect: Connect, server: str) -> None:
    detector = make_detector(server)
    client = sio_connect(detector)
    for what, bad in BAD_IMAGES.items():
        answer = client.call('detect', {'image': bad, 'autoupload': 'all'}, timeout=5)
        assert set(answer) == {'error'}, (what, answer)
        assert answer['error'].startswith(PARSE_ERROR), (what, answer)
    for payload in ({'camera_id': 'x'}, 'not an object', None):
        answer = client.call('detect', payload, timeout=5)
        assert answer['error'].startswith(PARSE_ERROR), (payload, answer)
    assert detector.factory.shapes == []
    assert detector.outbox.snapshot() == []


def test_detect_bad_options(detector: Detector, sio_connect: Connect) -> None:
    client = sio_connect(detector)
    tags_text = client.call('detect', {'image': raw_dict(image()), 'tags': 'a,b'}, timeout=5)
    assert tags_text == {'error': 'tags must be a list of strings, got str'}
    tags_numbers = client.call('detect', {'image': raw_dict(image()), 'tags': [1]}, timeout=5)
    assert set(tags_numbers) == {'error'}
    # the reference only logs an unknown autoupload and answers the detections; llnode refuses it
    autoupload = client.call('detect', {'image': raw_dict(image()), 'autoupload': 'sometimes'}, timeout=5)
    assert set(autoupload) == {'error'} and 'sometimes' in autoupload['error']
    assert detector.factory.shapes == []


def test_inference_error_is_an_error_ack(detector: Detector, sio_connect: Connect) -> None:
    def broken(version: str, image: np.ndarray) -> Any:
        raise RuntimeError('the model fell over')

    detector.factory.result = broken
    client = sio_connect(detector)
    assert client.call('detect', {'image': raw_dict(image())}, timeout=5) == {'error': 'the model fell over'}


def test_exclusive_model_swap_answers_updating(
    make_detector: MakeDetector, sio_connect: Connect, local_loop: LocalLoop, tmp_path: Path
) -> None:
    """With ``EXCLUSIVE_MODEL_BUILD`` no model serves while the new one builds: the reference's "updating model to
    version X" errors (REST: 503), then the new model answers."""
    factory = TestingFactory()
    factory.held_versions.add('1.1')
    settings = local_loop.settings(data_folder=tmp_path / 'exclusive', exclusive_model_build=True)
    detector = make_detector(settings=settings, factory=factory)  # serves 0.0, the Loop deploys 1.1
    client = sio_connect(detector)
    try:
        wait_for(lambda: client.call('info', timeout=5) == {'status': 'Updating model to version 1.1'}, interval=0.05)
        request = {'image': raw_dict(image())}
        assert client.call('detect', request, timeout=5) == {'error': 'updating model to version 1.1'}
        assert client.call('batch_detect', {'images': [raw_dict(image())]}, timeout=5) == {
            'error': 'updating model to version 1.1'
        }
        response = requests.post(f'{detector.url}/detect', files={'file': jpeg_bytes()}, timeout=5)
        assert (response.status_code, response.json()) == (503, {'detail': 'updating model to version 1.1'})
    finally:
        factory.build_gate.set()
    wait_for(lambda: client.call('info', timeout=5).get('version') == '1.1', what='model 1.1 to serve')
    assert client.call('detect', {'image': raw_dict(image())}, timeout=5) == all_kinds_answer('1.1')
    assert factory.built == ['0.0', '1.1']


# ---------------------------------------------------------------------------------------------------------------
# batch_detect


def test_batch_detect(make_detector: MakeDetector, sio_connect: Connect, server: str) -> None:
    detector = make_detector(server, factory=TestingFactory(pixel_echo))
    client = sio_connect(detector)
    png = png_bytes(5, 4, 'RGB')  # lossless: every value 0
    images = [raw_dict(image(value=11)), jpeg_dict(png), raw_dict(image(2, 3, value=33))]
    request = {'images': images, 'tags': ['t'], 'source': 's', 'creation_date': DATE, 'autoupload': 'all'}
    answer = client.call('batch_detect', request, timeout=5)
    assert set(answer) == {'items'}
    items = answer['items']
    assert [item['classification_detections'][0]['category_name'] for item in items] == [
        'pixel-11',
        'pixel-0',
        'pixel-33',
    ]
    assert [item['tags'] for item in items] == [['size-32x24', 't'], ['size-5x4', 't'], ['size-3x2', 't']]
    assert {(item['source'], item['created']) for item in items} == {('s', DATE)}
    uploaded = detector.outbox.snapshot()
    assert [item.metadata for item in uploaded] == items
    assert uploaded[1].image == png

    assert client.call('batch_detect', {'images': []}, timeout=5) == {'items': []}


def test_batch_detect_errors(detector: Detector, sio_connect: Connect) -> None:
    client = sio_connect(detector)
    batch_error = 'could not parse images from data'
    for payload in (
        {'images': raw_dict(image())},
        {'image': raw_dict(image())},
        {'images': [raw_dict(image()), BAD_IMAGES['wrong byte count']]},
        {'images': [jpeg_dict(b'garbage')]},
        'nothing',
    ):
        answer = client.call('batch_detect', payload, timeout=5)
        assert set(answer) == {'error'} and answer['error'].startswith(batch_error), (payload, answer)
    assert detector.factory.shapes == []


# ---------------------------------------------------------------------------------------------------------------
# info, about, model and outbox modes


def test_info_about_and_model_version(make_detector: MakeDetector, sio_connect: Connect, server: str) -> None:
    detector = make_detector(server)
    client = sio_connect(detector)
    info = client.call('info', timeout=5)
    assert (info['id'], info['version']) == (f'model-{MODEL_VERSION}', MODEL_VERSION)
    assert [c['name'] for c in info['categories']] == [c.name for c in CATEGORIES]
    assert Path(info['model_root_path']) == (detector.data_folder / 'models' / MODEL_VERSION).absolute()
    assert client.call('about', timeout=5) == requests.get(f'{detector.url}/about', timeout=5).json()
    versions = client.call('get_model_version', timeout=5)
    assert versions == requests.get(f'{detector.url}/model_version', timeout=5).json()
    assert versions['current_version'] == MODEL_VERSION and versions['loop_version'] == 'None'


def test_set_model_version_mode(detector: Detector, sio_connect: Connect) -> None:
    client = sio_connect(detector)

    def mode() -> str:
        return str(client.call('get_model_version', timeout=5)['version_control'])

    assert client.call('set_model_version_mode', 'pause', timeout=5) == {'status': 'OK'}
    assert mode() == 'pause'
    assert client.call('set_model_version_mode', 'follow_loop', timeout=5) == {'status': 'OK'}
    assert mode() == 'follow_loop'
    for bad in ('abc', '', 12, None):
        assert client.call('set_model_version_mode', bad, timeout=5) == {'error': 'Invalid version number'}, bad
    assert mode() == 'follow_loop'
    assert client.call('set_model_version_mode', MODEL_VERSION, timeout=5) == {'status': 'OK'}  # installed
    assert mode() == 'specific_version'


def test_outbox_mode_events(make_detector: MakeDetector, sio_connect: Connect, server: str) -> None:
    detector = make_detector(server)
    client = sio_connect(detector)
    assert client.call('get_outbox_mode', timeout=5) == {'outbox_mode': 'continuous_upload'}
    assert client.call('set_outbox_mode', 'stopped', timeout=5) == {'status': 'OK'}
    assert client.call('get_outbox_mode', timeout=5) == {'outbox_mode': 'stopped'}
    assert requests.get(f'{detector.url}/outbox_mode', timeout=5).text == 'stopped'
    assert client.call('set_outbox_mode', 'bogus', timeout=5) == {'error': "'bogus' is not a valid OutboxMode"}
    assert client.call('set_outbox_mode', 'continuous_upload', timeout=5) == {'status': 'OK'}
    assert client.call('get_outbox_mode', timeout=5) == {'outbox_mode': 'continuous_upload'}


def test_unknown_event_gets_an_error_ack(detector: Detector, sio_connect: Connect) -> None:
    client = sio_connect(detector)
    assert client.call('no_such_event', {'x': 1}, timeout=5) == {'error': "unknown event 'no_such_event'"}
    assert client.call('get_outbox_mode', timeout=5) == {'outbox_mode': 'continuous_upload'}  # still connected


# ---------------------------------------------------------------------------------------------------------------
# upload

#: ``created`` of a fresh ImageMetadata: local time, underscore separator, milliseconds (reference)
CREATED_NOW = re.compile(r'^\d{4}-\d{2}-\d{2}_\d{2}:\d{2}:\d{2}\.\d{3}$')


def uploaded_metadata(*, box_category_id: str | None = 'client-id') -> dict[str, Any]:
    return {
        'box_detections': [
            {
                'category_name': 'some_category_name',
                'x': 1,
                'y': 2,
                'width': 3,
                'height': 4,
                'model_name': 'm',
                'confidence': 0.5,
                'category_id': box_category_id,
            },
            {
                'category_name': 'unknown category',
                'x': 1,
                'y': 2,
                'width': 3,
                'height': 4,
                'model_name': 'm',
                'confidence': 0.5,
                'category_id': 'client-id',
            },
        ],
        'point_detections': [
            {'category_name': 'some_category_name_2', 'x': 1, 'y': 2.5, 'model_name': 'm', 'confidence': 1},
        ],
        'segmentation_detections': [
            {
                'category_name': 'some_category_name_3',
                'shape': {'points': [{'x': 1, 'y': 2}, {'x': 3, 'y': 4}]},
                'model_name': 'm',
                'confidence': 0.5,
            }
        ],
        'box_annotations': [
            {'category_name': 'some_category_name', 'x': 1, 'y': 2, 'width': 3, 'height': 4, 'category_id': 'mine'}
        ],
        'tags': ['a'],
        'created': DATE,
        'source': 'phone',
        'state': 'trash',
        'unknown key': 'is ignored',
    }


def test_upload_raw_and_jpeg(make_detector: MakeDetector, sio_connect: Connect, server: str) -> None:
    detector = make_detector(server)
    client = sio_connect(detector)
    array = image(value=5)
    assert client.call('upload', {'image': raw_dict(array)}, timeout=5) == {'status': 'OK'}
    data = jpeg_bytes(seed=4)
    assert client.call('upload', {'image': jpeg_dict(data), 'upload_priority': True}, timeout=5) == {'status': 'OK'}
    first, second = detector.outbox.snapshot(settle=False)  # on disk when the ack comes
    assert close_to(decoded(first.image), array)
    assert first.priority is False
    assert first.metadata['tags'] == ['picked_by_system']
    assert CREATED_NOW.match(first.metadata['created']), first.metadata['created']
    assert first.metadata['source'] is None
    assert second.image == data
    assert second.priority is True
    assert client.call('upload', {'image': raw_dict(array), 'metadata': {}}, timeout=5) == {'status': 'OK'}
    assert detector.outbox.snapshot()[-1].metadata['tags'] == ['picked_by_system']


def test_upload_with_metadata(detector: Detector, sio_connect: Connect) -> None:
    """Category ids come from the model by name ("" where it has none), annotations are untouched, the shape is
    not flattened, ``picked_by_system`` is appended; created, source and state are kept."""
    client = sio_connect(detector)
    answer = client.call('upload', {'image': raw_dict(image()), 'metadata': uploaded_metadata()}, timeout=5)
    assert answer == {'status': 'OK'}
    (item,) = detector.outbox.snapshot()
    metadata = item.metadata
    assert [box['category_id'] for box in metadata['box_detections']] == ['some_id', '']
    assert metadata['point_detections'][0]['category_id'] == 'some_id_2'
    assert metadata['segmentation_detections'][0]['category_id'] == 'some_id_3'
    assert metadata['segmentation_detections'][0]['shape'] == {'points': [{'x': 1, 'y': 2}, {'x': 3, 'y': 4}]}
    assert metadata['box_annotations'][0]['category_id'] == 'mine'
    assert metadata['tags'] == ['a', 'picked_by_system']
    assert (metadata['created'], metadata['source'], metadata['state']) == (DATE, 'phone', 'trash')
    assert 'unknown key' not in metadata


def test_upload_without_a_model_keeps_the_category_ids(make_detector: MakeDetector, sio_connect: Connect) -> None:
    detector = make_detector(model=False)
    client = sio_connect(detector)
    metadata = uploaded_metadata(box_category_id=None)
    assert client.call('upload', {'image': raw_dict(image()), 'metadata': metadata}, timeout=5) == {'status': 'OK'}
    (item,) = detector.outbox.snapshot()
    assert [box['category_id'] for box in item.metadata['box_detections']] == [None, 'client-id']


def test_upload_errors(make_detector: MakeDetector, sio_connect: Connect, server: str) -> None:
    detector = make_detector(server)
    client = sio_connect(detector)
    float_box = uploaded_metadata()
    float_box['box_detections'][0]['x'] = 1.5
    no_name = uploaded_metadata()
    del no_name['box_detections'][1]['category_name']
    cases: list[tuple[dict[str, Any], str]] = [
        ({'metadata': float_box}, 'expected an integer, got float for field "box_detections[0].x"'),
        ({'metadata': no_name}, 'missing value for field "box_detections[1].category_name"'),
        ({'metadata': {'tags': 'a'}}, 'expected a list, got str for field "tags"'),
        ({'metadata': ['not', 'an', 'object']}, 'expected an object, got list'),
        ({'upload_priority': 'yes'}, "upload_priority must be true or false, got 'yes'"),
    ]
    for extra, error in cases:
        assert client.call('upload', {'image': raw_dict(image()), **extra}, timeout=5) == {'error': error}
    for bad in (BAD_IMAGES['wrong byte count'], BAD_IMAGES['jpeg garbage'], BAD_IMAGES['unknown format'], None):
        answer = client.call('upload', {'image': bad}, timeout=5)
        assert set(answer) == {'error'} and answer['error'].startswith(PARSE_ERROR), (bad, answer)
    answer = client.call('upload', 'not an object', timeout=5)
    assert answer['error'].startswith(PARSE_ERROR)
    assert detector.outbox.snapshot() == []


# ---------------------------------------------------------------------------------------------------------------
# Several clients at once


def test_concurrent_clients_get_their_own_answers_and_share_batches(
    make_detector: MakeDetector, sio_connect: Connect, server: str
) -> None:
    """Socket.IO and REST clients at once: each answer belongs to its request, and requests that wait while the
    model is busy run together in one batch (their images have one shape: see test_batch_shapes.py).

    Under waitress every polling client holds one of the server's 4 threads with its long-poll, and a REST request
    holds one while it waits for inference, so fewer clients fit there (see the waitress test below).
    """
    factory = TestingFactory(pixel_echo)
    detector = make_detector(server, factory=factory)
    sio_values, rest_values = ([21, 22, 23], [31, 32, 33]) if server == 'werkzeug' else ([21], [31])
    blocker, *clients = [sio_connect(detector) for _ in range(1 + len(sio_values))]
    answers: dict[int, Any] = {}
    errors: list[BaseException] = []

    def sio_detect(client: SioClient, value: int) -> None:
        try:
            request = {'image': raw_dict(image(4, 5, value=value)), 'tags': [f'sio-{value}'], 'autoupload': 'disabled'}
            answers[value] = client.call('detect', request, timeout=15)
        except BaseException as e:
            errors.append(e)

    def rest_detect(value: int) -> None:
        try:
            data = png_bytes_of(np.full((4, 5, 3), value, dtype=np.uint8))  # the shape of the Socket.IO images
            response = requests.post(
                f'{detector.url}/detect',
                files={'file': data},
                headers={'tags': f'rest-{value}', 'autoupload': 'disabled'},
                timeout=15,
            )
            answers[value] = response.json()
        except BaseException as e:
            errors.append(e)

    factory.gate.clear()
    first = threading.Thread(target=sio_detect, args=(blocker, 1), name='test-blocker')
    first.start()
    assert factory.running.wait(5)
    threads = [
        *(
            threading.Thread(target=sio_detect, args=(client, value), name=f'test-sio-{value}')
            for client, value in zip(clients, sio_values, strict=True)
        ),
        *(threading.Thread(target=rest_detect, args=(value,), name=f'test-rest-{value}') for value in rest_values),
    ]
    for thread in threads:
        thread.start()
    worker = detector.node.models.serving().worker
    waiting = len(threads)
    try:
        wait_for(lambda: worker.queued == waiting, what=f'{waiting} requests waiting for the model')
    finally:
        factory.gate.set()
    for thread in [first, *threads]:
        thread.join(20)
        assert not thread.is_alive()
    assert errors == []
    assert factory.batch_sizes == [1, waiting]
    for value in [1, *sio_values]:
        assert answers[value]['classification_detections'][0]['category_name'] == f'pixel-{value}'
        assert answers[value]['tags'] == ['size-5x4', f'sio-{value}']
    for value in rest_values:
        assert answers[value]['classification_detections'][0]['category_name'] == f'pixel-{value}'
        assert answers[value]['tags'] == ['size-5x4', f'rest-{value}']


def test_waitress_answers_rest_while_polling_clients_leave_it_a_thread(
    make_detector: MakeDetector, sio_connect: Connect
) -> None:
    """Each connected long-polling client holds one waitress thread while its poll waits (up to the 25 s ping
    interval): REST is answered as long as the clients leave a thread free (``serve(threads=32)`` by default)."""
    detector = make_detector('waitress')  # served with threads=4 (tests/node/conftest.py)
    clients = [sio_connect(detector) for _ in range(3)]
    for _ in range(3):
        assert requests.get(f'{detector.url}/healthz', timeout=5).status_code == 200
    assert all(client.call('get_outbox_mode', timeout=5) == {'outbox_mode': 'continuous_upload'} for client in clients)


def png_bytes_of(array: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, 'PNG')
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------------------
# The 64 MiB message limit


@pytest.mark.slow
def test_messages_up_to_64_mib(make_detector: MakeDetector, sio_connect: Connect) -> None:
    """An attachment of exactly 64 MiB is served; one byte more and the server drops the connection unanswered.

    Over WebSocket each binary attachment is one Engine.IO message, so the attachment size is the message size.
    """
    assert SOCKETIO_MAX_BUFFER == 64 * 1024 * 1024
    detector = make_detector('werkzeug')
    client = sio_connect(detector)
    largest = np.zeros((4096, 4096, 4), dtype=np.uint8)  # 64 MiB
    assert largest.nbytes == SOCKETIO_MAX_BUFFER
    answer = client.call('detect', {'image': raw_dict(largest), 'autoupload': 'disabled'}, timeout=60)
    assert answer == all_kinds_answer()
    assert detector.factory.shapes == [(4096, 4096, 4)]
    del largest, answer

    acks: list[Any] = []
    too_big = {'bytes': bytes(SOCKETIO_MAX_BUFFER + 1), 'dtype': 'uint8', 'shape': [1, SOCKETIO_MAX_BUFFER + 1]}
    client.emit('detect', {'image': too_big}, callback=lambda *answer: acks.append(answer))
    del too_big
    wait_for(lambda: not client.connected, timeout=30, what='the server to drop the connection')
    assert acks == []
    assert detector.factory.shapes == [(4096, 4096, 4)]

    again = sio_connect(detector)  # the node still serves
    assert again.call('detect', {'image': raw_dict(image())}, timeout=5) == all_kinds_answer()
