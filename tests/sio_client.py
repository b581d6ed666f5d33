"""The tests' own python-socketio client: no reconnection, and threads named ``test-client-...`` so that the
thread-leak checks can tell them from the node's. (python-engineio's client sometimes keeps its write loop for
up to 30 s after the server closed a WebSocket; that is not the node's.)"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import engineio
import socketio

CLIENT_THREADS = 'test-client-'


class _NamedEngineIOClient(engineio.Client):
    def start_background_task(self, target: Callable[..., Any], *args: Any, **kwargs: Any) -> threading.Thread:
        name = f'{CLIENT_THREADS}{getattr(target, "__name__", "task")}'
        thread = threading.Thread(target=target, args=args, kwargs=kwargs, daemon=True, name=name)
        thread.start()
        return thread


class SioClient(socketio.Client):
    """A plain python-socketio client whose threads are recognisable."""

    def __init__(self) -> None:
        super().__init__(reconnection=False)

    def _engineio_client_class(self) -> type[engineio.Client]:
        return _NamedEngineIOClient
