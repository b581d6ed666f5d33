"""One inference worker per model: every request for that model goes through it, and it forms batches.

Why: REST and Socket.IO requests arrive on many threads; the reference serialises them with one lock and runs one
image at a time. Here one named thread owns the logic, takes whatever is queued (up to ``max_batch_size`` images,
whole client batches only, in arrival order) and calls ``batch_evaluate`` once for all of it, so concurrent
callers share batches and a non-thread-safe logic never runs concurrently with itself.

The waiting rule: a request that reaches an idle worker runs at once (no added latency beyond a thread hand-off,
some tens of microseconds). The worker waits up to ``max_wait_ms`` for more only while it is under load, that is
when the batch it ran last held more than one request: then callers are arriving together and a short wait fills
the batch. Under load most batching happens anyway, because requests queue while a batch runs.

Back-pressure: at most ``max_queue`` images wait; one more raises :class:`InferenceBusy` at once (HTTP 503).
An exception in the logic fails exactly the requests of that batch, with the original exception; the worker goes
on. ``stop()`` fails what is still queued with :class:`InferenceStopped`; ``drain_and_stop()`` finishes it first,
which is what a model swap wants: build the new logic and its worker, switch the reference, drain the old one.

Shapes: unless the logic declares ``accepts_mixed_shapes = True``, a batch holds images of one shape and dtype
only (:func:`shape_key`). A request joins a batch only if its images match the batch's first request; the
others keep their place and lead the next batch; a client's own mixed batch is split into one call per shape.
A logic that sizes or clips every result by ``images[0].shape`` (yolov5_node's ``batch_evaluate``) would
otherwise return wrong boxes for the images of a second camera, without any error.

A logic with ``thread_safe = True`` runs in the caller's thread instead (no worker thread, no batching across
callers; a client's own batch is still chunked by ``max_batch_size``); ``max_queue`` then bounds the images in
flight. Pass ``in_caller_thread=False`` to batch a thread-safe logic anyway (e.g. one GPU model).

Counters (:meth:`InferenceWorker.stats`, and the ``observer`` the node's metrics use): whoever runs a batch (the worker thread, or a caller's thread in
caller-thread mode) adds it to the counters under the worker's lock once the logic returned or raised, before any
caller sees its result, so a caller that got its answer finds its request counted.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Protocol

import numpy as np

from llnode.detector.logic import DetectorLogic, check_image, run_batch
from llnode.node.errors import Unavailable
from llnode.schema import ImageMetadata

logger = logging.getLogger('llnode.detector.batching')


class InferenceBusy(Unavailable):
    """The inference queue is full; the client should retry shortly (HTTP 503 with Retry-After)."""


class InferenceStopped(Unavailable):
    """The worker was stopped (a model swap or shutdown) before this request ran (HTTP 503)."""


class InferenceTimeout(Unavailable):
    """The request did not finish within the caller's timeout; it is cancelled if it had not started yet."""


def shape_key(image: np.ndarray) -> tuple[Any, ...]:
    """What images must share to be batched together for a logic that does not accept mixed shapes."""
    return (image.shape, image.dtype.str)


class _Request:
    """Images of one caller, kept together in one batch, and the future their results go to.

    ``shape`` is the :func:`shape_key` all its images share, or None when they differ.
    """

    __slots__ = ('future', 'images', 'shape', 'submitted')

    def __init__(self, images: list[np.ndarray]) -> None:
        self.images = images
        self.submitted = time.perf_counter()
        shapes = {shape_key(image) for image in images}
        self.shape = shapes.pop() if len(shapes) == 1 else None
        self.future: concurrent.futures.Future[list[ImageMetadata]] = concurrent.futures.Future()


class InferenceObserver(Protocol):
    """Told about every batch a worker ran (the node's metrics: :mod:`llnode.detector.metrics`).

    ``queue_seconds``: per request, from ``submit`` to the start of its batch; ``sizes`` and ``seconds``: images
    and wall time per logic call (a batch is several calls when it exceeds ``max_batch_size`` or holds several
    shapes; after a failing call none follow); ``failed``: whether a call raised. Called in the thread that ran
    the batch, before its callers get their results; it must be quick and must not raise.
    """

    def batch_done(
        self, *, queue_seconds: Sequence[float], sizes: Sequence[int], seconds: Sequence[float], failed: bool
    ) -> None: ...


