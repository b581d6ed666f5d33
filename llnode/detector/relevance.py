"""The relevance filter: decides which inferred images are worth sending back to the Loop (autoupload ``filtered``).

It follows the reference's algorithm and constants exactly (loop-protocol.md §4.4, reference-behaviour.md §3), so a
camera produces the same uploads with llnode as with the reference:

- one history of remembered box and point observations per camera id; a missing or empty id shares one "unknown"
  history, which is forgotten like the others (the reference never prunes it: its memory grows without bound and an
  object seen once is suppressed for good);
- a box is similar to a remembered box of the same category name at IoU >= 0.5, a point to a remembered point of
  the same category name at a distance < 10 px; a similar detection refreshes the match and adds no cause, a new one
  is remembered and adds ``uncertain`` when its confidence lies in the band (both bounds inclusive);
- every segmentation adds ``segmentation_detection``; a classification adds ``uncertain`` in the band;
- 80 or more detections in one image add ``unexpected_observations_count``;
- observations not seen for more than an hour are forgotten.

What llnode adds: memory is bounded (at most ``max_cameras`` histories, the least recently used evicted, and at most
``max_observations`` per history, the least recently seen evicted), the metadata handed in is never changed, and
concurrent callers are safe.
"""

from __future__ import annotations

import itertools
import logging
import math
import numbers
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from llnode.config import Settings
from llnode.schema import BoxDetection, ClassificationDetection, ImageMetadata, PointDetection

logger = logging.getLogger('llnode.detector.relevance')

#: a box is similar to a remembered box of the same category name at an IoU of at least this
SIMILAR_IOU = 0.5
#: a point is similar to a remembered point of the same category name closer than this (pixels, strict)
SIMILAR_POINT_DISTANCE = 10
#: an image with at least this many detections (all kinds together) is uploaded as unexpected
UNEXPECTED_COUNT = 80
#: observations not seen for more than this many seconds are forgotten
FORGET_AFTER_S = 3600

#: default uncertain band (``MIN_UNCERTAIN_THRESHOLD`` / ``MAX_UNCERTAIN_THRESHOLD``), both bounds inclusive
MIN_UNCERTAIN = 0.3
MAX_UNCERTAIN = 0.6

#: default cap on camera histories (the unknown-camera history counts as one); the least recently used goes first
MAX_CAMERAS = 256
#: default cap on remembered observations per camera history; the least recently seen goes first
MAX_OBSERVATIONS = 1000

CAUSE_UNCERTAIN = 'uncertain'
CAUSE_SEGMENTATION = 'segmentation_detection'
CAUSE_UNEXPECTED_COUNT = 'unexpected_observations_count'

