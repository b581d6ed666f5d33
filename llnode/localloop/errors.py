"""Errors of the local Loop that carry their HTTP answer, so one Flask error handler turns them into JSON."""

from __future__ import annotations

from typing import Any


class LoopApiError(Exception):
    """A request the local Loop refuses: answered as ``{"detail": detail}`` with ``status``."""

    status = 400

    def __init__(self, detail: Any, status: int | None = None) -> None:
        super().__init__(detail if isinstance(detail, str) else repr(detail))
        self.detail = detail
        if status is not None:
            self.status = status


class BadRequest(LoopApiError):
    status = 400


class Unauthorized(LoopApiError):
    status = 401


class NotFound(LoopApiError):
    status = 404


class Conflict(LoopApiError):
    status = 409


class Unprocessable(LoopApiError):
    status = 422
