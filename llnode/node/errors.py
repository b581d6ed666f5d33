"""Exceptions a node's route (or hook) raises to answer with a fitting HTTP status instead of a bare 500.

The app's one error handler (:mod:`llnode.node.app`) turns every :class:`NodeHTTPError` into
``{"detail": "<message>"}`` with the exception's status, so route code says *what* went wrong and never builds
error responses itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar


class NodeHTTPError(Exception):
    """Base of the errors that map to an HTTP status; ``detail`` is what the client reads."""

    status: ClassVar[int] = 500

    def __init__(self, detail: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers: dict[str, str] = dict(headers or {})


class BadRequest(NodeHTTPError):
    """The request is malformed: a missing part, an invalid value, undecodable data."""

    status = 400


class NotFound(NodeHTTPError):
    """The thing asked for does not exist (a model version, an item)."""

    status = 404


class PayloadTooLarge(NodeHTTPError):
    """The request (or one part of it) is bigger than the node accepts."""

    status = 413


class UnsupportedMediaType(NodeHTTPError):
    """The body has a content type the route cannot read."""

    status = 415


class Unprocessable(NodeHTTPError):
    """Well-formed, but the content cannot be used (wrong shape, dtype or field values)."""

    status = 422


class InsufficientStorage(NodeHTTPError):
    """The node cannot store what it was given (disk full or failing)."""

    status = 507


class Unavailable(NodeHTTPError):
    """The node cannot do this now (no model loaded, a model swap running); the client may retry later."""

    status = 503

    def __init__(
        self, detail: str, *, retry_after: float | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        merged = dict(headers or {})
        if retry_after is not None:
            merged['Retry-After'] = str(max(0, round(retry_after)))
        super().__init__(detail, headers=merged)
