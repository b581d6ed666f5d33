"""The network of the YOLO-style sample and its files; shared by ``train.py``, ``detect.py``, ``export.py`` and the
detector (the part of ``yolov5_node`` that is its vendored ``yolov5`` package).

The sample reuses the demo's ShapesNet (:mod:`llnode.demo.shapes_net`), but trains one output channel per project
category in the order of the training's categories, as YOLO trains one class per category: a model's class index
``i`` is ``model_info.categories[i]``, which is what :func:`llnode.detector.categories.category_by_index` and
:func:`llnode.detector.postprocess.post_process` expect. Point categories are learnt as small boxes of their
``point_size`` (YOLO does the same) and come back as the box centre.

A checkpoint (``epoch7.pt``, ``model.pt``) is one file, as YOLO's are: ``{'epoch', 'config', 'model'}`` with the
network's configuration beside its state dict, so loading it needs no other file. The second model format is a
TorchScript export of the same network (``model.torchscript``): the detector loads it without this module.

torch is imported with this module; the trainer node itself never imports it (only its subprocesses do).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llnode.demo import shapes_net
from llnode.demo.shapes_net import NetConfig, ShapesNet
from llnode.durable import atomic_writer

#: the file names of the two model formats (besides the model.json the trainer node writes)
WEIGHTS_FILE = 'model.pt'
HYPERPARAMETERS_FILE = 'hyp.json'
TORCHSCRIPT_FILE = 'model.torchscript'
#: the Loop's format keys: the state dict (what the trainer trains on and detects with) and the TorchScript export
PYTORCH_FORMAT = 'yolo_style_pytorch'
TORCHSCRIPT_FORMAT = 'yolo_style_torchscript'
#: at most this many boxes per image leave the network (before NMS), as YOLO's ``max_det``
MAX_DETECTIONS = 100


def net_config(category_ids: Sequence[str], category_names: Sequence[str], resolution: int) -> NetConfig:
    """The network for these categories (one channel each, in this order) at a square input side."""
    return NetConfig(tuple(category_ids), tuple(category_names), resolution=resolution)


def save_checkpoint(net: ShapesNet, path: Path, *, epoch: int, **extra: Any) -> Path:
    """Write ``{'epoch', 'config', 'model', **extra}`` crash-safely (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path, 'wb') as handle:
        torch.save({'epoch': epoch, 'config': net.config.to_dict(), 'model': net.state_dict(), **extra}, handle)
    return path


def load_checkpoint(path: Path, device: torch.device | str = 'cpu') -> tuple[ShapesNet, dict[str, Any]]:
    """The network in ``path`` (in eval mode, on ``device``) and the whole checkpoint dict."""
    if not path.is_file():
        raise shapes_net.NetError(f'no weights file at {path}')
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
        net = ShapesNet(NetConfig.from_dict(checkpoint['config']))
        net.load_state_dict(checkpoint['model'])
    except (KeyError, TypeError, RuntimeError, ValueError, OSError, EOFError) as error:
        raise shapes_net.NetError(f'{path} is not a checkpoint of this network: {error}') from None
    return net.to(device).eval(), checkpoint


def raw_boxes(
    outputs: torch.Tensor, sizes: Sequence[tuple[int, int]], resolution: int, *, conf_floor: float
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per image, what a YOLO head gives before NMS: ``(boxes_xyxy, scores, classes)`` in original pixels.

    ``outputs`` are the network's raw outputs for a batch, ``sizes`` each image's ``(width, height)``; boxes with a
    score below ``conf_floor`` are left out here already (post_process applies the real threshold).
    """
    classes = outputs.shape[1] - 4
    decoded = shapes_net.decode(outputs, classes, threshold=conf_floor, max_detections=MAX_DETECTIONS)
    result = []
    for boxes, (width, height) in zip(decoded, sizes, strict=True):
        sx, sy = width / resolution, height / resolution
        xyxy = np.array(
            [[b.x * sx, b.y * sy, (b.x + b.width) * sx, (b.y + b.height) * sy] for b in boxes], dtype=np.float64
        ).reshape(-1, 4)
        scores = np.array([b.confidence for b in boxes], dtype=np.float64)
        labels = np.array([b.channel for b in boxes], dtype=np.int64)
        result.append((xyxy, scores, labels))
    return result


def image_batch(paths: Sequence[Path], resolution: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """The images at ``paths`` as one ``N x 3 x R x R`` tensor (the detector's resize) and their sizes."""
    tensors, sizes = [], []
    for path in paths:
        rgb = shapes_net.read_rgb(path)
        sizes.append((int(rgb.shape[1]), int(rgb.shape[0])))
        tensors.append(shapes_net.image_tensor(rgb, resolution))
    return torch.stack(tensors), sizes


def yolo_labels_to_boxes(
    labels: Sequence[Sequence[float]], width: int, height: int, category_ids: Sequence[str]
) -> list[dict[str, Any]]:
    """YOLO label rows ``[class, cx, cy, w, h]`` (normalised) as the Loop's box dicts in pixels."""
    boxes = []
    for row in labels:
        index, cx, cy, w, h = (float(v) for v in row)
        boxes.append(
            {
                'category_id': category_ids[int(index)],
                'x': (cx - w / 2) * width,
                'y': (cy - h / 2) * height,
                'width': w * width,
                'height': h * height,
            }
        )
    return boxes


def read_json_object(path: Path) -> Mapping[str, Any]:
    """A JSON object from ``path``; a clear error names the file when it is missing or not an object."""
    import json

    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SystemExit(f'error: {path} does not exist') from None
    except ValueError as error:
        raise SystemExit(f'error: {path} is not JSON: {error}') from None
    if not isinstance(data, dict):
        raise SystemExit(f'error: {path} must hold a JSON object')
    return data
