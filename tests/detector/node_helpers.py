"""Helpers for the detector's client-facing tests: a testing logic, a recording outbox, images, Socket.IO clients.

The testing logic answers like the reference's ``TestingDetectorLogic`` (one detection of each kind at 0.42) and
records what it was given (image shapes, batch sizes), so a test can check what reached the model. The detectors
use the real outbox; :class:`OutboxFiles` reads what it stored from disk.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from llnode.detector import DetectorFactory, DetectorLogic, DetectorNode
from llnode.detector.relevance import RelevanceFilter
from llnode.schema import (
    BoxDetection,
    Category,
    ClassificationDetection,
    ImageMetadata,
    ModelInformation,
    OutboxMode,
    Point,
    PointDetection,
    SegmentationDetection,
    Shape,
)
from tests.polling import wait_for
from tests.sio_client import SioClient

#: the version of the model the tests install before the node starts
MODEL_VERSION = '0.0'

#: the categories of the installed test model (the reference's TestingDetectorLogic names)
CATEGORIES = [
    Category(id='some_id', name='some_category_name', type='box'),
    Category(id='some_id_2', name='some_category_name_2', type='point'),
    Category(id='some_id_3', name='some_category_name_3', type='segmentation'),
    Category(id='some_id_4', name='some_category_name_4', type='classification'),
]

#: the segmentation the testing logic returns, and its flat string form in an answer
SEGMENTATION_POINTS = [(1, 1), (5, 6), (7, 2)]
FLAT_SHAPE = '1,1,5,6,7,2'

#: the Socket.IO transport each server gives a client
EXPECTED_TRANSPORT = {'waitress': 'polling', 'werkzeug': 'websocket'}


Result = Callable[[str, np.ndarray], ImageMetadata]


def all_kinds(version: str, image: np.ndarray) -> ImageMetadata:
    """One box, point, segmentation and classification at 0.42, as the reference's TestingDetectorLogic."""
    return ImageMetadata(
        box_detections=[BoxDetection('some_category_name', 1, 2, 3, 4, version, 0.42, 'some_id')],
        point_detections=[PointDetection('some_category_name_2', 10.5, 12.0, version, 0.42, 'some_id_2')],
        segmentation_detections=[
            SegmentationDetection(
                'some_category_name_3', Shape([Point(x, y) for x, y in SEGMENTATION_POINTS]), version, 0.42, 'some_id_3'
            )
        ],
        classification_detections=[ClassificationDetection('some_category_name_4', version, 0.42, 'some_id_4')],
        created=None,
    )


def box_and_point(version: str, image: np.ndarray) -> ImageMetadata:
    """One box and one point at 0.42 (reference test_filter_is_used_by_node)."""
    return ImageMetadata(
        box_detections=[BoxDetection('some_category_name', 1, 2, 30, 40, version, 0.42, 'some_id')],
        point_detections=[PointDetection('some_category_name_2', 100.0, 120.0, version, 0.42, 'some_id_2')],
        created=None,
    )


def nothing(version: str, image: np.ndarray) -> ImageMetadata:
    """No detections (the reference's mock detector)."""
    return ImageMetadata(created=None)


def pixel_echo(version: str, image: np.ndarray) -> ImageMetadata:
    """A classification named after the image's first value and its size: which image an answer belongs to."""
    return ImageMetadata(
        classification_detections=[ClassificationDetection(f'pixel-{int(image.flat[0])}', version, 0.9)],
        tags=[f'size-{image.shape[1]}x{image.shape[0]}'],
        created=None,
    )


#: the keys of an ImageMetadata answer, in the reference's order (``state`` is 0.27's addition)
ANSWER_KEYS = [
    'box_detections',
    'point_detections',
    'segmentation_detections',
    'classification_detections',
    'box_annotations',
    'point_annotations',
    'classification_annotation',
    'tags',
    'created',
    'source',
    'state',
]


