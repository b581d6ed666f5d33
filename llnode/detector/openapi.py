"""The detector's routes and Socket.IO events in the node's OpenAPI document (:mod:`llnode.node.openapi`).

Kept beside :mod:`llnode.detector.rest` and :mod:`llnode.detector.socket_events`, which they describe; a test
fails when a served route is missing here or a described one is not served.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llnode.detector.images import RAW_DTYPES
from llnode.node.openapi import ApiDescription, json_answer, option, text_answer, text_body
from llnode.schema import (
    AboutResponse,
    ImageMetadata,
    ImagesMetadata,
    ModelInformation,
    ModelVersionResponse,
    OperationMode,
    OutboxMode,
)

if TYPE_CHECKING:
    from llnode.detector.node import DetectorNode

AUTOUPLOAD = {'type': 'string', 'enum': ['filtered', 'all', 'disabled'], 'default': 'filtered'}

DESCRIPTION = (
    'A Learning Loop detector: it serves its model over REST and Socket.IO, follows the model version the Loop '
    'deploys, and sends uncertain images (`autoupload: filtered`), all images (`all`) or none (`disabled`) to the '
    'Loop through its outbox. Success payloads are those of the reference `learning_loop_node`; errors are JSON '
    '`{"detail": "..."}` with the status each route lists.'
)


def describe_detector(api: ApiDescription, node: DetectorNode) -> None:
    """Add the detector's routes (``/reset`` only with the backdoor controls) and its Socket.IO events."""
    api.description = DESCRIPTION
    _detect_routes(api)
    _model_routes(api)
    _outbox_routes(api)
    if node.backdoor_enabled:
        api.tag('backdoor', 'Test routes, mounted with USE_BACKDOOR_CONTROLS')
        api.add(
            'POST',
            '/reset',
            tag='backdoor',
            summary='Start over: empty data folder, no model, default modes',
            responses={200: json_answer('Whether the reset succeeded', {'type': 'boolean'})},
        )
    _socketio_events(api)


def _detect_routes(api: ApiDescription) -> None:
    api.tag('detect', 'Inference and uploads')
    multipart_file = {
        'required': True,
        'content': {
            'multipart/form-data': {
                'schema': {
                    'type': 'object',
                    'required': ['file'],
                    'properties': {'file': {'type': 'string', 'contentMediaType': 'application/octet-stream'}},
                },
            }
        },
        'description': 'One image in the part "file": JPEG, PNG or any format Pillow reads',
    }
    api.add(
        'POST',
        '/detect',
        tag='detect',
        summary='Detections for one image',
        description='Concurrent requests share batches of the model (images of one shape only, unless the logic '
        'declares accepts_mixed_shapes). Each option is read from a header or, when no header carries it, a query '
        'parameter; camera-id and creation-date are also accepted with underscores.',
        parameters=[
            *option(
                ['camera-id', 'camera_id'],
                'The camera the image comes from (the relevance filter keeps a history per camera)',
            ),
            *option(['tags'], 'Tags to add to the answer and to an uploaded image, comma-separated'),
            *option(['source'], 'Where the image comes from (set in the answer)'),
            *option(['autoupload'], 'Which images go to the Loop', AUTOUPLOAD),
            *option(['creation-date', 'creation_date'], 'When the image was taken, ISO 8601 (set in the answer)'),
        ],
        request_body=multipart_file,
        responses={200: json_answer('The detections', api.schema(ImageMetadata))},
        errors=[400, 413, 415, 422, 503],
    )
    api.add(
        'POST',
        '/upload',
        tag='detect',
        summary='Images into the outbox, for the Loop',
        description='Every file is checked first (a bad one queues nothing); the answer comes once they are on disk.',
        parameters=[
            *option(['source'], 'Where the images come from', headers=False),
            *option(['creation_date'], 'When they were taken, ISO 8601', headers=False),
            *option(['upload_priority'], 'Upload before the other queued images', {'type': 'boolean'}, headers=False),
        ],
        request_body={
            'required': True,
            'content': {
                'multipart/form-data': {
                    'schema': {
                        'type': 'object',
                        'required': ['files'],
                        'properties': {
                            'files': {
                                'type': 'array',
                                'items': {'type': 'string', 'contentMediaType': 'application/octet-stream'},
                            }
                        },
                    },
                }
            },
            'description': 'Images in parts named "files"',
        },
        responses={
            200: json_answer(
                "Stored (the reference's answer)",
                {'type': 'array', 'prefixItems': [{'const': 200}, {'const': 'OK'}], 'items': False},
            )
        },
        errors=[400, 413, 415, 422, 503, 507],
    )


