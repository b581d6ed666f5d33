"""Fixtures for the annotator tests: ``make_annotator(loop, logic, **options)`` starts an AnnotatorNode against a
local Loop with a fast repeat cycle, waits until the Loop knows it, and stops it at teardown."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from llnode.annotator import AnnotatorNode
from tests.annotator.support import RecordingLogic
from tests.linked_nodes import NodeFactory

#: Node options for tests: status reports ten times a second.
FAST = {'repeat_interval': 0.1}


@pytest.fixture
def make_annotator() -> Iterator[NodeFactory[AnnotatorNode]]:
    """``make_annotator(loop, logic=None, *, name='test annotator', settings=None, connect=True, **node_options)``.

    ``settings`` are overrides of ``loop.settings()``; every node it made is stopped at teardown.
    """
    factory = NodeFactory(AnnotatorNode, RecordingLogic, 'test annotator', FAST)
    yield factory
    factory.stop_all()
