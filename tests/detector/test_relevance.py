"""The relevance filter: the reference's test vectors (reference-behaviour.md §7.4) plus what llnode adds.

Time is a fake clock handed to the filter, so forgetting is tested without sleeping.
"""

from __future__ import annotations

import copy
import math
import sys
import threading
from typing import Any

import pytest

from llnode.config import Settings
from llnode.detector.relevance import (
    CAUSE_SEGMENTATION,
    CAUSE_UNCERTAIN,
    CAUSE_UNEXPECTED_COUNT,
    FORGET_AFTER_S,
    SIMILAR_IOU,
    SIMILAR_POINT_DISTANCE,
    UNEXPECTED_COUNT,
    RelevanceFilter,
    iou,
)
from llnode.schema import (
    BoxDetection,
    ClassificationDetection,
    ImageMetadata,
    PointDetection,
    SegmentationDetection,
)

CAMERA = '0:0:0:0'


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def relevance(clock: FakeClock) -> RelevanceFilter:
    return RelevanceFilter(clock=clock)


def box(
    x: int, y: int, w: int, h: int, confidence: float, *, name: str = 'dirt', category_id: str = 'c1'
) -> BoxDetection:
    return BoxDetection(name, x, y, w, h, 'model', confidence, category_id)


def point(x: float, y: float, confidence: float, name: str = 'dirt') -> PointDetection:
    return PointDetection(name, x, y, 'model', confidence)


def image(**detections: Any) -> ImageMetadata:
    return ImageMetadata(**detections)


def boxes(*items: BoxDetection) -> ImageMetadata:
    return ImageMetadata(box_detections=list(items))


def points(*items: PointDetection) -> ImageMetadata:
    return ImageMetadata(point_detections=list(items))


def segmentation(confidence: float = 0.9) -> SegmentationDetection:
    return SegmentationDetection('seg', '1,2,3,4,5,6', 'model', confidence)


def classification(confidence: float) -> ClassificationDetection:
    return ClassificationDetection('cls', 'model', confidence)


# -- reference vectors: inbox_filter/test_observation.py -------------------------------------------------------


def test_constants_are_the_references() -> None:
    assert (SIMILAR_IOU, SIMILAR_POINT_DISTANCE, UNEXPECTED_COUNT, FORGET_AFTER_S) == (0.5, 10, 80, 3600)
    assert (CAUSE_UNCERTAIN, CAUSE_SEGMENTATION, CAUSE_UNEXPECTED_COUNT) == (
        'uncertain',
        'segmentation_detection',
        'unexpected_observations_count',
    )
    default = RelevanceFilter()
    assert (default.min_uncertain, default.max_uncertain, default.forget_after) == (0.3, 0.6, 3600.0)


def test_calculate_iou() -> None:
    assert iou((10, 0, 30, 100), (20, 0, 30, 100)) == 0.5
    assert iou((10, 0, 30, 100), (100, 0, 30, 100)) == 0.0


def test_iou_edge_cases() -> None:
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (10, 0, 10, 10)) == 0.0  # touching edges do not overlap
    assert iou((0, 0, 10, 10), (5, 5, 10, 10)) == pytest.approx(25 / 175)
    assert iou((0, 0, 10, 10), (5, 5, 10, 10)) == iou((5, 5, 10, 10), (0, 0, 10, 10))
    assert iou((3, 3, 0, 0), (3, 3, 0, 0)) == 0.0  # zero union
    assert iou((0, 0, math.nan, 10), (0, 0, 10, 10)) == 0.0
    assert iou((0, 0, math.inf, 10), (0, 0, 10, 10)) == 0.0


# -- reference vectors: inbox_filter/test_relevance_group.py ----------------------------------------------------


def test_group_confidence(relevance: RelevanceFilter) -> None:
    assert relevance.causes(boxes(box(0, 0, 100, 100, 0.3)), CAMERA) == ['uncertain']
    assert relevance.observation_count(CAMERA) == 1
    assert relevance.causes(boxes(box(0, 0, 100, 100, 0.3)), CAMERA) == []
    assert relevance.observation_count(CAMERA) == 1
    assert relevance.causes(boxes(box(0, 0, 100, 100, 0.29)), CAMERA) == []
    assert relevance.observation_count(CAMERA) == 1
    assert relevance.causes(boxes(box(0, 0, 100, 100, 0.61)), CAMERA) == []
    assert relevance.observation_count(CAMERA) == 1


