"""Fault injection for the local Loop: make the next N requests that match a rule fail with a chosen status.

Tests use it to see how nodes ride out a Loop that answers 5xx or 429 (with ``Retry-After``) at a given moment:
``LocalLoop.inject_fault('PUT', r'/models/latest/', 503, count=2)``, or over HTTP ``POST /control/faults`` with
``{"method": "PUT", "path": "<regex>", "status": 503, "count": 2, "retry_after": 1}`` (``DELETE /control/faults``
clears every rule, ``GET`` lists them with their hits). ``path`` is a regular expression searched in the request
path (without the query string); ``method`` ``*`` or null matches every method; ``after`` lets that many matching
requests through before the faults begin (e.g. fail the second detections POST); ``lose_answer`` lets the request
reach the API and then replaces its answer by the fault, as if the answer was lost on the way (the Loop did the
work, the node does not know). A request may match several rules;
the oldest rule with faults left answers it. The rules live in the :class:`LocalLoop` object, so they outlive a
restart of the server. Requests to ``/control/faults`` itself are never faulted.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, jsonify, request

from llnode.localloop.app import context, require_login
from llnode.localloop.errors import BadRequest

logger = logging.getLogger('llnode.localloop.faults')

FAULTS_PATH = '/control/faults'
_DRAIN_CHUNK = 64 * 1024


@dataclass
class FaultRule:
    id: int
    method: str | None
    path: re.Pattern[str]
    status: int
    count: int
    retry_after: float | None
    detail: Any
    after: int = 0
    lose_answer: bool = False
    hits: int = 0

    def describe(self) -> dict[str, Any]:
        return {
            'id': self.id,
            'method': self.method,
            'path': self.path.pattern,
            'status': self.status,
            'left': self.count,
            'hits': self.hits,
            'retry_after': self.retry_after,
            'detail': self.detail,
            'after': self.after,
            'lose_answer': self.lose_answer,
        }


class FaultRules:
    """The fault rules of one local Loop; thread-safe (``_lock`` guards the list and the counters)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._next_id = 1

    def add(
        self,
        method: str | None,
        path: str,
        status: int,
        *,
        count: int = 1,
        retry_after: float | None = None,
        detail: Any = None,
        after: int = 0,
        lose_answer: bool = False,
    ) -> dict[str, Any]:
        """Fail ``count`` requests matching ``method`` and the regex ``path`` with ``status``, after letting ``after``
        matching requests through; with ``lose_answer`` the API handles each request before its answer is replaced."""
        if method is not None and (not isinstance(method, str) or not method):
            raise BadRequest(f'"method" must be an HTTP method, "*" or null, got {method!r}')
        if not isinstance(path, str):
            raise BadRequest(f'"path" must be a regular expression, got {path!r}')
        try:
            pattern = re.compile(path)
        except re.error as e:
            raise BadRequest(f'"path" is not a valid regular expression: {e}') from None
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            raise BadRequest(f'"status" must be an HTTP status code, got {status!r}')
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise BadRequest(f'"count" must be a positive integer, got {count!r}')
        if retry_after is not None and (
            isinstance(retry_after, bool) or not isinstance(retry_after, (int, float)) or retry_after < 0
        ):
            raise BadRequest(f'"retry_after" must be a number of seconds >= 0 or null, got {retry_after!r}')
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            raise BadRequest(f'"after" must be an integer >= 0, got {after!r}')
        if not isinstance(lose_answer, bool):
            raise BadRequest(f'"lose_answer" must be true or false, got {lose_answer!r}')
        normalized = None if method in (None, '*') else method.upper()
        with self._lock:
            rule = FaultRule(self._next_id, normalized, pattern, status, count, retry_after, detail, after, lose_answer)
            self._next_id += 1
            self._rules.append(rule)
        logger.info('fault rule %d: %s %s -> %d (x%d)', rule.id, normalized or '*', path, status, count)
        return rule.describe()

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def rules(self) -> list[dict[str, Any]]:
        """Every rule (used up ones too) with ``left`` and ``hits``."""
        with self._lock:
            return [r.describe() for r in self._rules]

    def take(self, method: str, path: str) -> FaultRule | None:
        """The rule that answers this request (its count is used up by one), or None."""
        if path.startswith(FAULTS_PATH):
            return None
        with self._lock:
            for rule in self._rules:
                if rule.count > 0 and rule.method in (None, method.upper()) and rule.path.search(path):
                    if rule.after > 0:
                        rule.after -= 1
                        continue
                    rule.count -= 1
                    rule.hits += 1
                    return rule
        return None


