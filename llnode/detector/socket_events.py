"""The detector's Socket.IO events (loop-protocol §4.3), served at ``/ws/socket.io`` beside the REST routes.

Each handler answers through the ack, without the node↔Loop envelope: the payload on success, ``{"error": ...}``
on failure (the reference's messages where it has them: "detector not yet initialized", "updating model to
version X", "could not parse image from data", followed here by the reason). Handlers run in python-socketio's
handler threads, so concurrent clients reach the inference worker together and share its batches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from llnode.detector.deployment import NotServing
from llnode.detector.images import ImageDecodeError, ImagePayloadError, ImageTooLargeError, image_from_dict
from llnode.detector.options import check_autoupload, checked_text
from llnode.node.errors import NodeHTTPError
from llnode.node.metrics import LabelledCounts
from llnode.schema import ImageMetadata, OutboxMode, SchemaError

if TYPE_CHECKING:
    from llnode.detector.node import DetectorNode

logger = logging.getLogger('llnode.detector.socketio')

_IMAGE_ERRORS = (ImageDecodeError, ImagePayloadError, ImageTooLargeError)


def register_socket_events(node: DetectorNode) -> None:
    """Register every detector event on ``node.sio``."""
    with_payload: dict[str, Callable[[Any], Any]] = {
        'detect': lambda data: _detect(node, data),
        'batch_detect': lambda data: _batch_detect(node, data),
        'upload': lambda data: _upload(node, data),
        'set_model_version_mode': lambda text: _set_model_version_mode(node, text),
        'set_outbox_mode': lambda text: _set_outbox_mode(node, text),
    }
    without_payload: dict[str, Callable[[], Any]] = {
        'info': lambda: _info(node),
        'about': lambda: node.about().to_dict(),
        'get_model_version': lambda: node.model_versions().to_dict(),
        'get_outbox_mode': lambda: {'outbox_mode': node.outbox.mode.value},
    }
    counts = node.metrics.events
    for event, handler in with_payload.items():
        node.sio.on(event, _answering(event, handler, counts))
    for event, plain in without_payload.items():
        node.sio.on(event, _answering(event, _ignoring_payload(plain), counts))


def _ignoring_payload(handler: Callable[[], Any]) -> Callable[[Any], Any]:
    return lambda _data: handler()


def _answering(event: str, handler: Callable[[Any], Any], counts: LabelledCounts) -> Callable[..., Any]:
    """python-socketio calls ``f(sid, *args)``; the handler gets the first argument (None when the client sent
    none; more are ignored), and the ack is its result or ``{"error": ...}``; ``counts`` gets the outcome."""

    def on_event(sid: str, *args: Any) -> Any:
        try:
            answer = handler(args[0] if args else None)
        except NodeHTTPError as e:
            answer = {'error': e.detail}
        except Exception as e:
            logger.exception('Socket.IO %s failed', event)
            answer = {'error': str(e) or type(e).__name__}
        counts.add(event, 'error' if isinstance(answer, dict) and 'error' in answer else 'ok')
        return answer

    on_event.__name__ = f'on_{event}'
    return on_event


def _detect_options(data: Mapping[str, Any]) -> dict[str, Any]:
    """The options of ``detect``/``batch_detect``; one of the wrong type is an error that names it."""
    tags = data.get('tags')
    return {
        'camera_id': checked_text('camera_id', data.get('camera_id', data.get('camera-id'))),
        'tags': [] if tags is None or tags == '' else tags,  # an empty string as "no tags" (reference)
        'source': checked_text('source', data.get('source')),
        'autoupload': check_autoupload(data.get('autoupload') or 'filtered'),
        'creation_date': checked_text('creation_date', data.get('creation_date')),
    }


def _payload(data: Any) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ImagePayloadError(f'expected an object, got {type(data).__name__}')
    return data


def _detect(node: DetectorNode, data: Any) -> Any:
    try:
        payload = _payload(data)
        node.models.serving()  # "no model" before any parsing (reference 0.27)
        options = _detect_options(payload)
        image = image_from_dict(payload.get('image'))
        return node.detect(image, **options).to_dict()
    except _IMAGE_ERRORS as e:
        return {'error': f'could not parse image from data: {e.detail}'}
    except NotServing as e:
        return {'error': e.detail}


def _batch_detect(node: DetectorNode, data: Any) -> Any:
    try:
        payload = _payload(data)
        node.models.serving()
        images = payload.get('images')
        if not isinstance(images, list):
            raise ImagePayloadError(f'"images" must be a list of image dicts, got {type(images).__name__}')
        options = _detect_options(payload)  # a wrong option fails before any image is decoded
        parsed = [image_from_dict(image) for image in images]
        results = node.batch_detect(parsed, **options)
        return {'items': [result.to_dict() for result in results]}
    except _IMAGE_ERRORS as e:
        return {'error': f'could not parse images from data: {e.detail}'}
    except NotServing as e:
        return {'error': e.detail}


def _upload(node: DetectorNode, data: Any) -> Any:
    try:
        payload = _payload(data)
        image = image_from_dict(payload.get('image'))
    except _IMAGE_ERRORS as e:
        return {'error': f'could not parse image from data: {e.detail}'}
    raw_metadata = payload.get('metadata')
    metadata = None
    if raw_metadata:
        try:
            metadata = ImageMetadata.from_dict(raw_metadata)
        except SchemaError as e:
            return {'error': str(e)}
    priority = payload.get('upload_priority', False)
    if not isinstance(priority, bool):
        return {'error': f'upload_priority must be true or false, got {priority!r}'}
    try:
        node.upload(image, metadata, priority=priority)
    except _IMAGE_ERRORS as e:
        return {'error': f'could not parse image from data: {e.detail}'}
    return {'status': 'OK'}


def _info(node: DetectorNode) -> Any:
    model = node.models.active()
    if model is not None:
        return model.info.to_dict()
    updating = node.models.updating_to
    if updating is not None:
        return {'status': f'Updating model to version {updating}'}
    return {'status': 'No model loaded'}


def _set_model_version_mode(node: DetectorNode, text: Any) -> Any:
    node.set_version_mode(text)
    return {'status': 'OK'}


def _set_outbox_mode(node: DetectorNode, text: Any) -> Any:
    try:
        mode = OutboxMode(text)
    except ValueError:
        return {'error': f'{text!r} is not a valid OutboxMode'}
    if not node.set_outbox_mode(mode):
        return {'error': f'the outbox is still on its way to {mode.value}'}
    return {'status': 'OK'}
