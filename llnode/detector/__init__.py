"""The Detector node and its parts: the user's logic API, the batching inference worker, the torch logic.

Importing this package never imports torch; :mod:`llnode.detector.torch_logic` loads it only when used.
"""

from __future__ import annotations

from llnode.detector.batching import InferenceBusy, InferenceStopped, InferenceTimeout, InferenceWorker
from llnode.detector.logic import DetectorFactory, DetectorLogic, ImageInputError, LogicResultError
from llnode.detector.node import DetectorNode, VersionControlError
from llnode.detector.outbox import Outbox, OutboxClosed, OutboxError, OutboxFull, OutboxLocked
from llnode.detector.relevance import RelevanceFilter
from llnode.detector.torch_logic import BatchMeta, ImageGeometry, TorchDetectorLogic

__all__ = [
    'BatchMeta',
    'DetectorFactory',
    'DetectorLogic',
    'DetectorNode',
    'ImageGeometry',
    'ImageInputError',
    'InferenceBusy',
    'InferenceStopped',
    'InferenceTimeout',
    'InferenceWorker',
    'LogicResultError',
    'Outbox',
    'OutboxClosed',
    'OutboxError',
    'OutboxFull',
    'OutboxLocked',
    'RelevanceFilter',
    'TorchDetectorLogic',
    'VersionControlError',
]