class FaultMiddleware:
    """WSGI middleware that answers requests matching a :class:`FaultRules` rule with the rule's status."""

    def __init__(self, app: Callable[..., Iterable[bytes]], rules: FaultRules) -> None:
        self.app = app
        self.rules = rules

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        rule = self.rules.take(environ.get('REQUEST_METHOD', 'GET'), environ.get('PATH_INFO', ''))
        if rule is None:
            return self.app(environ, start_response)
        if rule.lose_answer:
            _run_and_discard(self.app, environ)
        else:
            _drain(environ)
        detail = rule.detail if rule.detail is not None else f'injected fault (rule {rule.id})'
        body = json.dumps({'detail': detail}).encode()
        headers = [('Content-Type', 'application/json'), ('Content-Length', str(len(body)))]
        if rule.retry_after is not None:
            value = rule.retry_after
            headers.append(('Retry-After', str(int(value)) if float(value).is_integer() else str(value)))
        logger.info(
            'injected %d for %s %s (rule %d)',
            rule.status,
            environ.get('REQUEST_METHOD'),
            environ.get('PATH_INFO'),
            rule.id,
        )
        start_response(f'{rule.status} {_reason(rule.status)}', headers)
        return [body]


def _run_and_discard(app: Callable[..., Iterable[bytes]], environ: dict[str, Any]) -> None:
    """Let ``app`` handle the request completely, throwing its answer away."""
    result = app(environ, lambda status, headers, exc_info=None: lambda data: None)
    try:
        for _ in result:
            pass
    finally:
        close = getattr(result, 'close', None)
        if close is not None:
            close()


def _drain(environ: dict[str, Any]) -> None:
    """Read the request body, so that a keep-alive connection stays in step for the next request."""
    try:
        length = int(environ.get('CONTENT_LENGTH') or 0)
    except ValueError:
        return
    stream = environ.get('wsgi.input')
    while length > 0 and stream is not None:
        chunk = stream.read(min(length, _DRAIN_CHUNK))
        if not chunk:
            break
        length -= len(chunk)


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return 'Injected Fault'


faults = Blueprint('faults', __name__)


@faults.before_request
def _login_guard() -> None:
    require_login()


def _rules() -> FaultRules:
    rules = context().faults
    if rules is None:
        raise BadRequest('fault injection is not available on this server')
    return rules


@faults.get('')
def list_faults() -> Any:
    return jsonify(faults=_rules().rules())


@faults.post('')
def add_fault() -> Any:
    body = request.get_json(force=True, silent=True)
    if not isinstance(body, dict):
        raise BadRequest('expected a JSON object {method, path, status, count, retry_after, detail}')
    keys = {'method', 'path', 'status', 'count', 'retry_after', 'detail', 'after', 'lose_answer'}
    unknown = sorted(set(body) - keys)
    if unknown:
        raise BadRequest(f'unknown keys: {", ".join(unknown)}')
    rule = _rules().add(
        body.get('method'),
        body.get('path', ''),
        body.get('status'),  # type: ignore[arg-type]
        count=body.get('count', 1),
        retry_after=body.get('retry_after'),
        detail=body.get('detail'),
        after=body.get('after', 0),
        lose_answer=body.get('lose_answer', False),
    )
    return jsonify(rule), 201


@faults.delete('')
def clear_faults() -> Any:
    _rules().clear()
    return jsonify(faults=[])
