"""The observability page's node type of its own: a route, its description for ``/openapi.json`` and a metric.

``tests/docs/test_guides.py`` serves it and reads ``/camera``, ``/metrics`` and ``/openapi.json``.
"""

import logging
import os
import sys
from collections.abc import Iterator

from flask import Blueprint, Response, jsonify
from prometheus_client.metrics_core import Metric

from llnode.node import Node
from llnode.node.metrics import gauge
from llnode.node.openapi import ApiDescription, json_answer


class CameraNode(Node):
    """A node that reports the frame rate of the camera it would read."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.fps = 25.0

    def blueprints(self) -> list[Blueprint]:
        camera = Blueprint('camera', __name__)

        @camera.get('/camera')
        def settings() -> Response:
            return jsonify({'fps': self.fps})

        return [*super().blueprints(), camera]

    def metric_families(self) -> Iterator[Metric]:
        yield from super().metric_families()
        yield from self.metrics_section('camera', lambda: [gauge('llnode_camera_fps', 'Frames per second', self.fps)])

    def api_description(self) -> ApiDescription:
        api = super().api_description()
        api.add(
            'GET',
            '/camera',
            tag='camera',
            summary='The camera settings',
            responses={200: json_answer('The settings', {'type': 'object'})},
            errors=[503],
        )
        return api


if __name__ == '__main__':
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    node = CameraNode('camera node')
    sys.exit(node.serve(host='127.0.0.1', port=int(os.environ.get('PORT', '8006'))))
