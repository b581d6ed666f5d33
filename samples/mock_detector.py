"""A detector whose model answers every image with the same two detections: one box and one point.

It is the llnode version of the reference's ``mock_detector`` sample: a factory for model format ``mocked`` and
a logic without any real model. Useful to try the detector's API, to test clients, and for benchmarks::

    llnode loop --demo --user demo:demo          # in another terminal: the local Loop on 127.0.0.1:8080
    LOOP_HOST=127.0.0.1:8080 LOOP_USERNAME=demo LOOP_PASSWORD=demo LOOP_ORGANIZATION=zauberzeug \\
        LOOP_PROJECT=demo python samples/mock_detector.py --port 8004

With ``llnode loop --demo`` running, the detector downloads the deployed demo model (it has a ``mocked``
format) and serves it; ``curl -F file=@image.jpg 127.0.0.1:8004/detect`` then answers the two detections.

Like every sample it listens on 127.0.0.1 only; ``--host 0.0.0.0`` (or ``NODE_HOST=0.0.0.0``) serves other
machines too. Every option is also an environment variable (``--help`` names them).
"""

from __future__ import annotations

import logging
import sys

import numpy as np

from llnode.detector import DetectorFactory, DetectorLogic, DetectorNode
from llnode.helpers import node_parser, run_node
from llnode.schema import BoxDetection, ImageMetadata, ModelInformation, PointDetection
from llnode.startup import run_main


class MockLogic(DetectorLogic):
    """Always one box and one point, named after the model's first categories (fixed names without any)."""

    thread_safe = True  # it holds no state, so the node may call it from many threads at once

    def __init__(self, model_info: ModelInformation) -> None:
        super().__init__(model_info)
        names = [(c.name, c.id) for c in model_info.categories] or [('box_cat', 'c1'), ('point_cat', 'c2')]
        self.box_category = names[0]
        self.point_category = names[1 % len(names)]

    def evaluate(self, image: np.ndarray) -> ImageMetadata:
        version = self.model_info.version
        return ImageMetadata(
            box_detections=[
                BoxDetection(
                    category_name=self.box_category[0],
                    x=1,
                    y=2,
                    width=3,
                    height=4,
                    model_name=version,
                    confidence=0.42,
                    category_id=self.box_category[1],
                )
            ],
            point_detections=[
                PointDetection(
                    category_name=self.point_category[0],
                    x=10.5,
                    y=12.0,
                    model_name=version,
                    confidence=0.9,
                    category_id=self.point_category[1],
                )
            ],
        )


class MockFactory(DetectorFactory):
    model_format = 'mocked'

    def build(self, model_info: ModelInformation) -> MockLogic:
        return MockLogic(model_info)


def main(argv: list[str] | None = None) -> int:
    parser = node_parser(description=__doc__.split('\n\n')[0], host='127.0.0.1', port=8004)
    parser.add_argument('--name', env_var='NODE_NAME', default='mocked detector', help='the node name the Loop shows')
    parser.add_argument('--backdoor', action='store_true', help='serve POST /reset (testing only)')
    parser.add_argument('--log-level', default='INFO')
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    node = DetectorNode(args.name, MockFactory(), use_backdoor_controls=args.backdoor or None)
    return run_node(node, args)


if __name__ == '__main__':
    sys.exit(run_main(main))  # a start-up error: one line on stderr, exit code 2
