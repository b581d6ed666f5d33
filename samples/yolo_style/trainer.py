"""The YOLO-style trainer node (the sample's ``trainer/main.py``): ``YoloTrainerLogic`` on a TrainerNode, started
with the toolkit's entrypoint, so every flag is also an environment variable::

    LOOP_HOST=localhost:8000 LOOP_USERNAME=u LOOP_PASSWORD=p LOOP_ORGANIZATION=zauberzeug LOOP_PROJECT=demo \\
        python samples/yolo_style/trainer.py --port 8005 --vram-limit-gb 6

Start a training from the Loop with hyperparameters such as ``{"epochs": 12, "resolution": 128,
"compute_validation_set": true}``; the node uploads ``yolo_style_pytorch`` and ``yolo_style_torchscript``, and
``samples/yolo_style/detector.py`` serves the second.
"""

from __future__ import annotations

import socket
import sys

from yolo_trainer import YoloTrainerLogic

from llnode.config import ConfigError, Settings
from llnode.helpers.entrypoint import node_parser, run_node
from llnode.trainer import TrainerNode


def main(argv: list[str] | None = None) -> int:
    parser = node_parser(description=(__doc__ or '').split('\n\n')[0], vram_limit=True)
    parser.add_argument('--trainer-name', default=socket.gethostname(), help='the node name the Loop shows')
    parser.add_argument('--device', default='auto', help='torch device: auto (CUDA when there is one), cpu, cuda:0')
    parser.add_argument(
        '--inference-batch-size', type=int, default=100, help='images per detect.py run in the detecting stage'
    )
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(inference_batch_size=args.inference_batch_size)
    except ConfigError as error:
        parser.error(str(error))
    logic = YoloTrainerLogic(device=args.device, vram_limit_gb=args.vram_limit_gb)
    return run_node(TrainerNode(args.trainer_name, logic, settings=settings), args)


if __name__ == '__main__':
    sys.exit(main())
