"""A detector serving ShapesNet models (format ``shapes_torch``, trained by ``samples/torch_trainer.py``) with
llnode's torch logic; see :mod:`llnode.demo.torch_detector`.

It follows the Loop's deployment target: once a ``shapes_torch`` model is deployed, the node downloads and serves
it, and ``curl -F file=@image.jpg 127.0.0.1:8004/detect`` answers the shapes it finds as box detections::

    llnode loop --demo --user demo:demo          # in another terminal: the local Loop on 127.0.0.1:8080
    LOOP_HOST=127.0.0.1:8080 LOOP_USERNAME=demo LOOP_PASSWORD=demo LOOP_ORGANIZATION=zauberzeug \\
        LOOP_PROJECT=demo python samples/torch_detector.py --port 8004

Like every sample it listens on 127.0.0.1 only; ``--host 0.0.0.0`` (or ``NODE_HOST=0.0.0.0``) serves other
machines too. Every option is also an environment variable (``--help`` names them).
"""

from __future__ import annotations

import logging
import sys

from llnode.demo.torch_detector import ShapesDetectorFactory
from llnode.detector import DetectorNode
from llnode.helpers import node_parser, run_node
from llnode.startup import run_main


def main(argv: list[str] | None = None) -> int:
    parser = node_parser(description=(__doc__ or '').split('\n\n')[0], host='127.0.0.1', port=8004)
    parser.add_argument(
        '--name', env_var='NODE_NAME', default='torch shapes detector', help='the node name the Loop shows'
    )
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
    return run_node(node, args)


if __name__ == '__main__':
    sys.exit(run_main(main))  # a start-up error: one line on stderr, exit code 2
