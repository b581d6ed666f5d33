"""Odd but valid input a fuzz run sent to the detector, answered as the reference answers it: a filename that is
not UTF-8, a thousand small form fields before the file, integer coordinates kept as integers."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest
import requests

from tests.detector.conftest import Detector
from tests.detector.node_helpers import SioClient, all_kinds_answer, jpeg_bytes, raw_dict

MakeDetector = Callable[..., Detector]
Connect = Callable[[Detector], SioClient]

BOUNDARY = 'fuzzboundary'


def multipart(parts: list[tuple[bytes, bytes]]) -> bytes:
    """A multipart/form-data body from (Content-Disposition parameters, content) pairs, byte for byte."""
    body = b''
    for disposition, content in parts:
        body += f'--{BOUNDARY}\r\n'.encode() + b'Content-Disposition: form-data; ' + disposition + b'\r\n'
        body += b'Content-Type: application/octet-stream\r\n\r\n' + content + b'\r\n'
    return body + f'--{BOUNDARY}--\r\n'.encode()


def post(url: str, body: bytes) -> requests.Response:
    headers = {'Content-Type': f'multipart/form-data; boundary={BOUNDARY}'}
    return requests.post(f'{url}/detect', data=body, headers=headers, timeout=10)


@pytest.mark.parametrize('filename', ['\xe9t\xe9.jpg'.encode('latin-1'), 'été.jpg'.encode(), b'plain.jpg'])
def test_a_file_part_whose_filename_is_not_utf8_keeps_the_part(
    make_detector: MakeDetector, server: str, filename: bytes
) -> None:
    detector = make_detector(server)
    response = post(detector.url, multipart([(b'name="file"; filename="' + filename + b'"', jpeg_bytes())]))
    assert response.status_code == 200, response.text
    assert response.json() == all_kinds_answer()


def test_a_thousand_small_form_fields_before_the_file(make_detector: MakeDetector, server: str) -> None:
    detector = make_detector(server)
    fields = [(f'name="field{n}"'.encode(), b'x' * 40) for n in range(1000)]
    body = multipart([*fields, (b'name="file"; filename="a.jpg"', jpeg_bytes())])
    assert 80_000 < len(body) < 200_000
    response = post(detector.url, body)
    assert response.status_code == 200, response.text
    assert response.json() == all_kinds_answer()


def test_integer_coordinates_of_a_stored_detection_stay_integers(detector: Detector, sio_connect: Connect) -> None:
    client = sio_connect(detector)
    metadata = {
        'point_detections': [
            {'category_name': 'p', 'x': 1, 'y': 2, 'model_name': 'm', 'confidence': 1, 'category_id': 'c'}
        ],
        'tags': [],
    }
    image = raw_dict(np.zeros((4, 4, 3), np.uint8))
    assert client.call('upload', {'image': image, 'metadata': metadata}, timeout=5) == {'status': 'OK'}
    (item,) = detector.outbox.snapshot()
    json_file = next(detector.data_folder.glob(f'outbox/*/{item.id}/image_{item.id}.json'))
    stored = json.loads(json_file.read_text())['point_detections'][0]
    assert (stored['x'], stored['y'], stored['confidence']) == (1, 2, 1)
    assert all(type(stored[key]) is int for key in ('x', 'y', 'confidence')), stored  # 2, not 2.0
