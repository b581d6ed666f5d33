"""The Flask app of the local Loop: app factory, login sessions, JSON errors.

Login sessions are rows in the store (they survive a restart), carried by the cookie :data:`SESSION_COOKIE`.
Every error becomes ``{"detail": ...}`` JSON with a fitting status, unexpected ones a logged JSON 500.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from llnode.localloop.errors import LoopApiError, Unauthorized
from llnode.localloop.store import Store

logger = logging.getLogger('llnode.localloop.app')

SESSION_COOKIE = 'session'
MAX_CONTENT_LENGTH = 512 * 1024 * 1024
#: how long a login session lasts in the web UI (seconds since login), unless the LocalLoop is given another
UI_SESSION_SECONDS = 12 * 3600.0


@dataclass
class LoopContext:
    """What the request handlers share: the store, the Socket.IO hub (set once it exists), the stop signal."""

    store: Store
    hub: Any = None
    stopping: threading.Event = field(default_factory=threading.Event)
    faults: Any = None  #: the server's :class:`~llnode.localloop.faults.FaultRules`
    #: the web UI sends a person back to the login page this many seconds after login
    session_seconds: float = UI_SESSION_SECONDS


def context() -> LoopContext:
    ctx: LoopContext = current_app.extensions['llnode_loop']
    return ctx


def current_user() -> str | None:
    return context().store.session_user(request.cookies.get(SESSION_COOKIE))


def require_login() -> str:
    user = current_user()
    if user is None:
        raise Unauthorized('not logged in: POST /api/login first and send its session cookie')
    return user


def create_app(ctx: LoopContext) -> Flask:
    """A Flask app serving ``/api`` (the Loop's REST API), ``/control`` (what a person does in the web UI, as JSON)
    and the web UI's pages (``/``, ``/login``, ``/projects/...``, ``/nodes``; see :mod:`llnode.localloop.ui`)."""
    from llnode.localloop.api import api
    from llnode.localloop.control import control
    from llnode.localloop.faults import FAULTS_PATH, faults
    from llnode.localloop.ui import ui

    app = Flask('llnode.localloop')
    app.config['MAX_CONTENT_LENGTH'] = MAX_CONTENT_LENGTH
    app.config['JSON_SORT_KEYS'] = False
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions['llnode_loop'] = ctx
    app.register_blueprint(api, url_prefix='/api')
    app.register_blueprint(control, url_prefix='/control')
    app.register_blueprint(faults, url_prefix=FAULTS_PATH)
    app.register_blueprint(ui)

    @app.errorhandler(LoopApiError)
    def loop_api_error(e: LoopApiError) -> Any:
        return jsonify(detail=e.detail), e.status

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException) -> Any:
        return jsonify(detail=e.description or e.name), e.code or 500

    @app.errorhandler(Exception)
    def unexpected_error(e: Exception) -> Any:
        logger.exception('unexpected error in %s %s', request.method, request.path)
        return jsonify(detail=f'internal error: {type(e).__name__}: {e}'), 500

    return app