def test_add_second_detection_to_group(relevance: RelevanceFilter) -> None:
    assert relevance.causes(boxes(box(0, 0, 100, 100, 0.3)), CAMERA) == ['uncertain']
    assert iou((0, 0, 100, 100), (0, 20, 10, 10)) < 0.5
    assert relevance.causes(boxes(box(0, 20, 10, 10, 0.35)), CAMERA) == ['uncertain']
    assert relevance.observation_count(CAMERA) == 2


def test_forget_old_detections(relevance: RelevanceFilter, clock: FakeClock) -> None:
    relevance.causes(boxes(box(0, 0, 100, 100, 0.9)), CAMERA)
    clock.now += 30 * 60
    relevance.causes(image(), 'another camera')  # any call prunes every history
    assert relevance.observation_count(CAMERA) == 1
    clock.now += 31 * 60  # last seen 1 h 1 min ago
    relevance.causes(image(), 'another camera')
    assert relevance.observation_count(CAMERA) == 0
    assert relevance.causes(boxes(box(0, 0, 100, 100, 0.4)), CAMERA) == ['uncertain']


def test_forgotten_after_more_than_forget_after_seconds(relevance: RelevanceFilter, clock: FakeClock) -> None:
    relevance.causes(boxes(box(0, 0, 100, 100, 0.9)), CAMERA)
    clock.now += 3600
    assert relevance.causes(boxes(box(0, 0, 100, 100, 0.4)), CAMERA) == []  # exactly 3600 s: still remembered
    clock.now += 3600.5
    assert relevance.causes(boxes(box(0, 0, 100, 100, 0.4)), CAMERA) == ['uncertain']


def test_active_group_extracts_from_json(relevance: RelevanceFilter) -> None:
    metadata = ImageMetadata.from_dict(
        {
            'box_detections': [
                {'category_name': 'dirt', 'x': 1366, 'y': 1017, 'width': 37, 'height': 24, 'model_name': 'some_weightfile', 'confidence': 0.3},
                {'category_name': 'obstacle', 'x': 0, 'y': 0, 'width': 37, 'height': 24, 'model_name': 'some_weightfile', 'confidence': 0.35},
                {'category_name': 'dirt', 'x': 1479, 'y': 179, 'width': 40, 'height': 25, 'model_name': 'some_weightfile', 'confidence': 0.2},
            ]
        }
    )  # fmt: skip
    assert relevance.causes(metadata, CAMERA) == ['uncertain']
    assert relevance.observation_count(CAMERA) == 3


def test_segmentation_detections_are_extracted_from_json(relevance: RelevanceFilter) -> None:
    metadata = ImageMetadata.from_dict(
        {
            'segmentation_detections': [
                {'category_name': 'seg', 'shape': {'points': [{'x': 1, 'y': 2}, {'x': 3, 'y': 4}, {'x': 5, 'y': 2}]}, 'model_name': 'm', 'confidence': 0.9}
            ]
        }
    )  # fmt: skip
    assert relevance.causes(metadata, CAMERA) == ['segmentation_detection']


def test_ignoring_similar_points(relevance: RelevanceFilter) -> None:
    assert relevance.causes(points(point(100, 100, 0.3)), CAMERA) == ['uncertain']
    assert math.hypot(104 - 100, 98 - 100) < 10
    assert relevance.causes(points(point(104, 98, 0.3)), CAMERA) == []
    assert relevance.observation_count(CAMERA) == 1


def test_points_ten_pixels_apart_are_not_similar(relevance: RelevanceFilter) -> None:
    assert relevance.causes(points(point(100, 100, 0.3)), CAMERA) == ['uncertain']
    assert relevance.causes(points(point(106, 108, 0.3)), CAMERA) == ['uncertain']  # distance exactly 10
    assert relevance.causes(points(point(100, 90.5, 0.3)), CAMERA) == []  # 9.5 from the first
    assert relevance.observation_count(CAMERA) == 2


