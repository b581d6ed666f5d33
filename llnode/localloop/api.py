"""The Loop's REST API under ``/api`` (loop-protocol §2.2), as nodes and the reference's tests call it.

Everything needs the login cookie except ``login``, ``logout``, ``status``, the outbox upload (#10, which the
reference sends without cookies) and the model download (#7, no-login in the reference).
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from flask import Blueprint, Response, jsonify, make_response, request, send_file

from llnode.localloop import archives, generator
from llnode.localloop.app import SESSION_COOKIE, context, require_login
from llnode.localloop.errors import BadRequest, Conflict, LoopApiError, NotFound, Unauthorized, Unprocessable
from llnode.localloop.store import IMAGE_STATES, check_slug
from llnode.localloop.uploads import DETECTION_LISTS, outbox_images, read_parts

logger = logging.getLogger('llnode.localloop.api')

api = Blueprint('api', __name__)

OPEN_ENDPOINTS = {'api.login', 'api.logout', 'api.status', 'api.upload_images', 'api.download_model'}
MAX_IDS = 100
MAX_DETECTIONS = 100
PROJECT = '/<organization>/projects/<project>'


@api.before_request
def _login_guard() -> None:
    if request.endpoint not in OPEN_ENDPOINTS:
        require_login()


def _json_body() -> Any:
    data = request.get_data(cache=True)
    if not data:
        raise BadRequest('expected a JSON body')
    try:
        return json.loads(data)
    except (UnicodeDecodeError, ValueError) as e:
        raise BadRequest(f'the body is not valid JSON: {e}') from e


def _project(organization: str, project: str) -> None:
    context().store.require_project(organization, project)


# ---------------------------------------------------------------------- session


@api.post('/login')
def login() -> Any:
    username = request.form.get('username')
    password = request.form.get('password')
    if username is None and request.is_json:
        body = request.get_json(silent=True) or {}
        username, password = body.get('username'), body.get('password')
    store = context().store
    if not username or password is None or not store.check_password(username, password):
        raise Unauthorized('invalid username or password')
    response = jsonify(username=username)
    response.set_cookie(SESSION_COOKIE, store.create_session(username), httponly=True, samesite='Lax', path='/')
    return response


@api.post('/logout')
def logout() -> Any:
    context().store.delete_session(request.cookies.get(SESSION_COOKIE))
    response = jsonify(detail='logged out')
    response.delete_cookie(SESSION_COOKIE, path='/')
    return response


@api.get('/status')
def status() -> Any:
    return jsonify(status='ok', server='llnode local loop')


# ---------------------------------------------------------------------- data for trainers (#4, #5, #6)


@api.get(f'{PROJECT}/data')
def data(organization: str, project: str) -> Any:
    _project(organization, project)
    state = request.args.get('state')
    if state is not None and state not in IMAGE_STATES:
        raise BadRequest(f'state must be one of {", ".join(IMAGE_STATES)}, got {state!r}')
    store = context().store
    return jsonify(
        image_ids=store.image_ids(organization, project, state), categories=store.categories(organization, project)
    )


@api.get(f'{PROJECT}/images')
def images(organization: str, project: str) -> Any:
    _project(organization, project)
    raw = request.args.get('ids')
    if raw is None:
        raise BadRequest('query parameter "ids" (comma-separated image ids) is missing')
    ids = [i for i in (part.strip() for part in raw.split(',')) if i]
    if len(ids) > MAX_IDS:
        raise BadRequest(f'at most {MAX_IDS} ids per request, got {len(ids)}')
    return jsonify(images=context().store.images(organization, project, ids))


@api.get(f'{PROJECT}/images/<image_id>/main')
def image_file(organization: str, project: str, image_id: str) -> Any:
    jpeg = context().store.image_jpeg(organization, project, image_id)
    if jpeg is None:
        raise NotFound(f'image {image_id} not found in {organization}/{project}')
    return Response(jpeg, mimetype='image/jpeg')


# ---------------------------------------------------------------------- models (#7, #8, #13, converter routes)


def _zip_name(model: dict[str, Any], model_format: str) -> str:
    raw = f'{model["organization"]}_{model["project"]}_{model["version"]}_{model_format}'
    return re.sub(r'[^A-Za-z0-9_.-]', '_', raw) + '.zip'


@api.get(f'{PROJECT}/models/<model_id>/<model_format>/file')
def download_model(organization: str, project: str, model_id: str, model_format: str) -> Any:
    model, path = context().store.model_zip(organization, project, model_id, model_format)
    response = send_file(path, mimetype='application/zip', conditional=False, etag=False)
    response.headers['Content-Disposition'] = f'attachment; filename="{_zip_name(model, model_format)}"'
    return response


def _uploaded_files() -> list[tuple[str, bytes]]:
    files = request.files.getlist('files')
    if not files:
        raise BadRequest('no parts named "files" in the multipart body')
    return [(archives.clean_filename(f.filename), f.read()) for f in files]


def _store_format(
    organization: str, project: str, model: dict[str, Any], model_format: str, files: list[tuple[str, bytes]]
) -> Any:
    store = context().store
    zip_bytes = archives.build_model_zip(
        files,
        model_id=model['id'],
        version=model['version'],
        organization=organization,
        project=project,
        model_format=model_format,
        host=request.host,
        categories=store.categories(organization, project),
    )
    store.add_model_format(model['id'], model_format, zip_bytes)
    return jsonify(id=model['id'], version=model['version'])


@api.put(f'{PROJECT}/trainings/<training_number>/models/latest/<model_format>/file')
def upload_training_model(organization: str, project: str, training_number: str, model_format: str) -> Any:
    try:
        number = int(training_number)
    except ValueError:
        raise Unprocessable(f'training_number must be an integer, got {training_number!r}') from None
    if number < 1:
        raise Unprocessable(f'training {number} does not exist: training numbers start at 1')
    files = _validated_model_upload(organization, project, model_format)
    store = context().store
    model = store.model_for_training(organization, project, number, host=request.host)
    try:
        response = _store_format(organization, project, model, model_format, files)
    except Conflict:
        store.log_model_upload(
            organization, project, training_number=number, model_format=model_format, model_id=model['id'], status=409
        )
        raise
    store.log_model_upload(
        organization, project, training_number=number, model_format=model_format, model_id=model['id'], status=200
    )
    return response


def _validated_model_upload(organization: str, project: str, model_format: str) -> Any:
    """The uploaded model files, checked by building a throw-away zip before any model record is created."""
    _project(organization, project)
    check_slug(model_format, 'format')
    files = _uploaded_files()
    archives.build_model_zip(
        files,
        model_id='',
        version='',
        organization=organization,
        project=project,
        model_format=model_format,
        host=None,
        categories=[],
    )
    return files


@api.put(f'{PROJECT}/models/<model_id>/<model_format>/file')
def upload_converted_model(organization: str, project: str, model_id: str, model_format: str) -> Any:
    check_slug(model_format, 'format')
    model = context().store.model(organization, project, model_id)
    return _store_format(organization, project, model, model_format, _uploaded_files())


@api.post(f'{PROJECT}/<model_format>')
def upload_new_model(organization: str, project: str, model_format: str) -> Any:
    files = _validated_model_upload(organization, project, model_format)
    model = context().store.create_model(organization, project, host=request.host)
    return _store_format(organization, project, model, model_format, files)


@api.get(f'{PROJECT}/models')
def models(organization: str, project: str) -> Any:
    _project(organization, project)
    items = context().store.models(organization, project, request.args.get('format') or None)
    keys = ('id', 'version', 'formats', 'created', 'comment', 'host')
    return jsonify(models=[{k: m[k] for k in keys} for m in items])


@api.get(f'{PROJECT}/trainings')
def trainings(organization: str, project: str) -> Any:
    _project(organization, project)
    items = reversed(context().store.models(organization, project))
    return jsonify(
        charts=[
            {
                'data': [
                    {
                        'model_id': m['id'],
                        'version': m['version'],
                        'training_number': m['training_number'],
                        'created': m['created'],
                    }
                    for m in items
                ]
            }
        ]
    )


@api.get(f'{PROJECT}/deployment/target')
def deployment_target(organization: str, project: str) -> Any:
    _project(organization, project)
    target = context().store.deployment_target(organization, project)
    if target is None:
        raise NotFound(f'no deployment target set for {organization}/{project}')
    return jsonify(target)


# ---------------------------------------------------------------------- results from nodes (#9, #10, #11)


@api.post(f'{PROJECT}/detections')
def detections(organization: str, project: str) -> Any:
    _project(organization, project)
    store = context().store
    try:
        stored = _store_detections(organization, project)
    except LoopApiError as e:
        store.log_detection_post(organization, project, _posted_image_ids(), status=e.status)
        raise
    store.log_detection_post(organization, project, _posted_image_ids(), status=200, stored=stored)
    return jsonify(stored=stored)


def _posted_image_ids() -> list[str]:
    """The ``image_id`` of each item of the JSON array in the request body (for the detections counter)."""
    try:
        items = json.loads(request.get_data(cache=True) or b'null')
    except (UnicodeDecodeError, ValueError):
        return []
    if not isinstance(items, list):
        return []
    return [str(item.get('image_id')) for item in items if isinstance(item, dict)]


def _store_detections(organization: str, project: str) -> int:
    items = _json_body()
    if not isinstance(items, list):
        raise Unprocessable('expected a JSON array of Detections objects')
    if len(items) > MAX_DETECTIONS:
        raise Unprocessable(f'at most {MAX_DETECTIONS} Detections per request, got {len(items)}')
    for n, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get('image_id'), str) or not item['image_id']:
            raise Unprocessable(f'item {n}: a Detections object needs a string "image_id"')
        for key in DETECTION_LISTS:
            value = item.get(key, [])
            if not isinstance(value, list) or not all(isinstance(d, dict) for d in value):
                raise Unprocessable(f'item {n}: "{key}" must be a list of objects')
    return context().store.put_detections(organization, project, items)


@api.post(f'{PROJECT}/images')
def upload_images(organization: str, project: str) -> Any:
    store = context().store
    body = request.get_data(cache=False)
    parts = []
    try:
        parts = read_parts(request.content_type, body)
        _project(organization, project)
        image_ids = store.add_images(organization, project, outbox_images(parts))
    except LoopApiError as e:
        store.log_upload_batch(organization, project, [p.describe() for p in parts], status=e.status, detail=e.detail)
        raise
    store.log_upload_batch(organization, project, [p.describe() for p in parts], status=200, image_ids=image_ids)
    return jsonify(image_ids=image_ids)


@api.post(f'{PROJECT}/detectors')
def detectors(organization: str, project: str) -> Any:
    _project(organization, project)
    body = _json_body()
    if not isinstance(body, dict) or not isinstance(body.get('uuid'), str) or not body['uuid']:
        raise Unprocessable('expected a DetectorStatus JSON object with a string "uuid"')
    context().store.put_node_status(
        body['uuid'], body, node_type='detector', organization=organization, project=project
    )
    return jsonify({})


# ---------------------------------------------------------------------- test-suite routes of the hosted Loop


@api.post('/<organization>/projects/generator')
def generate(organization: str) -> Any:
    check_slug(organization, 'organization')
    project = generator.generate_project(context().store, organization, _json_body(), host=request.host)
    return jsonify(project)


@api.delete(PROJECT)
def delete_project(organization: str, project: str) -> Any:
    keep = request.args.get('keep_images', '').lower() in ('1', 'true', 'yes')
    context().store.delete_project(organization, project, keep_images=keep)
    return make_response(jsonify(detail=f'project {organization}/{project} deleted'), 200)
