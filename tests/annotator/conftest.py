"""Fixtures for the annotator tests: ``make_annotator(loop, logic, **options)`` starts an AnnotatorNode against a
local Loop with a fast repeat cycle, waits until the Loop knows it, and stops it at teardown."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from llnode.annotator import AnnotatorLogic, AnnotatorNode
from llnode.localloop import LocalLoop
from tests.annotator.support import RecordingLogic, wait_connected

#: Node options for tests: status reports ten times a second.
FAST = {'repeat_interval': 0.1}


@pytest.fixture
def make_annotator() -> Iterator[Callable[..., AnnotatorNode]]:
    """``make_annotator(loop, logic=None, *, name='test annotator', settings=None, connect=True, **node_options)``.

    ``settings`` are overrides of ``loop.settings()``; every node it made is stopped at teardown.
    """
    nodes: list[AnnotatorNode] = []

    def make(
        loop: LocalLoop,
        logic: AnnotatorLogic | None = None,
        *,
        name: str = 'test annotator',
        settings: dict[str, Any] | None = None,
        connect: bool = True,
        **options: Any,
    ) -> AnnotatorNode:
        node = AnnotatorNode(
            name, logic or RecordingLogic(), settings=loop.settings(**(settings or {})), **{**FAST, **options}
        )
        nodes.append(node)
        node.start()
        if connect:
            wait_connected(loop, node)
        return node

    yield make
    for node in reversed(nodes):
        node.stop()
