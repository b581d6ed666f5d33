"""The UI's actions (POST, JSON, CSRF-checked by the blueprint's guard): each calls the control API's own view.

Why delegate: an annotation, a state change, a training start or a deployment made in the UI must be stored
exactly as ``/control`` stores it (the next training sees it the same way), so the UI adds only its login and
CSRF checks in front of the same code. Annotator tool events are wrapped into a UserInput here (the page sends
only the event, the position and the category) and forwarded as ``/control/nodes/{node}/handle_user_input``.
"""

from __future__ import annotations

from typing import Any

from flask import jsonify, request

from llnode.localloop import control as control_views
from llnode.localloop.app import context
from llnode.localloop.errors import BadRequest, NotFound
from llnode.localloop.ui import ui
from llnode.localloop.ui.pages import PROJECT

#: the events the page may forward to an annotator's tool (AnnotationData.event_type)
TOOL_EVENTS = (
    'left_mouse_down',
    'right_mouse_down',
    'mouse_move',
    'left_mouse_up',
    'right_mouse_up',
    'key_up',
    'key_down',
)


def _body() -> dict[str, Any]:
    body = request.get_json(force=True, silent=True) if request.get_data(cache=True) else {}
    if not isinstance(body, dict):
        raise BadRequest('expected a JSON object')
    return body


@ui.post(f'{PROJECT}/images/<image_id>')
def update_image(organization: str, project: str, image_id: str) -> Any:
    """Annotations, state, set and tags of an image, as ``PUT /control/projects/.../images/{id}``."""
    return control_views.update_image(organization, project, image_id)


@ui.post(f'{PROJECT}/trainings')
def begin_training(organization: str, project: str) -> Any:
    """Start a training on a connected trainer, as ``POST /control/projects/.../trainings``."""
    return control_views.begin_training(organization, project)


@ui.post('/nodes/<node>/<command>')
def node_command(node: str, command: str) -> Any:
    """``stop_training`` / ``abort_training`` to a trainer, as ``POST /control/nodes/{node}/{command}``."""
    if command not in ('stop_training', 'abort_training'):
        raise NotFound(f'unknown node command {command!r}; the UI sends stop_training and abort_training')
    return control_views.node_command(node, command)


@ui.post(f'{PROJECT}/deployment')
def deploy(organization: str, project: str) -> Any:
    """Set the deployment target, as ``PUT /control/projects/.../deployment``."""
    return control_views.set_deployment(organization, project)


def _annotator(organization: str, project: str, node: str) -> str:
    """The sid of a connected annotator of the project, by node id or sid."""
    for n in context().hub.connected():
        if node in (n['id'], n['sid']):
            if n['node_type'] != 'annotation_node' or (n['organization'], n['project']) != (organization, project):
                raise BadRequest(f'node {node} is not an annotator of {organization}/{project}')
            return str(n['sid'])
    raise NotFound(f'annotator {node} is not connected')


@ui.post(f'{PROJECT}/tools/<node>/input')
def tool_input(organization: str, project: str, node: str) -> Any:
    """One mouse or key event of the page, as UserInput to the annotator (loop-protocol §3.6.2); its ack back."""
    store = context().store
    store.require_project(organization, project)
    body = _body()
    event = body.get('event_type')
    if event not in TOOL_EVENTS:
        raise BadRequest(f'event_type must be one of {", ".join(TOOL_EVENTS)}, got {event!r}')
    image = store.image(organization, project, str(body.get('image_id') or ''))
    category = next((c for c in store.categories(organization, project) if c['id'] == body.get('category_id')), None)
    if category is None:
        raise BadRequest(f'category {body.get("category_id")!r} is not a category of {organization}/{project}')
    x, y = body.get('x'), body.get('y')
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (x, y)):
        raise BadRequest('"x" and "y" must be numbers')
    epsilon = body.get('epsilon')
    user_input = control_views.checked_user_input(
        {
            'frontend_id': body.get('frontend_id'),
            'data': {
                'coordinate': {'x': round(float(x)), 'y': round(float(y))},  # type: ignore[arg-type]
                'event_type': event,
                'context': {'organization': organization, 'project': project},
                'image_uuid': image['id'],
                'category': category,
                'key_up': body.get('key_up') if isinstance(body.get('key_up'), str) else None,
                'key_down': body.get('key_down') if isinstance(body.get('key_down'), str) else None,
                'epsilon': float(epsilon)
                if isinstance(epsilon, (int, float)) and not isinstance(epsilon, bool)
                else None,
                'is_shift_key_pressed': bool(body.get('is_shift_key_pressed')),
            },
        }
    )
    sid = _annotator(organization, project, node)
    ack = context().hub.send(sid, 'handle_user_input', user_input, timeout=control_views.ANNOTATOR_TIMEOUT)
    return jsonify(node=node, event='handle_user_input', ack=ack)


@ui.post(f'{PROJECT}/tools/<node>/logout')
def tool_logout(organization: str, project: str, node: str) -> Any:
    """The page closes the tool: ``user_logout(frontend_id)`` to the annotator (loop-protocol §3.6.3)."""
    frontend_id = _body().get('frontend_id')
    if not isinstance(frontend_id, str) or not frontend_id:
        raise BadRequest('expected {"frontend_id": str}')
    sid = _annotator(organization, project, node)
    ack = context().hub.send(sid, 'user_logout', frontend_id, timeout=control_views.ANNOTATOR_TIMEOUT)
    return jsonify(node=node, event='user_logout', ack=ack)
