"""A segmentation tool for the Loop's annotation UI: click an object, get its outline, release to keep it.

It grows a region from the clicked pixel over neighbouring pixels of similar colour (numpy only, no OpenCV):

- moving the mouse shows the region a click there would give (an SVG polygon of its outline);
- pressing the left button fixes the seed; dragging right while it is down raises the colour tolerance, dragging
  left lowers it (as a fuzzy-select tool does); releasing sends the region as a polygon annotation to the Loop;
- Escape forgets everything about the current object.

Start it next to a Loop (``llnode loop --demo --user demo:demo`` serves one on port 8080)::

    llnode loop --demo --user demo:demo          # in another terminal: the local Loop on 127.0.0.1:8080
    LOOP_HOST=127.0.0.1:8080 LOOP_USERNAME=demo LOOP_PASSWORD=demo LOOP_ORGANIZATION=zauberzeug \\
        LOOP_PROJECT=demo python samples/segmentation_annotator.py --port 8003

How the region is found: the image is smoothed once (5x5 box filter, so JPEG and sensor noise do not break
regions apart); pixels whose colour lies within ``tolerance`` (Euclidean distance in RGB, 0-441) of the smoothed
seed colour are candidates; the region is the candidates 4-connected to the seed, searched inside a square of
``2 * max_radius + 1`` pixels around it (which bounds both the region and the time). Connectivity is found by
filling whole runs of candidates along rows, then along columns, until nothing changes: a handful of array
passes instead of a pixel-by-pixel flood fill. The outline is traced around the region (Moore neighbourhood) and
simplified (Douglas-Peucker, ``epsilon`` pixels; the UI's ``epsilon`` wins when it sends one).

Like every sample it listens on 127.0.0.1 only; ``--host 0.0.0.0`` (or ``NODE_HOST=0.0.0.0``) serves other
machines too. Every option is also an environment variable (``--help`` names them).
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from llnode.annotator import AnnotatorLogic, AnnotatorNode
from llnode.helpers import node_parser, run_node
from llnode.schema import AnnotationEventType, Point, SegmentationAnnotation, Shape, ToolOutput, UserInput
from llnode.startup import run_main

logger = logging.getLogger('segmentation_annotator')

#: Colour distance (RGB, Euclidean) a pixel may have from the seed colour to join the region.
DEFAULT_TOLERANCE = 40.0
#: Tolerance change per pixel of horizontal drag while the left button is down.
TOLERANCE_PER_PIXEL = 0.5
MIN_TOLERANCE, MAX_TOLERANCE = 2.0, 200.0
#: Half the side of the square, centred on the seed, that the region may cover.
MAX_RADIUS = 200
#: Douglas-Peucker tolerance of the outline in pixels, unless the UI sends ``epsilon``.
DEFAULT_EPSILON = 1.5
MIN_EPSILON, MAX_EPSILON = 0.5, 20.0
#: Row/column fill passes before a (maze-like) region is taken as it is; bounds the time per event.
MAX_PASSES = 64
#: Side of the box filter the image is smoothed with.
SMOOTHING = 5
#: Decoded images kept for all frontends together (640x480 RGB float32: 3.7 MB each).
IMAGE_CACHE_SIZE = 8

_COLOR = re.compile(r'^#[0-9a-fA-F]{3,8}$')

# The 8 neighbours in clockwise order (image coordinates, y down), starting west: (dy, dx).
_NEIGHBOURS = ((0, -1), (-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1))


# ---------------------------------------------------------------------------------------------------------------
# Image processing (pure functions on numpy arrays)


def smooth(image: np.ndarray, size: int = SMOOTHING) -> np.ndarray:
    """The image (H x W x C) as float32, box-filtered with a ``size`` x ``size`` window (edges replicated)."""
    pixels = np.asarray(image, dtype=np.float32)
    if size <= 1:
        return pixels
    half = size // 2
    padded = np.pad(pixels, ((half + 1, half), (half + 1, half), (0, 0)), mode='edge')
    summed = padded.cumsum(axis=0).cumsum(axis=1)  # summed[i, j] = sum of padded[:i+1, :j+1]
    height, width = pixels.shape[:2]
    window = (
        summed[size : size + height, size : size + width]
        - summed[:height, size : size + width]
        - summed[size : size + height, :width]
        + summed[:height, :width]
    )
    return window / float(size * size)


def _run_ids(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Each True pixel's run number (1...) along its row; 0 for False pixels."""
    starts = mask.copy()
    starts[:, 1:] &= ~mask[:, :-1]
    ids = np.cumsum(starts, axis=None, dtype=np.int32).reshape(mask.shape)
    ids *= mask
    return ids, int(ids.max(initial=0))


