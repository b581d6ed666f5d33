"""The reference's ``learning_loop_node.trainer.exceptions`` under llnode."""

from __future__ import annotations

from llnode.trainer.batch_size import InsufficientMemoryError
from llnode.trainer.logic import CriticalError

__all__ = ['CriticalError', 'InsufficientMemoryError']
