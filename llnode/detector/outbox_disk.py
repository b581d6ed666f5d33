"""The outbox on disk: item ids, crash-safe item writes, the scan at open, and moving items aside.

Layout (as the reference, loop-protocol.md §4.5)::

    {data}/outbox/priority/<id>/image_<id>.jpg + image_<id>.json
    {data}/outbox/normal/<id>/...
    {data}/outbox/rejected/<id>/...  + rejected.json (why)      llnode only: items the Loop refused or that broke
    {data}/tmp/outbox-<id>/                                      staging and deletion, same filesystem

An item is written into its staging folder (each file fsynced, then the folder), renamed into its queue folder
and the queue folder fsynced: after a crash it is either complete in its queue or a staging leftover that was
never acknowledged and is removed at the next open. Deletions go the other way (rename into ``tmp``, then
remove), so a half-deleted item never shows up in a queue either.

Ids are UTC times with microseconds, ``YYYY-MM-DD_HH-MM-SS.ffffff`` (no colons, portable), strictly increasing
within one outbox even when the clock steps back, so sorting ids gives the order in which items were queued.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any

from llnode.durable import fsync_dir, write_json

logger = logging.getLogger('llnode.detector.outbox')

QUEUES = ('priority', 'normal')
REJECTED = 'rejected'
#: Prefix of everything the outbox puts into ``{data}/tmp``; nothing else there is touched.
STAGING_PREFIX = 'outbox-'
REJECTION_FILE = 'rejected.json'
LOCK_FILE = '.lock'

ID_FORMAT = '%Y-%m-%d_%H-%M-%S.%f'
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class OutboxError(Exception):
    """Base of the outbox's own errors."""


class OutboxLocked(OutboxError):
    """Another Outbox (in this or another process) has the folder open."""


class BrokenItem(OutboxError):
    """An item on disk cannot be uploaded: a file is missing, unreadable or not what it should be."""