def _model_routes(api: ApiDescription) -> None:
    api.tag('model', 'The serving model, version control and operation mode')
    api.add(
        'GET',
        '/about',
        tag='model',
        summary='The serving model and the modes',
        responses={200: json_answer('About the detector', api.schema(AboutResponse))},
    )
    api.add(
        'GET',
        '/model_version',
        tag='model',
        summary='Current, target, Loop and local model versions',
        responses={200: json_answer('The versions', api.schema(ModelVersionResponse))},
    )
    api.add(
        'PUT',
        '/model_version',
        tag='model',
        summary='Version control: follow_loop, pause, or a version to run',
        description='An invalid request changes nothing; the choice is saved and survives a restart.',
        request_body=text_body('follow_loop, pause, or a model version such as 1.2', example='follow_loop'),
        responses={200: json_answer('Accepted', {'const': 'OK'})},
        errors=[400, 507],
    )
    modes = [mode.value for mode in OperationMode]
    api.add(
        'GET',
        '/operation_mode',
        tag='model',
        summary='The operation mode',
        responses={200: text_answer('The mode', {'type': 'string', 'enum': modes})},
    )
    api.add(
        'PUT',
        '/operation_mode',
        tag='model',
        summary='Set the operation mode (only idle lets the model change)',
        request_body=text_body('The mode', modes),
        responses={200: json_answer('Accepted', {'const': 'OK'})},
        errors=[422],
    )


def _outbox_routes(api: ApiDescription) -> None:
    api.tag('outbox', 'The queue of images waiting for upload to the Loop')
    modes = [mode.value for mode in OutboxMode]
    api.add(
        'GET',
        '/outbox_mode',
        tag='outbox',
        summary='Whether the outbox uploads',
        responses={200: text_answer('The mode', {'type': 'string', 'enum': modes})},
    )
    api.add(
        'PUT',
        '/outbox_mode',
        tag='outbox',
        summary='Start or stop uploading',
        request_body=text_body('The mode', modes),
        responses={
            200: json_answer('In that mode now', {'const': 'OK'}),
            202: json_answer('Still on its way (an upload is finishing)', {'$ref': '#/components/schemas/Error'}),
        },
        errors=[422],
    )


