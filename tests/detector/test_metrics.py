"""The detector's ``/metrics`` after real REST and Socket.IO traffic: inference counters and histograms, request
counts by route and status, Socket.IO sessions by transport, the serving model, the outbox, model-update
failures; a failing section is left out while the rest answers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import requests

from llnode.detector.deployment import ModelTarget
from tests.detector.conftest import Detector
from tests.detector.node_helpers import MODEL_VERSION, SioClient, jpeg_bytes, raw_dict
from tests.metrics_text import names, scrape, value
from tests.polling import wait_for

MakeDetector = Callable[..., Detector]
Connect = Callable[[Detector], SioClient]


def rest_detect(detector: Detector, **headers: str) -> requests.Response:
    return requests.post(
        f'{detector.url}/detect', files={'file': ('frame.jpg', jpeg_bytes(32, 24))}, headers=headers, timeout=10
    )


def test_inference_requests_and_sessions_are_counted(make_detector: MakeDetector, sio_connect: Connect) -> None:
    detector = make_detector('werkzeug')
    client = sio_connect(detector)
    before = scrape(detector.url)
    assert value(before, 'llnode_socketio_sessions', transport='websocket') == 1
    assert value(before, 'llnode_socketio_sessions', transport='polling') == 0
    assert value(before, 'llnode_model_info', version=MODEL_VERSION, model_id='model-0.0', format='mocked') == 1
    assert value(before, 'llnode_inference_images_total') == 0

    for _ in range(3):
        assert rest_detect(detector, autoupload='all').status_code == 200
    image = np.zeros((24, 32, 3), np.uint8)
    for _ in range(2):
        answer = client.call('detect', {'image': raw_dict(image), 'autoupload': 'disabled'}, timeout=10)
        assert 'error' not in answer, answer
    batch: Any = client.call('batch_detect', {'images': [raw_dict(image)] * 4, 'autoupload': 'disabled'}, timeout=10)
    assert len(batch['items']) == 4
    assert 'error' in client.call('detect', {'image': {'bytes': b'x', 'dtype': 'uint8', 'shape': [2, 2]}}, timeout=10)
    wrong = requests.post(f'{detector.url}/detect', data=b'not multipart', timeout=10)
    assert wrong.status_code == 415

    after = scrape(detector.url)
    assert value(after, 'llnode_inference_requests_total') == 6
    assert value(after, 'llnode_inference_images_total') == 9
    batches = value(after, 'llnode_inference_batches_total')
    assert 1 <= batches <= 6
    assert value(after, 'llnode_inference_batch_size_count') == batches
    assert value(after, 'llnode_inference_batch_size_sum') == 9
    assert value(after, 'llnode_inference_batch_size_bucket', le='+Inf') == batches
    assert value(after, 'llnode_inference_batch_size_bucket', le='4.0') == batches  # none larger than 4
    assert value(after, 'llnode_inference_compute_seconds_count') == batches
    assert value(after, 'llnode_inference_queue_seconds_count') == 6
    assert 0 < value(after, 'llnode_inference_queue_seconds_sum') < 10
    assert value(after, 'llnode_inference_failed_batches_total') == 0
    assert value(after, 'llnode_http_requests_total', method='POST', route='/detect', status='200') == 3
    assert value(after, 'llnode_http_requests_total', method='POST', route='/detect', status='415') == 1
    assert value(after, 'llnode_detector_operation_mode', llnode_detector_operation_mode='idle') == 1
    assert value(after, 'llnode_socketio_events_total', event='detect', outcome='ok') == 2
    assert value(after, 'llnode_socketio_events_total', event='detect', outcome='error') == 1
    assert value(after, 'llnode_socketio_events_total', event='batch_detect', outcome='ok') == 1

    # the three REST images went to the outbox; its uploads fail (no Loop listens), and that is counted
    detector.node.outbox.wait_until_written(10)  # type: ignore[attr-defined]
    outbox = scrape(detector.url)
    assert value(outbox, 'llnode_outbox_saved_items_total') == 3
    waiting = value(outbox, 'llnode_outbox_queued_items', queue='normal') + value(
        outbox, 'llnode_outbox_queued_items', queue='priority'
    )
    assert waiting == 3
    wait_for(lambda: value(scrape(detector.url), 'llnode_outbox_upload_errors_total') >= 1, what='an upload error')
    wait_for(lambda: value(scrape(detector.url), 'llnode_loop_status_syncs_total', outcome='failed') >= 1)
    assert value(scrape(detector.url), 'llnode_loop_connected') == 0


def test_a_failed_model_update_is_counted(make_detector: MakeDetector) -> None:
    detector = make_detector('werkzeug')
    assert value(scrape(detector.url), 'llnode_model_update_failures_total') == 0
    detector.node.models.use_version(ModelTarget(id='model-9.9', version='9.9'))  # its download cannot succeed
    wait_for(lambda: value(scrape(detector.url), 'llnode_model_update_failures_total') >= 1, what='the failure counted')
    assert (
        value(scrape(detector.url), 'llnode_model_info', version=MODEL_VERSION, model_id='model-0.0', format='mocked')
        == 1
    )


def test_a_failing_section_is_left_out_and_the_rest_answers(make_detector: MakeDetector) -> None:
    detector = make_detector('werkzeug')

    def broken() -> dict[str, Any]:
        raise OSError('disk gone')

    detector.node.outbox.stats = broken  # type: ignore[method-assign]
    samples = scrape(detector.url)
    assert not any(name.startswith('llnode_outbox_') for name in names(samples))
    assert 'llnode_inference_images_total' in names(samples)
    assert requests.get(f'{detector.url}/stats', timeout=5).json()['outbox'] == {'error': 'OSError: disk gone'}
