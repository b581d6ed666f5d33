"""The annotator's image cache: each image fetched from the Loop once, even when several events ask at once.

Images live where the reference keeps them, ``{data_folder}/{organization}/{project}/images/{image_uuid}.jpg``,
so a tool (or a trainer on the same data folder) finds them there. The file is written durably by
:meth:`llnode.loop.exchange.DataExchange.download_image` (temp file, fsync, rename); a lock per image makes the
second of two concurrent requests wait for the first download instead of starting its own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from llnode.loop.exchange import DataExchange

logger = logging.getLogger('llnode.annotator.images')


def checked_name(value: object, what: str) -> str:
    """``value`` if it can be one folder name of a path (an organization, a project); ``ValueError`` otherwise."""
    if (
        not isinstance(value, str)
        or not value
        or value in ('.', '..')
        or any(c in value for c in '/\\\0')
        or value != value.strip()
    ):
        raise ValueError(f'{what} must be a non-empty name without "/", "\\" or surrounding spaces, got {value!r}')
    return value


@dataclass
class _Flight:
    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0


class ImageCache:
    """Image files below ``data_folder``, downloaded on first use through ``exchange(organization, project)``."""

    def __init__(self, data_folder: Path, exchange: Callable[[str, str], DataExchange]) -> None:
        self.data_folder = Path(data_folder)
        self._exchange = exchange
        self._lock = threading.Lock()  # guards _flights
        self._flights: dict[Path, _Flight] = {}
        self._downloads = 0

    @property
    def downloads(self) -> int:
        """Images this cache downloaded so far (files found on disk do not count)."""
        return self._downloads

    def fetching(self, path: Path) -> int:
        """Callers downloading the image at ``path`` or waiting for that download now."""
        with self._lock:
            flight = self._flights.get(Path(path))
            return flight.users if flight is not None else 0

    def folder(self, organization: str, project: str) -> Path:
        """``{data_folder}/{organization}/{project}/images``."""
        organization = checked_name(organization, 'organization')
        project = checked_name(project, 'project')
        return self.data_folder / organization / project / 'images'

    def path(self, organization: str, project: str, image_uuid: str) -> Path:
        """Where the image is (or will be) kept."""
        image_uuid = checked_name(image_uuid, 'image_uuid')
        return self.folder(organization, project) / f'{image_uuid}.jpg'

    def ensure(self, organization: str, project: str, image_uuid: str) -> Path:
        """The image's path, downloading it first if it is not there; raises ``LoopError`` when that fails."""
        target = self.path(organization, project, image_uuid)
        if _present(target):
            return target
        with self._lock:
            flight = self._flights.setdefault(target, _Flight())
            flight.users += 1
        try:
            with flight.lock:
                if _present(target):  # another thread fetched it while this one waited
                    return target
                self._exchange(organization, project).download_image(image_uuid, target.parent)
                with self._lock:
                    self._downloads += 1
                logger.debug('downloaded image %s of %s/%s', image_uuid, organization, project)
                return target
        finally:
            with self._lock:
                flight.users -= 1
                if flight.users == 0:
                    del self._flights[target]


def _present(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except OSError:
        return False