def test_getting_segmentation_detections(relevance: RelevanceFilter) -> None:
    assert relevance.causes(image(segmentation_detections=[segmentation()]), CAMERA) == ['segmentation_detection']
    assert relevance.causes(image(segmentation_detections=[segmentation()]), CAMERA) == ['segmentation_detection']
    assert relevance.observation_count(CAMERA) == 0  # segmentations are never remembered


# -- reference vectors: inbox_filter/test_unexpected_observations_count.py --------------------------------------


@pytest.mark.parametrize(
    ('count', 'box_confidence', 'point_confidence', 'expected'),
    [
        (40, 0.9, 0.9, ['unexpected_observations_count']),
        (1, 0.9, 0.9, []),
        (40, 0.9, 0.3, ['uncertain', 'unexpected_observations_count']),
        (1, 0.3, 0.3, ['uncertain']),
    ],
)
def test_unexpected_observations_count(
    count: int, box_confidence: float, point_confidence: float, expected: list[str]
) -> None:
    metadata = image(
        box_detections=[box(0, 0, 100, 100, box_confidence, name='some_category_name') for _ in range(count)],
        point_detections=[point(100, 100, point_confidence, name='some_category_name') for _ in range(count)],
    )
    assert RelevanceFilter().causes(metadata, CAMERA) == expected


def test_unexpected_count_counts_every_kind(relevance: RelevanceFilter) -> None:
    far = [box(i * 200, 0, 100, 100, 0.9) for i in range(20)]
    almost = image(
        box_detections=far,
        point_detections=[point(i * 50, 5000, 0.9) for i in range(20)],
        segmentation_detections=[segmentation() for _ in range(20)],
        classification_detections=[classification(0.9) for _ in range(19)],
    )
    assert len(almost) == UNEXPECTED_COUNT - 1
    assert relevance.causes(almost, CAMERA) == ['segmentation_detection']
    almost.classification_detections.append(classification(0.95))
    assert relevance.causes(almost, CAMERA) == ['segmentation_detection', 'unexpected_observations_count']


# -- the rest of the algorithm ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ('confidence', 'uncertain'), [(0.29, False), (0.3, True), (0.45, True), (0.6, True), (0.61, False)]
)
def test_uncertain_band_is_inclusive(confidence: float, uncertain: bool) -> None:
    expected = ['uncertain'] if uncertain else []
    assert RelevanceFilter().causes(boxes(box(0, 0, 10, 10, confidence)), CAMERA) == expected
    assert RelevanceFilter().causes(points(point(5, 5, confidence)), CAMERA) == expected
    assert RelevanceFilter().causes(image(classification_detections=[classification(confidence)])) == expected


def test_classifications_are_not_remembered(relevance: RelevanceFilter) -> None:
    for _ in range(3):
        assert relevance.causes(image(classification_detections=[classification(0.5)]), CAMERA) == ['uncertain']
    assert relevance.observation_count(CAMERA) == 0


def test_confident_objects_suppress_later_uncertain_look_alikes(relevance: RelevanceFilter) -> None:
    assert relevance.causes(boxes(box(0, 0, 100, 100, 0.95)), CAMERA) == []
    assert relevance.causes(boxes(box(5, 5, 100, 100, 0.4)), CAMERA) == []


def test_boxes_at_iou_one_half_are_similar(relevance: RelevanceFilter) -> None:
    assert relevance.causes(boxes(box(10, 0, 30, 100, 0.4)), CAMERA) == ['uncertain']
    assert relevance.causes(boxes(box(20, 0, 30, 100, 0.4)), CAMERA) == []  # IoU exactly 0.5
    assert iou((10, 0, 30, 100), (21, 0, 30, 100)) < 0.5
    assert relevance.causes(boxes(box(21, 0, 30, 100, 0.4)), CAMERA) == ['uncertain']  # the second was not stored
    assert relevance.observation_count(CAMERA) == 2