Box = tuple[float, float, float, float]  # x, y, width, height
Geometry = tuple[float, ...]
Key = tuple[str, str]  # (kind, category name): only observations with the same key can be similar
_BOX, _POINT = 'box', 'point'


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two ``(x, y, width, height)`` boxes, as the reference computes it.

    No +1 pixel convention; boxes that do not overlap give 0.0, and so does a zero union (two empty boxes).
    """
    return _extent_iou(_extent(*a), _extent(*b))


def _extent(x: float, y: float, width: float, height: float) -> Geometry:
    """A box as ``(x, y, right, bottom, area)``, the form the filter stores and compares."""
    return (x, y, x + width, y + height, width * height)


def _extent_iou(a: Geometry, b: Geometry) -> float:
    ax, ay, a_right, a_bottom, a_area = a
    bx, by, b_right, b_bottom, b_area = b
    width = min(a_right, b_right) - max(ax, bx)
    height = min(a_bottom, b_bottom) - max(ay, by)
    if not (width > 0 and height > 0):  # also false for NaN
        return 0.0
    intersection = width * height
    union = a_area + b_area - intersection
    if not union > 0:
        return 0.0
    return intersection / union


@dataclass(eq=False)
class _Observation:
    """A remembered box (``x, y, right, bottom, area``) or point (``x, y``), where it was first seen."""

    number: int  # unique within its history: the key of both indexes
    key: Key
    geometry: Geometry
    last_seen: float


class _CameraHistory:
    """One camera's remembered observations, ordered from least to most recently seen.

    Observations are indexed by (kind, category name), so a detection is compared only with the ones it can match.
    Not thread-safe on its own: the owning :class:`RelevanceFilter` holds its lock around every use.
    """

    def __init__(self) -> None:
        self._numbers = itertools.count()
        self._by_recency: OrderedDict[int, _Observation] = OrderedDict()
        self._by_key: dict[Key, dict[int, _Observation]] = {}

    def __len__(self) -> int:
        return len(self._by_recency)

    def forget_older_than(self, cutoff: float) -> None:
        """Drop observations last seen before ``cutoff``; they sit at the front, so this costs what it drops."""
        while self._by_recency:
            observation = next(iter(self._by_recency.values()))
            if not observation.last_seen < cutoff:
                break
            self._remove(observation)

    def sight(self, key: Key, geometry: Geometry, now: float, limit: int) -> bool:
        """Record a box or point seen at ``now``; True if it is new (remembered), False if similar ones were seen.

        Similar observations are refreshed and keep their original geometry (as the reference does).
        """
        same_key = self._by_key.get(key)
        matches = (_similar_boxes if key[0] == _BOX else _similar_points)(same_key, geometry) if same_key else []
        for observation in matches:
            observation.last_seen = now
            self._by_recency.move_to_end(observation.number)
        if not matches:
            self._remember(key, geometry, now, limit)
        return not matches

    def _remember(self, key: Key, geometry: Geometry, now: float, limit: int) -> None:
        while len(self._by_recency) >= limit:
            self._remove(next(iter(self._by_recency.values())))
        observation = _Observation(next(self._numbers), key, geometry, now)
        self._by_recency[observation.number] = observation
        self._by_key.setdefault(key, {})[observation.number] = observation

    def _remove(self, observation: _Observation) -> None:
        del self._by_recency[observation.number]
        same_key = self._by_key[observation.key]
        del same_key[observation.number]
        if not same_key:
            del self._by_key[observation.key]


class RelevanceFilter:
    """Decides per image which causes (if any) make it worth uploading, remembering what each camera has seen.

    ``causes(metadata, camera_id)`` is the one call the detector makes per image in autoupload mode ``filtered``.
    One lock guards the whole filter: every call prunes every history and may evict a camera, so per-camera locks
    would still need a table-wide one; the work under it is small beside the inference that precedes it (about
    2 ms for 80 boxes against 1000 remembered boxes of their category, the per-history cap, on one CPU core). ``clock`` is injectable so tests can age observations without sleeping; it should
    not go backwards (``time.monotonic``, the default).
    """

    def __init__(
        self,
        min_uncertain: float = MIN_UNCERTAIN,
        max_uncertain: float = MAX_UNCERTAIN,
        *,
        forget_after: float = FORGET_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
        max_cameras: int = MAX_CAMERAS,
        max_observations: int = MAX_OBSERVATIONS,
    ) -> None:
        for name, value in (('min_uncertain', min_uncertain), ('max_uncertain', max_uncertain)):
            if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
                raise ValueError(f'{name} must be a number, got {value!r}')
        if min_uncertain > max_uncertain:
            raise ValueError(f'min_uncertain ({min_uncertain}) is above max_uncertain ({max_uncertain})')
        if isinstance(forget_after, bool) or not isinstance(forget_after, int | float) or not forget_after > 0:
            raise ValueError(f'forget_after must be a positive number of seconds, got {forget_after!r}')
        for name, count in (('max_cameras', max_cameras), ('max_observations', max_observations)):
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ValueError(f'{name} must be a positive integer, got {count!r}')
        self.min_uncertain = float(min_uncertain)
        self.max_uncertain = float(max_uncertain)
        self.forget_after = float(forget_after)
        self.max_cameras = max_cameras
        self.max_observations = max_observations
        self._clock = clock
        self._lock = threading.Lock()
        # camera id (None = unknown camera) -> history, least recently used first
        self._histories: OrderedDict[str | None, _CameraHistory] = OrderedDict()

    @classmethod
    def from_settings(cls, settings: Settings) -> RelevanceFilter:
        """A filter with the uncertain band of ``MIN_UNCERTAIN_THRESHOLD`` / ``MAX_UNCERTAIN_THRESHOLD``."""
        return cls(settings.min_uncertain_threshold, settings.max_uncertain_threshold)

    def causes(self, metadata: ImageMetadata, camera_id: str | None = None) -> list[str]:
        """The causes to upload this image for (``[]``: do not upload), distinct, in the order first found.

        Updates the camera's history (``None`` or ``''``: the shared unknown-camera history); ``metadata`` is only
        read. Detections are taken in the reference's order: boxes, points, segmentations, classifications; the
        count check comes last.
        """
        if not isinstance(metadata, ImageMetadata):
            raise TypeError(f'causes() needs an ImageMetadata, got {type(metadata).__name__}')
        if camera_id is not None and not isinstance(camera_id, str):
            raise TypeError(f'camera_id must be a string or None, got {type(camera_id).__name__}')
        boxes = [_box_sighting(box, i) for i, box in enumerate(metadata.box_detections)]
        points = [_point_sighting(point, i) for i, point in enumerate(metadata.point_detections)]
        classifications = [_confidence(c, i) for i, c in enumerate(metadata.classification_detections)]
        found: dict[str, None] = {}  # an ordered set
        with self._lock:
            now = self._clock()
            self._forget(now - self.forget_after)
            history = self._history(camera_id or None)
            for key, geometry, confidence in boxes + points:
                if history.sight(key, geometry, now, self.max_observations) and self._uncertain(confidence):
                    found[CAUSE_UNCERTAIN] = None
        if metadata.segmentation_detections:
            found[CAUSE_SEGMENTATION] = None
        if any(self._uncertain(confidence) for confidence in classifications):
            found[CAUSE_UNCERTAIN] = None
        if len(metadata) >= UNEXPECTED_COUNT:
            found[CAUSE_UNEXPECTED_COUNT] = None
        return list(found)

    def reset(self) -> None:
        """Forget every camera and observation (the detector's backdoor ``/reset``)."""
        with self._lock:
            self._histories.clear()

    def cameras(self) -> list[str]:
        """The camera ids with a history, least recently used first (the unknown camera is not listed)."""
        with self._lock:
            return [camera for camera in self._histories if camera is not None]

    def observation_count(self, camera_id: str | None = None) -> int:
        """How many observations the camera's history holds (``None`` or ``''``: the unknown camera); for stats."""
        with self._lock:
            history = self._histories.get(camera_id or None)
            return len(history) if history is not None else 0

    # -- internals, called with the lock held ---------------------------------------------------------------

    def _forget(self, cutoff: float) -> None:
        for camera in list(self._histories):
            history = self._histories[camera]
            history.forget_older_than(cutoff)
            if not len(history):  # an empty history behaves exactly like a new one: drop it
                del self._histories[camera]

    def _history(self, camera: str | None) -> _CameraHistory:
        history = self._histories.get(camera)
        if history is None:
            while len(self._histories) >= self.max_cameras:
                evicted, _ = self._histories.popitem(last=False)
                logger.debug('relevance filter: forgetting camera %r (more than %d cameras)', evicted, self.max_cameras)
            history = self._histories[camera] = _CameraHistory()
        else:
            self._histories.move_to_end(camera)
        return history

    def _uncertain(self, confidence: float) -> bool:
        return self.min_uncertain <= confidence <= self.max_uncertain


def _similar_boxes(stored: dict[int, _Observation], box: Geometry) -> list[_Observation]:
    """The stored boxes with IoU >= SIMILAR_IOU to ``box``; the filter's hot loop, hence the cheap overlap test first.

    Both geometries are ``(x, y, right, bottom, area)``; the IoU is computed exactly as :func:`iou` does.
    """
    x, y, right, bottom, _ = box
    return [
        o
        for o in stored.values()
        if (g := o.geometry)[2] > x
        and g[0] < right
        and g[3] > y
        and g[1] < bottom
        and _extent_iou(g, box) >= SIMILAR_IOU
    ]


def _similar_points(stored: dict[int, _Observation], point: Geometry) -> list[_Observation]:
    """The stored points closer than SIMILAR_POINT_DISTANCE to ``point``, near ones found by a cheap test first."""
    x, y = point
    return [
        o
        for o in stored.values()
        if abs((g := o.geometry)[0] - x) < SIMILAR_POINT_DISTANCE
        and abs(g[1] - y) < SIMILAR_POINT_DISTANCE
        and math.hypot(g[0] - x, g[1] - y) < SIMILAR_POINT_DISTANCE
    ]


def _number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f'{where} must be a number, got {type(value).__name__}')
    return float(value)


