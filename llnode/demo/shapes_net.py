"""ShapesNet: a small box detector in pure torch for the demo's synthetic shapes, and how to score it.

Why this design: it must learn the demo's circles, squares and triangles to a useful F1 within about a minute on
two CPU cores, with no torchvision. A CenterNet-like network does that with little code: a compact CNN sees the
image resized to a small square (the same resize :class:`~llnode.detector.torch_logic.TorchDetectorLogic` does),
predicts at stride 4 one centre heat-map channel per box category plus the box size and the sub-cell offset of the
centre; decoding keeps the heat-map peaks (a 3x3 max-pool finds them), so there is no anchor and no NMS.

What lives here: the network (:class:`ShapesNet`, built from a :class:`NetConfig` that is stored beside the weights
as ``shapes_net.json``), the input transform, target encoding from the Loop's box annotations, a dataset read from
``run.image_data`` and ``run.images_folder``, the loss, decoding, and the scores: :func:`match_boxes`,
:func:`confusion_matrix` (tp/fp/fn per category uuid at IoU >= 0.5, greedy by confidence) and :func:`evaluate_f1`.
torch is imported when this module is imported: import it only where torch is wanted.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional

from llnode.trainer.callbacks import ConfusionMatrix, f1_score

logger = logging.getLogger('llnode.demo.shapes_net')

#: the model format of ShapesNet models on the Loop
MODEL_FORMAT = 'shapes_torch'
#: the file names inside a ``shapes_torch`` model (besides the ``model.json`` the trainer node writes)
WEIGHTS_FILE = 'model.pt'
CONFIG_FILE = 'shapes_net.json'
#: output stride of the heads (one heat-map cell per 4x4 input pixels)
STRIDE = 4
#: the default square input side: fast on CPU, and the demo's smallest shapes (40 px of 640x480) stay >= 8 px
DEFAULT_RESOLUTION = 128
DEFAULT_THRESHOLD = 0.3
DEFAULT_MAX_DETECTIONS = 32
IOU_THRESHOLD = 0.5


class NetError(ValueError):
    """A ShapesNet model or its data is unusable (bad config, missing file, wrong shapes); the message says why."""


# ---------------------------------------------------------------------------------------------------------------
# The configuration stored with the weights


@dataclass(frozen=True)
class NetConfig:
    """What is needed to rebuild the network: input side, width, and the box categories in channel order.

    ``category_ids`` are the Loop's category uuids, one heat-map channel each; ``category_names`` are kept for
    detections when a model.json lacks a category.
    """

    category_ids: tuple[str, ...]
    category_names: tuple[str, ...]
    resolution: int = DEFAULT_RESOLUTION
    width: int = 32
    architecture: str = 'shapes_net_v1'
    threshold: float = DEFAULT_THRESHOLD
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.category_ids:
            raise NetError('a ShapesNet needs at least one box category')
        if len(self.category_ids) != len(self.category_names):
            raise NetError('category_ids and category_names must have the same length')
        if len(set(self.category_ids)) != len(self.category_ids):
            raise NetError(f'duplicate category ids {list(self.category_ids)}')
        if not all(isinstance(c, str) and c for c in self.category_ids):
            raise NetError(f'category ids must be non-empty strings, got {list(self.category_ids)}')
        if not isinstance(self.resolution, int) or self.resolution < 32 or self.resolution % 16:
            raise NetError(f'resolution must be a multiple of 16, at least 32, got {self.resolution!r}')
        if not isinstance(self.width, int) or self.width < 4:
            raise NetError(f'width must be an int >= 4, got {self.width!r}')
        if self.architecture != 'shapes_net_v1':
            raise NetError(f'unknown ShapesNet architecture {self.architecture!r}')
        if not 0.0 < float(self.threshold) < 1.0:
            raise NetError(f'threshold must be between 0 and 1, got {self.threshold!r}')

    @classmethod
    def for_categories(cls, categories: Iterable[Any], **options: Any) -> NetConfig:
        """A config for the box categories among ``categories`` (llnode ``Category`` objects or dicts)."""
        boxes = [(_get(c, 'id'), _get(c, 'name')) for c in categories if _get(c, 'type') in ('box', None)]
        return cls(tuple(i for i, _ in boxes), tuple(str(n) for _, n in boxes), **options)

    @property
    def grid(self) -> int:
        """The side of the output maps."""
        return self.resolution // STRIDE

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data['category_ids'] = list(self.category_ids)
        data['category_names'] = list(self.category_names)
        return data

    @classmethod
    def from_dict(cls, data: Any) -> NetConfig:
        if not isinstance(data, Mapping):
            raise NetError(f'{CONFIG_FILE} must hold a JSON object, got {type(data).__name__}')
        try:
            return cls(
                category_ids=tuple(data['category_ids']),
                category_names=tuple(data['category_names']),
                resolution=int(data['resolution']),
                width=int(data['width']),
                architecture=str(data.get('architecture', 'shapes_net_v1')),
                threshold=float(data.get('threshold', DEFAULT_THRESHOLD)),
                extra=dict(data.get('extra') or {}),
            )
        except (KeyError, TypeError, ValueError) as error:
            if isinstance(error, NetError):
                raise
            raise NetError(f'{CONFIG_FILE} is incomplete or malformed: {error!r}') from None

    def save(self, path: Path) -> None:
        from llnode.durable import write_json

        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path) -> NetConfig:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise NetError(f'the model has no {CONFIG_FILE} (looked at {path})') from None
        except json.JSONDecodeError as error:
            raise NetError(f'{path} is not JSON: {error}') from None


def _get(item: Any, key: str) -> Any:
    return item.get(key) if isinstance(item, Mapping) else getattr(item, key, None)


# ---------------------------------------------------------------------------------------------------------------
# The network


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ShapesNet(nn.Module):
    """Input ``N x 3 x R x R`` RGB in 0..1; output ``N x (C + 4) x R/4 x R/4``: C heat-map logits, then box width
    and height (in output cells) and the centre's x/y offset within its cell.

    A four-level encoder (strides 2, 4, 8, 16) and a small top-down path back to stride 4, so each output cell sees
    the whole of the largest demo shape.
    """

    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        classes = len(config.category_ids)
        self.stem = _block(3, w // 2, 2)  # /2
        self.level4 = nn.Sequential(_block(w // 2, w, 2), _block(w, w))  # /4
        self.level8 = nn.Sequential(_block(w, w * 3 // 2, 2), _block(w * 3 // 2, w * 3 // 2))  # /8
        self.level16 = nn.Sequential(_block(w * 3 // 2, w * 2, 2), _block(w * 2, w * 2))  # /16
        self.lateral8 = nn.Conv2d(w * 3 // 2, w * 2, 1)
        self.lateral4 = nn.Conv2d(w, w * 2, 1)
        self.smooth = _block(w * 2, w)
        heat_features = _block(w, w)
        heat_out = nn.Conv2d(w, classes, 1)
        assert heat_out.bias is not None
        nn.init.constant_(heat_out.bias, -2.19)  # a prior of 0.1: the focal loss starts stable
        self.heat = nn.Sequential(heat_features, heat_out)
        self.geometry = nn.Sequential(_block(w, w), nn.Conv2d(w, 4, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stem(images - 0.5)
        f4 = self.level4(x)
        f8 = self.level8(f4)
        f16 = self.level16(f8)
        top = functional.interpolate(f16, size=f8.shape[-2:], mode='nearest') + self.lateral8(f8)
        top = functional.interpolate(top, size=f4.shape[-2:], mode='nearest') + self.lateral4(f4)
        features = self.smooth(top)
        return torch.cat([self.heat(features), self.geometry(features)], dim=1)


def build_net(config: NetConfig, seed: int | None = None) -> ShapesNet:
    """A freshly initialised network (``seed``: the same weights every time)."""
    if seed is None:
        return ShapesNet(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ShapesNet(config)


def save_model(net: nn.Module, folder: Path) -> list[Path]:
    """Write ``model.pt`` (state_dict) and ``shapes_net.json`` into ``folder``, crash-safely; their paths."""
    from llnode.durable import atomic_writer

    module = net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net
    if not isinstance(module, ShapesNet):
        raise TypeError(f'save_model needs a ShapesNet, got {type(module).__name__}')
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / WEIGHTS_FILE
    with atomic_writer(weights, 'wb') as handle:
        torch.save(module.state_dict(), handle)
    config = folder / CONFIG_FILE
    module.config.save(config)
    return [weights, config]


def load_model(folder: Path, device: torch.device | str = 'cpu', *, weights: Path | None = None) -> ShapesNet:
    """The network of the model in ``folder`` (``shapes_net.json`` and ``model.pt``), in eval mode on ``device``."""
    folder = Path(folder)
    config = NetConfig.load(folder / CONFIG_FILE)
    path = weights if weights is not None else folder / WEIGHTS_FILE
    if not path.is_file():
        raise NetError(f'the model has no weights file {path}')
    net = ShapesNet(config)
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        net.load_state_dict(state)
    except (RuntimeError, ValueError, OSError, EOFError) as error:
        raise NetError(f'the weights {path} do not fit the network in {CONFIG_FILE}: {error}') from None
    return net.to(device).eval()


# ---------------------------------------------------------------------------------------------------------------
# Inputs


def image_tensor(image: np.ndarray, resolution: int) -> torch.Tensor:
    """``3 x R x R`` float RGB in 0..1 from an ``HxWx3`` uint8 array: the same resize the torch detector logic does
    (bilinear, antialiased, no corner alignment), so the network sees at training what it sees when serving."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise NetError(f'expected an HxWx3 uint8 image, got shape {image.shape} {image.dtype}')
    tensor = torch.from_numpy(np.array(image, order='C', copy=True)).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
    if tensor.shape[-2:] != (resolution, resolution):
        tensor = functional.interpolate(
            tensor, size=(resolution, resolution), mode='bilinear', align_corners=False, antialias=True
        )
    return tensor[0]


