"""Crash-safe writes: a file is either its old content or its new content, never half of either.

Write to a temp file in the same folder, fsync it, ``os.replace`` it into place, fsync the folder. Temp files
carry a recognisable name (``.<name>.<random>.tmp``) so a leftover of a crash can be found and removed at start.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

TEMP_SUFFIX = '.tmp'


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Make a rename or create inside ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, 'O_DIRECTORY', 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str], mode: str = 'wb') -> Iterator[IO[Any]]:
    """Open a temp file beside ``path``; on a clean exit it is fsynced and replaces ``path`` durably.

    On an exception the temp file is removed and ``path`` keeps its old content.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f'.{target.name}.', suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    fsync_dir(target.parent)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Durably replace ``path`` with ``data``."""
    with atomic_writer(path, 'wb') as handle:
        handle.write(data)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Durably replace ``path`` with ``obj`` as JSON (UTF-8)."""
    write_bytes(path, json.dumps(obj, indent=1).encode())


def remove_stale_temps(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete leftovers of interrupted atomic writes in ``folder`` (not recursive); returns what was removed."""
    removed: list[Path] = []
    base = Path(folder)
    if not base.is_dir():
        return removed
    for entry in base.iterdir():
        if entry.name.startswith('.') and entry.name.endswith(TEMP_SUFFIX) and entry.is_file():
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                removed.append(entry)
    return removed
