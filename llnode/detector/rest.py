"""The detector's REST routes (loop-protocol §4.2), one blueprint per area: detect, models, outbox, backdoor.

Success payloads are the reference's, byte for byte (``/upload`` still answers ``[200,"OK"]``, GETs of modes answer
plain text). Errors are JSON ``{"detail": ...}`` through the app's one error handler: no model 503, undecodable
image 400, a body that is not multipart 415, too large 413, a bad option or a missing part 422. Options the
reference reads from headers are read from the header *or* the query, with ``-`` or ``_`` (quirk Q4).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Blueprint, Response, request

from llnode.node.app import json_response
from llnode.node.errors import Unprocessable, UnsupportedMediaType
from llnode.schema import OperationMode, OutboxMode

if TYPE_CHECKING:
    from llnode.detector.node import DetectorNode

#: what pydantic (the reference's parser) accepts for a bool query parameter
_TRUE = frozenset(('1', 'true', 't', 'yes', 'y', 'on'))
_FALSE = frozenset(('0', 'false', 'f', 'no', 'n', 'off'))


def detector_blueprints(node: DetectorNode) -> list[Blueprint]:
    blueprints = [_detect_blueprint(node), _models_blueprint(node), _outbox_blueprint(node)]
    if node.backdoor_enabled:
        blueprints.append(_backdoor_blueprint(node))
    return blueprints


def _detect_blueprint(node: DetectorNode) -> Blueprint:
    blueprint = Blueprint('llnode_detect', __name__)

    @blueprint.post('/detect')
    def detect() -> Response:
        """One image (multipart part ``file``) -> ImageMetadata; options as headers or query parameters."""
        data = _file_parts('file')[0]
        tags = _option('tags')
        metadata = node.detect(
            data,
            camera_id=_option('camera-id', 'camera_id'),
            tags=tags.split(',') if tags else [],
            source=_option('source'),
            autoupload=_option('autoupload') or 'filtered',
            creation_date=_option('creation-date', 'creation_date'),
        )
        return json_response(metadata.to_dict())

    @blueprint.post('/upload')
    def upload() -> Response:
        """Images (multipart parts ``files``) into the outbox; answers once they are on disk."""
        files = _file_parts('files')
        node.upload_files(
            files,
            source=request.args.get('source'),
            creation_date=request.args.get('creation_date'),
            priority=_bool_arg('upload_priority'),
        )
        return json_response([200, 'OK'])

    return blueprint


def _models_blueprint(node: DetectorNode) -> Blueprint:
    blueprint = Blueprint('llnode_models', __name__)

    @blueprint.get('/about')
    def about() -> Response:
        return json_response(node.about().to_dict())

    @blueprint.get('/model_version')
    def get_model_version() -> Response:
        return json_response(node.model_versions().to_dict())

    @blueprint.put('/model_version')
    def put_model_version() -> Response:
        node.set_version_mode(_text_body())
        return json_response('OK')

    @blueprint.get('/operation_mode')
    def get_operation_mode() -> Response:
        return _plain(node.operation_mode.value)

    @blueprint.put('/operation_mode')
    def put_operation_mode() -> Response:
        value = _text_body()
        try:
            mode = OperationMode(value)
        except ValueError:
            raise Unprocessable(f"'{value}' is not a valid OperationMode") from None
        node.set_operation_mode(mode)
        return json_response('OK')

    return blueprint


def _outbox_blueprint(node: DetectorNode) -> Blueprint:
    blueprint = Blueprint('llnode_outbox', __name__)

    @blueprint.get('/outbox_mode')
    def get_outbox_mode() -> Response:
        return _plain(node.outbox.mode.value)

    @blueprint.put('/outbox_mode')
    def put_outbox_mode() -> Response:
        value = _text_body()
        try:
            mode = OutboxMode(value)
        except ValueError:
            raise Unprocessable(f"Could not set outbox mode: '{value}' is not a valid OutboxMode") from None
        if not node.set_outbox_mode(mode):
            return json_response({'detail': f'the outbox is still on its way to {mode.value}'}, 202)
        return json_response('OK')

    return blueprint


def _backdoor_blueprint(node: DetectorNode) -> Blueprint:
    blueprint = Blueprint('llnode_backdoor', __name__)

    @blueprint.post('/reset')
    def reset() -> Response:
        """Testing only: empty the data folder and start over (``USE_BACKDOOR_CONTROLS``)."""
        return json_response(node.reset())

    return blueprint


def _file_parts(name: str) -> list[bytes]:
    """The contents of the multipart parts called ``name`` (415 for another body type, 422 when there is none)."""
    if request.mimetype != 'multipart/form-data':
        raise UnsupportedMediaType(
            f'expected a multipart/form-data body with a part "{name}", got {request.mimetype or "no content type"}'
        )
    parts = request.files.getlist(name)
    if not parts:
        raise Unprocessable(f'the multipart body has no part named "{name}"')
    return [part.read() for part in parts]


def _option(*names: str) -> str | None:
    """The first of ``names`` found among the headers, else among the query parameters."""
    for name in names:
        value = request.headers.get(name)
        if value is not None:
            return value
    for name in names:
        value = request.args.get(name)
        if value is not None:
            return value
    return None


def _bool_arg(name: str) -> bool:
    value = request.args.get(name)
    if value is None:
        return False
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise Unprocessable(f'{name} must be a boolean (true/false), got {value!r}')


def _text_body() -> str:
    """The raw body as text (PUTs of modes carry a bare word, not JSON); surrounding whitespace ignored."""
    try:
        return request.get_data(cache=False).decode('utf-8').strip()
    except UnicodeDecodeError:
        raise Unprocessable('the body must be UTF-8 text') from None


def _plain(text: str) -> Response:
    return Response(text, mimetype='text/plain')
