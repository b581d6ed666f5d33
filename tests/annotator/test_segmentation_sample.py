"""``samples/segmentation_annotator.py``: the region growing and outline on their own, the tool in a node drawing a
demo square into the local Loop, and the script as a real process (reference §7.9 has no tests here at all)."""

from __future__ import annotations

import collections
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from llnode.annotator import AnnotatorNode
from llnode.localloop import LocalLoop
from tests.annotator.support import ORGANIZATION, PROJECT, load_sample, ok, user_input
from tests.polling import wait_for
from tests.samples import sample_process

sample = load_sample()

#: The outline may lie this far inside a drawn shape: its dark 1 px border plus the 5x5 smoothing.
INSET = 4


def flood_fill(mask: np.ndarray, y: int, x: int) -> np.ndarray:
    """The obvious 4-connected flood fill, pixel by pixel: what ``connected_region`` must agree with."""
    region = np.zeros_like(mask)
    if not mask[y, x]:
        return region
    region[y, x] = True
    todo = collections.deque([(y, x)])
    while todo:
        cy, cx = todo.popleft()
        for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
            if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not region[ny, nx]:
                region[ny, nx] = True
                todo.append((ny, nx))
    return region


def test_connected_region_agrees_with_a_flood_fill() -> None:
    rng = np.random.default_rng(1)
    for density in (0.45, 0.6, 0.75):
        for _ in range(40):
            mask = rng.random((30, 40)) < density
            y, x = int(rng.integers(30)), int(rng.integers(40))
            assert (sample.connected_region(mask, y, x, max_passes=10_000) == flood_fill(mask, y, x)).all()


def test_a_spiral_needs_many_passes_and_max_passes_bounds_them() -> None:
    mask = np.zeros((41, 41), dtype=bool)
    for ring in range(0, 20, 4):  # concentric square rings joined by one gap each: a maze
        mask[ring, ring : 41 - ring] = mask[40 - ring, ring : 41 - ring] = True
        mask[ring : 41 - ring, ring] = mask[ring : 41 - ring, 40 - ring] = True
        if ring + 2 < 20:
            mask[ring + 1, ring + 2] = True
            mask[ring + 2, ring + 2 : 39 - ring] = False
    full = flood_fill(mask, 0, 0)
    assert (sample.connected_region(mask, 0, 0, max_passes=10_000) == full).all()
    partial = sample.connected_region(mask, 0, 0, max_passes=1)
    assert partial.sum() < full.sum() and not (partial & ~full).any()


def test_the_outline_goes_round_the_region_and_simplifies_to_its_corners() -> None:
    mask = np.zeros((12, 12), dtype=bool)
    mask[2:8, 2:4] = True
    mask[6:8, 2:9] = True  # an L
    outline = sample.trace_outline(mask)
    ys, xs = np.nonzero(mask)
    boundary = {
        (int(x), int(y))
        for y, x in zip(ys, xs, strict=True)
        if not (mask[y - 1, x] and mask[y + 1, x] and mask[y, x - 1] and mask[y, x + 1])  # background 4-neighbour
    }
    assert set(outline) == boundary
    assert len(outline) == len(set(outline))  # each boundary pixel once: no holes, no needles here
    assert sample.simplify(outline, 0.5) == [(2, 2), (3, 2), (3, 5), (4, 6), (8, 6), (8, 7), (2, 7)]
    assert sample.trace_outline(np.zeros((3, 3), dtype=bool)) == []
    single = np.zeros((3, 3), dtype=bool)
    single[1, 1] = True
    assert sample.trace_outline(single) == [(1, 1)]


def test_simplify_keeps_every_point_within_epsilon() -> None:
    angles = np.linspace(0, 2 * np.pi, 400, endpoint=False)
    ring = [(int(100 + 60 * np.cos(a)), int(100 + 40 * np.sin(a))) for a in angles]
    for epsilon in (0.5, 1.5, 5.0):
        kept = sample.simplify(ring, epsilon)
        assert 4 <= len(kept) < len(ring)
        polygon = np.asarray([*kept, kept[0]], dtype=float)
        for point in np.asarray(ring, dtype=float):
            starts, ends = polygon[:-1], polygon[1:]
            segment = ends - starts
            t = np.clip(((point - starts) * segment).sum(1) / np.maximum((segment**2).sum(1), 1e-12), 0, 1)
            distance = np.hypot(*(starts + t[:, None] * segment - point).T).min()
            assert distance <= epsilon + 1e-9


def test_smoothing_is_a_box_filter_with_replicated_edges() -> None:
    image = np.random.default_rng(2).integers(0, 256, (7, 9, 3)).astype(np.uint8)
    padded = np.pad(image.astype(np.float64), ((2, 2), (2, 2), (0, 0)), mode='edge')
    expected = np.zeros(image.shape)
    for y in range(7):
        for x in range(9):
            expected[y, x] = padded[y : y + 5, x : x + 5].reshape(-1, 3).mean(0)
    assert np.allclose(sample.smooth(image), expected, atol=1e-3)


def square_on_a_demo_image(loop: LocalLoop) -> tuple[dict[str, Any], dict[str, Any]]:
    """A demo image and the true box of a square drawn on it."""
    for image in loop.store.images(ORGANIZATION, PROJECT, loop.store.image_ids(ORGANIZATION, PROJECT)):
        for box in image['box_annotations']:
            if box['category_name'] == 'square' and box['width'] >= 40:
                return image, box
    raise AssertionError('no square on the demo images')


