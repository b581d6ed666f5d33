"""Synthetic demo images: coloured shapes and dots on varied backgrounds, with their true annotations.

Everything here is a pure function of ``(index, seed, categories)``: the same arguments give the same scene, the
same JPEG bytes and the same annotations on every machine, so the local Loop can store only the recipe of a demo
image and draw it when it is first downloaded, and a demo trainer can regenerate training data without a Loop.

Box categories are drawn as filled shapes (``circle``, ``square``, ``triangle``; a box category with another name
takes a shape by its position) and annotated with their exact bounding box; point categories are drawn as dots and
annotated with their centre. Shapes never overlap, so every box is fully visible.
"""

from __future__ import annotations

import hashlib
import io
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

WIDTH = 640
HEIGHT = 480
JPEG_QUALITY = 85
SHAPES = ('circle', 'square', 'triangle')


def stable_uuid(*parts: object) -> str:
    """A uuid4-shaped id derived from ``parts``: deterministic ids for seeded data."""
    digest = hashlib.sha256(':'.join(str(p) for p in parts).encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def category(
    name: str,
    type_: str,
    color: str,
    *,
    hotkey: str | None = None,
    point_size: int | None = None,
    namespace: str = 'demo',
) -> dict[str, Any]:
    """A Category dict (loop-protocol §7.1) with an id derived from ``namespace`` and ``name``."""
    return {
        'id': stable_uuid('category', namespace, name),
        'name': name,
        'description': None,
        'hotkey': hotkey,
        'color': color,
        'point_size': point_size,
        'type': type_,
    }


#: The categories of the demo project ``zauberzeug/demo``.
DEMO_CATEGORIES: list[dict[str, Any]] = [
    category('circle', 'box', '#E53935', hotkey='1'),
    category('square', 'box', '#1E88E5', hotkey='2'),
    category('triangle', 'box', '#FDD835', hotkey='3'),
    category('purple point', 'point', '#8E24AA', hotkey='4', point_size=12),
]


@dataclass(frozen=True)
class Shape:
    """One drawn object: a box shape (``circle``/``square``/``triangle``) or a ``dot`` (point category)."""

    kind: str
    category: dict[str, Any]
    x: int
    y: int
    size: int  # side of the bounding square for shapes, radius for dots


@dataclass(frozen=True)
class Scene:
    """Everything needed to draw one image; cheap to compute (no pixels)."""

    width: int
    height: int
    background: str  # 'gradient' | 'noise' | 'solid'
    colors: tuple[tuple[int, int, int], tuple[int, int, int]]
    direction: int  # gradient direction: 0 horizontal, 1 vertical, 2 diagonal
    noise_seed: int
    shapes: tuple[Shape, ...]


def _shape_kind(cat: dict[str, Any], position: int) -> str:
    name = str(cat.get('name', ''))
    return name if name in SHAPES else SHAPES[position % len(SHAPES)]


def _overlaps(box: tuple[int, int, int, int], taken: list[tuple[int, int, int, int]], margin: int = 6) -> bool:
    x, y, w, h = box
    return any(
        x < tx + tw + margin and tx < x + w + margin and y < ty + th + margin and ty < y + h + margin
        for tx, ty, tw, th in taken
    )


def scene(
    index: int,
    seed: int = 0,
    categories: Sequence[dict[str, Any]] = DEMO_CATEGORIES,
    *,
    width: int = WIDTH,
    height: int = HEIGHT,
    boxes: int | None = None,
) -> Scene:
    """The scene of image ``index``: background and non-overlapping shapes, chosen by a seeded RNG; ``boxes``
    box shapes where given (as far as they fit), else 1 to 4."""
    rng = random.Random(f'llnode-demo:{seed}:{index}')
    box_categories = [c for c in categories if c.get('type') == 'box']
    point_categories = [c for c in categories if c.get('type') == 'point']
    background = rng.choice(('gradient', 'noise', 'solid'))
    colors = (
        (rng.randrange(60, 230), rng.randrange(60, 230), rng.randrange(60, 230)),
        (rng.randrange(60, 230), rng.randrange(60, 230), rng.randrange(60, 230)),
    )
    taken: list[tuple[int, int, int, int]] = []
    shapes: list[Shape] = []
    smallest = max(8, min(width, height) // 12)
    largest = max(smallest + 1, min(width, height) // 3)
    box_count = boxes if boxes is not None else rng.randint(1, 4)
    for _ in range(box_count if box_categories else 0):
        position = rng.randrange(len(box_categories))
        cat = box_categories[position]
        for _attempt in range(30):
            size = rng.randrange(smallest, largest)
            x, y = rng.randrange(0, width - size), rng.randrange(0, height - size)
            if not _overlaps((x, y, size, size), taken):
                taken.append((x, y, size, size))
                shapes.append(Shape(_shape_kind(cat, position), cat, x, y, size))
                break
    for _ in range(rng.randint(0, 3) if point_categories else 0):
        cat = rng.choice(point_categories)
        for _attempt in range(30):
            radius = rng.randrange(5, 9)
            cx, cy = rng.randrange(radius, width - radius), rng.randrange(radius, height - radius)
            if not _overlaps((cx - radius, cy - radius, 2 * radius, 2 * radius), taken):
                taken.append((cx - radius, cy - radius, 2 * radius, 2 * radius))
                shapes.append(Shape('dot', cat, cx, cy, radius))
                break
    return Scene(width, height, background, colors, rng.randrange(3), rng.getrandbits(32), tuple(shapes))


def annotations_of(s: Scene) -> dict[str, list[dict[str, Any]]]:
    """The true annotations of a scene: ``{'box_annotations': [...], 'point_annotations': [...]}``."""
    boxes: list[dict[str, Any]] = []
    points: list[dict[str, Any]] = []
    for shape in s.shapes:
        ref = {'category_id': shape.category.get('id'), 'category_name': shape.category.get('name')}
        if shape.kind == 'dot':
            points.append({**ref, 'x': float(shape.x), 'y': float(shape.y)})
        else:
            boxes.append({**ref, 'x': shape.x, 'y': shape.y, 'width': shape.size, 'height': shape.size})
    return {'box_annotations': boxes, 'point_annotations': points}


def true_annotations(
    index: int,
    seed: int = 0,
    categories: Sequence[dict[str, Any]] = DEMO_CATEGORIES,
    *,
    width: int = WIDTH,
    height: int = HEIGHT,
) -> dict[str, list[dict[str, Any]]]:
    """The annotations of image ``index`` without drawing it."""
    return annotations_of(scene(index, seed, categories, width=width, height=height))


def _hex(color: str | None, fallback: tuple[int, int, int]) -> tuple[int, int, int]:
    text = (color or '').lstrip('#')
    if len(text) == 6:
        try:
            return int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16)
        except ValueError:
            pass
    return fallback


def _background(s: Scene) -> Image.Image:
    first = np.array(s.colors[0], dtype=np.float32)
    second = np.array(s.colors[1], dtype=np.float32)
    if s.background == 'solid':
        pixels = np.broadcast_to(first, (s.height, s.width, 3))
    elif s.background == 'gradient':
        xs = np.linspace(0.0, 1.0, s.width, dtype=np.float32)[None, :]
        ys = np.linspace(0.0, 1.0, s.height, dtype=np.float32)[:, None]
        t = [xs + 0 * ys, ys + 0 * xs, (xs + ys) / 2][s.direction]
        pixels = first[None, None, :] * (1 - t[..., None]) + second[None, None, :] * t[..., None]
    else:
        noise = np.random.default_rng(s.noise_seed).normal(0.0, 28.0, (s.height, s.width, 1)).astype(np.float32)
        pixels = first[None, None, :] + noise
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), 'RGB')