def test_similar_within_the_same_image(relevance: RelevanceFilter) -> None:
    assert relevance.causes(boxes(box(0, 0, 100, 100, 0.9), box(2, 2, 100, 100, 0.4)), CAMERA) == []
    assert relevance.observation_count(CAMERA) == 1


def test_similarity_needs_the_same_category_name_and_kind(relevance: RelevanceFilter) -> None:
    relevance.causes(boxes(box(0, 0, 100, 100, 0.9, name='dirt', category_id='a')), CAMERA)
    assert relevance.causes(boxes(box(0, 0, 100, 100, 0.4, name='dirt', category_id='b')), CAMERA) == []  # id ignored
    assert relevance.causes(boxes(box(0, 0, 100, 100, 0.4, name='stone')), CAMERA) == ['uncertain']
    assert relevance.causes(points(point(0, 0, 0.4, name='dirt')), CAMERA) == ['uncertain']  # a point is not a box
    assert relevance.observation_count(CAMERA) == 3


def test_a_seen_object_keeps_its_first_geometry(relevance: RelevanceFilter) -> None:
    relevance.causes(boxes(box(0, 0, 100, 100, 0.9)), CAMERA)
    assert iou((0, 0, 100, 100), (30, 0, 100, 100)) >= 0.5
    assert relevance.causes(boxes(box(30, 0, 100, 100, 0.4)), CAMERA) == []  # similar: refreshed, not moved
    assert iou((0, 0, 100, 100), (60, 0, 100, 100)) < 0.5 <= iou((30, 0, 100, 100), (60, 0, 100, 100))
    assert relevance.causes(boxes(box(60, 0, 100, 100, 0.4)), CAMERA) == ['uncertain']


def test_seeing_an_object_again_keeps_it_remembered(relevance: RelevanceFilter, clock: FakeClock) -> None:
    relevance.causes(boxes(box(0, 0, 100, 100, 0.9)), CAMERA)
    clock.now += 3000
    assert relevance.causes(boxes(box(0, 0, 100, 100, 0.4)), CAMERA) == []  # refreshes last_seen
    clock.now += 3000  # 6000 s after it was first seen, 3000 s after it was last seen
    assert relevance.causes(boxes(box(0, 0, 100, 100, 0.4)), CAMERA) == []


def test_one_history_per_camera(relevance: RelevanceFilter) -> None:
    assert relevance.causes(boxes(box(0, 0, 100, 100, 0.4)), 'left') == ['uncertain']
    assert relevance.causes(boxes(box(0, 0, 100, 100, 0.4)), 'right') == ['uncertain']
    assert relevance.causes(boxes(box(0, 0, 100, 100, 0.4)), 'left') == []
    assert relevance.causes(boxes(box(0, 0, 100, 100, 0.4))) == ['uncertain']  # the unknown camera
    assert relevance.causes(boxes(box(0, 0, 100, 100, 0.4)), '') == []  # '' is the unknown camera too
    assert relevance.cameras() == ['right', 'left']
    assert relevance.observation_count() == relevance.observation_count('') == 1


def test_unknown_camera_history_is_pruned_too(relevance: RelevanceFilter, clock: FakeClock) -> None:
    assert relevance.causes(boxes(box(0, 0, 100, 100, 0.4))) == ['uncertain']
    assert relevance.causes(boxes(box(0, 0, 100, 100, 0.4))) == []
    clock.now += FORGET_AFTER_S + 1
    relevance.causes(image(), 'some camera')
    assert relevance.observation_count(None) == 0  # the reference never forgets here
    assert relevance.causes(boxes(box(0, 0, 100, 100, 0.4))) == ['uncertain']


def test_causes_are_distinct_in_first_seen_order(relevance: RelevanceFilter) -> None:
    metadata = image(
        box_detections=[box(0, 0, 10, 10, 0.4), box(500, 500, 10, 10, 0.5)],
        point_detections=[point(900, 900, 0.4)],
        segmentation_detections=[segmentation(), segmentation()],
        classification_detections=[classification(0.4)],
    )
    assert relevance.causes(metadata, CAMERA) == ['uncertain', 'segmentation_detection']
    only_classification_uncertain = image(
        segmentation_detections=[segmentation()], classification_detections=[classification(0.4), classification(0.5)]
    )
    assert relevance.causes(only_classification_uncertain, CAMERA) == ['segmentation_detection', 'uncertain']


