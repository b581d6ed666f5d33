"""One exception hierarchy for everything that can go wrong between a node and its Loop.

Catch ``LoopError`` for "the Loop did not do what I asked", or a subclass where the reason matters.
"""

from __future__ import annotations


class LoopError(Exception):
    """Base of every error talking to a Learning Loop."""


class LoopConnectionError(LoopError):
    """The Loop could not be reached (refused, DNS, TLS, reset) or the connection broke."""


class LoopTimeout(LoopConnectionError):
    """The Loop did not answer within the timeout of the call."""


class LoopHTTPError(LoopError):
    """The Loop answered with a status the caller cannot use."""

    def __init__(self, method: str, url: str, status: int, body: str = '') -> None:
        self.method = method
        self.url = url
        self.status = status
        self.body = body
        detail = f': {body[:300]}' if body else ''
        super().__init__(f'{method} {url} answered {status}{detail}')


class LoopAuthError(LoopHTTPError):
    """Login failed, or the Loop still answered 401 after one re-login."""


class LoopRateLimited(LoopHTTPError):
    """The Loop kept answering 429 beyond the retry budget."""


class LoopProtocolError(LoopError):
    """The Loop answered, but not in the shape the protocol describes (bad JSON, missing keys, bad zip)."""


class ModelArchiveError(LoopProtocolError):
    """A model zip is unusable: not a zip, no ``model.json``, or an entry that would escape the target folder."""
