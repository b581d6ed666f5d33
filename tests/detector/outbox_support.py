"""Helpers for the outbox tests: small JPEGs, a scripted fault Loop that records what the outbox posted, and
reading back what the local Loop received."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from llnode.config import Settings
from llnode.localloop import LocalLoop
from llnode.localloop.uploads import read_parts
from tests.loop.scripted_server import Reply, ScriptedServer, Seen

IMAGES_PATH = '/api/zauberzeug/projects/demo/images'


def tiny_jpeg(seed: int = 0, size: tuple[int, int] = (32, 24)) -> bytes:
    """A small JPEG whose pixels depend on ``seed``."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, 'JPEG', quality=80)
    return buffer.getvalue()


def outbox_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith('llnode-outbox-'))


def sources_of(parts: list[Any]) -> list[str]:
    """The ``source`` of each JSON part of a parsed multipart body, in order."""
    return [json.loads(p.data)['source'] or '' for p in parts if (p.filename or '').endswith('.json')]


@dataclass
class Post:
    """One images upload the fault Loop received."""

    at: float
    status: int
    sources: list[str]
    parts: list[Any]


@dataclass
class FaultLoop:
    """A scripted Loop: ``answer(sources, n)`` returns the Reply for the n-th upload (0-based).

    ``delivered`` lists the sources of every upload that was answered with 2xx, in order.
    """

    answer: Callable[[list[str], int], Reply]
    posts: list[Post] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.server = ScriptedServer({('POST', IMAGES_PATH): self._route})

    def _route(self, seen: Seen) -> Reply:
        parts = read_parts(seen.headers.get('content-type'), seen.body)
        sources = sources_of(parts)
        with self.lock:
            n = len(self.posts)
        reply = self.answer(sources, n)
        with self.lock:
            self.posts.append(Post(time.monotonic(), reply.status, sources, parts))
        return reply

    @property
    def delivered(self) -> list[str]:
        with self.lock:
            return [s for post in self.posts if 200 <= post.status < 300 for s in post.sources]

    def count(self) -> int:
        with self.lock:
            return len(self.posts)

    def settings(self, data_folder: Path) -> Settings:
        return Settings(
            host=f'127.0.0.1:{self.server.port}', organization='zauberzeug', project='demo', data_folder=data_folder
        )

    def __enter__(self) -> FaultLoop:
        self.server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__(*exc)


def ok(sources: list[str], n: int) -> Reply:
    return Reply(200, b'{"image_ids": []}', {'Content-Type': 'application/json'})


def received(loop: LocalLoop) -> list[dict[str, Any]]:
    """Every image of the demo project that came in through an outbox batch, in arrival order."""
    batches = loop.store.upload_batches('zauberzeug', 'demo')
    ids = [image_id for batch in batches if batch['status'] == 200 for image_id in batch['image_ids']]
    by_id = {item['id']: item for item in loop.store.images('zauberzeug', 'demo', ids)}
    return [by_id[i] for i in ids]


def received_sources(loop: LocalLoop) -> list[str]:
    return [item['source'] or '' for item in received(loop)]


def item_folders(data_folder: Path, queue: str) -> list[str]:
    folder = data_folder / 'outbox' / queue
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
