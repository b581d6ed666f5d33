"""Fixtures for the detector's client-facing tests: served detectors with a testing logic, and Socket.IO clients.

``make_detector(server, ...)`` serves a :class:`DetectorNode` on a free loopback port. By default its data folder
already holds model ``0.0`` (so it serves without any Loop contact), its Loop is an address where nothing listens,
and its outbox is the real one (uploads fail and back off, so items stay on disk), read by :class:`OutboxFiles`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from llnode.config import Settings
from llnode.detector import DetectorNode
from tests.detector.node_helpers import OutboxFiles, SioClient, TestingFactory, connect_client, install_model
from tests.node.conftest import Served, serve, server  # noqa: F401  (fixtures used by these tests)

#: a Loop address where nothing listens: calls fail at once with "connection refused"
NO_LOOP = '127.0.0.1:1'


@dataclasses.dataclass
class Detector:
    """A served detector and its parts."""

    node: DetectorNode
    served: Served
    factory: TestingFactory
    server: str

    @property
    def outbox(self) -> OutboxFiles:
        return OutboxFiles(self.node)

    @property
    def url(self) -> str:
        return self.served.url

    @property
    def data_folder(self) -> Path:
        return self.node.settings.data_folder


def offline_settings(data_folder: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        'host': NO_LOOP,
        'organization': 'zauberzeug',
        'project': 'demo',
        'data_folder': data_folder,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def sio_clients() -> Iterator[list[SioClient]]:
    """The Socket.IO clients a test connected; disconnected at teardown, after the detectors have stopped.

    Stopping a detector closes its sessions, so the clients see the end at once. A polling client disconnected
    first may wait for the server's next ping (25 s): python-engineio's client skips its CLOSE packet when its
    write loop is still finishing the previous POST.
    """
    clients: list[SioClient] = []
    yield clients
    for client in clients:
        client.disconnect()


@pytest.fixture
def make_detector(
    sio_clients: list[SioClient],
    tmp_path: Path,
    serve: Callable[..., Served],  # noqa: F811
) -> Callable[..., Detector]:
    """``make_detector(server='werkzeug', *, model=True, factory=None, settings=None, node_class=DetectorNode,
    **node_kwargs)`` serves a detector (``node_kwargs`` go to the node, e.g. ``use_backdoor_controls=True``).

    ``model``: install model 0.0 first. ``settings``: default :func:`offline_settings` on a fresh folder.
    ``node_class``: a DetectorNode subclass (e.g. a smaller ``max_request_bytes``). Every detector is stopped at
    teardown.
    """
    count = 0

    def make(
        server: str = 'werkzeug',  # noqa: F811
        *,
        model: bool = True,
        factory: TestingFactory | None = None,
        settings: Settings | None = None,
        node_class: type[DetectorNode] = DetectorNode,
        **node_kwargs: Any,
    ) -> Detector:
        nonlocal count
        count += 1
        if settings is None:
            settings = offline_settings(tmp_path / f'node-{count}')
        settings.ensure_data_folder()
        if model:
            install_model(settings.data_folder)
        factory = factory or TestingFactory()
        node_kwargs.setdefault('repeat_interval', 0.2)
        node = node_class('test detector', factory, settings=settings, **node_kwargs)
        served = serve(node, server)
        return Detector(node, served, factory, server)

    return make


@pytest.fixture
def detector(make_detector: Callable[..., Detector]) -> Detector:
    """A werkzeug-served detector with model 0.0."""
    return make_detector('werkzeug')


@pytest.fixture
def sio_connect(sio_clients: list[SioClient]) -> Callable[[Detector], SioClient]:
    """``sio_connect(detector)``: a Socket.IO client on the detector's transport (see ``sio_clients``)."""

    def connect(detector: Detector) -> SioClient:
        client = connect_client(detector.url, detector.server)
        sio_clients.append(client)
        return client

    return connect
