"""A node served on a free loopback port in a background thread, stopped and joined within a bounded time.

Why: the demo runs a trainer and a detector in its own process, each with its real HTTP server (the detector's
``POST /detect`` is what the demo calls), while the main thread drives the steps. ``Node.serve()`` already does
everything a served node needs (server choice, allocator tuning, the lifecycle); here it runs in a named thread
instead of the main one, so it installs no signal handlers, and ``stop()`` ends it through ``node.stop()``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Generic, TypeVar

from llnode.node.identity import node_key
from llnode.node.node import Node

logger = logging.getLogger('llnode.demo.served')

N = TypeVar('N', bound=Node)

#: how long ``start`` waits for the node to listen
START_TIMEOUT = 30.0


class ServedNode(Generic[N]):
    """``ServedNode(node).start()`` serves ``node`` on ``127.0.0.1`` and a free port; ``url`` once it listens."""

    def __init__(self, node: N, *, host: str = '127.0.0.1', port: int = 0, server: str = 'waitress') -> None:
        self.node = node
        self.host = host
        self.port = port
        self.server = server
        self.error: BaseException | None = None
        self.exit_code: int | None = None
        self._thread = threading.Thread(
            target=self._serve, name=f'llnode-demo-serve-{node_key(node.name)}', daemon=True
        )

    @property
    def url(self) -> str:
        address = self.node.server_address
        if address is None:
            raise RuntimeError(f'{self.node.name} is not served')
        return f'http://{address[0]}:{address[1]}'

    def start(self, timeout: float = START_TIMEOUT) -> ServedNode[N]:
        """Serve in the background; returns once the node listens. Raises if it failed to start or to listen."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while self.node.server_address is None:
            if not self._thread.is_alive():
                raise RuntimeError(f'{self.node.name} failed to start: {self.error!r}') from self.error
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f'{self.node.name} did not listen within {timeout:g} s')
            self._thread.join(0.02)
        return self

    def stop(self, timeout: float = 15.0) -> bool:
        """Stop the node and its server and join the thread; True if it ended within ``timeout``."""
        clean = self.node.stop(timeout)
        if self._thread.ident is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning('%s: serving thread did not end within %.0f s', self.node.name, timeout)
                return False
        return clean

    def _serve(self) -> None:
        try:
            self.exit_code = self.node.serve(self.host, self.port, server=self.server, threads=8)
        except BaseException as e:  # reported by start() and in the log; the thread must not die silently
            self.error = e
            logger.exception('%s: serving failed', self.node.name)
