"""The second model format: a TorchScript export of the trained weights (the sample's ``generate_wts.py``).

The trainer node runs it as a subprocess in ``model_files``, as yolov5_node converts ``model.pt`` to ``model.wts``
for its TensorRT detector. The export is traced on CPU at the network's input side; a detector loads it with
``torch.jit.load`` alone, without this sample's code, moves it to its device and may run it in half precision.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import network
import torch

from llnode.durable import atomic_writer


def export(weights: Path, out: Path) -> Path:
    """Trace the network in ``weights`` and write it to ``out`` crash-safely; ``out``."""
    net, _ = network.load_checkpoint(weights, 'cpu')
    side = net.config.resolution
    with torch.inference_mode(False), torch.no_grad():
        traced = torch.jit.trace(net, torch.zeros(1, 3, side, side))
    with atomic_writer(out, 'wb') as handle:
        torch.jit.save(traced, handle)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or '').split('\n\n')[0])
    parser.add_argument('--weights', type=Path, required=True, help='a checkpoint written by train.py')
    parser.add_argument(
        '--out', type=Path, required=True, help=f'where to write the export ({network.TORCHSCRIPT_FILE})'
    )
    args = parser.parse_args(argv)
    path = export(args.weights, args.out)
    print(f'exported {args.weights} to {path}', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
