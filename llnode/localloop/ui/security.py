"""Who may see the web UI: the API's login sessions (same users, same cookie), a lifetime, and CSRF tokens.

The session cookie is the one ``POST /api/login`` sets (:data:`~llnode.localloop.app.SESSION_COOKIE`), so a person
logged in to the UI is logged in to the JSON API and back. The UI sends a person to the login page once the
session is older than the Loop's ``session_seconds`` (and deletes it). Every state-changing request of the UI
carries a CSRF token: an HMAC of the session token, so it needs no storage, is unguessable without the
(http-only) cookie, and dies with the session. The login form, made before any session exists, uses a random
double-submit cookie instead.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timezone

from flask import request

from llnode.localloop.app import SESSION_COOKIE, context

LOGIN_CSRF_COOKIE = 'llnode_login_csrf'
CSRF_HEADER = 'X-CSRF-Token'
CSRF_FIELD = 'csrf_token'


class SessionState:
    """The login state of the current request: ``user`` (None when not logged in) and why not (``expired``)."""

    def __init__(self, user: str | None, token: str | None, expired: bool = False) -> None:
        self.user = user
        self.token = token
        self.expired = expired

    @property
    def csrf_token(self) -> str:
        return csrf_token_of(self.token or '')


def csrf_token_of(session_token: str) -> str:
    return hmac.new(session_token.encode(), b'llnode-ui-csrf', hashlib.sha256).hexdigest()


def current_session() -> SessionState:
    """The session of the request's cookie; an expired one is deleted and reported as ``expired``."""
    token = request.cookies.get(SESSION_COOKIE)
    store = context().store
    info = store.session_info(token)
    if info is None:
        return SessionState(None, None)
    user, created = info
    try:
        age = (datetime.now(timezone.utc) - datetime.fromisoformat(created)).total_seconds()
    except ValueError:
        age = float('inf')
    if age > context().session_seconds:
        store.delete_session(token)
        return SessionState(None, None, expired=True)
    return SessionState(user, token)


def csrf_ok(session: SessionState) -> bool:
    """Whether the request carries the session's CSRF token (header or form field)."""
    sent = request.headers.get(CSRF_HEADER) or request.form.get(CSRF_FIELD) or ''
    return session.token is not None and hmac.compare_digest(sent, session.csrf_token)


def new_login_token() -> str:
    return secrets.token_urlsafe(24)


def login_csrf_ok() -> bool:
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE) or ''
    sent = request.form.get(CSRF_FIELD) or ''
    return bool(cookie) and hmac.compare_digest(cookie, sent)


def safe_next(target: str | None) -> str:
    """Where to go after login: a path of this server only (never another host)."""
    if not target or not target.startswith('/') or target.startswith('//') or '\\' in target:
        return '/'
    return target
