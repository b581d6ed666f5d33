"""The reference's ``learning_loop_node.enums`` under llnode: the same enumerations, from :mod:`llnode.schema`.

Each member also answers to the reference's spelling (``CategoryType.Box`` is ``CategoryType.BOX``).
"""

from __future__ import annotations

from llnode.schema import (
    AnnotationEventType,
    CategoryType,
    NodeState,
    OperationMode,
    OutboxMode,
    TrainerState,
    VersionMode,
)

__all__ = [
    'AnnotationEventType',
    'CategoryType',
    'NodeState',
    'OperationMode',
    'OutboxMode',
    'TrainerState',
    'VersionMode',
]
