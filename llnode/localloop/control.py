"""The control API under ``/control``: what a person does in the Loop's web UI, as JSON routes.

Create projects, categories and users; look at images and annotate them; start, stop and abort trainings on
connected trainers; choose a project's deployment target; see the nodes and what they last reported. Login (the
``/api/login`` session cookie) is required for every route. ``llnode control`` is the command-line client.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request

from llnode.localloop import trainings as trainings_module
from llnode.localloop.app import context, require_login
from llnode.localloop.errors import BadRequest, NotFound
from llnode.localloop.store import IMAGE_STATES, check_slug

control = Blueprint('control', __name__)

PROJECT = '/projects/<organization>/<project>'
NODE_COMMANDS = {'stop_training': 20.0, 'abort_training': 20.0, 'restart': 2.0}
CATEGORY_FIELDS = ('color', 'description', 'hotkey', 'point_size')


@control.before_request
def _login_guard() -> None:
    require_login()


def _body() -> dict[str, Any]:
    if not request.get_data(cache=True):
        return {}
    body = request.get_json(force=True, silent=True)
    if not isinstance(body, dict):
        raise BadRequest('expected a JSON object')
    return body


def _timeout(body: dict[str, Any], default: float) -> float:
    value = body.get('timeout', default)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= 600:
        raise BadRequest(f'"timeout" must be a number of seconds in (0, 600], got {value!r}')
    return float(value)


# ---------------------------------------------------------------------- projects, categories, users


@control.get('/projects')
def projects() -> Any:
    return jsonify(projects=context().store.projects())


@control.post('/projects')
def create_project() -> Any:
    body = _body()
    store = context().store
    organization = check_slug(body.get('organization', 'zauberzeug'), 'organization')
    project = check_slug(body.get('project'), 'project')
    categories = body.get('categories') or []
    if not isinstance(categories, list) or not all(isinstance(c, dict) for c in categories):
        raise BadRequest('"categories" must be a list of objects {name, type, color?, ...}')
    store.create_project(organization, project)
    for c in categories:
        _add_category(organization, project, c)
    return jsonify(organization=organization, project=project, categories=store.categories(organization, project)), 201


@control.delete(PROJECT)
def delete_project(organization: str, project: str) -> Any:
    keep = request.args.get('keep_images', '').lower() in ('1', 'true', 'yes')
    context().store.delete_project(organization, project, keep_images=keep)
    return jsonify(deleted=f'{organization}/{project}')


def _add_category(organization: str, project: str, body: dict[str, Any]) -> dict[str, Any]:
    name = body.get('name')
    if not isinstance(name, str):
        raise BadRequest('a category needs a string "name"')
    return context().store.add_category(
        organization, project, name, body.get('type', 'box'), **{k: body.get(k) for k in CATEGORY_FIELDS}
    )


@control.get(f'{PROJECT}/categories')
def categories(organization: str, project: str) -> Any:
    context().store.require_project(organization, project)
    return jsonify(categories=context().store.categories(organization, project))


@control.post(f'{PROJECT}/categories')
def add_category(organization: str, project: str) -> Any:
    return jsonify(_add_category(organization, project, _body())), 201


@control.get('/users')
def users() -> Any:
    return jsonify(users=context().store.users())


@control.post('/users')
def set_user() -> Any:
    body = _body()
    username, password = body.get('username'), body.get('password')
    if not isinstance(username, str) or not isinstance(password, str):
        raise BadRequest('expected {"username": str, "password": str}')
    context().store.set_user(username, password)
    return jsonify(username=body['username'])


# ---------------------------------------------------------------------- images


@control.get(f'{PROJECT}/images')
def images(organization: str, project: str) -> Any:
    store = context().store
    store.require_project(organization, project)
    state = request.args.get('state')
    if state is not None and state not in IMAGE_STATES:
        raise BadRequest(f'state must be one of {", ".join(IMAGE_STATES)}, got {state!r}')
    ids = store.image_ids(organization, project, state)
    items: list[dict[str, Any]] = []
    for start in range(0, len(ids), 500):
        items.extend(store.images(organization, project, ids[start : start + 500]))
    return jsonify(images=items)


@control.get(f'{PROJECT}/images/<image_id>')
def image(organization: str, project: str, image_id: str) -> Any:
    store = context().store
    item = store.image(organization, project, image_id)
    return jsonify({**item, 'detections': store.detections(organization, project, image_id)})


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _checked_annotations(organization: str, project: str, body: dict[str, Any]) -> dict[str, Any]:
    """The annotation kinds named in ``body``, each item checked and tied to a project category (by id or name)."""
    categories = context().store.categories(organization, project)
    coordinates = {
        'box_annotations': ('x', 'y', 'width', 'height'),
        'point_annotations': ('x', 'y'),
        'segmentation_annotations': (),
        'classification_annotation': (),
    }
    result: dict[str, Any] = {}
    for key, needed in coordinates.items():
        if key not in body:
            continue
        value = body[key]
        if key == 'classification_annotation':
            if value is not None and not isinstance(value, dict):
                raise BadRequest('"classification_annotation" must be an object or null')
            items = [] if value is None else [value]
        elif not isinstance(value, list) or not all(isinstance(a, dict) for a in value):
            raise BadRequest(f'"{key}" must be a list of objects')
        else:
            items = value
        checked = []
        for item in items:
            category = next(
                (c for c in categories if item.get('category_id') is not None and c['id'] == item.get('category_id')),
                None,
            ) or next(
                (c for c in categories if item.get('category_id') is None and c['name'] == item.get('category_name')),
                None,
            )
            if category is None:
                raise BadRequest(
                    f'"{key}": category {item.get("category_id") or item.get("category_name")!r} '
                    f'is not a category of {organization}/{project}'
                )
            for c in needed:
                if not _is_number(item.get(c)):
                    raise BadRequest(f'"{key}": every item needs a numeric "{c}"')
            if key == 'segmentation_annotations':
                points = item.get('shape', {}).get('points') if isinstance(item.get('shape'), dict) else None
                if not isinstance(points, list) or not all(
                    isinstance(p, dict) and _is_number(p.get('x')) and _is_number(p.get('y')) for p in points
                ):
                    raise BadRequest('"segmentation_annotations": every item needs "shape": {"points": [{x, y}]}')
            checked.append({**item, 'category_id': category['id'], 'category_name': category['name']})
        result[key] = (checked[0] if checked else None) if key == 'classification_annotation' else checked
    return result


@control.put(f'{PROJECT}/images/<image_id>')
def update_image(organization: str, project: str, image_id: str) -> Any:
    """Change an image as a person would: ``state``, ``set``, ``tags`` and annotations (each kind named in the
    body replaces that kind); annotation items name their category by ``category_id`` or ``category_name``."""
    body = _body()
    context().store.require_project(organization, project)
    tags = body.get('tags')
    if tags is not None and (not isinstance(tags, list) or not all(isinstance(t, str) for t in tags)):
        raise BadRequest('"tags" must be a list of strings')
    item = context().store.update_image(
        organization,
        project,
        image_id,
        state=body.get('state'),
        image_set=body.get('set'),
        tags=tags,
        annotations=_checked_annotations(organization, project, body),
    )
    return jsonify(item)


@control.get(f'{PROJECT}/detections')
def detections(organization: str, project: str) -> Any:
    context().store.require_project(organization, project)
    return jsonify(detections=context().store.detections(organization, project, request.args.get('image_id')))


@control.get(f'{PROJECT}/uploads')
def uploads(organization: str, project: str) -> Any:
    return jsonify(batches=context().store.upload_batches(organization, project))


@control.get(f'{PROJECT}/model_uploads')
def model_uploads(organization: str, project: str) -> Any:
    """Every trainer model upload received (200 = stored, 409 = already stored), to count them."""
    context().store.require_project(organization, project)
    return jsonify(model_uploads=context().store.model_uploads(organization, project))


@control.get(f'{PROJECT}/detection_posts')
def detection_posts(organization: str, project: str) -> Any:
    """Every detections POST received, with the image ids of its items, to count them."""
    context().store.require_project(organization, project)
    return jsonify(detection_posts=context().store.detection_posts(organization, project))


# ---------------------------------------------------------------------- models and deployment


@control.get(f'{PROJECT}/models')
def models(organization: str, project: str) -> Any:
    context().store.require_project(organization, project)
    return jsonify(models=context().store.models(organization, project, request.args.get('format') or None))


@control.get(f'{PROJECT}/deployment')
def deployment(organization: str, project: str) -> Any:
    context().store.require_project(organization, project)
    return jsonify(target=context().store.deployment_target(organization, project))


@control.put(f'{PROJECT}/deployment')
def set_deployment(organization: str, project: str) -> Any:
    body = _body()
    store = context().store
    if body.get('model_id'):
        model_id = body['model_id']
    elif body.get('version'):
        model_id = store.model_by_version(organization, project, str(body['version']))['id']
    else:
        raise BadRequest('give "model_id" or "version" (DELETE clears the target)')
    return jsonify(target=store.set_deployment_target(organization, project, model_id))


@control.delete(f'{PROJECT}/deployment')
def clear_deployment(organization: str, project: str) -> Any:
    context().store.set_deployment_target(organization, project, None)
    return jsonify(target=None)


# ---------------------------------------------------------------------- trainings and nodes


@control.get(f'{PROJECT}/trainings')
def trainings(organization: str, project: str) -> Any:
    store = context().store
    store.require_project(organization, project)
    return jsonify(
        trainings=store.trainings(organization, project), updates=store.training_updates(organization, project)
    )


@control.post(f'{PROJECT}/trainings')
def begin_training(organization: str, project: str) -> Any:
    """Build ``begin_training`` details (loop-protocol §7.5.1) and send them to a connected trainer."""
    body = _body()
    result = trainings_module.begin_training(
        context().store,
        context().hub,
        organization,
        project,
        node=body.get('node'),
        model_variant=body.get('model_variant', ''),
        hyperparameters=body.get('hyperparameters'),
        base_model_uuid=body.get('base_model_uuid'),
        base_model_version=body.get('base_model_version'),
        categories=body.get('categories'),
        timeout=_timeout(body, 20.0),
    )
    return jsonify(result)


#: seconds to wait for an annotator's answer to one user input (its tool runs, it may fetch the image first)
ANNOTATOR_TIMEOUT = 30.0


@control.post('/nodes/<node>/handle_user_input')
def handle_user_input(node: str) -> Any:
    """Forward a UserInput ``{frontend_id, data}`` (loop-protocol §7.3.2) to a connected annotator node, as the
    Loop's web UI does with a person's mouse and key events; answers the node's ack (its payload is the SVG)."""
    body = _body()
    user_input = checked_user_input(body)
    ack = context().hub.send(node, 'handle_user_input', user_input, timeout=_timeout(body, ANNOTATOR_TIMEOUT))
    return jsonify(node=node, event='handle_user_input', ack=ack)


