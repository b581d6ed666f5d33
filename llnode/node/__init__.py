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
from llnode.node.restart import EXIT_FORCED, EXIT_NEEDS_RESTART, EXIT_OK, NodeNeedsRestartError

__all__ = [
    'EXIT_FORCED',
    'EXIT_NEEDS_RESTART',
    'EXIT_OK',
    'BadRequest',
    'InsufficientStorage',
    'Node',
    'NodeHTTPError',
    'NodeNeedsRestartError',
    'NotFound',
    'PayloadTooLarge',
    'Unavailable',
    'Unprocessable',
    'UnsupportedMediaType',
]
