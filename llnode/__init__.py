"""llnode: synchronous, thread-based nodes for Zauberzeug's Learning Loop."""

from __future__ import annotations

import logging

from llnode.config import ConfigError, Settings

__version__ = '0.1.0'
__all__ = ['ConfigError', 'Settings', '__version__']

# A library never configures logging; it only makes sure its records go nowhere unless the application says so.
logging.getLogger('llnode').addHandler(logging.NullHandler())
