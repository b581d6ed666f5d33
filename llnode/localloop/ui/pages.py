"""The UI's pages (GET): projects, a project's overview, the image grid and an image, trainings, models, nodes."""

from __future__ import annotations

import re
import secrets
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from flask import Response, g, jsonify, make_response, redirect, render_template, request, send_file, url_for

from llnode.localloop.app import SESSION_COOKIE, context
from llnode.localloop.errors import BadRequest, NotFound
from llnode.localloop.store import IMAGE_STATES, Store
from llnode.localloop.ui import ui
from llnode.localloop.ui.metrics import training_points
from llnode.localloop.ui.security import LOGIN_CSRF_COOKIE, login_csrf_ok, new_login_token, safe_next
from llnode.localloop.ui.svg import shapes_svg
from llnode.localloop.ui.thumbs import thumbnail
from llnode.schema import TrainerState

PROJECT = '/projects/<organization>/<project>'
PER_PAGE = 60
MAX_PER_PAGE = 1000
#: trainer states of a training under way (loop-protocol §7.5.3): from ``initialized`` to ``ready_for_cleanup``
_PIPELINE = [state.value for state in TrainerState]
LIVE_STATES = frozenset(_PIPELINE[_PIPELINE.index(TrainerState.INITIALIZED.value) :])
_COLOR = re.compile(r'^#[0-9a-fA-F]{3,8}$')
DEFAULT_COLOR = '#00BCD4'


# ---------------------------------------------------------------------- template helpers


def safe_color(value: Any) -> str:
    return value if isinstance(value, str) and _COLOR.match(value) else DEFAULT_COLOR


def age_of(timestamp: str | None) -> str:
    """``12 s ago`` for an ISO time; ``never`` for None."""
    if not timestamp:
        return 'never'
    try:
        seconds = (datetime.now(timezone.utc) - datetime.fromisoformat(timestamp)).total_seconds()
    except ValueError:
        return timestamp
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f'{seconds:.0f} s ago'
    if seconds < 5400:
        return f'{seconds / 60:.0f} min ago'
    if seconds < 2 * 86400:
        return f'{seconds / 3600:.0f} h ago'
    return f'{seconds / 86400:.0f} days ago'


def duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        return '-'
    seconds = float(seconds)
    if seconds < 120:
        return f'{seconds:.0f} s'
    if seconds < 7200:
        return f'{seconds / 60:.0f} min'
    return f'{seconds / 3600:.1f} h'


@ui.app_template_filter('age')
def _age_filter(timestamp: str | None) -> str:
    return age_of(timestamp)


@ui.app_template_filter('duration')
def _duration_filter(seconds: Any) -> str:
    return duration(seconds)


@ui.app_template_filter('color')
def _color_filter(value: Any) -> str:
    return safe_color(value)


@ui.app_context_processor
def _globals() -> dict[str, Any]:
    session = g.get('ui_session')
    return {
        'user': session.user if session is not None else None,
        'csrf_token': session.csrf_token if session is not None and session.user else '',
        'image_states': IMAGE_STATES,
    }


def _store() -> Store:
    return context().store


def _project(organization: str, project: str) -> Store:
    store = _store()
    store.require_project(organization, project)
    return store


def _project_nodes(organization: str, project: str) -> list[dict[str, Any]]:
    return [n for n in context().hub.nodes() if n['organization'] == organization and n['project'] == project]


def node_row(node: dict[str, Any]) -> dict[str, Any]:
    """What the node tables show of one node."""
    status: dict[str, Any] = node['status'] if isinstance(node.get('status'), dict) else {}
    return {
        'id': node.get('id') or node.get('sid') or '',
        'name': node.get('name') or status.get('name') or '',
        'node_type': node.get('node_type') or '',
        'project': f'{node.get("organization") or "-"}/{node.get("project") or "-"}',
        'connected': bool(node.get('connected')),
        'state': status.get('state') or '',
        'operation_mode': status.get('operation_mode') or '',
        'uptime': status.get('uptime'),
        'updated': node.get('updated'),
        'current_model': status.get('current_model'),
        'target_model': status.get('target_model'),
        'progress': status.get('progress'),
        'errors': status.get('errors') or {},
    }


# ---------------------------------------------------------------------- login


