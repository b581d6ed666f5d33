"""One node of each type, built (not started) on the local Loop's settings: for tests that every node type must
pass (``/metrics``, ``/openapi.json``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llnode.annotator import AnnotatorNode
from llnode.converter import ConverterNode
from llnode.detector import DetectorNode
from llnode.localloop import LocalLoop
from llnode.node import Node
from llnode.trainer import TrainerNode
from tests.annotator.support import RecordingLogic
from tests.converter.conftest import UpperLogic
from tests.detector.node_helpers import TestingFactory, install_model
from tests.trainer.trainer_support import ScriptedLogic

#: every node type, and the detector and trainer with their test routes (``USE_BACKDOOR_CONTROLS``)
NODE_KINDS = ('node', 'detector', 'detector+backdoor', 'trainer', 'trainer+backdoor', 'annotator', 'converter')


def build_node(kind: str, loop: LocalLoop, folder: Path) -> Node:
    """A node of ``kind`` (one of :data:`NODE_KINDS`) with its data in ``folder``; detectors have model 0.0."""
    settings = loop.settings(data_folder=folder)
    backdoor = kind.endswith('+backdoor')
    fast: dict[str, Any] = {'repeat_interval': 0.1}
    if kind == 'node':
        return Node('every node', settings=settings, **fast)
    if kind.startswith('detector'):
        settings.ensure_data_folder()
        install_model(settings.data_folder)
        return DetectorNode(
            'every detector', TestingFactory(), settings=settings, use_backdoor_controls=backdoor, **fast
        )
    if kind.startswith('trainer'):
        return TrainerNode('every trainer', ScriptedLogic(), settings=settings, use_backdoor_controls=backdoor, **fast)
    if kind == 'annotator':
        return AnnotatorNode('every annotator', RecordingLogic(), settings=settings, **fast)
    if kind == 'converter':
        return ConverterNode('every converter', UpperLogic(), settings=settings, **fast)
    raise ValueError(f'unknown node kind {kind!r}')
