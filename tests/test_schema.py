"""Wire dataclasses: the reference's observed payloads round-trip byte for byte; bad input names the field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from llnode import schema
from llnode.schema import (
    AboutResponse,
    AnnotationEventType,
    Category,
    Detections,
    DetectorStatus,
    ImageMetadata,
    ImagesMetadata,
    ModelInformation,
    ModelVersionResponse,
    NodeStatus,
    OperationMode,
    SchemaError,
    SegmentationAnnotation,
    SocketResponse,
    TrainerState,
    TrainingDetails,
    TrainingOut,
    TrainingStatus,
    UserInput,
)

# Observed reference payloads (loop-protocol.md §3.5, §3.6, §4.2, §7), with 0.27's added null fields.
DETECT_ANSWER = {
    'box_detections': [
        {
            'category_name': 'box_cat',
            'x': 1,
            'y': 2,
            'width': 3,
            'height': 4,
            'model_name': '1.1',
            'confidence': 0.42,
            'category_id': 'c1',
        }
    ],
    'point_detections': [
        {
            'category_name': 'point_cat',
            'x': 10.5,
            'y': 12.0,
            'model_name': '1.1',
            'confidence': 0.9,
            'category_id': 'c2',
        }
    ],
    'segmentation_detections': [
        {'category_name': 'seg_cat', 'shape': '1,1,5,6', 'model_name': '1.1', 'confidence': 0.8, 'category_id': 'c3'}
    ],
    'classification_detections': [
        {'category_name': 'cls', 'model_name': '1.1', 'confidence': 0.5, 'category_id': 'c4'}
    ],
    'box_annotations': [],
    'point_annotations': [],
    'classification_annotation': None,
    'tags': ['x', 'y'],
    'created': '2024-01-30T12:34:56',
    'source': 'robot',
    'state': None,
}
TRAINER_DETECTIONS = {
    'box_detections': [
        {
            'category_name': 'box_cat',
            'x': 1,
            'y': 2,
            'width': 30,
            'height': 40,
            'model_name': '2.0',
            'confidence': 0.99,
            'category_id': 'c1',
        }
    ],
    'point_detections': [
        {
            'category_name': 'point_cat',
            'x': 100.0,
            'y': 200.0,
            'model_name': '2.0',
            'confidence': 0.97,
            'category_id': 'c2',
        }
    ],
    'segmentation_detections': [
        {
            'category_name': 'seg_cat',
            'shape': {'points': [{'x': 1, 'y': 2}, {'x': 3, 'y': 4}]},
            'model_name': '2.0',
            'confidence': 0.96,
            'category_id': 'c3',
        }
    ],
    'classification_detections': [],
    'image_id': 'aaaa02',
}
IDLE_TRAINER = {
    'id': '85ef',
    'name': 'mocked trainer',
    'state': 'idle',
    'uptime': None,
    'errors': {},
    'progress': None,
    'pretrained_models': [{'name': 'small', 'label': 'Small', 'description': 'a small model'}],
    'architecture': 'mocked',
    'context': None,
}
TRAINING_OUT = {
    'trainer_id': '85ef',
    'trainer_name': 'mocked trainer',
    'confusion_matrix': {'c1': {'tp': 1, 'fp': 9, 'fn': 10}},
    'train_image_count': 1,
    'test_image_count': 1,
    'hyperparameters': {'resolution': 320, 'fliplr': 0.5, 'flipud': 0.0},
    'best_epoch': None,
}
DETECTOR_STATUS = {
    'uuid': 'f72a',
    'name': 'probe detector',
    'state': 'online',
    'uptime': 0,
    'model_format': 'mocked',
    'current_model': '1.1',
    'target_model': '1.1',
    'errors': {},
    'operation_mode': 'idle',
    'node_version': None,
}
ANNOTATION_NODE = {
    'id': 'n1',
    'name': 'annotator',
    'state': 'online',
    'uptime': 0,
    'errors': {},
    'capabilities': ['segmentation'],
}
SEGMENTATION_ANNOTATION = {
    'id': 'seg1',
    'shape': {'points': [{'x': 1, 'y': 2}, {'x': 3, 'y': 4}]},
    'image_id': 'aaaa01',
    'category_id': 'c3',
}
MODEL_VERSION = {
    'current_version': '1.1',
    'target_version': '1.0',
    'loop_version': '1.1',
    'local_versions': ['1.1'],
    'version_control': 'specific_version',
}
MODEL_JSON = {
    'id': '00000000-0000-0000-0000-000000000011',
    'host': 'learning-loop.ai',
    'organization': 'zauberzeug',
    'project': 'demo',
    'version': '1.1',
    'categories': [
        {
            'id': 'c1',
            'name': 'purple point',
            'description': None,
            'hotkey': None,
            'color': '#FF00FF',
            'point_size': 20,
            'type': 'point',
        }
    ],
    'resolution': 320,
    'model_root_path': None,
    'model_size': None,
    'conf_threshold': None,
}


@pytest.mark.parametrize(
    ('cls', 'payload'),
    [
        (ImageMetadata, DETECT_ANSWER),
        (Detections, TRAINER_DETECTIONS),
        (TrainingStatus, IDLE_TRAINER),
        (TrainingOut, TRAINING_OUT),
        (DetectorStatus, DETECTOR_STATUS),
        (NodeStatus, ANNOTATION_NODE),
        (SegmentationAnnotation, SEGMENTATION_ANNOTATION),
        (ModelVersionResponse, MODEL_VERSION),
        (ModelInformation, MODEL_JSON),
        (ImagesMetadata, {'items': [DETECT_ANSWER]}),
        (SocketResponse, {'success': True, 'error_msg': None, 'payload': None}),
    ],
)
def test_observed_payloads_round_trip_with_the_same_keys_in_the_same_order(cls: Any, payload: dict[str, Any]) -> None:
    parsed = cls.from_dict(payload)
    assert json.dumps(parsed.to_dict()) == json.dumps(payload)
    assert cls.from_json(parsed.to_json()) == parsed


def test_unknown_keys_are_ignored_and_optional_fields_default() -> None:
    m = ImageMetadata.from_dict({'tags': ['a'], 'future_field': 1, 'created': None})
    assert m.tags == ['a'] and m.box_detections == [] and m.created is None and m.state is None
    info = ModelInformation.from_dict({'id': 'i', 'organization': 'o', 'project': 'p', 'version': '1.0', 'format': 'x'})
    assert info.host is None and info.categories == [] and info.resolution is None
    assert 'model_root_path' not in info.to_model_json()


def test_created_defaults_to_local_now_in_the_reference_form() -> None:
    created = ImageMetadata().created
    assert created is not None and len(created) == len('2024-01-30_12:34:56.123') and created[10] == '_'


@pytest.mark.parametrize(
    ('payload', 'message'),
    [
        (
            {
                'box_detections': [
                    {
                        'category_name': 'a',
                        'x': 1.5,
                        'y': 2,
                        'width': 3,
                        'height': 4,
                        'model_name': 'm',
                        'confidence': 0.5,
                    }
                ]
            },
            'expected an integer, got float for field "box_detections[0].x"',
        ),
        ({'box_detections': [{'x': 1}]}, 'missing value for field "box_detections[0].category_name"'),
        (
            {'point_detections': [{'category_name': 'a', 'x': True, 'y': 1, 'model_name': 'm', 'confidence': 1}]},
            'expected a number, got bool for field "point_detections[0].x"',
        ),
        ({'tags': 'a,b'}, 'expected a list, got str for field "tags"'),
        ({'tags': [1]}, 'expected a string, got int for field "tags[0]"'),
        (
            {'segmentation_detections': [{'category_name': 'a', 'shape': 5, 'model_name': 'm', 'confidence': 1}]},
            'field "segmentation_detections[0].shape"',
        ),
        (
            {'classification_annotation': {'category_id': 'x'}},
            'missing value for field "classification_annotation.category_name"',
        ),
    ],
)
def test_bad_payloads_name_the_field(payload: dict[str, Any], message: str) -> None:
    with pytest.raises(SchemaError) as info:
        ImageMetadata.from_dict(payload)
    assert message in str(info.value)


def test_not_an_object_and_malformed_json() -> None:
    with pytest.raises(SchemaError, match='expected an object, got list'):
        ImageMetadata.from_dict([])
    with pytest.raises(SchemaError, match='malformed JSON'):
        ImageMetadata.from_json(b'{"tags": [')


def test_enums_reject_unknown_values_listing_the_allowed_ones() -> None:
    with pytest.raises(SchemaError, match=r"'sleeping' is not one of 'startup', 'idle', 'detecting'.*operation_mode"):
        DetectorStatus.from_dict({**DETECTOR_STATUS, 'operation_mode': 'sleeping'})
    assert DetectorStatus.from_dict(DETECTOR_STATUS).operation_mode is OperationMode.IDLE


def test_user_input_parses_nested_annotation_data() -> None:
    data = {
        'frontend_id': 'f1',
        'data': {
            'coordinate': {'x': 10, 'y': 20},
            'event_type': 'mouse_move',
            'context': {'organization': 'zauberzeug', 'project': 'demo'},
            'image_uuid': 'img',
            'category': {'id': 'c', 'name': 'seg', 'type': 'segmentation'},
            'key_up': None,
        },
    }
    user_input = UserInput.from_dict(data)
    assert user_input.data.event_type is AnnotationEventType.MOUSE_MOVE
    assert user_input.data.category == Category(id='c', name='seg', type='segmentation')
    assert user_input.data.epsilon is None
    with pytest.raises(SchemaError, match='missing value for field "data"'):
        UserInput.from_dict({'frontend_id': 'f1'})


@pytest.mark.parametrize(
    ('change', 'message'),
    [
        ({'hyperparameters': None}, 'hyperparameters missing or not a dict'),
        ({'training_number': '1'}, 'training_number missing or not an int'),
        ({'training_number': True}, 'training_number missing or not an int'),
        ({'categories': 'c'}, 'categories missing or not a list'),
        ({'model_variant': 3}, 'model_variant missing or not a str'),
    ],
)
def test_training_details_are_validated_with_the_reference_messages(change: dict[str, Any], message: str) -> None:
    details = {
        'categories': [{'id': 'c1', 'name': 'a'}],
        'training_number': 3,
        'model_variant': '',
        'hyperparameters': {'resolution': 320},
        'id': 'ignored',
    }
    parsed = TrainingDetails.from_dict(details)
    assert parsed.training_number == 3 and parsed.base_model_uuid is None
    with pytest.raises(SchemaError) as info:
        TrainingDetails.from_dict({**details, **change})
    assert str(info.value) == message


def test_segmentation_shape_flattens_to_the_detector_string() -> None:
    d = Detections.from_dict(TRAINER_DETECTIONS).segmentation_detections[0]
    assert d.flattened().shape == '1,2,3,4'
    assert d.shape != '1,2,3,4'  # the original is not mutated


def test_about_response_carries_model_root_path() -> None:
    info = ModelInformation.from_dict({**MODEL_JSON, 'model_root_path': '/data/models/1.1'})
    about = AboutResponse(
        operation_mode='idle', state='online', model_info=info, target_model='1.1', version_control='follow_loop'
    )
    assert about.to_dict()['model_info']['model_root_path'] == '/data/models/1.1'


def test_trainer_states_cover_the_protocol_in_order() -> None:
    pipeline = [s.value for s in TrainerState][4:]
    assert pipeline[0] == 'initialized' and pipeline[-1] == 'ready_for_cleanup' and len(pipeline) == 15
    assert {'idle', 'blocked', 'waiting_for_slot', 'preparing'} <= {s.value for s in TrainerState}
    assert schema.now_created()[4] == '-'
