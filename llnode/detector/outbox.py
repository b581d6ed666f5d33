"""The detector's durable outbox: images picked for the Loop reach it across crashes, outages and bad items.

Two queues on disk (see :mod:`llnode.detector.outbox_disk` for the layout): *priority* (explicit uploads that
ask for it) is sent first and oldest first; *normal* is sent newest first and capped at ``max_normal`` (the
oldest are dropped). The order survives a restart because ids sort in the order items were queued.

Two threads, both named ``llnode-outbox-...``:

- the **writer** takes images handed over by :meth:`Outbox.enqueue` (the detect path, which must never wait for
  a disk) and writes them; :meth:`Outbox.save` (explicit uploads) writes in the caller's thread and returns
  only once the item is durable;
- the **uploader** (mode ``continuous_upload``) sends batches of up to ``batch_size`` items to
  ``POST /api/{org}/projects/{project}/images`` back to back while items wait, and waits for new items when
  there are none. A batch that is not full waits up to ``gather_s`` (0.1 s) for more items first, so that
  images trickling in from autoupload go 20 to a request instead of one each. A 2xx deletes the batch; a 422 splits it until the single refused item is moved to
  ``rejected/``; a 401 logs in again; 408, 409, 429, 5xx and network errors keep everything and back off
  exponentially with jitter (:class:`llnode.backoff.Backoff`, ``Retry-After`` honoured, capped at
  ``max_backoff``). Any other 4xx (400, 403, 404, ...) will not succeed by waiting: it splits the batch as a
  422 does, and an item refused alone ``max_refusals`` times in a row moves to ``rejected/``. An item whose files are missing or unreadable moves to
  ``rejected/`` without blocking the ones behind it.

Every image that does not make it into or through the outbox is counted in ``stats()['dropped']`` by reason:
``normal_full``, ``priority_full``, ``rejected_full`` (oldest rejected item removed), ``writer_busy``,
``closed``, ``encode_error``, ``write_error``, ``missing`` (its folder vanished).
"""

from __future__ import annotations

import bisect
import io
import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from llnode.backoff import Backoff
from llnode.config import Settings
from llnode.detector.outbox_disk import (
    QUEUES,
    BrokenItem,
    ItemData,
    ItemIds,
    OutboxError,
    OutboxFolders,
    OutboxLocked,
    jpg_name,
    json_name,
)
from llnode.failure_log import FailureLog
from llnode.loop.errors import LoopError
from llnode.loop.http import LoopClient, retry_after_seconds
from llnode.priority import lower_current_thread_priority
from llnode.schema import ImageMetadata, OutboxMode

__all__ = ['Outbox', 'OutboxClosed', 'OutboxError', 'OutboxFull', 'OutboxLocked', 'encode_jpeg']

logger = logging.getLogger('llnode.detector.outbox')

#: Content type of the metadata part: the reference sends the JSON from a text file, not as application/json.
JSON_PART_TYPE = 'text/plain; charset=utf-8'
JPEG_PART_TYPE = 'image/jpeg'
#: Shortest wait before a retry, so that ``Retry-After: 0`` cannot make the uploader spin.
MIN_RETRY_DELAY = 0.1

#: 4xx answers that are worth waiting out (408, 409, 429), or handled on their own (401: log in, 422: split).
RETRIED_CLIENT_ERRORS = frozenset({401, 408, 409, 422, 429})

#: Times an item may be refused with another 4xx before it moves to ``rejected/``.
MAX_REFUSALS = 5

ImageInput = bytes | np.ndarray


class OutboxFull(OutboxError):
    """The priority queue is at its cap; the image was not queued (nothing accepted earlier is dropped)."""


class OutboxClosed(OutboxError):
    """The outbox was closed; it takes no more images."""


