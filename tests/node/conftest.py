"""Helpers for the node runtime tests: settings on a temp data folder, polling with a deadline, served nodes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from llnode.config import Settings
from llnode.node import Node
from tests.polling import wait_for


def new_threads_gone(before: set[threading.Thread], timeout: float = 5.0, prefix: str = '', ignore: str = '') -> None:
    """Every thread started since ``before`` (named ``prefix...``, not ``ignore...``) ends within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        left = [
            t
            for t in threading.enumerate()
            if t not in before
            and t.is_alive()
            and t.name.startswith(prefix)
            and not (ignore and t.name.startswith(ignore))
        ]
        if not left:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f'threads still running: {sorted(t.name for t in left)}')
        time.sleep(0.01)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(host='127.0.0.1:1', data_folder=tmp_path / 'data')


class Served:
    """A node served on a free loopback port by ``serve()`` in a thread; ``stop()`` returns serve()'s exit code."""

    def __init__(self, node: Node, server: str) -> None:
        self.node = node
        self.server = server
        self.exit_code: int | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name=f'test-serve-{server}', daemon=True)
        self._thread.start()
        address = wait_for(lambda: node.server_address or self.error, what=f'{server} to listen')
        if self.error is not None:
            raise self.error
        self.url = f'http://{address[0]}:{address[1]}'

    def _serve(self) -> None:
        try:
            self.exit_code = self.node.serve('127.0.0.1', 0, server=self.server, threads=4)
        except BaseException as e:
            self.error = e

    @property
    def serving(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> int | None:
        self.node.stop()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), 'serve() did not return'
        return self.exit_code


@pytest.fixture(params=['waitress', 'werkzeug'])
def server(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def serve() -> Iterator[Callable[[Node, str], Served]]:
    """``serve(node, server)`` serves ``node`` in a thread; every served node is stopped at teardown."""
    started: list[Served] = []

    def start(node: Node, server: str) -> Served:
        served = Served(node, server)
        started.append(served)
        return served

    yield start
    for served in started:
        if served.serving:
            served.stop()