def _category(detection: object, where: str) -> str:
    name = getattr(detection, 'category_name', None)
    if not isinstance(name, str):
        raise TypeError(f'{where}.category_name must be a string, got {type(name).__name__}')
    return name


def _box_sighting(box: object, index: int) -> tuple[Key, Geometry, float]:
    """A box detection as (key, (x, y, right, bottom, area), confidence); a clear TypeError names a malformed one."""
    where = f'box_detections[{index}]'
    if not isinstance(box, BoxDetection):
        raise TypeError(f'{where} is a {type(box).__name__}, expected a BoxDetection')
    geometry = _extent(*(_number(getattr(box, f), f'{where}.{f}') for f in ('x', 'y', 'width', 'height')))
    return (_BOX, _category(box, where)), geometry, _number(box.confidence, f'{where}.confidence')


def _point_sighting(point: object, index: int) -> tuple[Key, Geometry, float]:
    """A point detection as (key, (x, y), confidence); a clear TypeError names a malformed one."""
    where = f'point_detections[{index}]'
    if not isinstance(point, PointDetection):
        raise TypeError(f'{where} is a {type(point).__name__}, expected a PointDetection')
    geometry = (_number(point.x, f'{where}.x'), _number(point.y, f'{where}.y'))
    return (_POINT, _category(point, where)), geometry, _number(point.confidence, f'{where}.confidence')


def _confidence(classification: object, index: int) -> float:
    where = f'classification_detections[{index}]'
    if not isinstance(classification, ClassificationDetection):
        raise TypeError(f'{where} is a {type(classification).__name__}, expected a ClassificationDetection')
    return _number(classification.confidence, f'{where}.confidence')
