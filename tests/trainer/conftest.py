"""Fixtures for the trainer tests: ``make_trainer(loop, logic, **options)`` starts a TrainerNode against a local
Loop with test-sized timings (fast repeat cycle, short retry delays) and stops it at teardown."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from llnode.trainer import TrainerNode
from tests.linked_nodes import NodeFactory
from tests.trainer.trainer_support import ScriptedLogic

#: Node options for tests: fast cycles and retries, metrics sent at once.
FAST = {'repeat_interval': 0.1, 'retry_delay': 0.05, 'max_retry_delay': 0.2, 'metrics_interval': 0.0}


@pytest.fixture
def make_trainer() -> Iterator[NodeFactory[TrainerNode]]:
    """``make_trainer(loop, logic=None, *, name='test trainer', settings=None, connect=True, **node_options)``.

    ``settings`` are overrides of ``loop.settings()``; every node it made is stopped at teardown.
    """
    factory = NodeFactory(TrainerNode, ScriptedLogic, 'test trainer', FAST)
    yield factory
    factory.stop_all()