def connected_region(mask: np.ndarray, seed_y: int, seed_x: int, max_passes: int = MAX_PASSES) -> np.ndarray:
    """The pixels of ``mask`` 4-connected to ``(seed_y, seed_x)`` (all False if the seed is not in ``mask``)."""
    region = np.zeros_like(mask)
    if not mask[seed_y, seed_x]:
        return region
    row_ids, rows = _run_ids(mask)
    column_ids_t, columns = _run_ids(np.ascontiguousarray(mask.T))
    column_ids = column_ids_t.T
    region[seed_y, seed_x] = True
    count = 1
    for _ in range(max_passes):
        hit = np.zeros(rows + 1, dtype=bool)
        hit[row_ids[region]] = True
        hit[0] = False
        region = hit[row_ids]
        hit = np.zeros(columns + 1, dtype=bool)
        hit[column_ids[region]] = True
        hit[0] = False
        region = hit[column_ids]
        grown = int(np.count_nonzero(region))
        if grown == count:
            break
        count = grown
    return region


def grow_region(
    image: np.ndarray, x: int, y: int, tolerance: float, max_radius: int = MAX_RADIUS
) -> tuple[np.ndarray, int, int]:
    """The region grown from pixel ``(x, y)`` of a smoothed image: ``(mask, left, top)`` of its window.

    ``mask`` covers the window ``image[top:top + h, left:left + w]`` around the seed (at most
    ``2 * max_radius + 1`` pixels square); it is empty when the seed lies outside the image.
    """
    height, width = image.shape[:2]
    if not (0 <= x < width and 0 <= y < height):
        return np.zeros((0, 0), dtype=bool), 0, 0
    top, left = max(0, y - max_radius), max(0, x - max_radius)
    window = image[top : min(height, y + max_radius + 1), left : min(width, x + max_radius + 1)]
    difference = window - image[y, x]
    candidates = np.einsum('ijk,ijk->ij', difference, difference) <= tolerance * tolerance
    return connected_region(candidates, y - top, x - left), left, top