def test_metadata_is_never_mutated(relevance: RelevanceFilter) -> None:
    metadata = image(
        box_detections=[box(0, 0, 10, 10, 0.4) for _ in range(50)],
        point_detections=[point(1, 1, 0.4) for _ in range(30)],
        segmentation_detections=[segmentation()],
        classification_detections=[classification(0.4)],
        tags=['mine'],
        source='robot',
    )
    before = copy.deepcopy(metadata.to_dict())
    tags = metadata.tags
    causes = relevance.causes(metadata, CAMERA)
    assert causes == ['uncertain', 'segmentation_detection', 'unexpected_observations_count']
    assert metadata.to_dict() == before
    assert metadata.tags is tags and tags == ['mine']
    causes.append('changed by the caller')  # a fresh list each time: the caller may keep and change it
    assert relevance.causes(metadata, CAMERA) == [
        'segmentation_detection',
        'uncertain',
        'unexpected_observations_count',
    ]


def test_from_settings_uses_the_uncertain_band() -> None:
    relevance = RelevanceFilter.from_settings(Settings(min_uncertain_threshold=0.1, max_uncertain_threshold=0.2))
    assert (relevance.min_uncertain, relevance.max_uncertain) == (0.1, 0.2)
    assert relevance.causes(boxes(box(0, 0, 10, 10, 0.15)), CAMERA) == ['uncertain']
    assert relevance.causes(boxes(box(500, 0, 10, 10, 0.3)), CAMERA) == []
    env = {'MIN_UNCERTAIN_THRESHOLD': '0.5', 'MAX_UNCERTAIN_THRESHOLD': '0.7'}
    from_env = RelevanceFilter.from_settings(Settings.from_env(env))
    assert (from_env.min_uncertain, from_env.max_uncertain) == (0.5, 0.7)


def test_reset_forgets_everything(relevance: RelevanceFilter) -> None:
    relevance.causes(boxes(box(0, 0, 10, 10, 0.4)), CAMERA)
    relevance.causes(boxes(box(0, 0, 10, 10, 0.4)))
    relevance.reset()
    assert relevance.cameras() == []
    assert relevance.observation_count(CAMERA) == relevance.observation_count() == 0
    assert relevance.causes(boxes(box(0, 0, 10, 10, 0.4)), CAMERA) == ['uncertain']


# -- bounded memory ---------------------------------------------------------------------------------------------


def test_camera_histories_are_capped_least_recently_used_first(clock: FakeClock) -> None:
    relevance = RelevanceFilter(clock=clock, max_cameras=3)
    for camera in ('a', 'b', 'c'):
        relevance.causes(boxes(box(0, 0, 10, 10, 0.4)), camera)
    relevance.causes(boxes(box(0, 0, 10, 10, 0.4)), 'a')  # a is used again: b is now the least recently used
    relevance.causes(boxes(box(0, 0, 10, 10, 0.4)), 'd')
    assert relevance.cameras() == ['c', 'a', 'd']
    assert relevance.causes(boxes(box(0, 0, 10, 10, 0.4)), 'b') == ['uncertain']  # b was forgotten
    assert relevance.causes(boxes(box(0, 0, 10, 10, 0.4)), 'd') == []
    relevance.causes(boxes(box(0, 0, 10, 10, 0.4)))  # the unknown camera counts as a history
    assert relevance.cameras() == ['b', 'd']


def test_hostile_camera_ids_stay_bounded() -> None:
    relevance = RelevanceFilter(max_cameras=16)
    for i in range(2000):
        relevance.causes(boxes(box(0, 0, 10, 10, 0.4)), f'camera-{i}')
    assert relevance.cameras() == [f'camera-{i}' for i in range(1984, 2000)]


