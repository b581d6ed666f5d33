"""Demo images are deterministic and their boxes are true: the shape fills its box and nothing else."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from llnode.localloop import demo


def test_render_is_deterministic_and_matches_the_cheap_annotations() -> None:
    first_jpeg, first_annotations = demo.render(3, seed=7)
    second_jpeg, second_annotations = demo.render(3, seed=7)
    assert first_jpeg == second_jpeg
    assert first_annotations == second_annotations == demo.true_annotations(3, seed=7)
    assert demo.render(3, seed=8)[0] != first_jpeg
    assert demo.render(4, seed=7)[0] != first_jpeg
    with Image.open(io.BytesIO(first_jpeg)) as image:
        assert (image.format, image.size) == ('JPEG', (640, 480))


def test_boxes_are_true_and_points_are_centres() -> None:
    checked = 0
    for index in range(12):
        jpeg, annotations = demo.render(index, seed=1)
        pixels = np.asarray(Image.open(io.BytesIO(jpeg)).convert('RGB')).astype(int)
        names = {c['name']: c for c in demo.DEMO_CATEGORIES}
        for box in annotations['box_annotations']:
            color = np.array(demo._hex(names[box['category_name']]['color'], (0, 0, 0)))
            x, y, w, h = box['x'], box['y'], box['width'], box['height']
            assert x >= 0 and y >= 0 and x + w <= 640 and y + h <= 480
            centre = pixels[y + h * 2 // 3, x + w // 2]  # inside every shape kind (the triangle is widest below)
            assert np.abs(centre - color).max() < 40, (index, box)
            checked += 1
        for point in annotations['point_annotations']:
            colour = pixels[int(point['y']), int(point['x'])]
            assert np.abs(colour - np.array((0x8E, 0x24, 0xAA))).max() < 40
    assert checked > 10


def test_every_demo_category_appears() -> None:
    seen = set()
    for index in range(30):
        annotations = demo.true_annotations(index)
        seen |= {a['category_name'] for a in annotations['box_annotations'] + annotations['point_annotations']}
    assert seen == {c['name'] for c in demo.DEMO_CATEGORIES}
