"""Shared fixtures: a real local Loop on a loopback port (``local_loop``) and a factory for custom ones."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from llnode.localloop import LocalLoop

#: demo images of the ``local_loop`` fixture: few, so that it starts in a fraction of a second
SMALL_DEMO_IMAGES = 12


@pytest.fixture
def make_local_loop(tmp_path: Path) -> Iterator[Callable[..., LocalLoop]]:
    """``make_local_loop(**kwargs)`` starts a LocalLoop (data dir ``tmp_path/'loop'``, then ``loop-2``, ... unless
    ``data_dir`` is given); every loop it started is stopped at teardown."""
    loops: list[LocalLoop] = []

    def make(data_dir: str | Path | None = None, **kwargs: Any) -> LocalLoop:
        if data_dir is None:
            data_dir = tmp_path / ('loop' if not loops else f'loop-{len(loops) + 1}')
        loop = LocalLoop(data_dir, **kwargs)
        loops.append(loop)
        return loop.start()

    yield make
    for loop in reversed(loops):
        loop.stop()


@pytest.fixture
def local_loop(make_local_loop: Callable[..., LocalLoop]) -> LocalLoop:
    """A started LocalLoop on ``tmp_path/'loop'`` with the demo project (a few images), user ``u``/``p``."""
    return make_local_loop(demo=True, demo_images=SMALL_DEMO_IMAGES)


@pytest.fixture
def loop_session(local_loop: LocalLoop) -> Iterator[requests.Session]:
    """A requests session logged in to ``local_loop`` (base URL in ``session.loop_url``)."""
    with requests.Session() as session:
        response = session.post(f'{local_loop.url}/api/login', data={'username': 'u', 'password': 'p'}, timeout=10)
        response.raise_for_status()
        session.loop_url = local_loop.url  # type: ignore[attr-defined]
        yield session