def check_image_array(image: np.ndarray) -> None:
    """Raise ValueError unless ``image`` is a uint8 HxW, HxWx1, HxWx3 (RGB) or HxWx4 (RGBA) array."""
    if image.dtype != np.uint8:
        raise ValueError(f'image arrays must have dtype uint8, got {image.dtype}')
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
        raise ValueError(f'image arrays must be HxW, HxWx1, HxWx3 or HxWx4, got shape {image.shape}')
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f'image array is empty: shape {image.shape}')


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes of an RGB (or greyscale) array; an alpha channel is dropped (JPEG has none)."""
    check_image_array(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    elif image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, 'JPEG', quality=quality)
    return buffer.getvalue()


def _image_bytes(image: Any) -> bytes | np.ndarray:
    """Check what a caller handed over; bytes-like values become bytes, arrays are checked, not copied."""
    if isinstance(image, np.ndarray):
        check_image_array(image)
        return image
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        if not data:
            raise ValueError('image is empty (0 bytes)')
        return data
    raise TypeError(f'image must be JPEG bytes or a numpy array, got {type(image).__name__}')


def _metadata_json(metadata: Any) -> bytes:
    if not isinstance(metadata, ImageMetadata):
        raise TypeError(f'metadata must be an ImageMetadata, got {type(metadata).__name__}')
    return metadata.to_json().encode()


@dataclass
class _Job:
    """An image handed to the writer; the metadata is already serialised, so the caller may reuse its object."""

    image: bytes | np.ndarray
    metadata_json: bytes
    priority: bool


_STOP = object()


@dataclass
class _Retry:
    """Why a batch was not delivered: ``delay`` from ``Retry-After`` (None: back off), ``counts`` False when the
    upload was only interrupted by a stop."""

    error: str
    delay: float | None = None
    counts: bool = True


class Outbox:
    """A durable, bounded queue of images for the Loop with a writer and an uploader thread.

    Open it (the constructor recovers what a crash left behind), :meth:`start` it, hand images to
    :meth:`save` or :meth:`enqueue`, and :meth:`close` it. The folder is locked while the outbox is open.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        client: LoopClient | None = None,
        max_normal: int | None = None,
        max_priority: int = 10_000,
        max_rejected: int = 1000,
        jpeg_quality: int = 90,
        batch_size: int = 20,
        gather_s: float = 0.1,
        upload_timeout: float = 30.0,
        max_backoff: float = 60.0,
        min_backoff: float = 1.0,
        max_refusals: int = MAX_REFUSALS,
        writer_queue: int = 256,
        mode: OutboxMode | str = OutboxMode.CONTINUOUS_UPLOAD,
    ) -> None:
        self.settings = settings
        self.max_normal = settings.max_outbox_size if max_normal is None else max_normal
        self.max_priority = max_priority
        self.max_rejected = max_rejected
        self.jpeg_quality = jpeg_quality
        self.batch_size = batch_size
        if not 0 <= gather_s <= 5:
            raise ValueError(f'gather_s must be within 0..5 seconds, got {gather_s!r}')
        self.gather_s = gather_s
        self.upload_timeout = upload_timeout
        self.max_backoff = max_backoff
        self.min_backoff = min_backoff
        self.max_refusals = max_refusals
        self.writer_queue = writer_queue
        for name in ('max_normal', 'max_priority', 'max_rejected', 'batch_size', 'writer_queue', 'max_refusals'):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f'{name} must be a positive integer, got {value!r}')
        if not 1 <= jpeg_quality <= 100:
            raise ValueError(f'jpeg_quality must be within 1..100, got {jpeg_quality!r}')
        for name in ('upload_timeout', 'max_backoff', 'min_backoff'):
            if not getattr(self, name) > 0:
                raise ValueError(f'{name} must be a positive number of seconds, got {getattr(self, name)!r}')
        if min_backoff > max_backoff:
            raise ValueError(f'min_backoff ({min_backoff}) must not exceed max_backoff ({max_backoff})')
        #: the uploader's retry policy (jittered: detectors that lost the Loop together do not retry together)
        self.backoff = Backoff(base=min_backoff, cap=max_backoff, retry_after_floor=MIN_RETRY_DELAY)

        self._mode = OutboxMode(mode)
        self._lock = threading.Lock()  # owns every attribute below that the threads share
        self._changed = threading.Condition(self._lock)  # queue contents, pending writes, mode, uploader state
        self._queues: dict[str, list[str]] = {name: [] for name in QUEUES}  # sorted ids, oldest first
        self._items: dict[str, tuple[str, int]] = {}  # id -> (queue, bytes)
        self._rejected: list[str] = []
        self._in_flight: set[str] = set()
        self._refusals: dict[str, int] = {}  # item id -> refusals in a row (uploader thread only)
        self._upload_failures = FailureLog(logger, 'outbox upload')
        self._reserved_priority = 0
        self._bytes_waiting = 0
        self._pending = 0
        self._counts = {'saved': 0, 'uploaded': 0, 'rejected': 0, 'upload_errors': 0}
        self._dropped: dict[str, int] = {}
        self._last_error: str | None = None
        self._retry_at: float | None = None
        self._uploading = False
        self._started = False
        self._closed = False
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._abandon = threading.Event()  # the writer drops what it still holds (close ran out of time)
        self._writer: threading.Thread | None = None
        self._uploader: threading.Thread | None = None
        self._images_path: str | None = None

        self._ids = ItemIds()
        self._owns_client = client is None
        self._client = (
            client if client is not None else LoopClient(settings, timeout=upload_timeout, retry_429_budget=0)
        )
        self._folders = OutboxFolders(settings.data_folder)
        try:
            settings.ensure_data_folder()
            self._folders.create()
            self._folders.lock()
            self._recover()
        except BaseException:
            self._folders.unlock()
            if self._owns_client:
                self._client.close()
            raise

    # -- open ----------------------------------------------------------------------------------------------

    def _recover(self) -> None:
        """Load the queues from disk: staging leftovers go, broken items move to ``rejected/``, caps apply."""
        cleaned = self._folders.clean_staging()
        self._rejected = self._folders.rejected_ids()
        for name in self._rejected:
            self._ids.seen(name)
        broken = 0
        for queue_name in QUEUES:
            found = self._folders.scan(queue_name)
            for item_id, size in found.items.items():
                self._ids.seen(item_id)
                self._items[item_id] = (queue_name, size)
                self._bytes_waiting += size
            self._queues[queue_name] = sorted(found.items)
            for item_id, reason in found.broken.items():
                self._ids.seen(item_id)
                logger.warning('outbox item %s/%s is broken (%s); moving it to rejected/', queue_name, item_id, reason)
                self._move_to_rejected(queue_name, item_id, reason)
                broken += 1
        with self._lock:
            victims = self._trim_normal_locked()
            old_rejected = self._trim_rejected_locked()
        self._folders.delete_items('normal', victims)
        self._folders.delete_rejected(old_rejected)
        logger.info(
            'outbox %s: %d priority and %d normal items queued, %d rejected kept; cleaned %d staging leftovers, '
            'rejected %d broken items',
            self._folders.root,
            len(self._queues['priority']),
            len(self._queues['normal']),
            len(self._rejected),
            cleaned,
            broken,
        )

    # -- lifecycle -----------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread and, in mode ``continuous_upload``, the uploader."""
        with self._lock:
            if self._closed:
                raise OutboxClosed('the outbox is closed')
            if self._started:
                raise RuntimeError('the outbox is started already')
            if self._mode == OutboxMode.CONTINUOUS_UPLOAD:
                self._upload_path()  # a ConfigError now instead of failed uploads later
            self._started = True
            self._writer = threading.Thread(target=self._writer_loop, name='llnode-outbox-writer', daemon=True)
            self._writer.start()
            if self._mode == OutboxMode.CONTINUOUS_UPLOAD:
                self._start_uploader_locked()

    def close(self, timeout: float = 10.0) -> bool:
        """Stop taking images, let the writer store what it holds and the uploader finish its request; bounded.

        Returns True if both threads ended within ``timeout``. A request to a hanging Loop cannot be cut short:
        its thread ends by itself within ``upload_timeout`` (the items stay on disk either way). What the writer
        could not store in time is dropped and counted as ``closed``.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            first = not self._closed
            self._closed = True
            self._changed.notify_all()
            writer, uploader = self._writer, self._uploader
        if first:
            self._jobs.put(_STOP)
            if writer is None:  # never started: store what was handed over here, within the same deadline
                self._write_jobs(deadline)
        ended = True
        for thread in (writer, uploader):
            if thread is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
                ended = ended and not thread.is_alive()
        if writer is not None and writer.is_alive():
            self._abandon.set()
        if first:
            if self._owns_client:
                self._client.close()
            self._folders.unlock()
        return ended

    def __enter__(self) -> Outbox:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def folder(self) -> str:
        """The outbox folder (``{data}/outbox``)."""
        return str(self._folders.root)

    # -- taking images -------------------------------------------------------------------------------------

    def save(self, image: ImageInput, metadata: ImageMetadata, *, priority: bool = False) -> str:
        """Store an image durably and return its id (explicit uploads: answer only after this returns).

        ``bytes`` are stored as given; an array (uint8 HxW, HxWx3 RGB or HxWx4) is JPEG-encoded once.
        Raises :class:`OutboxFull` when the priority queue is at its cap, :class:`OutboxClosed` after
        :meth:`close`, ValueError/TypeError for bad input and OSError when the disk refuses the write.
        """
        data = _image_bytes(image)
        metadata_json = _metadata_json(metadata)
        if self._closed:
            raise OutboxClosed('the outbox is closed')
        jpeg = data if isinstance(data, bytes) else encode_jpeg(data, self.jpeg_quality)
        try:
            return self._store(jpeg, metadata_json, priority)
        except OSError:
            self._drop('write_error')
            raise

    def enqueue(self, image: ImageInput, metadata: ImageMetadata, *, priority: bool = False) -> bool:
        """Hand an image to the writer thread without touching the disk; False (counted) if it cannot take it.

        The metadata is serialised here, so the caller may change its object afterwards; an array is not
        copied, so it must not be changed after the hand-over.
        """
        data = _image_bytes(image)
        job = _Job(data, _metadata_json(metadata), priority)
        with self._lock:
            if self._closed:
                reason = 'closed'
            elif self._pending >= self.writer_queue:
                reason = 'writer_busy'
            else:
                self._pending += 1
                self._jobs.put(job)
                return True
            self._dropped[reason] = self._dropped.get(reason, 0) + 1
        return False

    def _store(self, jpeg: bytes, metadata_json: bytes, priority: bool) -> str:
        """Write one item and queue it; enforces the caps."""
        queue_name = 'priority' if priority else 'normal'
        if priority:
            with self._lock:
                if len(self._queues['priority']) + self._reserved_priority >= self.max_priority:
                    self._dropped['priority_full'] = self._dropped.get('priority_full', 0) + 1
                    raise OutboxFull(f'the priority queue holds its maximum of {self.max_priority} images')
                self._reserved_priority += 1
        try:
            item_id = self._ids.next()
            size = self._folders.write_item(queue_name, item_id, jpeg, metadata_json)
        finally:
            if priority:
                with self._lock:
                    self._reserved_priority -= 1
        with self._changed:
            bisect.insort(self._queues[queue_name], item_id)
            self._items[item_id] = (queue_name, size)
            self._bytes_waiting += size
            self._counts['saved'] += 1
            victims = self._trim_normal_locked() if not priority else []
            self._changed.notify_all()
        if victims:
            logger.info('normal queue over its cap of %d: dropped the %d oldest items', self.max_normal, len(victims))
            self._folders.delete_items('normal', victims)
        return item_id

    def _writer_loop(self) -> None:
        lower_current_thread_priority()  # autoupload must not slow detection down (llnode.priority)
        self._write_jobs(None)

    def _write_jobs(self, deadline: float | None) -> None:
        """Store handed-over images until the stop mark; after ``deadline`` (or an abandon) drop the rest."""
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            try:
                if self._abandon.is_set() or (deadline is not None and time.monotonic() > deadline):
                    self._drop('closed')
                    continue
                self._write_job(job)
            finally:
                with self._changed:
                    self._pending -= 1
                    self._changed.notify_all()

    def _write_job(self, job: _Job) -> None:
        try:
            jpeg = job.image if isinstance(job.image, bytes) else encode_jpeg(job.image, self.jpeg_quality)
        except (ValueError, OSError) as e:
            logger.error('could not encode an image for the outbox: %s', e)
            self._drop('encode_error')
            return
        try:
            self._store(jpeg, job.metadata_json, job.priority)
        except OutboxFull:
            logger.warning('outbox priority queue full (%d); dropped an image', self.max_priority)
        except OSError as e:
            logger.error('could not write an outbox item: %s', e)
            self._drop('write_error')

    # -- mode ----------------------------------------------------------------------------------------------

    @property
    def mode(self) -> OutboxMode:
        return self._mode

    def set_mode(self, mode: OutboxMode | str, timeout: float = 30.0) -> bool:
        """Switch uploads on or off. ``stopped`` returns once no upload is running any more (within
        ``timeout``) and says truthfully whether that happened; items stay on disk either way.

        An unknown value raises ``ValueError("'<v>' is not a valid OutboxMode")``.
        """
        new = OutboxMode(mode)
        with self._changed:
            if new == OutboxMode.CONTINUOUS_UPLOAD:
                self._upload_path()
                self._mode = new
                if self._started and not self._closed:
                    self._start_uploader_locked()
                self._changed.notify_all()
                return True
            self._mode = new
            self._changed.notify_all()
            stopped = self._changed.wait_for(lambda: not self._uploading, timeout)
        if not stopped:
            logger.warning('outbox uploads did not stop within %.1f s (a request is still running)', timeout)
        return stopped

    # -- observing -----------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters and queue sizes (JSON-able)."""
        with self._lock:
            retry_in = max(0.0, self._retry_at - time.monotonic()) if self._retry_at is not None else 0.0
            return {
                'mode': self._mode.value,
                'queued_priority': len(self._queues['priority']),
                'queued_normal': len(self._queues['normal']),
                'pending_writes': self._pending,
                'bytes_waiting': self._bytes_waiting,
                'saved': self._counts['saved'],
                'uploaded': self._counts['uploaded'],
                'rejected': self._counts['rejected'],
                'rejected_kept': len(self._rejected),
                'dropped': dict(sorted(self._dropped.items())),
                'upload_errors': self._counts['upload_errors'],
                'last_error': self._last_error,
                'retry_in_s': round(retry_in, 3),
            }

    def queued_ids(self) -> list[str]:
        """The queued item ids in upload order: priority oldest first, then normal newest first."""
        with self._lock:
            return [*self._queues['priority'], *reversed(self._queues['normal'])]

    def rejected_ids(self) -> list[str]:
        """The items kept in ``rejected/``, oldest first."""
        with self._lock:
            return list(self._rejected)

    def rejection_reason(self, name: str) -> str | None:
        """Why ``name`` (an entry of :meth:`rejected_ids`) was rejected."""
        note = self._folders.rejection_note(name)
        return None if note is None else str(note.get('reason'))

    def wait_until_written(self, timeout: float) -> bool:
        """Wait until the writer has stored (or dropped) everything handed to :meth:`enqueue`."""
        with self._changed:
            return self._changed.wait_for(lambda: self._pending == 0, timeout)

    def wait_until_empty(self, timeout: float) -> bool:
        """Wait until nothing is pending or queued; True if that happened within ``timeout``."""
        with self._changed:
            return self._changed.wait_for(
                lambda: self._pending == 0 and not self._queues['priority'] and not self._queues['normal'], timeout
            )

    # -- uploading -----------------------------------------------------------------------------------------

    def _upload_path(self) -> str:
        if self._images_path is None:
            self._images_path = self._client.project_url('/images')  # ConfigError without organization/project
        return self._images_path

    def _start_uploader_locked(self) -> None:
        if self._uploader is None:
            self._uploader = threading.Thread(target=self._upload_loop, name='llnode-outbox-uploader', daemon=True)
            self._uploader.start()

    def _upload_loop(self) -> None:
        """Upload while items wait and the mode allows; park otherwise. Lives from the first start to close."""
        lower_current_thread_priority()
        failures = 0
        while True:
            with self._changed:
                self._uploading = False
                self._changed.notify_all()
                self._changed.wait_for(self._upload_due_locked)
                if self._closed:
                    return
                # Items trickling in one by one (autoupload) would go one per request: wait briefly for a
                # fuller batch, so that each upload carries up to batch_size images for one request's cost.
                self._changed.wait_for(self._batch_full_locked, self.gather_s)
                if self._closed:
                    return
                if not self._upload_due_locked():
                    continue
                self._uploading = True
                batch = self._take_batch_locked()
            try:
                retry = self._deliver(batch)
            except Exception as e:  # a bug or an unexpected OS error must not end uploads for good
                logger.exception('outbox upload failed unexpectedly')
                retry = _Retry(f'unexpected error: {e!r}')
            finally:
                with self._lock:
                    self._in_flight.clear()
            if retry is None:
                failures = 0
                self._upload_failures.succeeded()
                continue
            if not retry.counts:
                continue
            failures += 1
            delay = self.backoff.delay(failures, retry_after=retry.delay)
            self._upload_failures.failed(retry.error)  # logged when it starts, then once a minute, and when it ends
            logger.debug('outbox upload failed (%s); retrying in %.1f s', retry.error, delay)
            with self._changed:
                self._counts['upload_errors'] += 1
                self._last_error = retry.error
                self._uploading = False
                self._retry_at = time.monotonic() + delay
                self._changed.notify_all()
                self._changed.wait_for(lambda: self._closed or self._mode == OutboxMode.STOPPED, delay)
                self._retry_at = None

    def _upload_due_locked(self) -> bool:
        """Whether the uploader has something to do: close, or items to send in mode continuous_upload."""
        if self._closed:
            return True
        waiting = bool(self._queues['priority'] or self._queues['normal'])
        return waiting and self._mode == OutboxMode.CONTINUOUS_UPLOAD

    def _batch_full_locked(self) -> bool:
        """Whether there is no point in waiting for more items before an upload."""
        waiting = len(self._queues['priority']) + len(self._queues['normal'])
        return self._closed or self._mode != OutboxMode.CONTINUOUS_UPLOAD or waiting >= self.batch_size

    def _take_batch_locked(self) -> list[tuple[str, str]]:
        priority = self._queues['priority'][: self.batch_size]
        normal = self._queues['normal'][::-1][: self.batch_size - len(priority)]
        batch = [('priority', i) for i in priority] + [('normal', i) for i in normal]
        self._in_flight.update(item_id for _, item_id in batch)
        return batch

    def _deliver(self, batch: list[tuple[str, str]]) -> _Retry | None:
        """Read the batch's files (setting broken items aside) and post the rest."""
        items: list[tuple[str, ItemData]] = []
        for queue_name, item_id in batch:
            try:
                items.append((queue_name, self._folders.read_item(queue_name, item_id)))
            except FileNotFoundError:
                logger.warning('outbox item %s/%s vanished from disk', queue_name, item_id)
                self._forget(queue_name, item_id, 'missing')
            except BrokenItem as e:
                logger.warning('outbox item %s/%s is broken (%s); moving it to rejected/', queue_name, item_id, e)
                self._move_to_rejected(queue_name, item_id, str(e))
        return self._post(items) if items else None

    def _post(self, items: list[tuple[str, ItemData]]) -> _Retry | None:
        """One request for ``items``; a refusal (422, or a 4xx that waiting cannot cure) splits the batch
        (recursively) until the refused item is alone."""
        if self._closed or self._mode == OutboxMode.STOPPED:
            return _Retry('stopped', counts=False)
        files = []
        for _, item in items:
            name = item.item_id.replace(':', '%3A')  # as the reference's client writes ids with colons
            files.append(('files', (json_name(name), item.metadata_json, JSON_PART_TYPE)))
            files.append(('files', (jpg_name(name), item.jpeg, JPEG_PART_TYPE)))
        path = self._upload_path()
        try:
            response = self._client.request(
                'POST', path, requires_login=False, files=files, timeout=self.upload_timeout
            )
        except LoopError as e:
            return _Retry(str(e))
        status = response.status_code
        body = response.text[:300]
        delay = retry_after_seconds(response) if response.headers.get('Retry-After') else None
        response.close()
        if 200 <= status < 300:
            self._delivered(items)
            return None
        refused = status == 422 or (400 <= status < 500 and status not in RETRIED_CLIENT_ERRORS)
        if refused and len(items) > 1:  # one bad item must not take the good ones with it: find it by halves
            half = len(items) // 2
            return self._post(items[:half]) or self._post(items[half:])
        if status == 422:
            queue_name, item = items[0]
            logger.warning('the Loop refused outbox item %s (422: %s); moving it to rejected/', item.item_id, body)
            self._move_to_rejected(queue_name, item.item_id, f'the Loop answered 422: {body}')
            return None
        error = f'POST {path} answered {status}: {body}'
        if status == 401:
            self._log_in_again()
        elif refused:
            self._count_refusal(items, error)
        return _Retry(error, delay)

    def _log_in_again(self) -> None:
        """The Loop wants a (new) session for uploads: log in, so that the retry carries it."""
        if not self.settings.username:
            return
        try:
            self._client.login(timeout=self.upload_timeout)
        except LoopError as e:
            logger.warning('outbox: logging in to the Loop again failed: %s', e)

    def _count_refusal(self, items: list[tuple[str, ItemData]], error: str) -> None:
        """A 4xx that waiting will not cure: after ``max_refusals`` of them in a row an item moves to rejected/."""
        for queue_name, item in items:
            refusals = self._refusals.get(item.item_id, 0) + 1
            if refusals < self.max_refusals:
                self._refusals[item.item_id] = refusals
                continue
            self._refusals.pop(item.item_id, None)
            logger.warning(
                'outbox item %s was refused %d times (%s); moving it to rejected/', item.item_id, refusals, error
            )
            self._move_to_rejected(queue_name, item.item_id, f'refused {refusals} times: {error}')

    # -- bookkeeping ---------------------------------------------------------------------------------------

    def _delivered(self, items: list[tuple[str, ItemData]]) -> None:
        for queue_name in QUEUES:
            self._folders.delete_items(queue_name, [item.item_id for q, item in items if q == queue_name])
        for _, item in items:
            self._refusals.pop(item.item_id, None)
        with self._changed:
            for queue_name, item in items:
                self._unqueue_locked(queue_name, item.item_id)
            self._counts['uploaded'] += len(items)
            self._changed.notify_all()

    def _move_to_rejected(self, queue_name: str, item_id: str, reason: str) -> None:
        name = self._folders.reject_item(queue_name, item_id, reason)
        with self._changed:
            self._unqueue_locked(queue_name, item_id)
            if name is None:
                self._dropped['missing'] = self._dropped.get('missing', 0) + 1
                old: list[str] = []
            else:
                self._counts['rejected'] += 1
                bisect.insort(self._rejected, name)
                old = self._trim_rejected_locked()
            self._changed.notify_all()
        self._folders.delete_rejected(old)

    def _forget(self, queue_name: str, item_id: str, reason: str) -> None:
        with self._changed:
            self._unqueue_locked(queue_name, item_id)
            self._dropped[reason] = self._dropped.get(reason, 0) + 1
            self._changed.notify_all()

    def _drop(self, reason: str) -> None:
        with self._lock:
            self._dropped[reason] = self._dropped.get(reason, 0) + 1

    def _unqueue_locked(self, queue_name: str, item_id: str) -> None:
        ids = self._queues[queue_name]
        index = bisect.bisect_left(ids, item_id)
        if index < len(ids) and ids[index] == item_id:
            del ids[index]
        entry = self._items.pop(item_id, None)
        if entry is not None:
            self._bytes_waiting -= entry[1]

    def _trim_normal_locked(self) -> list[str]:
        """Drop the oldest normal items beyond the cap (never one being uploaded); returns them for deletion."""
        ids = self._queues['normal']
        excess = len(ids) - self.max_normal
        if excess <= 0:
            return []
        victims = list(itertools.islice((i for i in ids if i not in self._in_flight), excess))
        for item_id in victims:
            self._unqueue_locked('normal', item_id)
        self._dropped['normal_full'] = self._dropped.get('normal_full', 0) + len(victims)
        return victims

    def _trim_rejected_locked(self) -> list[str]:
        excess = len(self._rejected) - self.max_rejected
        if excess <= 0:
            return []
        old, self._rejected = self._rejected[:excess], self._rejected[excess:]
        self._dropped['rejected_full'] = self._dropped.get('rejected_full', 0) + len(old)
        return old