def draw(s: Scene) -> bytes:
    """The JPEG bytes of a scene."""
    image = _background(s)
    pen = ImageDraw.Draw(image)
    for shape in s.shapes:
        color = _hex(shape.category.get('color'), (128, 0, 128))
        x, y, n = shape.x, shape.y, shape.size
        if shape.kind == 'dot':
            pen.ellipse((x - n, y - n, x + n, y + n), fill=color, outline=(20, 20, 20))
        elif shape.kind == 'circle':
            pen.ellipse((x, y, x + n - 1, y + n - 1), fill=color, outline=(20, 20, 20))
        elif shape.kind == 'square':
            pen.rectangle((x, y, x + n - 1, y + n - 1), fill=color, outline=(20, 20, 20))
        else:
            pen.polygon(
                [(x, y + n - 1), (x + n - 1, y + n - 1), (x + (n - 1) / 2, y)], fill=color, outline=(20, 20, 20)
            )
    buffer = io.BytesIO()
    image.save(buffer, 'JPEG', quality=JPEG_QUALITY)
    return buffer.getvalue()


def render(
    index: int,
    seed: int = 0,
    categories: Sequence[dict[str, Any]] = DEMO_CATEGORIES,
    *,
    width: int = WIDTH,
    height: int = HEIGHT,
) -> tuple[bytes, dict[str, list[dict[str, Any]]]]:
    """``(jpeg_bytes, annotations)`` of demo image ``index``; annotations as in :func:`annotations_of`."""
    s = scene(index, seed, categories, width=width, height=height)
    return draw(s), annotations_of(s)