def test_observations_are_capped_least_recently_seen_first(clock: FakeClock) -> None:
    relevance = RelevanceFilter(clock=clock, max_observations=5)
    for i in range(10):
        clock.now += 1
        relevance.causes(boxes(box(i * 100, 0, 50, 50, 0.9)), CAMERA)
    assert relevance.observation_count(CAMERA) == 5
    clock.now += 1
    assert relevance.causes(boxes(box(500, 0, 50, 50, 0.4)), CAMERA) == []  # refreshes box 5, the oldest kept
    clock.now += 1
    assert relevance.causes(boxes(box(0, 0, 50, 50, 0.4)), CAMERA) == ['uncertain']  # box 0 was evicted; evicts 6
    assert relevance.causes(boxes(box(500, 0, 50, 50, 0.4)), CAMERA) == []
    assert relevance.causes(boxes(box(600, 0, 50, 50, 0.4)), CAMERA) == ['uncertain']
    assert relevance.observation_count(CAMERA) == 5


def test_one_image_with_many_detections_stays_bounded() -> None:
    relevance = RelevanceFilter(max_observations=100)
    many = image(
        box_detections=[box(i * 20, 0, 10, 10, 0.9) for i in range(3000)],
        point_detections=[point(i * 20, 500, 0.9) for i in range(3000)],
    )
    assert relevance.causes(many, CAMERA) == ['unexpected_observations_count']
    assert relevance.observation_count(CAMERA) == 100


# -- concurrency ------------------------------------------------------------------------------------------------


def test_concurrent_callers_on_one_camera_see_each_object_once() -> None:
    """Threads submit the same objects in the same order: each object is new to exactly one of them."""
    relevance = RelevanceFilter()
    threads_count, objects = 8, 60
    start = threading.Barrier(threads_count)
    results: list[list[list[str]]] = [[] for _ in range(threads_count)]

    def submit(index: int) -> None:
        start.wait(timeout=10)
        for i in range(objects):
            results[index].append(relevance.causes(boxes(box(i * 200, 0, 100, 100, 0.4)), CAMERA))

    threads = [threading.Thread(target=submit, args=(i,), name=f'relevance-test-{i}') for i in range(threads_count)]
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, so that a missing lock shows
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        sys.setswitchinterval(previous)
    assert not any(thread.is_alive() for thread in threads)
    for i in range(objects):
        answers = [results[t][i] for t in range(threads_count)]
        assert sorted(answers) == [[]] * (threads_count - 1) + [['uncertain']], f'object {i}: {answers}'
    assert relevance.observation_count(CAMERA) == objects


# -- bad input --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ('kwargs', 'message'),
    [
        ({'min_uncertain': 0.7, 'max_uncertain': 0.3}, 'above max_uncertain'),
        ({'min_uncertain': math.nan}, 'min_uncertain must be a number'),
        ({'max_uncertain': '0.6'}, 'max_uncertain must be a number'),
        ({'forget_after': 0}, 'forget_after must be a positive'),
        ({'max_cameras': 0}, 'max_cameras must be a positive integer'),
        ({'max_observations': 2.5}, 'max_observations must be a positive integer'),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RelevanceFilter(**kwargs)


def test_bad_metadata_is_refused_without_touching_the_history(relevance: RelevanceFilter) -> None:
    with pytest.raises(TypeError, match='needs an ImageMetadata'):
        relevance.causes({'box_detections': []}, CAMERA)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match='camera_id must be a string'):
        relevance.causes(image(), 7)  # type: ignore[arg-type]
    broken = boxes(box(0, 0, 10, 10, 0.4), box(500, 0, 10, 10, None))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r'box_detections\[1\]\.confidence must be a number'):
        relevance.causes(broken, CAMERA)
    with pytest.raises(TypeError, match=r'point_detections\[0\] is a dict'):
        relevance.causes(image(point_detections=[{'x': 1}]), CAMERA)
    with pytest.raises(TypeError, match=r'classification_detections\[0\]\.confidence'):
        relevance.causes(image(classification_detections=[classification('high')]), CAMERA)  # type: ignore[arg-type]
    assert relevance.observation_count(CAMERA) == 0
    assert relevance.causes(boxes(box(0, 0, 10, 10, 0.4)), CAMERA) == ['uncertain']  # nothing half-remembered
