"""Nodes with a Socket.IO link to the local Loop (trainer, annotator), as the test fixtures start them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from llnode.localloop import LocalLoop
from llnode.node import Node
from tests.polling import wait_for

N = TypeVar('N', bound=Node)


def wait_connected(loop: LocalLoop, node: Node, timeout: float = 15.0) -> None:
    """Until the Loop knows the node by its id (a status arrived) and the node's own link is up."""
    wait_for(
        lambda: (
            any(n['id'] == node.uuid and n['connected'] for n in loop.nodes())
            and node.loop_socket is not None
            and node.loop_socket.connected
        ),
        timeout=timeout,
        what=f'{node.name} to connect and report',
    )


class NodeFactory(Generic[N]):
    """``factory(loop, logic=None, *, name=None, settings=None, connect=True, **node_options)`` starts a node of
    ``node_class`` on ``loop.settings(**settings)`` with the test-sized ``fast`` options; ``stop_all()`` stops
    every node it made (for the fixture's teardown)."""

    def __init__(
        self, node_class: Callable[..., N], default_logic: Callable[[], Any], name: str, fast: dict[str, Any]
    ) -> None:
        self.node_class = node_class
        self.default_logic = default_logic
        self.name = name
        self.fast = fast
        self.nodes: list[N] = []

    def __call__(
        self,
        loop: LocalLoop,
        logic: Any = None,
        *,
        name: str | None = None,
        settings: dict[str, Any] | None = None,
        connect: bool = True,
        **options: Any,
    ) -> N:
        node = self.node_class(
            name or self.name,
            logic if logic is not None else self.default_logic(),
            settings=loop.settings(**(settings or {})),
            **{**self.fast, **options},
        )
        self.nodes.append(node)
        node.start()
        if connect:
            wait_connected(loop, node)
        return node

    def stop_all(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
