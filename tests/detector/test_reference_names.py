"""A port of a reference detector keeps its spellings: ``CategoryType.Box``, a frozen-dataclass factory whose
``model_format`` is a property, ``DetectorLogicFactory``, ``learning_loop_node.enums``/``data_classes`` as
``llnode.enums``/``llnode.data_classes``, and the toolkit's ``post_process`` in ``evaluate``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import requests

from llnode import data_classes, enums
from llnode.detector import DetectorLogic, DetectorLogicFactory
from llnode.detector.postprocess import post_process, to_image_metadata
from llnode.schema import CategoryType, ImageMetadata, ModelInformation, TrainerState
from llnode.trainer import BestState, TrainingStateData
from tests.detector.conftest import Detector
from tests.detector.node_helpers import jpeg_bytes


def test_the_reference_enum_spellings_resolve() -> None:
    assert CategoryType.Box is CategoryType.BOX and CategoryType.Point is CategoryType.POINT
    assert CategoryType.Segmentation is CategoryType.SEGMENTATION
    assert CategoryType.Classification is CategoryType.CLASSIFICATION
    assert CategoryType.Box == 'box'  # a category's type string compares as in the reference
    assert [m.value for m in CategoryType] == ['box', 'point', 'segmentation', 'classification']  # no duplicates
    assert TrainerState.TrainingRunning.value == 'running' and TrainerState.ReadyForCleanup.value == 'ready_for_cleanup'
    reference_trainer_states = {
        'Idle': 'idle', 'Initialized': 'initialized', 'Preparing': 'preparing', 'DataDownloading': 'data_downloading',
        'DataDownloaded': 'data_downloaded', 'TrainModelDownloading': 'train_model_downloading',
        'TrainModelDownloaded': 'train_model_downloaded', 'TrainingRunning': 'running',
        'TrainingFinished': 'training_finished', 'ConfusionMatrixSyncing': 'confusion_matrix_syncing',
        'ConfusionMatrixSynced': 'confusion_matrix_synced', 'TrainModelUploading': 'train_model_uploading',
        'TrainModelUploaded': 'train_model_uploaded', 'Detecting': 'detecting', 'Detected': 'detected',
        'DetectionUploading': 'detection_uploading', 'ReadyForCleanup': 'ready_for_cleanup', 'Blocked': 'blocked',
    }  # fmt: skip
    for name, value in reference_trainer_states.items():
        assert getattr(TrainerState, name).value == value
    assert enums.VersionMode.FollowLoop.value == 'follow_loop' and enums.VersionMode.Pause.value == 'pause'
    assert enums.OperationMode.Startup.value == 'startup' and enums.OperationMode.Detecting.value == 'detecting'
    assert enums.AnnotationEventType.LeftMouseDown.value == 'left_mouse_down'
    assert enums.AnnotationEventType.KeyUp.value == 'key_up'
    assert data_classes.NodeState.Online.value == 'online'
    assert enums.OutboxMode.CONTINUOUS_UPLOAD.value == 'continuous_upload'
    # TrainingStateData keeps the reference's argument order and is a BestState
    state = TrainingStateData({'c': {'tp': 1, 'fp': 0, 'fn': 0}}, {'weightfile': 'w.pt'}, 7)
    assert isinstance(state, BestState)
    assert (state.epoch, state.meta_information) == (7, {'weightfile': 'w.pt'})
    assert data_classes.TrainingStateData is TrainingStateData


class Yolo5StyleLogic(DetectorLogic):
    """What a ported yolov5 detector does after its engine ran: raw xyxy boxes -> post_process -> metadata."""

    def __init__(self, model_info: ModelInformation, params: YoloParams) -> None:
        super().__init__(model_info)
        self.params = params
        box_index = next(n for n, c in enumerate(model_info.categories) if c.type == CategoryType.Box)
        point_index = next(n for n, c in enumerate(model_info.categories) if c.type == CategoryType.Point)
        self.raw = (
            np.array([[2.0, 3, 20, 15], [3.0, 3, 21, 15], [4.0, 4, 12, 12], [0, 0, 1, 1]]),
            np.array([0.9, 0.8, 0.7, 0.95]),
            np.array([box_index, box_index, point_index, box_index]),
        )

    def evaluate(self, image: np.ndarray) -> ImageMetadata:
        height, width = image.shape[:2]
        predictions = post_process(
            *self.raw,
            conf_threshold=self.params.conf_threshold,
            iou_threshold=self.params.iou_threshold,
            origin_h=height,
            origin_w=width,
        )
        return to_image_metadata(predictions, self.model_info, height, width)


@dataclass(frozen=True)
class YoloParams(DetectorLogicFactory):
    """A frozen dataclass with ``model_format`` as a property, as yolov5_node's ``Yolov5DetectorParams``."""

    conf_threshold: float
    iou_threshold: float

    @property
    def model_format(self) -> str:  # type: ignore[override]
        return 'mocked'

    def build(self, model_info: ModelInformation) -> Yolo5StyleLogic:
        return Yolo5StyleLogic(model_info, self)


def test_a_frozen_factory_with_a_model_format_property_serves(make_detector: Callable[..., Detector]) -> None:
    detector = make_detector('werkzeug', factory=YoloParams(conf_threshold=0.2, iou_threshold=0.45))  # type: ignore[arg-type]
    response = requests.post(f'{detector.url}/detect', files={'file': jpeg_bytes()}, timeout=10)
    assert response.status_code == 200, response.text
    answer = response.json()
    boxes = [(b['x'], b['y'], b['width'], b['height'], b['confidence']) for b in answer['box_detections']]
    assert boxes == [(2, 3, 18, 12, 0.9)]  # the overlapping 0.8 box is suppressed, the 1x1 one dropped
    (point,) = answer['point_detections']
    assert (point['x'], point['y'], point['category_id']) == (8.0, 8.0, 'some_id_2')
    assert requests.get(f'{detector.url}/about', timeout=10).status_code == 200


def test_a_trainer_logic_may_give_its_model_format_as_a_property() -> None:
    from llnode.trainer import TrainerLogic

    class PropertyTrainer(TrainerLogic):
        @property
        def model_format(self) -> str:  # type: ignore[override]
            return 'yolov5_pytorch'

    assert PropertyTrainer().model_format == 'yolov5_pytorch'
    assert TrainerLogic('yolov5_wts').model_format == 'yolov5_wts'
