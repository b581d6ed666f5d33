"""From a model's raw boxes to the Loop's detections, as the reference 0.27's ``detector/postprocess.py``.

numpy only (no torchvision), with the reference's conventions so a ported detector gives the same detections:

- a prediction survives the confidence filter when its score is strictly above the threshold;
- non-maximum suppression is greedy and per class: the boxes are clipped to ``[0, w-1]`` x ``[0, h-1]``, taken
  in descending score, and a box is kept while its IoU with every kept box of its class is ≤ the threshold;
  the survivors come back in descending score;
- IoU uses the legacy "+1 pixel" areas: a box from x1 to x2 is ``x2 - x1 + 1`` pixels wide;
- a prediction whose width or height is ≤ :data:`MIN_BOX_SIZE` is dropped (point categories too), with one
  warning per call; box categories are clipped and rounded (:func:`~llnode.detector.geometry.clip_box`), point
  categories become the clamped box centre, other category types are skipped with a warning.

A detector calls :func:`post_process` and then :func:`to_image_metadata`; a trainer's detection pass calls
:func:`to_detections`. Models that do their own NMS go through :func:`predictions_from_xyxy`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from llnode.detector.categories import category_by_index
from llnode.detector.geometry import clip_box, clip_point
from llnode.schema import BoxDetection, CategoryType, Detections, ImageMetadata, ModelInformation, PointDetection

logger = logging.getLogger('llnode.detector.postprocess')

#: Predictions no wider or no taller than this many pixels are dropped.
MIN_BOX_SIZE = 2


@dataclass(frozen=True, kw_only=True, slots=True)
class Prediction:
    """One prediction in image pixels: top-left corner and size (not rounded), the class index, the score."""

    x: float
    y: float
    width: float
    height: float
    category_index: int
    confidence: float


def post_process(
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    *,
    conf_threshold: float,
    iou_threshold: float,
    origin_h: int,
    origin_w: int,
) -> list[Prediction]:
    """The predictions that pass the threshold (``score > conf_threshold``) and the per-class NMS.

    ``boxes`` is ``Nx4`` ``x1, y1, x2, y2`` in the pixels of the ``origin_w x origin_h`` image; ``scores`` and
    ``classes`` have ``N`` entries.
    """
    keep = np.asarray(scores) > conf_threshold
    boxes = np.asarray(boxes)[keep].copy()
    scores = np.asarray(scores)[keep]
    classes = np.asarray(classes)[keep]
    if len(scores) == 0:
        return []
    boxes, scores, classes = non_max_suppression(
        boxes, scores, classes, iou_threshold=iou_threshold, origin_h=origin_h, origin_w=origin_w
    )
    return predictions_from_xyxy(labels=classes, boxes=boxes, scores=scores)


def non_max_suppression(
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    *,
    iou_threshold: float,
    origin_h: int,
    origin_w: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy per-class NMS over clipped boxes; returns ``(boxes, scores, classes)`` of the kept ones.

    The kept boxes are the clipped ones, in descending score (ties in numpy's ``argsort`` order).
    """
    boxes = np.array(boxes, dtype=float, copy=True)
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, origin_w - 1)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, origin_h - 1)
    order = np.argsort(-np.asarray(scores))
    boxes, scores, classes = boxes[order], np.asarray(scores)[order], np.asarray(classes)[order]
    kept: list[int] = []
    for category in np.unique(classes):
        remaining = np.flatnonzero(classes == category)  # positions in score order
        while remaining.size:
            best, rest = remaining[0], remaining[1:]
            kept.append(int(best))
            if not rest.size:
                break
            overlaps = bbox_iou(boxes[best : best + 1], boxes[rest])
            remaining = rest[overlaps <= iou_threshold]
    kept.sort()
    return boxes[kept], scores[kept], classes[kept]


def bbox_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one ``1x4`` box with each of ``Nx4`` boxes (``x1, y1, x2, y2``), with "+1 pixel" areas."""
    x1 = np.maximum(box[:, 0], boxes[:, 0])
    y1 = np.maximum(box[:, 1], boxes[:, 1])
    x2 = np.minimum(box[:, 2], boxes[:, 2])
    y2 = np.minimum(box[:, 3], boxes[:, 3])
    intersection = np.clip(x2 - x1 + 1, 0, None) * np.clip(y2 - y1 + 1, 0, None)
    area = (box[:, 2] - box[:, 0] + 1) * (box[:, 3] - box[:, 1] + 1)
    areas = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    result: np.ndarray = intersection / (area + areas - intersection + 1e-16)
    return result


def predictions_from_xyxy(
    *,
    labels: Sequence[float] | np.ndarray,
    boxes: Sequence[Sequence[float]] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
) -> list[Prediction]:
    """Predictions from ``x1, y1, x2, y2`` boxes as they are (for models that suppress overlaps themselves)."""
    return [
        Prediction(
            x=float(x1),
            y=float(y1),
            width=float(x2 - x1),
            height=float(y2 - y1),
            category_index=int(label),
            confidence=float(score),
        )
        for label, (x1, y1, x2, y2), score in zip(labels, boxes, scores, strict=True)
    ]


def to_image_metadata(
    predictions: Sequence[Prediction], model_information: ModelInformation, im_height: int, im_width: int
) -> ImageMetadata:
    """The detector's answer for one image."""
    metadata = ImageMetadata()
    _append_predictions(metadata, predictions, model_information, im_height, im_width)
    return metadata


def to_detections(
    predictions: Sequence[Prediction],
    model_information: ModelInformation,
    im_height: int,
    im_width: int,
    *,
    image_id: str | None = None,
) -> Detections:
    """A trainer's detection-pass result for one image."""
    detections = Detections(image_id=image_id)
    _append_predictions(detections, predictions, model_information, im_height, im_width)
    return detections


def _append_predictions(
    target: ImageMetadata | Detections,
    predictions: Sequence[Prediction],
    model_information: ModelInformation,
    im_height: int,
    im_width: int,
) -> None:
    too_small: list[tuple[str, Prediction]] = []
    unsupported: set[tuple[str, str | None]] = set()
    version = model_information.version
    for prediction in predictions:
        category = category_by_index(model_information, prediction.category_index)
        if prediction.width <= MIN_BOX_SIZE or prediction.height <= MIN_BOX_SIZE:
            too_small.append((category.name, prediction))
            continue
        if category.type == CategoryType.BOX:
            x, y, width, height = clip_box(
                x1=prediction.x,
                y1=prediction.y,
                width=prediction.width,
                height=prediction.height,
                img_width=im_width,
                img_height=im_height,
            )
            target.box_detections.append(
                BoxDetection(
                    category_name=category.name,
                    x=x,
                    y=y,
                    width=width,
                    height=height,
                    model_name=version,
                    confidence=prediction.confidence,
                    category_id=category.id,
                )
            )
        elif category.type == CategoryType.POINT:
            cx, cy = clip_point(
                prediction.x + prediction.width / 2, prediction.y + prediction.height / 2, im_width, im_height
            )
            target.point_detections.append(
                PointDetection(
                    category_name=category.name,
                    x=cx,
                    y=cy,
                    model_name=version,
                    confidence=prediction.confidence,
                    category_id=category.id,
                )
            )
        else:
            unsupported.add((category.name, category.type))
    for name, kind in sorted(unsupported, key=str):
        logger.warning('skipped predictions of category %r: type %r is neither box nor point', name, kind)
    if too_small:
        logger.warning(
            'dropped %d detections no larger than %d pixels: %s',
            len(too_small),
            MIN_BOX_SIZE,
            '; '.join(f'{name} {p}' for name, p in too_small[:20]),
        )
