"""The detection pass the YOLO-style trainer node runs as a subprocess after the upload (the sample's
``pred_det.py``): the uploaded model over the project's images.

It reads the image paths from ``--source`` (one per line), runs the network in batches (probed on a GPU with the
toolkit's ``probe_batch_size``; on CPU its documented fallback), keeps the boxes ``post_process`` keeps (strict
confidence threshold, per-class NMS, clipped to the image) and writes one JSON line per image to ``--out``::

    {"image_id": "...", "width": 640, "height": 480, "predictions": [{"x": ..., "y": ..., "width": ...,
     "height": ..., "category_index": 0, "confidence": 0.93}, ...]}

The node turns these into the Loop's detections with ``to_detections`` (category by index, ``MIN_BOX_SIZE``,
points as box centres). The file appears complete or not at all (written beside, then renamed).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import network
import torch

from llnode.detector.postprocess import post_process
from llnode.detector.torch_logic import choose_device
from llnode.durable import atomic_writer
from llnode.trainer.cuda import add_vram_limit_argument, limit_cuda_memory, probe_batch_size


def detect(
    net: torch.nn.Module,
    paths: Sequence[Path],
    device: torch.device,
    *,
    resolution: int,
    conf: float,
    iou: float,
) -> list[dict[str, object]]:
    """One result dict per image of ``paths`` (see the module docstring)."""
    images, sizes = network.image_batch(paths, resolution)
    with torch.inference_mode():
        outputs = net(images.to(device)).float().cpu()
    results = []
    for path, (width, height), (boxes, scores, labels) in zip(
        paths, sizes, network.raw_boxes(outputs, sizes, resolution, conf_floor=conf), strict=True
    ):
        kept = post_process(
            boxes, scores, labels, conf_threshold=conf, iou_threshold=iou, origin_h=height, origin_w=width
        )
        results.append(
            {
                'image_id': path.stem,
                'width': width,
                'height': height,
                'predictions': [dataclasses.asdict(p) for p in kept],
            }
        )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or '').split('\n\n')[0])
    parser.add_argument('--weights', type=Path, required=True, help='the model.pt of the pytorch format')
    parser.add_argument('--source', type=Path, required=True, help='a text file: one image path per line')
    parser.add_argument('--out', type=Path, required=True, help='the JSON-lines file to write')
    parser.add_argument('--conf-thres', type=float, default=0.3, help='confidence threshold (strict)')
    parser.add_argument('--iou-thres', type=float, default=0.45, help='NMS IoU threshold')
    parser.add_argument('--device', default='auto', help='torch device: auto (CUDA when there is one), cpu, cuda:0')
    add_vram_limit_argument(parser)
    args = parser.parse_args(argv)

    limit_cuda_memory(float(args.vram_limit_gb))
    device = choose_device(args.device)
    net, _ = network.load_checkpoint(args.weights, device)
    resolution = net.config.resolution
    paths = [Path(line) for line in args.source.read_text().splitlines() if line.strip()]
    if not paths:
        raise SystemExit(f'error: {args.source} lists no images')
    run = functools.partial(detect, net, device=device, resolution=resolution, conf=args.conf_thres, iou=args.iou_thres)

    def trial(size: int) -> str | None:
        run(paths[:size])
        return None

    batch_size = probe_batch_size(trial, probe='detection', limit=len(paths))
    print(f'detecting {len(paths)} images in batches of {batch_size} on {device}', flush=True)

    with atomic_writer(args.out, 'w') as handle:
        for start in range(0, len(paths), batch_size):
            for result in run(paths[start : start + batch_size]):
                handle.write(json.dumps(result) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
