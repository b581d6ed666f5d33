"""Fixtures for the trainer tests: ``make_trainer(loop, logic, **options)`` starts a TrainerNode against a local
Loop with test-sized timings (fast repeat cycle, short retry delays) and stops it at teardown."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from llnode.localloop import LocalLoop
from llnode.trainer import TrainerLogic, TrainerNode
from tests.trainer.trainer_support import ScriptedLogic, wait_connected

#: Node options for tests: fast cycles and retries, metrics sent at once.
FAST = {'repeat_interval': 0.1, 'retry_delay': 0.05, 'max_retry_delay': 0.2, 'metrics_interval': 0.0}


@pytest.fixture
def make_trainer() -> Iterator[Callable[..., TrainerNode]]:
    """``make_trainer(loop, logic=None, *, name='test trainer', settings=None, connect=True, **node_options)``.

    ``settings`` are overrides of ``loop.settings()``; every started node is stopped at teardown.
    """
    nodes: list[TrainerNode] = []

    def make(
        loop: LocalLoop,
        logic: TrainerLogic | None = None,
        *,
        name: str = 'test trainer',
        settings: dict[str, Any] | None = None,
        connect: bool = True,
        **options: Any,
    ) -> TrainerNode:
        node = TrainerNode(
            name, logic or ScriptedLogic(), settings=loop.settings(**(settings or {})), **{**FAST, **options}
        )
        nodes.append(node)
        node.start()
        if connect:
            wait_connected(loop, node)
        return node

    yield make
    for node in reversed(nodes):
        node.stop()