@ui.get('/login')
def login_form() -> Any:
    if g.ui_session.user is not None:
        return redirect(safe_next(request.args.get('next')))
    token = request.cookies.get(LOGIN_CSRF_COOKIE) or new_login_token()
    expired = request.args.get('expired') == '1' or g.ui_session.expired
    response = make_response(
        render_template(
            'login.html', login_token=token, next=safe_next(request.args.get('next')), expired=expired, error=None
        )
    )
    response.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite='Strict', path='/login')
    return response


@ui.post('/login')
def login() -> Any:
    store = _store()
    username = request.form.get('username') or ''
    password = request.form.get('password') or ''
    target = safe_next(request.form.get('next'))
    token = request.cookies.get(LOGIN_CSRF_COOKIE) or new_login_token()
    error = None
    if not login_csrf_ok():
        error = 'the login form expired: try again'
    elif not username or not store.check_password(username, password):
        error = 'invalid username or password'
    if error is not None:
        refused = make_response(
            render_template('login.html', login_token=token, next=target, expired=False, error=error), 401
        )
        refused.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite='Strict', path='/login')
        return refused
    response = redirect(target)
    response.set_cookie(SESSION_COOKIE, store.create_session(username), httponly=True, samesite='Lax', path='/')
    response.delete_cookie(LOGIN_CSRF_COOKIE, path='/login')
    return response


@ui.post('/logout')
def logout() -> Any:
    _store().delete_session(g.ui_session.token)
    response = redirect(url_for('ui.login_form'))
    response.delete_cookie(SESSION_COOKIE, path='/')
    return response


# ---------------------------------------------------------------------- projects


@ui.get('/')
def projects() -> Any:
    store = _store()
    items = [{**p, 'counts': store.image_counts(p['organization'], p['project'])} for p in store.projects()]
    return render_template('projects.html', projects=items)


@ui.get(PROJECT)
def project_page(organization: str, project: str) -> Any:
    store = _project(organization, project)
    nodes = [node_row(n) for n in _project_nodes(organization, project)]
    return render_template(
        'project.html',
        organization=organization,
        project=project,
        counts=store.image_counts(organization, project),
        categories=store.categories(organization, project),
        target=store.deployment_target(organization, project),
        nodes=nodes,
        tab='overview',
    )


def newest_detection_model(store: Store, organization: str, project: str) -> str | None:
    """The newest model version of the project that stored detections (else the largest such model name)."""
    found = store.detection_models(organization, project) - {''}
    if not found:
        return None
    versions = [m['version'] for m in store.models(organization, project) if m['version'] in found]
    return versions[-1] if versions else max(found)


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw in (None, ''):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f'{name} must be a whole number, got {raw!r}') from None
    return max(low, min(high, value))


