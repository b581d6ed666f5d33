"""The detector's exceptions under the reference's module name (``learning_loop_node.detector.exceptions``)."""

from __future__ import annotations

from llnode.node.restart import NodeNeedsRestartError

__all__ = ['NodeNeedsRestartError']
