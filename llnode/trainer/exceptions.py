"""The trainer's exceptions under the reference's module name (``learning_loop_node.trainer.exceptions``)."""

from __future__ import annotations

from llnode.node.restart import NodeNeedsRestartError
from llnode.trainer.batch_size import InsufficientMemoryError
from llnode.trainer.logic import CriticalError

__all__ = ['CriticalError', 'InsufficientMemoryError', 'NodeNeedsRestartError']