def shapes_of(item: dict[str, Any], colors: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    """Boxes, points and polygons of an image item (annotations or detections) with their colours."""

    def color(d: dict[str, Any]) -> str:
        return colors.get(d.get('category_id') or '', colors.get('name:' + str(d.get('category_name')), DEFAULT_COLOR))

    boxes = [
        {**b, 'color': color(b)}
        for b in (item.get('box_annotations') or item.get('box_detections') or [])
        if all(isinstance(b.get(k), (int, float)) for k in ('x', 'y', 'width', 'height'))
    ]
    points = [
        {**p, 'color': color(p)}
        for p in (item.get('point_annotations') or item.get('point_detections') or [])
        if all(isinstance(p.get(k), (int, float)) for k in ('x', 'y'))
    ]
    polygons = []
    for s in item.get('segmentation_annotations') or []:
        pts = (s.get('shape') or {}).get('points') if isinstance(s.get('shape'), dict) else None
        if isinstance(pts, list):
            text = ' '.join(
                f'{p["x"]},{p["y"]}'
                for p in pts
                if isinstance(p, dict) and isinstance(p.get('x'), (int, float)) and isinstance(p.get('y'), (int, float))
            )
            polygons.append({'points': text, 'color': color(s), 'category_id': s.get('category_id')})
    return {'boxes': boxes, 'points': points, 'polygons': polygons}


def _colors(store: Store, organization: str, project: str) -> dict[str, str]:
    colors = {}
    for c in store.categories(organization, project):
        colors[c['id']] = colors['name:' + c['name']] = safe_color(c['color'])
    return colors


@ui.get(f'{PROJECT}/images')
def images(organization: str, project: str) -> Any:
    store = _project(organization, project)
    state = request.args.get('state') or None
    if state is not None and state not in IMAGE_STATES:
        raise BadRequest(f'state must be one of {", ".join(IMAGE_STATES)}, got {state!r}')
    image_set = request.args.get('set') or None
    if image_set is not None and image_set not in ('train', 'test'):
        raise BadRequest(f'set must be "train" or "test", got {image_set!r}')
    tag = request.args.get('tag') or None
    only_detected = request.args.get('detections') == '1'
    per_page = _int_arg('per_page', PER_PAGE, 1, MAX_PER_PAGE)
    page = _int_arg('page', 1, 1, 10**6)
    model = newest_detection_model(store, organization, project)
    ids: list[str] = []
    total = 0
    if only_detected and model is None:
        pass
    else:
        total, ids = store.image_page(
            organization,
            project,
            state=state,
            image_set=image_set,
            tag=tag,
            detections_of=model if only_detected else None,
            offset=(page - 1) * per_page,
            limit=per_page,
        )
    colors = _colors(store, organization, project)
    detections = store.detections_by_image(ids, model) if model is not None and ids else {}
    base = url_for('ui.images', organization=organization, project=project)
    items = []
    for item in store.images(organization, project, ids):
        overlay = shapes_svg(shapes_of(item, colors), 'annotation') + shapes_svg(
            shapes_of(detections.get(item['id'], {}), colors), 'detection'
        )
        items.append({'item': item, 'svg': overlay, 'url': f'{base}/{quote(item["id"], safe="")}'})
    pages = max(1, -(-total // per_page))
    filters = {
        'state': state or '',
        'set': image_set or '',
        'tag': tag or '',
        'detections': '1' if only_detected else '',
    }
    return render_template(
        'images.html',
        organization=organization,
        project=project,
        items=items,
        total=total,
        page=page,
        pages=pages,
        per_page=per_page,
        filters=filters,
        tags=store.image_tags(organization, project),
        model=model,
        tab='images',
    )


@ui.get(f'{PROJECT}/images/<image_id>/thumb')
def image_thumb(organization: str, project: str, image_id: str) -> Any:
    path = thumbnail(_project(organization, project), organization, project, image_id)
    if path is None:
        raise NotFound(f'image {image_id} not found in {organization}/{project}')
    response = send_file(path, mimetype='image/jpeg', max_age=86400, conditional=True)
    response.headers['Cache-Control'] = 'private, max-age=86400'
    return response


@ui.get(f'{PROJECT}/images/<image_id>/file')
def image_file(organization: str, project: str, image_id: str) -> Any:
    jpeg = _project(organization, project).image_jpeg(organization, project, image_id)
    if jpeg is None:
        raise NotFound(f'image {image_id} not found in {organization}/{project}')
    response = Response(jpeg, mimetype='image/jpeg')
    response.headers['Cache-Control'] = 'private, max-age=86400'
    return response


@ui.get(f'{PROJECT}/images/<image_id>')
def image_page(organization: str, project: str, image_id: str) -> Any:
    store = _project(organization, project)
    item = store.image(organization, project, image_id)
    colors = _colors(store, organization, project)
    layers = []
    for detections in store.detections(organization, project, image_id):
        model = next(
            (
                str(d.get('model_name'))
                for key in ('box_detections', 'point_detections', 'segmentation_detections')
                for d in detections.get(key) or []
                if isinstance(d, dict) and d.get('model_name')
            ),
            '',
        )
        if model:
            shapes = shapes_of(detections, colors)
            layers.append({'model': model, **shapes, 'svg': shapes_svg(shapes, 'detection', labels=True)})
    annotators = [
        {'id': n['id'] or n['sid'], 'name': n['name'] or n['id'] or n['sid']}
        for n in context().hub.connected()
        if n['node_type'] == 'annotation_node' and n['organization'] == organization and n['project'] == project
    ]
    data = {
        'organization': organization,
        'project': project,
        'image': item,
        'categories': store.categories(organization, project),
        'frontend_id': 'llnode-ui-' + secrets.token_urlsafe(9),
        'urls': {
            'save': url_for('ui.update_image', organization=organization, project=project, image_id=image_id),
            'image': f'/control/projects/{organization}/{project}/images/{image_id}',
            'tool': url_for('ui.tool_input', organization=organization, project=project, node='NODE'),
            'tool_logout': url_for('ui.tool_logout', organization=organization, project=project, node='NODE'),
        },
    }
    return render_template(
        'image.html',
        organization=organization,
        project=project,
        item=item,
        layers=layers,
        annotators=annotators,
        data=data,
        tab='images',
    )


# ---------------------------------------------------------------------- trainings


def _training_rows(store: Store, organization: str, project: str) -> list[dict[str, Any]]:
    trainings = store.trainings(organization, project)
    models = {m['training_number']: m for m in store.models(organization, project)}
    statuses = {n['id']: n for n in context().hub.nodes()}
    latest_of_node: dict[str, int] = {}
    for t in trainings:
        if t['node_id']:
            latest_of_node[t['node_id']] = t['number']
    rows = []
    for t in trainings:
        model = models.get(t['number'])
        node = statuses.get(t['node_id'] or '')
        status: dict[str, Any] = node['status'] if node is not None and isinstance(node.get('status'), dict) else {}
        context_: dict[str, Any] = status['context'] if isinstance(status.get('context'), dict) else {}
        live = (
            node is not None
            and node.get('connected')
            and latest_of_node.get(t['node_id'] or '') == t['number']
            and status.get('state') in LIVE_STATES
            and context_.get('organization') == organization
            and context_.get('project') == project
        )
        if not t['accepted']:
            state = 'refused'
        elif live:
            state = str(status.get('state'))
        elif model is not None:
            state = 'finished'
        else:
            state = 'ended'
        ack = t['ack'] if isinstance(t['ack'], dict) else {}
        rows.append(
            {
                **t,
                'state': state,
                'live': bool(live),
                'progress': status.get('progress') if live else None,
                'errors': status.get('errors') if live else {},
                'model': model,
                'node_name': (node.get('name') if node is not None else None) or t['node_id'],
                'error_msg': ack.get('error_msg') if not t['accepted'] else None,
            }
        )
    return rows


def _training(store: Store, organization: str, project: str, number: int) -> tuple[dict[str, Any], list[Any]]:
    rows = _training_rows(store, organization, project)
    row = next((r for r in reversed(rows) if r['number'] == number), None)
    if row is None:
        raise NotFound(f'training {number} not found in {organization}/{project}')
    return row, rows


@ui.get(f'{PROJECT}/trainings')
def trainings(organization: str, project: str) -> Any:
    store = _project(organization, project)
    trainers = [
        {**node_row(n), 'pretrained_models': (n.get('status') or {}).get('pretrained_models') or []}
        for n in _project_nodes(organization, project)
        if n['node_type'] == 'trainer' and n['connected']
    ]
    return render_template(
        'trainings.html',
        organization=organization,
        project=project,
        trainings=list(reversed(_training_rows(store, organization, project))),
        trainers=trainers,
        tab='trainings',
    )


def _metrics(store: Store, organization: str, project: str, number: int) -> dict[str, Any]:
    row, _rows = _training(store, organization, project, number)
    updates = store.training_updates_received(organization, project)
    points = training_points(row, store.trainings(organization, project), updates)
    return {
        'number': number,
        'state': row['state'],
        'live': row['live'],
        'progress': row['progress'],
        'model': row['model']['version'] if row['model'] else None,
        'points': points,
    }


@ui.get(f'{PROJECT}/trainings/<int:number>')
def training(organization: str, project: str, number: int) -> Any:
    store = _project(organization, project)
    row, _rows = _training(store, organization, project, number)
    return render_template(
        'training.html',
        organization=organization,
        project=project,
        training=row,
        metrics=_metrics(store, organization, project, number),
        tab='trainings',
    )


@ui.get(f'{PROJECT}/trainings/<int:number>/metrics.json')
def training_metrics(organization: str, project: str, number: int) -> Any:
    return jsonify(_metrics(_project(organization, project), organization, project, number))


# ---------------------------------------------------------------------- models and nodes


@ui.get(f'{PROJECT}/models')
def models(organization: str, project: str) -> Any:
    store = _project(organization, project)
    return render_template(
        'models.html',
        organization=organization,
        project=project,
        models=list(reversed(store.models(organization, project))),
        target=store.deployment_target(organization, project),
        tab='models',
    )


@ui.get('/nodes')
def nodes() -> Any:
    return render_template('nodes.html', nodes=[node_row(n) for n in context().hub.nodes()])
