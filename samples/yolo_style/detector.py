"""The YOLO-style detector node (the sample's ``detector/main.py``): serves the ``yolo_style_torchscript`` models
the sample trainer uploads, started with the toolkit's entrypoint (every flag is also an environment variable:
``--conf-threshold`` reads ``CONF_THRESHOLD``, ``--iou-threshold`` ``IOU_THRESHOLD``, ``--weight-type``
``WEIGHT_TYPE``)::

    LOOP_HOST=127.0.0.1:8080 LOOP_USERNAME=demo LOOP_PASSWORD=demo LOOP_ORGANIZATION=zauberzeug \\
        LOOP_PROJECT=demo python samples/yolo_style/detector.py --port 8004 --weight-type FP16

It listens on 127.0.0.1 only unless ``--host 0.0.0.0`` (``NODE_HOST``) says otherwise; ``--detector-name`` reads
``DETECTOR_NAME``, as yolov5_node's Docker files set it.
"""

from __future__ import annotations

import logging
import socket
import sys

from yolo_detector import CONF_THRESHOLD, IOU_THRESHOLD, YoloDetectorFactory

from llnode.detector import DetectorNode
from llnode.helpers import node_parser, run_node


def main(argv: list[str] | None = None) -> int:
    parser = node_parser(description=(__doc__ or '').split('\n\n')[0], host='127.0.0.1', port=8004)
    parser.add_argument('--detector-name', default=socket.gethostname(), help='the node name the Loop shows')
    parser.add_argument('--device', default='auto', help='torch device: auto (CUDA when there is one), cpu, cuda:0')
    parser.add_argument(
        '--conf-threshold',
        type=float,
        default=None,
        help=f"confidence threshold (strict; default: the model's, else {CONF_THRESHOLD})",
    )
    parser.add_argument('--iou-threshold', type=float, default=IOU_THRESHOLD, help='NMS IoU threshold')
    parser.add_argument(
        '--weight-type', choices=('FP32', 'FP16'), default='FP32', help='FP16: half precision (CUDA only)'
    )
    parser.add_argument('--log-level', default='INFO', help='logging level (default INFO)')
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    try:
        factory = YoloDetectorFactory(
            conf_threshold=args.conf_threshold,
            iou_threshold=args.iou_threshold,
            device=args.device,
            half=args.weight_type == 'FP16',
        )
    except ValueError as error:
        parser.error(str(error))
    return run_node(DetectorNode(args.detector_name, factory), args)


if __name__ == '__main__':
    sys.exit(main())