def id_to_microseconds(item_id: str) -> int | None:
    """The time in an llnode id as microseconds since the epoch; ``None`` for any other name."""
    try:
        moment = datetime.strptime(item_id, ID_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:
        return None
    return (moment - _EPOCH) // timedelta(microseconds=1)


class ItemIds:
    """Unique, sortable item ids: the current UTC time, bumped past the last one handed out."""

    def __init__(self, at_least_after: int = 0) -> None:
        self._last = at_least_after
        self._lock = threading.Lock()

    def seen(self, item_id: str) -> None:
        """Never hand out an id at or before ``item_id`` (called for every item found at open)."""
        value = id_to_microseconds(item_id)
        if value is not None:
            with self._lock:
                self._last = max(self._last, value)

    def next(self) -> str:
        with self._lock:
            value = max(time.time_ns() // 1000, self._last + 1)
            self._last = value
        return (_EPOCH + timedelta(microseconds=value)).strftime(ID_FORMAT)


def json_name(item_id: str) -> str:
    return f'image_{item_id}.json'


def jpg_name(item_id: str) -> str:
    return f'image_{item_id}.jpg'


@dataclass
class ItemData:
    """What one upload sends for an item."""

    item_id: str
    metadata_json: bytes
    jpeg: bytes


@dataclass
class Found:
    """What the scan at open found in one queue folder."""

    items: dict[str, int]  # id -> bytes on disk
    broken: dict[str, str]  # id -> why it cannot be uploaded


class OutboxFolders:
    """The outbox's folders under ``data_folder``; every file operation of the outbox goes through here."""

    def __init__(self, data_folder: Path) -> None:
        self.root = data_folder / 'outbox'
        self.tmp = data_folder / 'tmp'
        self.queues = {name: self.root / name for name in QUEUES}
        self.rejected = self.root / REJECTED
        self._lock_handle: IO[bytes] | None = None

    def create(self) -> None:
        for folder in (*self.queues.values(), self.rejected, self.tmp):
            folder.mkdir(parents=True, exist_ok=True)

    # -- one user at a time --------------------------------------------------------------------------------

    def lock(self) -> None:
        """Take the folder's lock so that two outboxes never share (and clean up under) one folder."""
        try:
            import fcntl
        except ImportError:  # not on POSIX: no lock, one outbox per folder is then the user's promise
            return
        handle = open(self.root / LOCK_FILE, 'ab')  # noqa: SIM115  # held open until unlock()
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise OutboxLocked(f'{self.root} is in use by another outbox (close it first)') from None
        self._lock_handle = handle

    def unlock(self) -> None:
        if self._lock_handle is not None:
            self._lock_handle.close()  # closing the file releases the flock
            self._lock_handle = None

    # -- open ----------------------------------------------------------------------------------------------

    def clean_staging(self) -> int:
        """Remove staging and deletion leftovers of a crash; returns how many there were."""
        removed = 0
        for entry in self.tmp.iterdir():
            if entry.name.startswith(STAGING_PREFIX):
                _remove(entry)
                removed += 1
        if removed:
            fsync_dir(self.tmp)
        return removed

    def scan(self, queue: str) -> Found:
        """Every item folder in ``queue`` with its size, and those that cannot be uploaded (with the reason)."""
        found = Found({}, {})
        for entry in self.queues[queue].iterdir():
            if not entry.is_dir():
                logger.warning('ignoring %s: not an outbox item folder', entry)
                continue
            item_id = entry.name
            try:
                size = sum((entry / name).stat().st_size for name in (json_name(item_id), jpg_name(item_id)))
            except OSError as e:
                found.broken[item_id] = f'incomplete item: {e.strerror}: {e.filename}'
                continue
            found.items[item_id] = size
        return found

    def rejected_ids(self) -> list[str]:
        return sorted(entry.name for entry in self.rejected.iterdir() if entry.is_dir())

    # -- items ---------------------------------------------------------------------------------------------

    def write_item(self, queue: str, item_id: str, jpeg: bytes, metadata_json: bytes) -> int:
        """Write an item crash-safely; once this returns it survives a crash. Returns its size in bytes."""
        staging = self.tmp / f'{STAGING_PREFIX}{item_id}'
        try:
            staging.mkdir()
            _write_synced(staging / jpg_name(item_id), jpeg)
            _write_synced(staging / json_name(item_id), metadata_json)
            fsync_dir(staging)
            target = self.queues[queue] / item_id
            if target.exists():  # ids are unique; this would be a bug, and rename would merge into an empty dir
                raise FileExistsError(f'{target} exists already')
            os.rename(staging, target)
        except BaseException:
            _remove(staging)
            raise
        fsync_dir(self.queues[queue])
        return len(jpeg) + len(metadata_json)

    def read_item(self, queue: str, item_id: str) -> ItemData:
        """The item's two files; :class:`BrokenItem` says why they cannot be sent, FileNotFoundError if gone."""
        folder = self.queues[queue] / item_id
        if not folder.is_dir():
            raise FileNotFoundError(str(folder))
        try:
            metadata_json = (folder / json_name(item_id)).read_bytes()
            jpeg = (folder / jpg_name(item_id)).read_bytes()
        except OSError as e:
            raise BrokenItem(f'unreadable: {e.strerror or e}: {e.filename}') from e
        try:
            metadata = json.loads(metadata_json)
        except (UnicodeDecodeError, ValueError) as e:
            raise BrokenItem(f'{json_name(item_id)} is not valid JSON: {e}') from e
        if not isinstance(metadata, dict):
            raise BrokenItem(f'{json_name(item_id)} is not a JSON object')
        if not jpeg:
            raise BrokenItem(f'{jpg_name(item_id)} is empty')
        return ItemData(item_id, metadata_json, jpeg)

    def delete_items(self, queue: str, item_ids: list[str]) -> None:
        """Remove items for good: each is renamed out of its queue at once, then removed."""
        moved = []
        for item_id in item_ids:
            parking = self.tmp / f'{STAGING_PREFIX}deleted-{item_id}'
            _remove(parking)  # a leftover of an earlier failed removal would block the rename
            try:
                os.rename(self.queues[queue] / item_id, parking)
            except FileNotFoundError:
                continue
            except OSError as e:
                logger.warning('could not remove outbox item %s/%s: %s', queue, item_id, e)
                continue
            moved.append(parking)
        if moved:
            fsync_dir(self.queues[queue])
        for parking in moved:
            _remove(parking)

    def reject_item(self, queue: str, item_id: str, reason: str) -> str | None:
        """Move an item into ``rejected/`` with a note why; returns its name there, ``None`` if it was gone."""
        source = self.queues[queue] / item_id
        name = item_id
        for n in range(1, 1000):
            if not (self.rejected / name).exists():
                break
            name = f'{item_id}.{n}'
        try:
            os.rename(source, self.rejected / name)
        except FileNotFoundError:
            return None
        except NotADirectoryError:  # a stray file where an item folder should be
            _remove(source)
            return None
        fsync_dir(self.queues[queue])
        fsync_dir(self.rejected)
        note = {'reason': reason, 'queue': queue, 'rejected_at': datetime.now(timezone.utc).isoformat()}
        try:
            write_json(self.rejected / name / REJECTION_FILE, note)
        except OSError as e:
            logger.warning('could not write the rejection note of %s: %s', name, e)
        return name

    def delete_rejected(self, names: list[str]) -> None:
        for name in names:
            parking = self.tmp / f'{STAGING_PREFIX}deleted-rejected-{name}'
            try:
                os.rename(self.rejected / name, parking)
            except OSError:
                continue
            _remove(parking)

    def rejection_note(self, name: str) -> dict[str, Any] | None:
        """The note written when ``name`` was rejected (for tests and people looking at the folder)."""
        try:
            note = json.loads((self.rejected / name / REJECTION_FILE).read_text())
        except (OSError, ValueError):
            return None
        return note if isinstance(note, dict) else None


def _write_synced(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