def read_rgb(path: Path) -> np.ndarray:
    """The image at ``path`` as an ``HxWx3`` uint8 array."""
    with Image.open(path) as image:
        return np.asarray(image.convert('RGB'))


# ---------------------------------------------------------------------------------------------------------------
# Targets


def gaussian_sigma(width_cells: float, height_cells: float) -> float:
    """The heat-map spread of one object: a sixth of its smaller side, at least 0.8 of a cell."""
    return max(0.8, min(width_cells, height_cells) / 6.0)


def encode_targets(
    boxes: Sequence[Mapping[str, Any]], image_width: int, image_height: int, config: NetConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The training targets of one image from its box annotations (original pixels, Loop dicts).

    Returns ``heat`` (``C x G x G``, a Gaussian peak of 1.0 at each centre), ``geometry`` (``4 x G x G``: width,
    height in cells, x/y offset within the cell) and ``mask`` (``G x G``, 1 where a centre lies). Boxes of other
    categories are ignored.
    """
    grid = config.grid
    channels = {category_id: index for index, category_id in enumerate(config.category_ids)}
    heat = torch.zeros(len(channels), grid, grid)
    geometry = torch.zeros(4, grid, grid)
    mask = torch.zeros(grid, grid)
    scale_x = grid / float(image_width)
    scale_y = grid / float(image_height)
    ys = torch.arange(grid, dtype=torch.float32)[:, None]
    xs = torch.arange(grid, dtype=torch.float32)[None, :]
    for box in boxes:
        channel = channels.get(str(box.get('category_id')))
        if channel is None:
            continue
        w = float(box['width']) * scale_x
        h = float(box['height']) * scale_y
        if w <= 0 or h <= 0:
            continue
        cx = (float(box['x']) + float(box['width']) / 2) * scale_x
        cy = (float(box['y']) + float(box['height']) / 2) * scale_y
        ix = min(max(int(cx), 0), grid - 1)
        iy = min(max(int(cy), 0), grid - 1)
        sigma = gaussian_sigma(w, h)
        peak = torch.exp(-((xs - ix) ** 2 + (ys - iy) ** 2) / (2 * sigma * sigma))
        heat[channel] = torch.maximum(heat[channel], peak)
        heat[channel, iy, ix] = 1.0
        geometry[:, iy, ix] = torch.tensor([w, h, cx - ix, cy - iy])
        mask[iy, ix] = 1.0
    return heat, geometry, mask


# ---------------------------------------------------------------------------------------------------------------
# The dataset


@dataclass
class Sample:
    """One image ready for the network: its tensor, its targets, and its true boxes in original pixels."""

    image_id: str
    image: torch.Tensor  # 3 x R x R, 0..1
    width: int
    height: int
    boxes: list[dict[str, Any]]
    heat: torch.Tensor
    geometry: torch.Tensor
    mask: torch.Tensor


def load_samples(
    image_data: Iterable[Mapping[str, Any]],
    images_folder: Path,
    config: NetConfig,
    *,
    image_set: str | None = None,
) -> list[Sample]:
    """The images of ``image_data`` (the Loop's metadata items) with their ``{id}.jpg`` in ``images_folder``,
    resized once; ``image_set`` keeps only ``'train'`` or ``'test'`` items. Missing files are skipped (logged)."""
    samples: list[Sample] = []
    missing = 0
    for item in image_data:
        if image_set is not None and item.get('set') != image_set:
            continue
        image_id = str(item.get('id'))
        path = Path(images_folder) / f'{image_id}.jpg'
        if not path.is_file():
            missing += 1
            continue
        rgb = read_rgb(path)
        height, width = rgb.shape[:2]
        boxes = [dict(b) for b in item.get('box_annotations') or []]
        heat, geometry, mask = encode_targets(boxes, width, height, config)
        samples.append(
            Sample(image_id, image_tensor(rgb, config.resolution), width, height, boxes, heat, geometry, mask)
        )
    if missing:
        logger.warning('%d images of the training data are missing in %s; they are left out', missing, images_folder)
    return samples


def collate(samples: Sequence[Sample], *, flip: Sequence[bool] | None = None) -> tuple[torch.Tensor, ...]:
    """Stack samples into ``(images, heat, geometry, mask)``; ``flip[i]`` mirrors sample i left-right (targets too)."""
    images, heats, geometries, masks = [], [], [], []
    for index, sample in enumerate(samples):
        image, heat, geometry, mask = sample.image, sample.heat, sample.geometry, sample.mask
        if flip is not None and flip[index]:
            # mirrored: a centre in cell ix with offset o lies at grid - ix - o; shift to keep offsets in [0, 1)
            image, heat, mask = image.flip(-1), heat.flip(-1), mask.flip(-1)
            geometry = geometry.flip(-1).clone()
            geometry[2] = torch.where(mask > 0, 1.0 - geometry[2], geometry[2]).clamp(0.0, 0.999)
        images.append(image)
        heats.append(heat)
        geometries.append(geometry)
        masks.append(mask)
    return torch.stack(images), torch.stack(heats), torch.stack(geometries), torch.stack(masks)


# ---------------------------------------------------------------------------------------------------------------
# The loss


def detection_loss(
    outputs: torch.Tensor, heat: torch.Tensor, geometry: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Focal loss on the heat-maps (CenterNet's penalty-reduced variant) plus L1 on size and offset at centres."""
    classes = heat.shape[1]
    logits = outputs[:, :classes]
    predicted = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    positive = heat.eq(1.0).float()
    negative = 1.0 - positive
    positive_loss = -torch.log(predicted) * (1 - predicted) ** 2 * positive
    negative_loss = -torch.log(1 - predicted) * predicted**2 * (1 - heat) ** 4 * negative
    count = positive.sum().clamp(min=1.0)
    focal = (positive_loss.sum() + negative_loss.sum()) / count
    centres = mask.unsqueeze(1)
    objects = mask.sum().clamp(min=1.0)
    size = (functional.l1_loss(outputs[:, classes : classes + 2], geometry[:, :2], reduction='none') * centres).sum()
    offset = (functional.l1_loss(outputs[:, classes + 2 :], geometry[:, 2:], reduction='none') * centres).sum()
    return focal + 0.1 * size / objects + offset / objects


# ---------------------------------------------------------------------------------------------------------------
# Decoding


@dataclass(frozen=True)
class RawBox:
    """A decoded box in model-input pixels (before mapping back to the original image)."""

    channel: int
    confidence: float
    x: float
    y: float
    width: float
    height: float


def decode(
    outputs: torch.Tensor,
    classes: int,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    max_detections: int = DEFAULT_MAX_DETECTIONS,
) -> list[list[RawBox]]:
    """Boxes per image from the network's outputs: heat-map peaks (equal to their 3x3 max-pool) above
    ``threshold``, best first, at most ``max_detections`` per image; coordinates in model-input pixels."""
    heat = torch.sigmoid(outputs[:, :classes].float())
    peaks = heat * (functional.max_pool2d(heat, 3, stride=1, padding=1) == heat).float()
    batch, _, grid, _ = heat.shape
    flat = peaks.reshape(batch, -1)
    k = min(max_detections, flat.shape[1])
    scores, indices = flat.topk(k, dim=1)
    result: list[list[RawBox]] = []
    geometry = outputs[:, classes : classes + 4].float()
    for n in range(batch):
        boxes: list[RawBox] = []
        for score, index in zip(scores[n].tolist(), indices[n].tolist(), strict=True):
            if score < threshold:
                break
            channel, rest = divmod(index, grid * grid)
            iy, ix = divmod(rest, grid)
            w, h, ox, oy = geometry[n, :, iy, ix].tolist()
            w, h = max(w, 0.0) * STRIDE, max(h, 0.0) * STRIDE
            cx, cy = (ix + ox) * STRIDE, (iy + oy) * STRIDE
            boxes.append(RawBox(channel, float(score), cx - w / 2, cy - h / 2, w, h))
        result.append(boxes)
    return result


def to_image_boxes(
    raw: Sequence[RawBox], config: NetConfig, width: int, height: int, names: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """Decoded boxes as box dicts in original pixels (``category_id``, ``category_name``, ``x``, ``y``,
    ``width``, ``height``, ``confidence``), clipped to the image; ``names`` overrides category names by uuid."""
    scale_x = width / config.resolution
    scale_y = height / config.resolution
    boxes = []
    for box in raw:
        left = min(max(box.x * scale_x, 0.0), float(width))
        top = min(max(box.y * scale_y, 0.0), float(height))
        right = min(max((box.x + box.width) * scale_x, 0.0), float(width))
        bottom = min(max((box.y + box.height) * scale_y, 0.0), float(height))
        x0, y0, x1, y1 = (math.floor(v + 0.5) for v in (left, top, right, bottom))
        if x1 <= x0 or y1 <= y0:
            continue
        category_id = config.category_ids[box.channel]
        name = (names or {}).get(category_id) or config.category_names[box.channel]
        boxes.append(
            {
                'category_id': category_id,
                'category_name': name,
                'x': x0,
                'y': y0,
                'width': x1 - x0,
                'height': y1 - y0,
                'confidence': round(box.confidence, 4),
            }
        )
    return boxes


def predict(
    net: nn.Module,
    samples: Sequence[Sample],
    config: NetConfig,
    *,
    batch_size: int = 32,
    threshold: float | None = None,
) -> list[list[dict[str, Any]]]:
    """Box dicts (original pixels) per sample, with the network in eval mode (its mode is restored after)."""
    was_training = net.training
    net.eval()
    result: list[list[dict[str, Any]]] = []
    try:
        with torch.inference_mode():
            for start in range(0, len(samples), batch_size):
                chunk = samples[start : start + batch_size]
                outputs = net(torch.stack([s.image for s in chunk]))
                raw = decode(outputs, len(config.category_ids), threshold=threshold or config.threshold)
                result += [to_image_boxes(r, config, s.width, s.height) for r, s in zip(raw, chunk, strict=True)]
    finally:
        net.train(was_training)
    return result


# ---------------------------------------------------------------------------------------------------------------
# Scores


def iou(a: Mapping[str, Any], b: Mapping[str, Any]) -> float:
    """Intersection over union of two boxes ``{x, y, width, height}``."""
    ax0, ay0, aw, ah = (float(a[k]) for k in ('x', 'y', 'width', 'height'))
    bx0, by0, bw, bh = (float(b[k]) for k in ('x', 'y', 'width', 'height'))
    iw = min(ax0 + aw, bx0 + bw) - max(ax0, bx0)
    ih = min(ay0 + ah, by0 + bh) - max(ay0, by0)
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


def _category_key(box: Mapping[str, Any]) -> str:
    key = box.get('category_id') or box.get('category_name')
    if not isinstance(key, str) or not key:
        raise ValueError(f'a box needs a category_id (or category_name), got {dict(box)!r}')
    return key


def _check_box(box: Any) -> Mapping[str, Any]:
    if not isinstance(box, Mapping):
        raise ValueError(f'a box must be a dict with x, y, width, height and category_id, got {type(box).__name__}')
    missing = [k for k in ('x', 'y', 'width', 'height') if k not in box]
    if missing:
        raise ValueError(f'a box lacks {", ".join(missing)}: {dict(box)!r}')
    return box


def match_boxes(
    predictions: Sequence[Mapping[str, Any]],
    truths: Sequence[Mapping[str, Any]],
    *,
    iou_threshold: float = IOU_THRESHOLD,
) -> dict[str, dict[str, int]]:
    """tp/fp/fn per category of one image: predictions, most confident first, each take the unmatched true box of
    their category with the highest IoU if it is >= ``iou_threshold`` (tp), else count as fp; true boxes left over
    are fn. Boxes are dicts with ``x``, ``y``, ``width``, ``height``, ``category_id`` (or ``category_name``) and,
    for predictions, ``confidence``."""
    counts: dict[str, dict[str, int]] = {}

    def row(key: str) -> dict[str, int]:
        return counts.setdefault(key, {'tp': 0, 'fp': 0, 'fn': 0})

    open_truths: dict[str, list[Mapping[str, Any]]] = {}
    for truth in truths:
        _check_box(truth)
        open_truths.setdefault(_category_key(truth), []).append(truth)
    ranked = sorted((_check_box(p) for p in predictions), key=lambda p: -float(p.get('confidence', 1.0)))
    for prediction in ranked:
        key = _category_key(prediction)
        candidates = open_truths.get(key, [])
        best, best_iou = None, 0.0
        for index, truth in enumerate(candidates):
            overlap = iou(prediction, truth)
            if overlap > best_iou:
                best, best_iou = index, overlap
        if best is not None and best_iou >= iou_threshold:
            candidates.pop(best)
            row(key)['tp'] += 1
        else:
            row(key)['fp'] += 1
    for key, left in open_truths.items():
        row(key)['fn'] += len(left)
    return counts


def _per_image(boxes: Sequence[Any], what: str) -> list[Sequence[Mapping[str, Any]]]:
    """A list of per-image box lists, or one image's flat box list, as a list of per-image lists."""
    if not isinstance(boxes, Sequence) or isinstance(boxes, (str, bytes)):
        raise ValueError(f'{what} must be a list of boxes or a list of per-image lists, got {type(boxes).__name__}')
    if all(isinstance(b, Mapping) for b in boxes):
        return [boxes]
    if all(isinstance(b, Sequence) and not isinstance(b, (str, bytes)) for b in boxes):
        return list(boxes)
    raise ValueError(f'{what} mixes boxes and lists: give one list of boxes, or one list of boxes per image')


def confusion_matrix(
    predictions: Sequence[Any],
    truths: Sequence[Any],
    *,
    iou_threshold: float = IOU_THRESHOLD,
    categories: Iterable[str] = (),
) -> ConfusionMatrix:
    """The Loop's confusion matrix ``{category_uuid: {tp, fp, fn}}`` over images: ``predictions`` and ``truths``
    are lists with one list of box dicts per image (same order), or the flat box lists of one image.
    ``categories`` get a row even without counts; see :func:`match_boxes` for the matching."""
    per_prediction = _per_image(predictions, 'predictions')
    per_truth = _per_image(truths, 'truths')
    if len(per_prediction) != len(per_truth):
        raise ValueError(f'{len(per_prediction)} prediction lists for {len(per_truth)} images of truths')
    matrix: ConfusionMatrix = {key: {'tp': 0, 'fp': 0, 'fn': 0} for key in categories}
    for predicted, expected in zip(per_prediction, per_truth, strict=True):
        for key, counts in match_boxes(predicted, expected, iou_threshold=iou_threshold).items():
            row = matrix.setdefault(key, {'tp': 0, 'fp': 0, 'fn': 0})
            for name, value in counts.items():
                row[name] += value
    return matrix


def evaluate_f1(predictions: Sequence[Any], truths: Sequence[Any], iou: float = IOU_THRESHOLD) -> float:
    """F1 over all categories pooled (``2·TP / (2·TP + FP + FN)``) of box predictions against true boxes, matched
    per category at IoU >= ``iou``, greedy by confidence; 0.0 when there is nothing at all. Arguments as for
    :func:`confusion_matrix` (one list of box dicts per image, or one image's list)."""
    return f1_score(confusion_matrix(predictions, truths, iou_threshold=iou))
