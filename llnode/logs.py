"""Logging glue: route the Socket.IO libraries' records into llnode's logger tree without configuring anything.

python-socketio and python-engineio attach a ``StreamHandler`` to their own loggers when given ``logger=False``
or ``True``; a library must not do that to its users. Passing these adapters instead keeps every record under
``llnode.*`` and turns the libraries' per-packet INFO chatter into DEBUG.
"""

from __future__ import annotations

import logging
from typing import Any


class QuietLogger(logging.LoggerAdapter):
    """A logger adapter that logs INFO records at DEBUG."""

    def info(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self.debug(msg, *args, **kwargs)


def socketio_loggers(prefix: str) -> dict[str, Any]:
    """Keyword arguments ``logger``/``engineio_logger`` for a python-socketio ``Server`` or ``Client``."""
    return {
        'logger': QuietLogger(logging.getLogger(f'{prefix}.sio'), {}),
        'engineio_logger': QuietLogger(logging.getLogger(f'{prefix}.eio'), {}),
    }
