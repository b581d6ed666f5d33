"""What every llnode node shares: lifecycle, the repeat thread, the node uuid, the Flask app and serving.

``Node`` is the base class; the errors map to HTTP statuses in the app's one error handler.
"""

from __future__ import annotations

from llnode.node.errors import (
    BadRequest,
    InsufficientStorage,
    NodeHTTPError,
    NotFound,
    PayloadTooLarge,
    Unavailable,
    Unprocessable,
    UnsupportedMediaType,
)
from llnode.node.node import Node

__all__ = [
    'BadRequest',
    'InsufficientStorage',
    'Node',
    'NodeHTTPError',
    'NotFound',
    'PayloadTooLarge',
    'Unavailable',
    'Unprocessable',
    'UnsupportedMediaType',
]