def all_kinds_answer(
    version: str = MODEL_VERSION,
    *,
    tags: list[str] | None = None,
    source: str | None = None,
    created: str | None = None,
) -> dict[str, Any]:
    """The JSON answer for :func:`all_kinds`: the segmentation flattened, request options filled in."""
    return {
        'box_detections': [
            {
                'category_name': 'some_category_name',
                'x': 1,
                'y': 2,
                'width': 3,
                'height': 4,
                'model_name': version,
                'confidence': 0.42,
                'category_id': 'some_id',
            }
        ],
        'point_detections': [
            {
                'category_name': 'some_category_name_2',
                'x': 10.5,
                'y': 12.0,
                'model_name': version,
                'confidence': 0.42,
                'category_id': 'some_id_2',
            }
        ],
        'segmentation_detections': [
            {
                'category_name': 'some_category_name_3',
                'shape': FLAT_SHAPE,
                'model_name': version,
                'confidence': 0.42,
                'category_id': 'some_id_3',
            }
        ],
        'classification_detections': [
            {
                'category_name': 'some_category_name_4',
                'model_name': version,
                'confidence': 0.42,
                'category_id': 'some_id_4',
            }
        ],
        'box_annotations': [],
        'point_annotations': [],
        'classification_annotation': None,
        'tags': list(tags or []),
        'created': created,
        'source': source,
        'state': None,
    }


class TestingLogic(DetectorLogic):
    """Answers ``factory.result(version, image)`` for every image and records the shapes and batch sizes it was given.

    While ``factory.gate`` is cleared, a batch waits for it (up to 10 s), so a test can make requests queue.
    """

    def __init__(self, model_info: ModelInformation, factory: TestingFactory) -> None:
        super().__init__(model_info)
        self.factory = factory

    def batch_evaluate(self, images: list[np.ndarray]) -> list[ImageMetadata]:
        factory = self.factory
        with factory.lock:
            factory.batch_sizes.append(len(images))
            factory.shapes.extend(image.shape for image in images)
            factory.dtypes.extend(str(image.dtype) for image in images)
        factory.running.set()
        if not factory.gate.wait(10):
            raise TimeoutError('the test never opened the gate')
        return [factory.result(self.model_info.version, image) for image in images]


class TestingFactory(DetectorFactory):
    """Builds :class:`TestingLogic` for model format ``mocked``; what the logics record is kept here."""

    __test__ = False  # not a pytest test class
    model_format = 'mocked'

    def __init__(self, result: Result = all_kinds) -> None:
        super().__init__()
        self.result = result
        self.lock = threading.Lock()
        self.batch_sizes: list[int] = []
        self.shapes: list[tuple[int, ...]] = []
        self.dtypes: list[str] = []
        self.gate = threading.Event()
        self.gate.set()
        self.running = threading.Event()  # set once a batch has started
        self.built: list[str] = []
        self.held_versions: set[str] = set()  # builds of these versions wait for build_gate
        self.build_gate = threading.Event()

    def build(self, model_info: ModelInformation) -> TestingLogic:
        if model_info.version in self.held_versions and not self.build_gate.wait(10):
            raise TimeoutError('the test never let the build finish')
        self.built.append(model_info.version)
        return TestingLogic(model_info, self)


TestingLogic.__test__ = False  # type: ignore[attr-defined]


def install_model(
    data_folder: Path, version: str = MODEL_VERSION, categories: list[Category] | None = None
) -> ModelInformation:
    """Write ``models/<version>/model.json`` and point ``current_model`` at it: the node serves it at start."""
    info = ModelInformation(
        id=f'model-{version}',
        organization='zauberzeug',
        project='demo',
        version=version,
        categories=list(CATEGORIES if categories is None else categories),
    )
    folder = data_folder / 'models' / version
    folder.mkdir(parents=True, exist_ok=True)
    (folder / 'model.json').write_text(json.dumps(info.to_model_json()))
    link = data_folder / 'current_model'
    if link.is_symlink():
        link.unlink()
    os.symlink(f'models/{version}', link)
    return info


def cameras(node: DetectorNode) -> list[str]:
    """The camera ids the node's relevance filter keeps a history for (the camera ids requests carried)."""
    relevance = node.relevance_filter
    assert isinstance(relevance, RelevanceFilter)
    return relevance.cameras()


