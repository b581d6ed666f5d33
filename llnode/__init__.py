"""llnode: synchronous, thread-based nodes for Zauberzeug's Learning Loop."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from llnode.config import ConfigError, Settings

if TYPE_CHECKING:
    from llnode.node.restart import EXIT_NEEDS_RESTART, NodeNeedsRestartError

__version__ = '0.1.0'
__all__ = ['EXIT_NEEDS_RESTART', 'ConfigError', 'NodeNeedsRestartError', 'Settings', '__version__']

#: names served by :func:`__getattr__` from :mod:`llnode.node.restart`: importing ``llnode`` stays light (the
#: node package loads Flask and Socket.IO)
_RESTART_NAMES = ('EXIT_NEEDS_RESTART', 'NodeNeedsRestartError')


def __getattr__(name: str) -> Any:
    if name in _RESTART_NAMES:
        from llnode.node import restart

        return getattr(restart, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


# A library never configures logging; it only makes sure its records go nowhere unless the application says so.
logging.getLogger('llnode').addHandler(logging.NullHandler())
