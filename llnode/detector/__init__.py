"""The Detector node and its parts: the user's logic API, the batching inference worker, the torch logic.

Importing this package never imports torch; :mod:`llnode.detector.torch_logic` loads it only when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llnode.detector.batching import InferenceBusy, InferenceStopped, InferenceTimeout, InferenceWorker
from llnode.detector.exceptions import NodeNeedsRestartError
from llnode.detector.logic import DetectorFactory, DetectorLogic, ImageInputError, LogicResultError
from llnode.detector.node import DetectorNode, VersionControlError
from llnode.detector.outbox import Outbox, OutboxClosed, OutboxError, OutboxFull, OutboxLocked
from llnode.detector.relevance import RelevanceFilter

#: The reference's name of :class:`DetectorFactory`.
DetectorLogicFactory = DetectorFactory

if TYPE_CHECKING:
    from llnode.detector.torch_logic import BatchMeta, ImageGeometry, TorchDetectorLogic

#: names served by :func:`__getattr__` from :mod:`llnode.detector.torch_logic`, loaded on first use
_TORCH_NAMES = ('BatchMeta', 'ImageGeometry', 'TorchDetectorLogic')


def __getattr__(name: str) -> Any:
    """The torch logic's names, imported on first use: a detector without torch never loads the module."""
    if name in _TORCH_NAMES:
        from llnode.detector import torch_logic

        return getattr(torch_logic, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


__all__ = [
    'BatchMeta',
    'DetectorFactory',
    'DetectorLogic',
    'DetectorLogicFactory',
    'DetectorNode',
    'ImageGeometry',
    'ImageInputError',
    'InferenceBusy',
    'InferenceStopped',
    'InferenceTimeout',
    'InferenceWorker',
    'LogicResultError',
    'NodeNeedsRestartError',
    'Outbox',
    'OutboxClosed',
    'OutboxError',
    'OutboxFull',
    'OutboxLocked',
    'RelevanceFilter',
    'TorchDetectorLogic',
    'VersionControlError',
]
