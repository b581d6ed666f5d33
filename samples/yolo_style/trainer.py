"""The YOLO-style trainer node (the sample's ``trainer/main.py``): ``YoloTrainerLogic`` on a TrainerNode, started
with the toolkit's entrypoint, so every flag is also an environment variable (``--trainer-name`` reads
``TRAINER_NAME``, ``--vram-limit-gb`` ``VRAM_LIMIT_GB``; ``--help`` names them all)::

    llnode loop --demo --user demo:demo          # in another terminal: the local Loop on 127.0.0.1:8080
    LOOP_HOST=127.0.0.1:8080 LOOP_USERNAME=demo LOOP_PASSWORD=demo LOOP_ORGANIZATION=zauberzeug \\
        LOOP_PROJECT=demo python samples/yolo_style/trainer.py --port 8005 --vram-limit-gb 6

Start a training from the Loop with hyperparameters such as ``{"epochs": 12, "resolution": 128,
"compute_validation_set": true}``; the node uploads ``yolo_style_pytorch`` and ``yolo_style_torchscript``, and
``samples/yolo_style/detector.py`` serves the second. Like every sample it listens on 127.0.0.1 only unless
``--host 0.0.0.0`` (``NODE_HOST``) says otherwise. See ``docs/porting.rst`` for the walk through.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys

from yolo_trainer import YoloTrainerLogic

from llnode.config import ConfigError, Settings
from llnode.helpers import node_parser, run_node
from llnode.trainer import TrainerNode


def main(argv: list[str] | None = None) -> int:
    parser = node_parser(description=(__doc__ or '').split('\n\n')[0], host='127.0.0.1', port=8005, vram_limit=True)
    parser.add_argument('--trainer-name', default=socket.gethostname(), help='the node name the Loop shows')
    parser.add_argument('--device', default='auto', help='torch device: auto (CUDA when there is one), cpu, cuda:0')
    parser.add_argument(
        '--inference-batch-size', type=int, default=100, help='images per detect.py run in the detecting stage'
    )
    parser.add_argument('--log-level', default='INFO', help='logging level (default INFO)')
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    try:
        settings = Settings.from_env(inference_batch_size=args.inference_batch_size)
    except ConfigError as error:
        parser.error(str(error))
    logic = YoloTrainerLogic(device=args.device, vram_limit_gb=args.vram_limit_gb)
    # the node process itself never touches the GPU: train.py and detect.py cap their own memory (the logic hands
    # them --vram-limit-gb); run_node would cap this process and open a CUDA context in it
    node_args = argparse.Namespace(**{**vars(args), 'vram_limit_gb': 0.0})
    return run_node(TrainerNode(args.trainer_name, logic, settings=settings), node_args)


if __name__ == '__main__':
    sys.exit(main())
