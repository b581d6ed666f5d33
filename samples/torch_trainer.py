"""A trainer that really learns: ShapesNet, a small box detector in pure torch, trained on CPU (format
``shapes_torch``; see :mod:`llnode.demo.torch_trainer`).

It trains on the Loop's box annotations, reports a confusion matrix per epoch (tp/fp/fn per category uuid at
IoU >= 0.5, on the training's test images) and uploads the best epoch's weights (``model.pt``) with their
architecture (``shapes_net.json``). With ``--nproc N`` the same training runs on N processes under
torch.distributed (gloo); only the first talks to the Loop::

    llnode loop --demo --user demo:demo          # in another terminal: the local Loop on 127.0.0.1:8080
    LOOP_HOST=127.0.0.1:8080 LOOP_USERNAME=demo LOOP_PASSWORD=demo LOOP_ORGANIZATION=zauberzeug \\
        LOOP_PROJECT=demo python samples/torch_trainer.py --port 8005 --nproc 2

With ``llnode loop --demo`` running, start a training from the Loop (``llnode control``): about half a minute on two
cores for the demo's images; ``samples/torch_detector.py`` serves the model it uploads.

Like every sample it listens on 127.0.0.1 only; ``--host 0.0.0.0`` (or ``NODE_HOST=0.0.0.0``) serves other
machines too. Every option is also an environment variable (``--help`` names them).
"""

from __future__ import annotations

import logging
import sys

from llnode.demo.torch_trainer import ShapesTrainer
from llnode.helpers import node_parser, run_node
from llnode.startup import run_main
from llnode.trainer.node import TrainerNode


def main(argv: list[str] | None = None) -> int:
    parser = node_parser(description=(__doc__ or '').split('\n\n')[0], host='127.0.0.1', port=8005)
    parser.add_argument(
        '--name', env_var='NODE_NAME', default='torch shapes trainer', help='the node name the Loop shows'
    )
    parser.add_argument('--nproc', type=int, default=1, help='processes to train on (torch.distributed, gloo)')
    parser.add_argument('--epochs', type=int, default=30, help='epochs per training (default 30)')
    parser.add_argument('--resolution', type=int, default=128, help='square input side, a multiple of 16')
    parser.add_argument(
        '--threads', type=int, default=None, help='torch threads per process (default: the cores, shared out)'
    )
    parser.add_argument('--log-level', default='INFO')
    args = parser.parse_args(argv)
    if args.nproc < 1 or args.epochs < 1:
        parser.error('--nproc and --epochs must be at least 1')
    logging.basicConfig(level=args.log_level.upper(), format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    try:
        logic = ShapesTrainer(epochs=args.epochs, nproc=args.nproc, resolution=args.resolution, threads=args.threads)
    except ValueError as error:
        parser.error(str(error))
    node = TrainerNode(args.name, logic)
    return run_node(node, args)


if __name__ == '__main__':
    sys.exit(run_main(main))  # a start-up error: one line on stderr, exit code 2
