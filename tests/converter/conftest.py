"""Fixtures and helpers for the converter tests: a text-based logic without torch, models put into the local Loop
over its REST API, and ``make_converter(loop, logic, **options)`` that starts a ConverterNode with test timings."""

from __future__ import annotations

import io
import json
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from llnode.converter import ConverterLogic, ConverterNode
from llnode.localloop import LocalLoop
from tests.polling import wait_for

ORGANIZATION, PROJECT = 'zauberzeug', 'demo'
SOURCE, TARGET = 'text', 'upper'
WEIGHTS = 'weights.txt'

#: Node options for tests: fast heartbeat, checks and retries.
FAST: dict[str, Any] = {'repeat_interval': 0.1, 'check_interval': 0.05, 'retry_delay': 0.1, 'max_retry_delay': 2.0}


class UpperLogic(ConverterLogic):
    """``text`` -> ``upper``: ``weights.txt`` upper-cased into ``weights.upper.txt``; ``BROKEN`` weights raise.

    ``calls`` records ``(model id, time.monotonic())`` of every conversion; ``before_convert(model_json)``, when
    set, runs first (tests block or race there).
    """

    def __init__(self) -> None:
        super().__init__(SOURCE, TARGET)
        self.calls: list[tuple[str, float]] = []
        self.before_convert: Callable[[dict[str, Any]], None] | None = None
        self._lock = threading.Lock()

    def convert(self, model_folder: Path, out_folder: Path) -> list[Path]:
        model_json = json.loads((model_folder / 'model.json').read_text())
        with self._lock:
            self.calls.append((model_json['id'], time.monotonic()))
        if self.before_convert is not None:
            self.before_convert(model_json)
        text = (model_folder / WEIGHTS).read_text()
        if text.startswith('BROKEN'):
            raise ValueError('broken weights')
        target = out_folder / 'weights.upper.txt'
        target.write_text(text.upper())
        return [target]

    def calls_for(self, model_id: str) -> list[float]:
        with self._lock:
            return [t for m, t in self.calls if m == model_id]


def login(loop: LocalLoop) -> requests.Session:
    session = requests.Session()
    response = session.post(f'{loop.url}/api/login', data={'username': 'u', 'password': 'p'}, timeout=10)
    response.raise_for_status()
    return session


def upload_new_model(loop: LocalLoop, model_format: str, files: dict[str, bytes]) -> str:
    """``POST …/{format}``: a new model of the demo project with ``files``; its id."""
    with login(loop) as session:
        response = session.post(
            f'{loop.url}/api/{ORGANIZATION}/projects/{PROJECT}/{model_format}',
            files=[('files', (name, content)) for name, content in files.items()],
            timeout=10,
        )
    response.raise_for_status()
    model_id: str = response.json()['id']
    return model_id


def add_format(loop: LocalLoop, model_id: str, model_format: str, files: dict[str, bytes]) -> requests.Response:
    """``PUT …/models/{id}/{format}/file`` as another converter would."""
    with login(loop) as session:
        return session.put(
            f'{loop.url}/api/{ORGANIZATION}/projects/{PROJECT}/models/{model_id}/{model_format}/file',
            files=[('files', (name, content)) for name, content in files.items()],
            timeout=10,
        )


def formats(loop: LocalLoop, model_id: str) -> list[str]:
    result: list[str] = loop.store.model(ORGANIZATION, PROJECT, model_id)['formats']
    return result


def stored_files(loop: LocalLoop, model_id: str, model_format: str) -> dict[str, bytes]:
    """The files of one stored model format, by name (``model.json`` included)."""
    _, path = loop.store.model_zip(ORGANIZATION, PROJECT, model_id, model_format)
    with zipfile.ZipFile(io.BytesIO(path.read_bytes())) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def converter_status(loop: LocalLoop, node: ConverterNode) -> dict[str, Any] | None:
    """The status the Loop recorded for ``node``, or None."""
    record = next((n for n in loop.nodes() if n.get('id') == node.uuid), None)
    return record['status'] if record and record['node_type'] == 'converter' else None


@pytest.fixture
def make_converter() -> Iterator[Callable[..., ConverterNode]]:
    """``make_converter(loop, logic=None, *, name='test converter', settings=None, **node_options)``; every node is
    stopped at teardown (and must stop within its bound)."""
    nodes: list[ConverterNode] = []

    def make(
        loop: LocalLoop,
        logic: ConverterLogic | None = None,
        *,
        name: str = 'test converter',
        settings: dict[str, Any] | None = None,
        start: bool = True,
        **options: Any,
    ) -> ConverterNode:
        node = ConverterNode(
            name, logic or UpperLogic(), settings=loop.settings(**(settings or {})), **{**FAST, **options}
        )
        nodes.append(node)
        if start:
            node.start()
        return node

    yield make
    for node in reversed(nodes):
        assert node.stop(), f'{node!r} did not stop in time'


def wait_connected(loop: LocalLoop, node: ConverterNode) -> dict[str, Any]:
    status: dict[str, Any] = wait_for(lambda: converter_status(loop, node), what='the converter to report')
    return status
