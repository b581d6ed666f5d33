"""Helpers for the annotator tests: a recording tool, user inputs as the Loop's UI sends them, waiting for a node."""

from __future__ import annotations

import threading
from pathlib import Path
from types import ModuleType
from typing import Any

from llnode.annotator import AnnotatorLogic
from llnode.localloop import LocalLoop
from llnode.schema import Point, SegmentationAnnotation, Shape, ToolOutput, UserInput
from tests.samples import load_sample as load_sample_script

REPO = Path(__file__).resolve().parents[2]
ORGANIZATION, PROJECT = 'zauberzeug', 'demo'


def load_sample() -> ModuleType:
    """``samples/segmentation_annotator.py`` as a module (loaded once)."""
    return load_sample_script('segmentation_annotator.py')


def demo_image(loop: LocalLoop, index: int = 0) -> dict[str, Any]:
    """The ``index``-th demo image item (with its true ``box_annotations``)."""
    ids = loop.store.image_ids(ORGANIZATION, PROJECT)
    return loop.store.images(ORGANIZATION, PROJECT, [ids[index]])[0]


def category(loop: LocalLoop) -> dict[str, Any]:
    return loop.store.categories(ORGANIZATION, PROJECT)[0]


def user_input(
    frontend_id: str,
    event_type: str,
    image_id: str,
    category: dict[str, Any],
    *,
    x: int = 10,
    y: int = 10,
    **extra: Any,
) -> dict[str, Any]:
    """A UserInput dict as the Loop forwards it from a frontend (loop-protocol §7.3.2)."""
    return {
        'frontend_id': frontend_id,
        'data': {
            'coordinate': {'x': x, 'y': y},
            'event_type': event_type,
            'context': {'organization': ORGANIZATION, 'project': PROJECT},
            'image_uuid': image_id,
            'category': category,
            'key_up': None,
            'key_down': None,
            'epsilon': None,
            'is_shift_key_pressed': None,
            **extra,
        },
    }


def ok(payload: Any = None) -> dict[str, Any]:
    return {'success': True, 'error_msg': None, 'payload': payload}


class RecordingLogic(AnnotatorLogic):
    """Counts the events of each history; answers the count as SVG text, and an annotation on left mouse up.

    ``gate`` (when set by a test) makes events whose ``x`` equals ``gate_x`` wait for it, so a test can hold a
    frontend's event inside the tool.
    """

    capabilities = ('segmentation', 'polygon')

    def __init__(self, *, thread_safe: bool = False) -> None:
        self.thread_safe = thread_safe  # type: ignore[misc]  # per instance in tests
        self.lock = threading.Lock()
        self.histories_created = 0
        self.seen: list[tuple[str, str, int]] = []  # (frontend, event_type, x) in the order the tool ran them
        self.logged_out: list[str] = []
        self.logout_answer = True
        self.active: dict[str, int] = {}
        self.most_active: dict[str, int] = {}
        self.gate: threading.Event | None = None
        self.gate_x = -1
        self.entered = threading.Event()
        self.fail_with: Exception | None = None
        self.annotation_image: str | None = None

    def create_empty_history(self) -> dict[str, Any]:
        with self.lock:
            self.histories_created += 1
        return {'events': 0}

    def logout_user(self, frontend_id: str) -> bool:
        self.logged_out.append(frontend_id)
        return self.logout_answer

    def handle_user_input(self, user_input: UserInput, history: dict[str, Any]) -> ToolOutput:
        frontend = user_input.frontend_id
        data = user_input.data
        with self.lock:
            self.active[frontend] = self.active.get(frontend, 0) + 1
            self.most_active[frontend] = max(self.most_active.get(frontend, 0), self.active[frontend])
            self.seen.append((frontend, data.event_type.value, data.coordinate.x))
        try:
            assert self.image_path(user_input).is_file(), 'the node fetches the image before the tool runs'
            if self.gate is not None and data.coordinate.x == self.gate_x:
                self.entered.set()
                assert self.gate.wait(10), 'the test never opened the gate'
            if self.fail_with is not None:
                raise self.fail_with
            history['events'] += 1
            annotation = None
            if data.event_type.value == 'left_mouse_up':
                annotation = SegmentationAnnotation(
                    id=f'seg-{frontend}-{history["events"]}',
                    shape=Shape(points=[Point(x=1, y=2), Point(x=30, y=2), Point(x=30, y=40)]),
                    image_id=self.annotation_image or data.image_uuid,
                    category_id=data.category.id,
                )
            return ToolOutput(svg=f'<text>{history["events"]}</text>', annotation=annotation)
        finally:
            with self.lock:
                self.active[frontend] -= 1