def _socketio_events(api: ApiDescription) -> None:
    api.schemas['SocketIOError'] = {
        'type': 'object',
        'required': ['error'],
        'properties': {'error': {'type': 'string'}},
        'description': 'The answer of an event that failed',
    }
    binary = {'description': 'A binary attachment', 'contentMediaType': 'application/octet-stream'}
    api.schemas['SocketIOImage'] = {
        'description': 'An image: a raw array (format "raw", the default) or an encoded file (format "jpeg": any '
        'format Pillow reads)',
        'oneOf': [
            {
                'type': 'object',
                'required': ['bytes', 'dtype', 'shape'],
                'properties': {
                    'format': {'const': 'raw'},
                    'bytes': {**binary, 'description': "The array's bytes in C order"},
                    'dtype': {'type': 'string', 'enum': sorted(RAW_DTYPES)},
                    'shape': {'type': 'array', 'items': {'type': 'integer'}, 'minItems': 2, 'maxItems': 3},
                },
            },
            {
                'type': 'object',
                'required': ['format', 'bytes'],
                'properties': {'format': {'const': 'jpeg'}, 'bytes': binary},
            },
        ],
    }
    image = {'$ref': '#/components/schemas/SocketIOImage'}
    options: dict[str, Any] = {
        'camera_id': {'type': ['string', 'null'], 'description': 'also accepted as camera-id'},
        'tags': {'type': 'array', 'items': {'type': 'string'}},
        'source': {'type': ['string', 'null']},
        'autoupload': AUTOUPLOAD,
        'creation_date': {'type': ['string', 'null']},
    }
    error = {'$ref': '#/components/schemas/SocketIOError'}

    def either(schema: dict[str, Any], description: str) -> dict[str, Any]:
        return {'anyOf': [schema, error], 'description': description}

    status_ok = {'type': 'object', 'properties': {'status': {'const': 'OK'}}, 'required': ['status']}
    api.socketio_event(
        'detect',
        summary='Detections for one image',
        argument={
            'type': 'object',
            'required': ['image'],
            'properties': {'image': image, **options},
            'description': '{image, camera_id?, tags?, source?, autoupload?, creation_date?}',
        },
        answer=either(api.schema(ImageMetadata), 'ImageMetadata, or {error}'),
    )
    api.socketio_event(
        'batch_detect',
        summary='Detections for several images (one batch; options apply to each)',
        argument={
            'type': 'object',
            'required': ['images'],
            'properties': {'images': {'type': 'array', 'items': image}, **options},
            'description': '{images: [image, ...], camera_id?, tags?, source?, autoupload?, creation_date?}',
        },
        answer=either(api.schema(ImagesMetadata), '{items: [ImageMetadata, ...]}, or {error}'),
    )
    api.socketio_event(
        'upload',
        summary='One image into the outbox (on disk when answered)',
        argument={
            'type': 'object',
            'required': ['image'],
            'properties': {
                'image': image,
                'metadata': {'anyOf': [api.schema(ImageMetadata), {'type': 'null'}]},
                'upload_priority': {'type': 'boolean', 'default': False},
            },
            'description': '{image, metadata?, upload_priority?}',
        },
        answer=either(status_ok, '{status: "OK"}, or {error}'),
    )
    api.socketio_event(
        'info',
        summary='The serving model',
        argument=None,
        answer={
            'anyOf': [
                api.schema(ModelInformation),
                {'type': 'object', 'properties': {'status': {'type': 'string'}}, 'required': ['status']},
            ],
            'description': 'ModelInformation, or {status: "No model loaded" or "Updating model to version X"}',
        },
    )
    api.socketio_event(
        'about',
        summary='As GET /about',
        argument=None,
        answer={**api.schema(AboutResponse), 'description': 'AboutResponse'},
    )
    api.socketio_event(
        'get_model_version',
        summary='As GET /model_version',
        argument=None,
        answer={**api.schema(ModelVersionResponse), 'description': 'ModelVersionResponse'},
    )
    api.socketio_event(
        'set_model_version_mode',
        summary='As PUT /model_version',
        argument={'type': 'string', 'description': 'follow_loop, pause or a version'},
        answer=either(status_ok, '{status: "OK"}, or {error}'),
    )
    api.socketio_event(
        'get_outbox_mode',
        summary='As GET /outbox_mode',
        argument=None,
        answer={
            'type': 'object',
            'properties': {'outbox_mode': {'type': 'string', 'enum': [m.value for m in OutboxMode]}},
            'description': '{outbox_mode}',
        },
    )
    api.socketio_event(
        'set_outbox_mode',
        summary='As PUT /outbox_mode',
        argument={
            'type': 'string',
            'enum': [m.value for m in OutboxMode],
            'description': 'continuous_upload or stopped',
        },
        answer=either(status_ok, '{status: "OK"}, or {error}'),
    )
