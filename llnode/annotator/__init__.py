"""The Annotator node: an interactive annotation tool (e.g. segmentation) served to the Loop's UI.

``AnnotatorNode(name, logic)`` runs an :class:`AnnotatorLogic`; the tool answers the UI's mouse and key events
with SVG overlays and, when an object is done, a :class:`~llnode.schema.SegmentationAnnotation` that the node
sends to the Loop. The payload classes a tool works with are re-exported here from :mod:`llnode.schema`.
"""

from __future__ import annotations

from llnode.annotator.logic import AnnotatorLogic
from llnode.annotator.node import AnnotationNotStored, AnnotatorNode
from llnode.annotator.sessions import SessionBusy, SessionsClosed
from llnode.schema import AnnotationEventType, Point, SegmentationAnnotation, Shape, ToolOutput, UserInput

__all__ = [
    'AnnotationEventType',
    'AnnotationNotStored',
    'AnnotatorLogic',
    'AnnotatorNode',
    'Point',
    'SegmentationAnnotation',
    'SessionBusy',
    'SessionsClosed',
    'Shape',
    'ToolOutput',
    'UserInput',
]
