"""What a failed call to the Loop means for an operator, in one short line for ``/readyz``, ``/stats`` and logs.

A requests error reads ``GET http://loop/api/... failed: HTTPConnectionPool(host=..., port=...): Max retries
exceeded with url: ... (Caused by NewConnectionError(...: [Errno 111] Connection refused))``; the operator needs
"the Loop at http://loop cannot be reached: connection refused". A login refused with 401 becomes "the Loop
refused login for user 'x' (401)". Passwords never appear: only the user name does.
"""

from __future__ import annotations

import json
import re
from typing import Any

from llnode.config import Settings
from llnode.loop.errors import LoopAuthError, LoopConnectionError, LoopHTTPError, LoopTimeout

#: The OS reason inside a requests error: ``[Errno 111] Connection refused`` -> ``Connection refused``.
_ERRNO_REASON = re.compile(r'\[Errno -?\d+\] ([^)\'"]+)')


def loop_cause(error: BaseException, settings: Settings | Any) -> str:
    """One line that says why talking to the Loop failed, in an operator's words.

    ``settings`` are the node's :class:`~llnode.config.Settings` (anything with the same attributes will do).
    """
    where = getattr(settings, 'base_url', 'the configured host')
    user = getattr(settings, 'username', '')
    if isinstance(error, LoopAuthError):
        if error.url.endswith('/api/login'):
            return f'the Loop refused login for user {user!r} ({error.status})'
        return f'the Loop refused the session of user {user!r} ({error.status}) on {error.method} {error.url}'
    if isinstance(error, LoopHTTPError):
        return http_cause(error.status, error.body, settings, f'{error.method} {error.url}')
    if isinstance(error, LoopTimeout):
        return f'the Loop at {where} did not answer in time'
    if isinstance(error, LoopConnectionError):
        match = _ERRNO_REASON.search(str(error))
        reason = match.group(1).strip().lower() if match else _short(str(error))
        return f'the Loop at {where} cannot be reached: {reason}'
    return _short(str(error)) or type(error).__name__


def http_cause(status: int, body: str, settings: Settings | Any, call: str) -> str:
    """The cause for an answer with ``status`` to ``call`` (``POST http://…/detectors``)."""
    detail = _detail(body)
    user = getattr(settings, 'username', '')
    organization, project = getattr(settings, 'organization', ''), getattr(settings, 'project', '')
    if status == 401:
        return f'the Loop refused user {user!r} ({status}) on {call}'
    if status == 403:
        return f'the Loop does not let user {user!r} use {organization}/{project} ({status})'
    if status == 404 and organization and project and f'/{organization}/projects/{project}' in call:
        return f'the Loop does not know organization {organization!r} or its project {project!r} (404: {detail})'
    return f'{call} answered {status}' + (f': {detail}' if detail else '')


def _detail(body: str) -> str:
    """The ``detail`` of a JSON error body, else the body's start."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return _short(body)
    if isinstance(parsed, dict) and isinstance(parsed.get('detail'), str):
        return _short(parsed['detail'])
    return _short(body)


def _short(text: str, limit: int = 200) -> str:
    text = ' '.join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + '...'
