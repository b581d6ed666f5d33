"""Batching safety over a served detector: two cameras of different sizes send concurrent requests, and a logic
that clips every result by ``images[0].shape`` (as yolov5_node's ``batch_evaluate`` does) still answers right
boxes, because images of different shapes never share a batch unless the logic says it accepts that."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import requests

from llnode.detector import DetectorFactory, DetectorLogic
from llnode.schema import BoxDetection, ImageMetadata, ModelInformation
from tests.detector.conftest import Detector
from tests.detector.node_helpers import jpeg_bytes
from tests.polling import wait_for

CAMERAS = {'front': (320, 240), 'rear': (640, 480)}


class ClippingLogic(DetectorLogic):
    """Finds one box covering each whole image, then clips every box by ``images[0].shape`` (yolov5_node's way);
    the first batch waits for ``gate`` so that the requests after it queue up."""

    def __init__(self, model_info: ModelInformation, factory: ClippingFactory) -> None:
        super().__init__(model_info)
        self.factory = factory

    def batch_evaluate(self, images: list[np.ndarray]) -> list[ImageMetadata]:
        self.factory.batches.append([image.shape[:2] for image in images])
        self.factory.running.set()
        if not self.factory.gate.wait(10):
            raise TimeoutError('the test never opened the gate')
        height, width = images[0].shape[:2]
        results = []
        for image in images:
            h, w = image.shape[:2]
            box = BoxDetection('thing', 0, 0, min(w, width), min(h, height), self.model_info.version, 0.9)
            results.append(ImageMetadata(box_detections=[box]))
        return results


class ClippingFactory(DetectorFactory):
    model_format = 'mocked'

    def __init__(self, accepts_mixed_shapes: bool) -> None:
        super().__init__()
        self.accepts_mixed_shapes = accepts_mixed_shapes
        self.batches: list[list[tuple[int, ...]]] = []
        self.gate = threading.Event()
        self.running = threading.Event()

    def build(self, model_info: ModelInformation) -> ClippingLogic:
        logic = ClippingLogic(model_info, self)
        logic.accepts_mixed_shapes = self.accepts_mixed_shapes  # type: ignore[misc]  # per test, on the instance
        return logic


def detect(detector: Detector, camera: str) -> tuple[str, dict[str, float]]:
    width, height = CAMERAS[camera]
    response = requests.post(
        f'{detector.url}/detect',
        files={'file': ('frame.jpg', jpeg_bytes(width, height), 'image/jpeg')},
        headers={'camera-id': camera, 'autoupload': 'disabled'},
        timeout=20,
    )
    assert response.status_code == 200, response.text
    box = response.json()['box_detections'][0]
    return camera, {'width': box['width'], 'height': box['height']}


def concurrent_detections(detector: Detector, factory: ClippingFactory) -> list[tuple[str, dict[str, float]]]:
    """One request runs (held at the gate) while six more from both cameras queue; then all are answered."""
    worker = detector.node.models.serving().worker
    order = ['front', 'rear', 'front', 'rear', 'rear', 'front']
    with ThreadPoolExecutor(len(order) + 1, thread_name_prefix='test-camera') as pool:
        first = pool.submit(detect, detector, 'front')
        assert factory.running.wait(10)
        rest = []
        for count, camera in enumerate(order, start=1):
            rest.append(pool.submit(detect, detector, camera))
            wait_for(lambda count=count: worker.queued == count, what=f'{count} requests queued')  # type: ignore[misc]
        factory.gate.set()
        return [first.result(20), *(future.result(20) for future in rest)]


def test_two_cameras_of_different_sizes_get_right_boxes_from_a_clipping_logic(
    make_detector: Callable[..., Detector],
) -> None:
    factory = ClippingFactory(accepts_mixed_shapes=False)
    detector = make_detector('werkzeug', factory=factory)
    answers = concurrent_detections(detector, factory)
    for camera, box in answers:
        width, height = CAMERAS[camera]
        assert box == {'width': width, 'height': height}, (camera, box)
    assert all(len(set(batch)) == 1 for batch in factory.batches), factory.batches
    assert max(len(batch) for batch in factory.batches) == 3  # queued requests of one camera still share a batch


def test_a_logic_that_accepts_mixed_shapes_gets_them_in_one_batch(make_detector: Callable[..., Detector]) -> None:
    """The control: with mixed shapes declared, the same requests share batches (and this logic's clipping shows
    it), so the test above would catch a worker that batched by arrival alone."""
    factory = ClippingFactory(accepts_mixed_shapes=True)
    detector = make_detector('werkzeug', factory=factory)
    answers = concurrent_detections(detector, factory)
    assert any(len(set(batch)) > 1 for batch in factory.batches), factory.batches
    wrong = [
        (camera, box) for camera, box in answers if box != dict(zip(('width', 'height'), CAMERAS[camera], strict=True))
    ]
    assert wrong, answers
