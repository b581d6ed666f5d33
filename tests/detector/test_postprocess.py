"""``llnode.detector.postprocess``/``geometry``/``categories``: the reference 0.27's conventions (strict threshold,
per-class greedy NMS with "+1 pixel" IoU, MIN_BOX_SIZE), checked on examples and on random boxes against a
brute-force implementation written here from the documented rules; and the one warning for unknown category
names when an image is uploaded."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import numpy as np
import pytest

from llnode.detector.categories import category_by_index, category_by_name
from llnode.detector.geometry import clip_box, clip_point
from llnode.detector.postprocess import (
    MIN_BOX_SIZE,
    Prediction,
    bbox_iou,
    non_max_suppression,
    post_process,
    predictions_from_xyxy,
    to_detections,
    to_image_metadata,
)
from llnode.schema import Category, Detections, ImageMetadata, ModelInformation
from tests.detector.conftest import Detector
from tests.detector.node_helpers import SioClient
from tests.detector.test_node_socketio import image, raw_dict, uploaded_metadata

MODEL = ModelInformation(
    id='m1',
    organization='o',
    project='p',
    version='1.2',
    categories=[
        Category(id='b-id', name='plant', type='box'),
        Category(id='p-id', name='weed', type='point'),
        Category(id='c-id', name='sky', type='classification'),
    ],
)


def iou_plus_one(a: list[float], b: list[float]) -> float:
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    inter = inter_w * inter_h
    area_a = (a[2] - a[0] + 1) * (a[3] - a[1] + 1)
    area_b = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
    return inter / (area_a + area_b - inter + 1e-16)


def brute_force(boxes, scores, classes, conf, iou, h, w) -> list[tuple[list[float], float, int]]:  # type: ignore[no-untyped-def]  # noqa: PLR0917
    """The rules, plainly: strict threshold, clip to [0, w-1] x [0, h-1], by descending score keep a box unless a
    kept box of its class overlaps it by more than the threshold; survivors in descending score."""
    candidates = []
    for box, score, cls in zip(boxes.tolist(), scores.tolist(), classes.tolist(), strict=True):
        if score > conf:
            clipped = [min(max(box[0], 0), w - 1), min(max(box[1], 0), h - 1)]
            clipped += [min(max(box[2], 0), w - 1), min(max(box[3], 0), h - 1)]
            candidates.append((clipped, score, cls))
    candidates.sort(key=lambda c: -c[1])
    kept: list[tuple[list[float], float, int]] = []
    for box, score, cls in candidates:
        if all(k[2] != cls or iou_plus_one(k[0], box) <= iou for k in kept):
            kept.append((box, score, cls))
    return kept


def test_randomised_nms_matches_the_brute_force_rules() -> None:
    rng = np.random.default_rng(15)
    for _ in range(400):
        n = int(rng.integers(0, 40))
        h, w = int(rng.integers(20, 200)), int(rng.integers(20, 200))
        corners = rng.uniform(-20, 220, size=(n, 2))
        sizes = rng.uniform(1, 80, size=(n, 2))
        boxes = np.hstack([corners, corners + sizes])
        scores = rng.uniform(0, 1, size=n)
        classes = rng.integers(0, 3, size=n)
        conf, iou = float(rng.uniform(0, 0.5)), float(rng.uniform(0.1, 0.9))
        got = post_process(boxes, scores, classes, conf_threshold=conf, iou_threshold=iou, origin_h=h, origin_w=w)
        want = brute_force(boxes, scores, classes, conf, iou, h, w)
        assert len(got) == len(want)
        for p, (box, score, cls) in zip(got, want, strict=True):
            assert (p.category_index, p.confidence) == (cls, score)
            assert (p.x, p.y, p.x + p.width, p.y + p.height) == pytest.approx(tuple(box))


def test_documented_conventions() -> None:
    assert MIN_BOX_SIZE == 2
    # "+1 pixel" IoU: two 10x10 boxes (x 0..9 and 5..14) share 5x10 pixels -> 50 / 150
    a, b = np.array([[0.0, 0, 9, 9]]), np.array([[5.0, 0, 14, 9]])
    assert bbox_iou(a, b)[0] == pytest.approx(1 / 3)
    boxes, scores, classes = np.vstack([a, b]), np.array([0.9, 0.8]), np.array([0, 0])
    common = {'origin_h': 100, 'origin_w': 100}
    assert len(post_process(boxes, scores, classes, conf_threshold=0.1, iou_threshold=0.33, **common)) == 1
    assert len(post_process(boxes, scores, classes, conf_threshold=0.1, iou_threshold=0.34, **common)) == 2
    # other classes never suppress each other; the threshold is strict
    assert len(post_process(boxes, scores, np.array([0, 1]), conf_threshold=0.1, iou_threshold=0.0, **common)) == 2
    assert [
        p.confidence for p in post_process(boxes, scores, classes, conf_threshold=0.8, iou_threshold=1, **common)
    ] == [0.9]
    assert post_process(boxes, scores, classes, conf_threshold=0.9, iou_threshold=1, **common) == []
    # clipped to [0, w-1] x [0, h-1], survivors in descending score
    kept, kept_scores, _ = non_max_suppression(
        np.array([[-5.0, -5, 50, 50], [60.0, 60, 200, 200]]), np.array([0.2, 0.7]), np.array([1, 1]),
        iou_threshold=0.5, origin_h=100, origin_w=120,
    )  # fmt: skip
    assert kept.tolist() == [[60, 60, 119, 99], [0, 0, 50, 50]]
    assert kept_scores.tolist() == [0.7, 0.2]


def test_predictions_become_detections() -> None:
    predictions = predictions_from_xyxy(
        labels=[0, 1, 0, 2, 1], boxes=[[-3.4, 10.6, 20.2, 30.5], [90, 90, 110, 104], [5, 5, 7, 30], [0, 0, 9, 9], [1, 1, 2, 2]],
        scores=[0.9, 0.8, 0.7, 0.6, 0.5],
    )  # fmt: skip
    assert predictions[0] == Prediction(x=-3.4, y=10.6, width=pytest.approx(23.6), height=pytest.approx(19.9), category_index=0, confidence=0.9)  # type: ignore[arg-type]  # fmt: skip
    metadata = to_image_metadata(predictions, MODEL, 100, 100)
    assert isinstance(metadata, ImageMetadata)
    (box,) = metadata.box_detections  # the 2-pixel-wide one is dropped
    assert (box.x, box.y, box.width, box.height) == (0, 11, 20, 19)
    assert (box.category_name, box.category_id, box.model_name, box.confidence) == ('plant', 'b-id', '1.2', 0.9)
    (point,) = metadata.point_detections  # the 1x1 point is dropped too: the size rule covers points
    assert (point.x, point.y, point.category_id) == (100, 97.0, 'p-id')  # the centre, clamped to the image
    assert metadata.classification_detections == []  # other types are skipped
    detections = to_detections(predictions, MODEL, 100, 100, image_id='img-1')
    assert isinstance(detections, Detections) and detections.image_id == 'img-1'
    assert detections.box_detections == metadata.box_detections
    with pytest.raises(ValueError, match='category index 3 is out of range for a model with 3 categories'):
        to_image_metadata([Prediction(x=0, y=0, width=9, height=9, category_index=3, confidence=1)], MODEL, 9, 9)


def test_geometry_and_categories() -> None:
    assert clip_box(x1=-3.4, y1=10.6, width=23.6, height=19.9, img_width=100, img_height=100) == (
        0,
        11,
        20,
        19,
    )  # round() as Python rounds: 30.5 -> 30
    assert clip_box(x1=90.2, y1=95, width=30, height=30, img_width=100, img_height=100) == (90, 95, 10, 5)
    assert clip_box(x1=150, y1=150, width=10, height=10, img_width=100, img_height=100) == (
        150,
        150,
        0,
        0,
    )  # never a negative size
    assert all(isinstance(v, int) for v in clip_box(x1=1.5, y1=2.5, width=3.3, height=4.4, img_width=10, img_height=10))
    assert clip_point(-1.5, 120.25, 100, 100) == (0, 100)
    assert clip_point(3.5, 4.25, 100, 100) == (3.5, 4.25)
    assert category_by_index(MODEL, 1).id == 'p-id'
    assert category_by_name(MODEL, 'sky').id == 'c-id'
    with pytest.raises(ValueError, match="unknown category name 'tree'; the model knows: 'plant', 'weed', 'sky'"):
        category_by_name(MODEL, 'tree')
    with pytest.raises(ValueError):
        category_by_index(MODEL, -1)


def test_random_boxes_clip_inside_the_image() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        w, h = rng.randint(1, 300), rng.randint(1, 300)
        x, y = rng.uniform(-100, 400), rng.uniform(-100, 400)
        bw, bh = rng.uniform(0, 300), rng.uniform(0, 300)
        cx, cy, cw, ch = clip_box(x1=x, y1=y, width=bw, height=bh, img_width=w, img_height=h)
        assert cw >= 0 and ch >= 0
        if cw and ch:
            assert cx >= 0 and cx + cw <= w and cy >= 0 and cy + ch <= h


def test_an_upload_warns_once_for_all_unknown_category_names(
    detector: Detector, sio_connect: Callable[[Detector], SioClient], caplog: pytest.LogCaptureFixture
) -> None:
    client = sio_connect(detector)
    metadata = uploaded_metadata()
    metadata['point_detections'].append({**metadata['point_detections'][0], 'category_name': 'another unknown'})
    with caplog.at_level(logging.WARNING, logger='llnode.detector'):
        assert client.call('upload', {'image': raw_dict(image()), 'metadata': metadata}, timeout=5) == {'status': 'OK'}
    warnings = [r.getMessage() for r in caplog.records if 'does not have' in r.getMessage()]
    assert len(warnings) == 1
    assert "'unknown category', 'another unknown'" in warnings[0]