@control.post('/nodes/<node>/user_logout')
def user_logout(node: str) -> Any:
    """Tell a connected annotator node that the frontend ``frontend_id`` is gone (its tool history is dropped)."""
    body = _body()
    frontend_id = body.get('frontend_id')
    if not isinstance(frontend_id, str) or not frontend_id:
        raise BadRequest('expected {"frontend_id": str}')
    ack = context().hub.send(node, 'user_logout', frontend_id, timeout=_timeout(body, ANNOTATOR_TIMEOUT))
    return jsonify(node=node, event='user_logout', ack=ack)


def checked_user_input(body: dict[str, Any]) -> dict[str, Any]:
    """The UserInput of a request body: ``frontend_id`` (string) and ``data`` (object), nothing else."""
    frontend_id, data = body.get('frontend_id'), body.get('data')
    if not isinstance(frontend_id, str) or not frontend_id or not isinstance(data, dict):
        raise BadRequest('expected a UserInput {"frontend_id": str, "data": {coordinate, event_type, ...}}')
    return {'frontend_id': frontend_id, 'data': data}


@control.post('/nodes/<node>/<command>')
def node_command(node: str, command: str) -> Any:
    """Send ``stop_training``, ``abort_training`` or ``restart`` to a connected node (id or sid)."""
    if command not in NODE_COMMANDS:
        known = ', '.join([*NODE_COMMANDS, 'handle_user_input', 'user_logout'])
        raise NotFound(f'unknown node command {command!r}; known: {known}')
    timeout = _timeout(_body(), NODE_COMMANDS[command])
    ack = context().hub.send(node, command, timeout=timeout)
    return jsonify(node=node, event=command, ack=ack)


@control.post(f'{PROJECT}/trainer/<command>')
def trainer_command(organization: str, project: str, command: str) -> Any:
    """Send ``stop_training`` or ``abort_training`` to ``node`` (id or sid) or, without one, to the only trainer
    connected for the project, as ``begin_training`` picks it."""
    if command not in ('stop_training', 'abort_training'):
        raise NotFound(f'unknown trainer command {command!r}; known: stop_training, abort_training')
    body = _body()
    context().store.require_project(organization, project)
    timeout = _timeout(body, NODE_COMMANDS[command])
    hub = context().hub
    sid = hub.resolve(body.get('node'), node_type='trainer', organization=organization, project=project)
    node_id = next((n['id'] for n in hub.connected() if n['sid'] == sid), None)
    ack = hub.send(sid, command, timeout=timeout)
    return jsonify(node=node_id or sid, event=command, ack=ack)


@control.get('/nodes')
def nodes() -> Any:
    """Every node that reported a status, plus connections that did not report yet; ``connected`` is live."""
    return jsonify(nodes=context().hub.nodes())