def trace_outline(mask: np.ndarray) -> list[tuple[int, int]]:
    """The outer boundary of the region in ``mask`` as ``(x, y)`` pixel positions, clockwise (Moore tracing).

    The region must be 8-connected (a 4-connected one is); holes are ignored. Empty mask: ``[]``.
    """
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return []
    stride = mask.shape[1] + 2
    flat = np.pad(mask, 1).astype(np.uint8).tobytes()  # a border of False, so no bounds checks below
    offsets = [dy * stride + dx for dy, dx in _NEIGHBOURS]
    direction_of = {offset: index for index, offset in enumerate(offsets)}
    start = (int(ys[0]) + 1) * stride + int(xs[0]) + 1  # topmost, then leftmost pixel: its west is outside
    current, backtrack = start, 0  # we "entered" the start pixel from the west
    outline = [start]
    first_move: tuple[int, int] | None = None
    limit = 4 * mask.size + 8
    for _ in range(limit):
        for turn in range(1, 9):
            direction = (backtrack + turn) % 8
            candidate = current + offsets[direction]
            if flat[candidate]:
                break
        else:
            break  # a single pixel: no neighbours
        # The next search starts just after the background pixel checked before ``candidate``, as seen from it.
        previous = current + offsets[(direction - 1) % 8]
        move = (current, candidate)
        if first_move is None:
            first_move = move
        elif move == first_move:
            break
        backtrack = direction_of[previous - candidate]
        current = candidate
        outline.append(current)
    if len(outline) > 1 and outline[-1] == start:
        outline.pop()
    return [(p % stride - 1, p // stride - 1) for p in outline]


def simplify(points: list[tuple[int, int]], epsilon: float) -> list[tuple[int, int]]:
    """A closed polygon simplified with Douglas-Peucker: no point of the original is farther than ``epsilon``."""
    if len(points) < 4:
        return list(points)
    array = np.asarray(points, dtype=np.float64)
    # Split the ring at its first point and the point farthest from it; simplify both chains.
    far = int(np.argmax(((array - array[0]) ** 2).sum(axis=1)))
    if far == 0:
        return [points[0]]
    ring = np.vstack([array, array[:1]])
    keep = np.zeros(len(ring), dtype=bool)
    keep[[0, far, len(ring) - 1]] = True
    stack = [(0, far), (far, len(ring) - 1)]
    while stack:
        first, last = stack.pop()
        if last - first < 2:
            continue
        segment = ring[last] - ring[first]
        offsets = ring[first + 1 : last] - ring[first]
        length = float(np.hypot(*segment))
        if length == 0.0:
            distances = np.hypot(offsets[:, 0], offsets[:, 1])
        else:
            distances = np.abs(segment[0] * offsets[:, 1] - segment[1] * offsets[:, 0]) / length
        index = int(np.argmax(distances))
        if distances[index] > epsilon:
            middle = first + 1 + index
            keep[middle] = True
            stack.append((first, middle))
            stack.append((middle, last))
    kept = np.nonzero(keep[:-1])[0]
    return [points[i] for i in kept]


def region_polygon(
    image: np.ndarray, x: int, y: int, tolerance: float, *, epsilon: float, max_radius: int = MAX_RADIUS
) -> list[tuple[int, int]]:
    """The simplified outline, in image coordinates, of the region grown from ``(x, y)``; ``[]`` if none."""
    mask, left, top = grow_region(image, x, y, tolerance, max_radius)
    outline = trace_outline(mask)
    return [(px + left, py + top) for px, py in simplify(outline, epsilon)]


def svg_polygon(points: list[tuple[int, int]], color: str) -> str:
    """An SVG fragment the UI overlays on the image: the polygon, filled translucently."""
    if not points:
        return ''
    coordinates = ' '.join(f'{px},{py}' for px, py in points)
    return f'<polygon points="{coordinates}" fill="{color}" fill-opacity="0.35" stroke="{color}" stroke-width="2" />'


# ---------------------------------------------------------------------------------------------------------------
# The tool


@dataclass
class History:
    """One frontend's state: the tolerance it last used and the object being drawn."""

    tolerance: float = DEFAULT_TOLERANCE
    seed: tuple[int, int] | None = None  # set while the left button is down
    drag_tolerance: float = DEFAULT_TOLERANCE
    svg: str = ''


class SegmentationTool(AnnotatorLogic):
    """Region growing from the clicked pixel; see the module docstring for the gestures."""

    capabilities = ('segmentation',)
    thread_safe = True  # per-frontend state lives in the history; the image cache has its own lock

    def __init__(self, *, max_radius: int = MAX_RADIUS, image_cache_size: int = IMAGE_CACHE_SIZE) -> None:
        if max_radius < 1:
            raise ValueError(f'max_radius must be at least 1, got {max_radius}')
        self.max_radius = max_radius
        self.image_cache_size = image_cache_size
        self._images: OrderedDict[Path, np.ndarray] = OrderedDict()
        self._images_lock = threading.Lock()

    def create_empty_history(self) -> History:
        return History()

    def logout_user(self, frontend_id: str) -> bool:
        return True

    def handle_user_input(self, user_input: UserInput, history: History) -> ToolOutput:
        data = user_input.data
        x, y = data.coordinate.x, data.coordinate.y
        epsilon = DEFAULT_EPSILON if not data.epsilon or data.epsilon <= 0 else data.epsilon
        epsilon = min(MAX_EPSILON, max(MIN_EPSILON, epsilon))
        color = data.category.color if data.category.color and _COLOR.match(data.category.color) else '#00BCD4'
        event = data.event_type

        if event == AnnotationEventType.LEFT_MOUSE_DOWN:
            history.seed = (x, y)
            history.drag_tolerance = history.tolerance
        elif event == AnnotationEventType.MOUSE_MOVE and history.seed is not None:
            history.drag_tolerance = _clamp_tolerance(history.tolerance + (x - history.seed[0]) * TOLERANCE_PER_PIXEL)
        elif event == AnnotationEventType.LEFT_MOUSE_UP and history.seed is not None:
            seed, tolerance = history.seed, history.drag_tolerance
            history.seed, history.tolerance, history.svg = None, tolerance, ''
            points = region_polygon(
                self._image(user_input), *seed, tolerance, epsilon=epsilon, max_radius=self.max_radius
            )
            if len(points) < 3:
                return ToolOutput(svg='')
            annotation = SegmentationAnnotation(
                id=str(uuid.uuid4()),
                shape=Shape(points=[Point(x=int(px), y=int(py)) for px, py in points]),
                image_id=data.image_uuid,
                category_id=data.category.id,
            )
            return ToolOutput(svg='', annotation=annotation)
        elif event != AnnotationEventType.MOUSE_MOVE:
            return ToolOutput(svg=history.svg)  # right button, other keys: nothing changes

        seed = history.seed if history.seed is not None else (x, y)
        tolerance = history.drag_tolerance if history.seed is not None else history.tolerance
        points = region_polygon(self._image(user_input), *seed, tolerance, epsilon=epsilon, max_radius=self.max_radius)
        history.svg = svg_polygon(points, color)
        return ToolOutput(svg=history.svg)

    def _image(self, user_input: UserInput) -> np.ndarray:
        """The smoothed image of ``user_input``, decoded once and shared by the frontends working on it."""
        path = self.image_path(user_input)
        with self._images_lock:
            image = self._images.get(path)
            if image is not None:
                self._images.move_to_end(path)
                return image
        with Image.open(path) as opened:
            image = smooth(np.asarray(opened.convert('RGB')))
        with self._images_lock:
            self._images[path] = image
            while len(self._images) > self.image_cache_size:
                self._images.popitem(last=False)
        return image


def _clamp_tolerance(value: float) -> float:
    return min(MAX_TOLERANCE, max(MIN_TOLERANCE, value))


def main(argv: list[str] | None = None) -> int:
    parser = node_parser(description=__doc__.split('\n\n')[0], host='127.0.0.1', port=8003)
    parser.add_argument(
        '--name', env_var='NODE_NAME', default='segmentation annotator', help='the node name the Loop shows'
    )
    parser.add_argument('--max-radius', type=int, default=MAX_RADIUS, help='largest distance of a region from its seed')
    parser.add_argument('--log-level', default='INFO')
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    node = AnnotatorNode(args.name, SegmentationTool(max_radius=args.max_radius))
    return run_node(node, args)


if __name__ == '__main__':
    sys.exit(run_main(main))  # a start-up error: one line on stderr, exit code 2
