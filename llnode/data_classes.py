"""The reference's ``learning_loop_node.data_classes`` under llnode: the wire dataclasses of :mod:`llnode.schema`
(and :class:`~llnode.trainer.logic.TrainingStateData`), so a port can keep its imports and change the package name.

The reference's ``Training`` is not here: an llnode trainer gets a ``run`` (:class:`llnode.trainer.TrainingRun`)
in every hook instead (see the migration guide).
"""

from __future__ import annotations

from llnode.schema import (
    AboutResponse,
    AnnotationData,
    BoxAnnotation,
    BoxDetection,
    Category,
    ClassificationAnnotation,
    ClassificationDetection,
    Context,
    Coordinate,
    Detections,
    DetectorStatus,
    ImageMetadata,
    ImagesMetadata,
    ModelInformation,
    ModelVersionResponse,
    NodeState,
    NodeStatus,
    Point,
    PointAnnotation,
    PointDetection,
    PretrainedModel,
    SegmentationAnnotation,
    SegmentationDetection,
    Shape,
    SocketResponse,
    ToolOutput,
    TrainingDetails,
    TrainingOut,
    TrainingStatus,
    UserInput,
)
from llnode.trainer.logic import TrainingStateData

__all__ = [
    'AboutResponse',
    'AnnotationData',
    'BoxAnnotation',
    'BoxDetection',
    'Category',
    'ClassificationAnnotation',
    'ClassificationDetection',
    'Context',
    'Coordinate',
    'Detections',
    'DetectorStatus',
    'ImageMetadata',
    'ImagesMetadata',
    'ModelInformation',
    'ModelVersionResponse',
    'NodeState',
    'NodeStatus',
    'Point',
    'PointAnnotation',
    'PointDetection',
    'PretrainedModel',
    'SegmentationAnnotation',
    'SegmentationDetection',
    'Shape',
    'SocketResponse',
    'ToolOutput',
    'TrainingDetails',
    'TrainingOut',
    'TrainingStateData',
    'TrainingStatus',
    'UserInput',
]