# ---------------------------------------------------------------------------------------------------------------
# The outbox


@dataclasses.dataclass(frozen=True)
class Item:
    """One outbox item as the real outbox stored it: ``{data}/outbox/{priority,normal}/<id>/image_<id>.jpg|.json``."""

    id: str
    image: bytes
    metadata: dict[str, Any]
    priority: bool


class OutboxFiles:
    """The node's real outbox, read from disk (the node may replace its outbox object: ``/reset``)."""

    def __init__(self, node: DetectorNode) -> None:
        self.node = node

    @property
    def root(self) -> Path:
        return self.node.settings.data_folder / 'outbox'

    @property
    def mode(self) -> OutboxMode:
        return self.node.outbox.mode

    def settle(self) -> None:
        """Wait until the writer has stored every image handed to it; none may have been dropped."""
        stats = self.node.outbox.stats
        wait_for(lambda: stats()['pending_writes'] == 0, what='the outbox writer to store every image')
        assert stats()['dropped'] == {}, stats()

    def snapshot(self, *, settle: bool = True) -> list[Item]:
        """Every queued item, oldest first (ids sort in the order items were queued).

        ``settle=False`` reads the disk as it is: what an explicit upload answered for must already be there.
        """
        if settle:
            self.settle()
        items = []
        for queue in ('priority', 'normal'):
            folder = self.root / queue
            for item in sorted(folder.iterdir()) if folder.is_dir() else []:
                if not item.is_dir():
                    continue
                item_id = item.name
                files = sorted(path.name for path in item.iterdir())
                assert files == [f'image_{item_id}.jpg', f'image_{item_id}.json'], files
                metadata = json.loads((item / f'image_{item_id}.json').read_text())
                image = (item / f'image_{item_id}.jpg').read_bytes()
                items.append(Item(item_id, image, metadata, queue == 'priority'))
        return sorted(items, key=lambda item: item.id)


def decoded(data: bytes) -> np.ndarray:
    """The picture in encoded ``data`` as an array."""
    return np.asarray(Image.open(io.BytesIO(data)))


# ---------------------------------------------------------------------------------------------------------------
# Images


def picture(width: int, height: int, seed: int = 0) -> Image.Image:
    """An RGB picture with some structure (so JPEG bytes differ between seeds)."""
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(array)


def jpeg_bytes(width: int = 32, height: int = 24, *, seed: int = 0, orientation: int | None = None) -> bytes:
    """A JPEG file of ``width`` x ``height``, optionally tagged with an EXIF orientation."""
    buffer = io.BytesIO()
    image = picture(width, height, seed)
    if orientation is None:
        image.save(buffer, 'JPEG', quality=85)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        image.save(buffer, 'JPEG', quality=85, exif=exif.tobytes())
    return buffer.getvalue()


def png_bytes(width: int = 16, height: int = 8, mode: str = 'RGBA') -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, 'PNG')
    return buffer.getvalue()


def raw_dict(array: np.ndarray) -> dict[str, Any]:
    """The Socket.IO image dict of ``array`` (format ``raw``, the default)."""
    return {'bytes': array.tobytes(order='C'), 'dtype': str(array.dtype), 'shape': list(array.shape)}


def jpeg_dict(data: bytes) -> dict[str, Any]:
    """The Socket.IO image dict of encoded bytes (format ``jpeg``, reference 0.27)."""
    return {'format': 'jpeg', 'bytes': data}


# ---------------------------------------------------------------------------------------------------------------
# Socket.IO clients


def connect_client(url: str, server: str) -> SioClient:
    """A client connected to a node at ``url``: WebSocket only under werkzeug, long-polling under waitress.

    The transport is checked: a werkzeug node must carry WebSocket, a waitress node serves polling.
    """
    client = SioClient()
    transports = ['websocket'] if server == 'werkzeug' else ['polling']
    client.connect(url, socketio_path='/ws/socket.io', transports=transports, wait_timeout=5)
    assert client.transport() == EXPECTED_TRANSPORT[server], client.transport()
    return client