class InferenceWorker:
    """Runs every inference of one :class:`DetectorLogic`, batching concurrent requests.

    The thread starts in the constructor. All queue state and the counters are guarded by ``self._cond``, whose
    lock this object owns; the logic is only called from the worker thread (or from callers' threads for
    thread-safe logics).
    """

    def __init__(
        self,
        logic: DetectorLogic,
        *,
        max_batch_size: int = 8,
        max_wait_ms: float = 2.0,
        max_queue: int = 256,
        name: str | None = None,
        in_caller_thread: bool | None = None,
        observer: InferenceObserver | None = None,
    ) -> None:
        if not isinstance(logic, DetectorLogic):
            raise TypeError(f'InferenceWorker needs a DetectorLogic, got {type(logic).__name__}')
        if not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise ValueError(f'max_batch_size must be a positive integer, got {max_batch_size!r}')
        if not isinstance(max_wait_ms, (int, float)) or not math.isfinite(max_wait_ms) or max_wait_ms < 0:
            raise ValueError(f'max_wait_ms must be a finite number >= 0, got {max_wait_ms!r}')
        if not isinstance(max_queue, int) or max_queue < 1:
            raise ValueError(f'max_queue must be a positive integer, got {max_queue!r}')
        if in_caller_thread is None:
            in_caller_thread = bool(logic.thread_safe)
        if in_caller_thread and not logic.thread_safe:
            raise ValueError(f"{type(logic).__name__} is not thread_safe: it cannot run in the callers' threads")
        self.logic = logic
        self.max_batch_size = max_batch_size
        self.max_wait_ms = float(max_wait_ms)
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.in_caller_thread = in_caller_thread
        self.observer = observer
        self._cond = threading.Condition()
        self._queue: deque[_Request] = deque()
        self._queued_images = 0  # images waiting in _queue (worker mode) or running (caller-thread mode)
        self._accepting = True
        self._stop = threading.Event()  # the worker ends once the queue is empty
        self._last_batch_requests = 0  # written by the worker thread only
        self._closed = False
        # Counters (guarded by _cond), added to once per batch by whoever ran it; see stats().
        self._requests = 0
        self._images = 0
        self._batches = 0
        self._failed_batches = 0
        self._largest_batch = 0
        self._logic_seconds = 0.0
        thread_name = name or f'llnode-inference-{logic.model_info.version}'
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)
        if not in_caller_thread:
            self._thread.start()

    # ----------------------------------------------------------------------------------------------------------
    # Callers

    @property
    def name(self) -> str:
        return self._thread.name

    @property
    def queued(self) -> int:
        """Images waiting for the worker (in caller-thread mode: images being evaluated)."""
        with self._cond:
            return self._queued_images

    @property
    def accepting(self) -> bool:
        """False once ``stop`` or ``drain_and_stop`` was called."""
        with self._cond:
            return self._accepting

    def is_alive(self) -> bool:
        """Whether the worker thread runs (always False in caller-thread mode)."""
        return self._thread.is_alive()

    def stats(self) -> dict[str, Any]:
        """What this worker has done since it was created, and its settings (JSON-able).

        ``requests``: client requests that ran (a request whose caller gave up before it started does not count);
        ``images``: images handed to the logic; ``batches``: calls of the logic (a client batch larger than
        ``max_batch_size`` is several); ``failed_batches``: calls that raised; ``largest_batch``: the most images
        in one call (at most ``max_batch_size``); ``logic_seconds``: wall time spent in the logic; ``mean_batch_size``:
        ``images / batches`` (0.0 before the first batch); ``queued``: images waiting now (in caller-thread mode:
        being evaluated). When a batch fails, the calls after the failing one do not happen and are not counted.
        """
        with self._cond:
            requests, images, batches = self._requests, self._images, self._batches
            failed, largest, seconds = self._failed_batches, self._largest_batch, self._logic_seconds
            queued = self._queued_images
        return {
            'requests': requests,
            'images': images,
            'batches': batches,
            'failed_batches': failed,
            'largest_batch': largest,
            'logic_seconds': round(seconds, 6),
            'mean_batch_size': round(images / batches, 3) if batches else 0.0,
            'queued': queued,
            'max_batch_size': self.max_batch_size,
            'max_wait_ms': self.max_wait_ms,
            'max_queue': self.max_queue,
            'in_caller_thread': self.in_caller_thread,
        }

    def submit(self, images: Sequence[np.ndarray]) -> concurrent.futures.Future[list[ImageMetadata]]:
        """Queue one client's images; the future gets their results in order (or the logic's exception).

        Raises at once: :class:`~llnode.detector.logic.ImageInputError` for an unusable image,
        :class:`InferenceBusy` when the queue is full, :class:`InferenceStopped` after a stop.
        """
        if isinstance(images, np.ndarray) or not isinstance(images, Sequence):
            raise TypeError(f'submit needs a list of images, got {type(images).__name__}')
        batch = [check_image(image, what=f'image {index}') for index, image in enumerate(images)]
        request = _Request(batch)
        if not batch:
            request.future.set_result([])
            return request.future
        if len(batch) > self.max_queue:
            raise ValueError(f'a batch of {len(batch)} images is more than the queue holds ({self.max_queue})')
        with self._cond:
            if not self._accepting:
                raise InferenceStopped(f'inference worker {self.name} is stopped')
            if self._queued_images + len(batch) > self.max_queue:
                raise InferenceBusy(
                    f'inference queue is full ({self._queued_images} of {self.max_queue} images waiting)',
                    retry_after=1,
                )
            self._queued_images += len(batch)
            if not self.in_caller_thread:
                self._queue.append(request)
                self._cond.notify_all()
                return request.future
        try:
            request.future.set_running_or_notify_cancel()
            self._execute([request])
        finally:
            with self._cond:
                self._queued_images -= len(batch)
                self._cond.notify_all()
        return request.future

    def evaluate(self, image: np.ndarray, timeout: float | None = None) -> ImageMetadata:
        """The detections for one image (blocks; see :meth:`submit` for the errors)."""
        return self._wait(self.submit([image]), timeout)[0]

    def evaluate_many(self, images: Sequence[np.ndarray], timeout: float | None = None) -> list[ImageMetadata]:
        """The detections for one client's images, in order; they run in one batch (chunked if too many)."""
        return self._wait(self.submit(images), timeout)

    def _wait(
        self, future: concurrent.futures.Future[list[ImageMetadata]], timeout: float | None
    ) -> list[ImageMetadata]:
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()  # succeeds only while still queued: then the worker skips it
            raise InferenceTimeout(f'inference did not finish within {timeout} s') from None

    # ----------------------------------------------------------------------------------------------------------
    # Stopping

    def stop(self, timeout: float = 5.0, *, close_logic: bool = False) -> bool:
        """Refuse new requests, fail the queued ones, let a running batch finish, join the thread.

        Returns whether the worker ended within ``timeout``. ``close_logic`` calls ``logic.close()`` once it has.
        """
        with self._cond:
            self._accepting = False
            self._stop.set()
            self._cond.notify_all()
        self._fail_queued()
        return self._finish(timeout, close_logic)

    def drain_and_stop(self, timeout: float = 30.0, *, close_logic: bool = False) -> bool:
        """Refuse new requests, finish the queued ones, then end (for a model swap).

        What is still queued after ``timeout`` fails with :class:`InferenceStopped`. Returns whether it all ended.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            self._accepting = False
            self._stop.set()
            self._cond.notify_all()
        drained = self._finish(timeout, close_logic=False)
        if not drained:
            self._fail_queued()
            drained = self._finish(max(0.0, deadline - time.monotonic()), close_logic=False)
        if drained and close_logic:
            self._close_logic()
        return drained

    def __enter__(self) -> InferenceWorker:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _fail_queued(self) -> None:
        with self._cond:
            pending = list(self._queue)
            self._queue.clear()
            if not self.in_caller_thread:
                self._queued_images = 0
        for request in pending:
            if request.future.set_running_or_notify_cancel():
                request.future.set_exception(InferenceStopped(f'inference worker {self.name} stopped'))
        if pending:
            logger.info('%s stopped with %d requests queued; they failed', self.name, len(pending))

    def _finish(self, timeout: float, close_logic: bool) -> bool:
        if self.in_caller_thread:
            with self._cond:
                ended = self._cond.wait_for(lambda: self._queued_images == 0, timeout)
        else:
            self._thread.join(timeout)
            ended = not self._thread.is_alive()
        if not ended:
            logger.warning('%s did not end within %.1f s (a batch is still running)', self.name, timeout)
        elif close_logic:
            self._close_logic()
        return ended

    def _close_logic(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
        try:
            self.logic.close()
        except Exception:
            logger.exception('%r.close() failed', self.logic)

    # ----------------------------------------------------------------------------------------------------------
    # The worker thread

    def _run(self) -> None:
        try:
            while True:
                batch = self._next_batch()
                if batch is None:
                    return
                self._execute(batch)
                self._last_batch_requests = len(batch)
                del batch  # its images must not stay alive while the worker waits for the next requests
        finally:
            with self._cond:
                self._accepting = False
            self._fail_queued()  # empty after a normal end; after a crash nobody must wait forever

    def _next_batch(self) -> list[_Request] | None:
        """The next requests to run together, or None when stopped and nothing is left."""
        with self._cond:
            batch: list[_Request] = []
            size = 0
            while not batch:
                while not self._queue:
                    if self._stop.is_set():
                        return None
                    self._cond.wait()
                size = self._take(batch, size)
            if self._last_batch_requests > 1 and self.max_wait > 0:
                deadline = time.monotonic() + self.max_wait
                while size < self.max_batch_size and not self._stop.is_set():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    if not self._queue:
                        self._cond.wait(remaining)
                        continue
                    taken = self._take(batch, size)
                    if taken == size and self._queue:
                        break  # the next request does not fit: run what we have
                    size = taken
            return batch

    def _take(self, batch: list[_Request], size: int) -> int:
        """Move queued requests into ``batch`` while they fit (the first always does); returns the new size.

        Unless the logic ``accepts_mixed_shapes``, only requests whose images have the shape and dtype of the
        batch's first request join it; the others keep their place in the queue and lead the next batch.
        Caller holds ``self._cond``. Requests whose caller gave up (cancelled futures) are dropped.
        """
        mixed = self.logic.accepts_mixed_shapes
        skipped: list[_Request] = []
        while self._queue:
            request = self._queue[0]
            count = len(request.images)
            if batch and not mixed and (request.shape is None or request.shape != batch[0].shape):
                skipped.append(self._queue.popleft())
                continue
            if batch and size + count > self.max_batch_size:
                break
            self._queue.popleft()
            self._queued_images -= count
            if not request.future.set_running_or_notify_cancel():
                continue
            batch.append(request)
            size += count
        self._queue.extendleft(reversed(skipped))
        return size

    def _execute(self, batch: list[_Request]) -> None:
        images = [image for request in batch for image in request.images]
        started = time.perf_counter()
        waits = [started - request.submitted for request in batch]
        sizes: list[int] = []  # images per logic call
        seconds: list[float] = []  # wall time per logic call
        try:
            slots: list[ImageMetadata | None] = [None] * len(images)
            for chunk in self._chunks(images):
                sizes.append(len(chunk))
                call_started = time.perf_counter()
                try:
                    answers = run_batch(self.logic, [images[i] for i in chunk])
                finally:
                    seconds.append(time.perf_counter() - call_started)
                for index, result in zip(chunk, answers, strict=True):
                    slots[index] = result
            results = [result for result in slots if result is not None]  # every slot is set by now
        except BaseException as error:
            self._count(batch, waits, sizes, seconds, time.perf_counter() - started, failed=True)
            logger.warning(
                '%r failed on a batch of %d images (%d requests): %r', self.logic, len(images), len(batch), error
            )
            for request in batch:
                request.future.set_exception(error)
            if not isinstance(error, Exception):
                raise
            return
        self._count(batch, waits, sizes, seconds, time.perf_counter() - started, failed=False)
        start = 0
        for request in batch:
            request.future.set_result(results[start : start + len(request.images)])
            start += len(request.images)

    def _chunks(self, images: list[np.ndarray]) -> list[list[int]]:
        """The indices of ``images`` per logic call: at most ``max_batch_size`` each and, unless the logic
        ``accepts_mixed_shapes``, one shape and dtype per call (a client's own mixed batch is split)."""
        if self.logic.accepts_mixed_shapes:
            groups = [list(range(len(images)))]
        else:
            by_shape: dict[tuple[Any, ...], list[int]] = {}
            for index, image in enumerate(images):
                by_shape.setdefault(shape_key(image), []).append(index)
            groups = list(by_shape.values())
        step = self.max_batch_size
        return [group[start : start + step] for group in groups for start in range(0, len(group), step)]

    def _count(
        self,
        batch: list[_Request],
        waits: list[float],
        sizes: list[int],
        seconds: list[float],
        total_seconds: float,
        *,
        failed: bool,
    ) -> None:
        """Add one batch to the counters and the observer (before its callers see a result, so they find it
        counted)."""
        with self._cond:
            self._requests += len(batch)
            self._images += sum(sizes)
            self._batches += len(sizes)
            if failed:
                self._failed_batches += 1
            self._largest_batch = max(self._largest_batch, max(sizes, default=0))
            self._logic_seconds += total_seconds
        if self.observer is not None:
            try:
                self.observer.batch_done(queue_seconds=waits, sizes=sizes, seconds=seconds, failed=failed)
            except Exception:
                logger.exception('%s: the inference observer failed', self.name)
