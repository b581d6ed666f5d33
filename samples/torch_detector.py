"""A detector serving ShapesNet models (format ``shapes_torch``, trained by ``samples/torch_trainer.py``) with
llnode's torch logic; see :mod:`llnode.demo.torch_detector`.

It follows the Loop's deployment target: once a ``shapes_torch`` model is deployed, the node downloads and serves
it, and ``curl -F file=@image.jpg localhost:8004/detect`` answers the shapes it finds as box detections::

    LOOP_HOST=localhost:8000 LOOP_ORGANIZATION=zauberzeug LOOP_PROJECT=demo \\
        python samples/torch_detector.py --port 8004
"""

from __future__ import annotations

import argparse
import logging
import sys

from llnode.demo.torch_detector import ShapesDetectorFactory
from llnode.detector import DetectorNode
from llnode.startup import run_main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or '').split('\n\n')[0])
    parser.add_argument('--host', default='0.0.0.0', help='address to listen on (default: all)')
    parser.add_argument('--port', type=int, default=8004, help='port to listen on (default: 8004)')
    parser.add_argument(
        '--server', choices=('waitress', 'werkzeug'), default='waitress', help='werkzeug carries WebSocket'
    )
    parser.add_argument('--name', default='torch shapes detector', help='the node name the Loop shows')
    parser.add_argument('--device', default='auto', help='torch device: auto (CUDA when there is one), cpu, cuda:0')
    parser.add_argument('--threshold', type=float, default=None, help="confidence threshold (default: the model's)")
    parser.add_argument('--log-level', default='INFO')
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    try:
        factory = ShapesDetectorFactory(device=args.device, threshold=args.threshold)
    except ValueError as error:
        parser.error(str(error))
    node = DetectorNode(args.name, factory)
    return node.serve(args.host, args.port, server=args.server)


if __name__ == '__main__':
    sys.exit(run_main(main))  # a start-up error: one line on stderr, exit code 2