def bounds(points: list[dict[str, int]]) -> tuple[int, int, int, int]:
    xs, ys = [p['x'] for p in points], [p['y'] for p in points]
    return min(xs), min(ys), max(xs), max(ys)


def assert_outlines(box: dict[str, Any], points: list[dict[str, int]]) -> None:
    left, top, right, bottom = bounds(points)
    assert 0 <= left - box['x'] <= INSET and 0 <= top - box['y'] <= INSET
    assert 0 <= box['x'] + box['width'] - 1 - right <= INSET and 0 <= box['y'] + box['height'] - 1 - bottom <= INSET
    assert 4 <= len(points) <= 8  # a square, simplified


def drag_session(loop: LocalLoop, node_id: str, image: dict[str, Any], box: dict[str, Any]) -> list[Any]:
    """Hover, press in the middle of the square, wiggle, release: the acks."""
    category = next(c for c in loop.store.categories(ORGANIZATION, PROJECT) if c['id'] == box['category_id'])
    x, y = box['x'] + box['width'] // 2, box['y'] + box['height'] // 2
    events = [
        ('mouse_move', x - 3),
        ('left_mouse_down', x),
        ('mouse_move', x + 4),
        ('mouse_move', x),
        ('left_mouse_up', x),
    ]
    return [
        loop.send(node_id, 'handle_user_input', user_input('ui', kind, image['id'], category, x=ex, y=y), timeout=15)
        for kind, ex in events
    ]


def test_the_tool_outlines_a_demo_square_and_stores_it(
    local_loop: LocalLoop, make_annotator: Callable[..., AnnotatorNode]
) -> None:
    node = make_annotator(local_loop, sample.SegmentationTool())
    image, box = square_on_a_demo_image(local_loop)
    acks = drag_session(local_loop, node.uuid, image, box)

    for ack in acks[:-1]:
        assert ack['success'] is True and ack['payload'].startswith('<polygon points="'), ack
        assert f'fill="{box_color(local_loop, box)}"' in ack['payload']
    assert acks[-1] == ok('')
    (stored,) = local_loop.store.image(ORGANIZATION, PROJECT, image['id'])['segmentation_annotations']
    assert stored['category_id'] == box['category_id']
    assert_outlines(box, stored['shape']['points'])


def box_color(loop: LocalLoop, box: dict[str, Any]) -> str:
    return next(c['color'] for c in loop.store.categories(ORGANIZATION, PROJECT) if c['id'] == box['category_id'])


def test_escape_during_a_drag_drops_the_object(
    local_loop: LocalLoop, make_annotator: Callable[..., AnnotatorNode]
) -> None:
    node = make_annotator(local_loop, sample.SegmentationTool())
    image, box = square_on_a_demo_image(local_loop)
    category = next(c for c in local_loop.store.categories(ORGANIZATION, PROJECT) if c['id'] == box['category_id'])
    x, y = box['x'] + box['width'] // 2, box['y'] + box['height'] // 2

    def event(kind: str, **extra: Any) -> Any:
        return local_loop.send(
            node.uuid, 'handle_user_input', user_input('ui', kind, image['id'], category, x=x, y=y, **extra)
        )

    assert event('left_mouse_down')['payload'].startswith('<polygon')
    assert event('key_up', key_up='Escape') == ok('')
    assert event('left_mouse_up') == ok('')  # no object in progress any more
    assert local_loop.store.image(ORGANIZATION, PROJECT, image['id'])['segmentation_annotations'] == []


def test_dragging_right_widens_the_region(local_loop: LocalLoop) -> None:
    image = sample.smooth(np.full((60, 60, 3), 100, dtype=np.uint8))
    image[:, 30:] += 30.0  # a step of 30 * sqrt(3) = 52 in colour distance
    narrow = sample.grow_region(image, 10, 10, sample.DEFAULT_TOLERANCE)[0]
    wide = sample.grow_region(image, 10, 10, sample.DEFAULT_TOLERANCE + 40 * sample.TOLERANCE_PER_PIXEL)[0]
    assert narrow.sum() == 60 * 30 and wide.sum() == 60 * 60
    assert sample.grow_region(image, 60, 10, 40.0)[0].size == 0  # outside the image: nothing


def test_the_sample_script_serves_a_session_and_stops_cleanly_on_sigterm(local_loop: LocalLoop, tmp_path: Path) -> None:
    image, box = square_on_a_demo_image(local_loop)
    with sample_process('segmentation_annotator.py', local_loop, tmp_path / 'data') as process:
        node = wait_for(
            lambda: next(
                (
                    n
                    for n in local_loop.nodes()
                    if n['node_type'] == 'annotation_node' and n['connected'] and n['name'] == 'segmentation annotator'
                ),
                None,
            ),
            timeout=30,
            what='the sample to connect and report',
        )
        assert node['status']['capabilities'] == ['segmentation']
        acks = drag_session(local_loop, node['id'], image, box)
        assert all(ack['success'] for ack in acks), acks
        (stored,) = local_loop.store.image(ORGANIZATION, PROJECT, image['id'])['segmentation_annotations']
        assert_outlines(box, stored['shape']['points'])
        assert (tmp_path / 'data' / ORGANIZATION / PROJECT / 'images' / f'{image["id"]}.jpg').is_file()
        process.process.send_signal(signal.SIGTERM)
        assert process.process.wait(15) == 0
    assert 'Traceback' not in process.text(), process.text()
