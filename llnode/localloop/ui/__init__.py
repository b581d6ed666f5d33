"""The local Loop's web UI: server-rendered pages (Flask + Jinja) with a little vanilla JavaScript, no build step.

One blueprint, registered at the root of the local Loop's app beside ``/api`` and ``/control``: ``/login``,
``/`` (projects), ``/projects/{org}/{project}`` (overview, ``/images``, ``/images/{id}``, ``/trainings``,
``/trainings/{n}``, ``/models``) and ``/nodes``. Pages read through the same :class:`~llnode.localloop.Store`;
every action (annotate, move an image, begin/stop/abort a training, deploy, an annotator tool's events) calls the
control API's own view function after checking the CSRF token, so what the UI saves is what ``/control`` saves.
Static files are served from this package only (``/ui/static/...``); see docs/localloop-ui.rst.
"""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Response, g, jsonify, redirect, render_template, request, url_for

from llnode.localloop.errors import LoopApiError

ui = Blueprint('ui', __name__, template_folder='templates', static_folder='static', static_url_path='/ui/static')

#: endpoints a person reaches without a session
OPEN_ENDPOINTS = {'ui.login', 'ui.login_form', 'ui.static'}


def _wants_json() -> bool:
    return request.method != 'GET' or request.path.endswith('.json') or request.is_json


@ui.before_request
def _guard() -> Any:
    from llnode.localloop.ui.security import csrf_ok, current_session

    g.ui_started = time.perf_counter()
    session = current_session()
    g.ui_session = session
    if request.endpoint in OPEN_ENDPOINTS:
        return None
    if session.user is None:
        reason = 'your session expired, log in again' if session.expired else 'log in first'
        if _wants_json():
            return jsonify(detail=f'not logged in: {reason}'), 401
        return redirect(url_for('ui.login_form', next=request.full_path.rstrip('?'), expired=int(session.expired)))
    if request.method not in ('GET', 'HEAD', 'OPTIONS') and not csrf_ok(session):
        return jsonify(detail='missing or wrong CSRF token: reload the page'), 403
    return None


@ui.after_request
def _server_timing(response: Response) -> Response:
    """``Server-Timing: app;dur=MS``: how long the server worked on the answer (what bench/ui.py measures)."""
    started = g.get('ui_started')
    if started is not None:
        response.headers['Server-Timing'] = f'app;dur={(time.perf_counter() - started) * 1000:.2f}'
    return response


@ui.errorhandler(LoopApiError)
def _loop_api_error(e: LoopApiError) -> Any:
    if _wants_json():
        return jsonify(detail=e.detail), e.status
    return render_template('error.html', status=e.status, detail=str(e.detail)), e.status


from llnode.localloop.ui import actions, pages  # noqa: E402,F401  (routes register on import)

__all__ = ['ui']
