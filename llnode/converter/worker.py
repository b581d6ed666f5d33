"""The converter's worker thread: list the models to convert, then download, convert and upload each due one.

It reads like a worker's main loop: run a cycle unless the node is muted, then wait on an event until the next
check (or until a failed model's back-off ends, whichever comes first). Conversions run here, not in the node's
repeat thread, so a long conversion never delays the status heartbeat, and the work goes on while the
Socket.IO link (which only carries the status) is down. One model is converted at a time.

A model's attempt, in its own folder below ``work_root`` (data folder, never ``/tmp``):

1. ``source/``: the source format downloaded and unpacked (:meth:`DataExchange.download_model`);
2. ``converted/``: an empty folder handed to :meth:`ConverterLogic.convert`, which returns the result's files;
3. ``meta/model.json``: the source model's ``model.json`` with ``format`` set to the target;
4. ``PUT …/models/{id}/{target}/file`` with the files and that ``model.json``; a 409 counts as done.

The folder is emptied before an attempt and removed after a success or when the model is given up; leftovers
of a dead process are removed when the worker starts (the Loop still holds every source).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from llnode.converter.logic import ConverterLogic
from llnode.converter.retries import RetryBook
from llnode.converter.transfer import ListedModel, convertible_models, upload_model_format
from llnode.durable import write_json
from llnode.failure_log import FailureLog
from llnode.loop.errors import LoopAuthError, LoopConnectionError, LoopHTTPError, LoopRateLimited
from llnode.loop.exchange import DataExchange
from llnode.node.restart import NodeNeedsRestartError

logger = logging.getLogger('llnode.converter')

#: Shortest wait between two cycles, so that a back-off that is just due cannot make the loop spin.
MIN_WAIT = 0.01


class ConversionError(Exception):
    """A conversion's result cannot be uploaded (no files, a missing or empty file, ``model.json`` among them)."""


class _Stopped(Exception):
    """The worker was asked to stop between two steps of an attempt (not a failure of the model)."""


def is_loop_unavailable(error: BaseException) -> bool:
    """Whether ``error`` only says the Loop cannot be reached, refused the login, or served nothing for now.

    Such failures are retried with back-off but never count toward giving a model up.
    """
    if isinstance(error, (LoopConnectionError, LoopRateLimited, LoopAuthError)):
        return True
    return isinstance(error, LoopHTTPError) and (error.status >= 500 or error.status in (408, 429))


def checked_outputs(files: Any) -> list[Path]:
    """The logic's result as paths, or :class:`ConversionError` saying what is wrong with it."""
    if isinstance(files, (str, bytes, os.PathLike)) or not isinstance(files, Sequence):
        raise ConversionError(f'convert() must return a list of file paths, got {type(files).__name__}')
    paths = []
    names: set[str] = set()
    for item in files:
        if not isinstance(item, (str, os.PathLike)):
            raise ConversionError(f'convert() returned {item!r}, which is not a file path')
        path = Path(item)
        if path.name == 'model.json':
            raise ConversionError(
                f'convert() returned {path}: leave model.json out, the node writes it from the source model'
            )
        if not path.is_file():
            raise ConversionError(f'convert() returned {path}, which is not a file')
        if path.stat().st_size == 0:
            raise ConversionError(f'convert() returned {path}, which is empty')
        if path.name in names:
            raise ConversionError(f'convert() returned two files named {path.name!r}; the Loop would keep one')
        names.add(path.name)
        paths.append(path)
    if not paths:
        raise ConversionError('convert() returned no files')
    return paths


class ConversionWorker:
    """Converts the project's models in one named thread; see the module docstring.

    ``exchange()`` gives the data exchange to use (None while the node has no Loop client); ``muted()`` says
    whether to skip cycles. ``on_restart_needed(error)`` gets a :class:`~llnode.node.restart.NodeNeedsRestartError`
    raised by the logic (not the model's fault: no failure is recorded, and the worker stops). ``_lock`` (owned
    here) guards ``_current``, ``_converted``, ``_list_error`` and ``_cycles``; the retry book has its own lock.
    """

    def __init__(
        self,
        logic: ConverterLogic,
        *,
        exchange: Callable[[], DataExchange | None],
        work_root: Path,
        book: RetryBook,
        check_interval: float,
        muted: Callable[[], bool],
        name: str,
        on_restart_needed: Callable[[NodeNeedsRestartError], None] | None = None,
    ) -> None:
        self.logic = logic
        self._on_restart_needed = on_restart_needed
        self.book = book
        self.work_root = work_root
        self.check_interval = check_interval
        self._exchange = exchange
        self._muted = muted
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._current: ListedModel | None = None
        self._converted: list[str] = []
        self._list_error: str | None = None
        self._list_failures = FailureLog(logger, 'listing the models')
        self._cycles = 0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    # ------------------------------------------------------------------ observation

    @property
    def name(self) -> str:
        return self._thread.name

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def cycles(self) -> int:
        """Cycles run so far (muted rounds do not count)."""
        with self._lock:
            return self._cycles

    @property
    def current(self) -> ListedModel | None:
        """The model being converted now, or None."""
        with self._lock:
            return self._current

    @property
    def converted(self) -> list[str]:
        """Ids of the models this worker converted (uploaded, or found uploaded: 409), oldest first."""
        with self._lock:
            return list(self._converted)

    @property
    def list_error(self) -> str | None:
        """Why the last listing failed, or None when it worked."""
        with self._lock:
            return self._list_error

    # ------------------------------------------------------------------ control

    def start(self) -> None:
        shutil.rmtree(self.work_root, ignore_errors=True)  # leftovers of a process that died mid-conversion
        # made again here: a Thread made before a fork (gunicorn builds the node in its master) is marked stopped
        # in the child by CPython, so its is_alive() and join() would lie there (started already: start() raises)
        if self._thread.ident is None:
            self._thread = threading.Thread(target=self._loop, name=self._thread.name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Run the next cycle now instead of after the rest of the wait."""
        self._wake.set()

    def request_stop(self) -> None:
        """Ask the thread to end after the current step; returns at once (the logic sees ``stop_requested``)."""
        self._stop.set()
        self._wake.set()
        self.logic.request_stop()

    def stop(self, timeout: float) -> bool:
        """Ask the thread to end and wait up to ``timeout`` seconds; True if it ended."""
        self.request_stop()
        if not self._thread.is_alive() or threading.current_thread() is self._thread:
            return not self._thread.is_alive()
        self._thread.join(max(0.0, timeout))
        if self._thread.is_alive():
            current = self.current
            logger.warning(
                '%s did not end within %.1f s (converting %s)', self.name, timeout, current.id if current else '-'
            )
            return False
        return True

    # ------------------------------------------------------------------ the loop

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            if not self._muted():
                try:
                    self.run_cycle()
                except Exception:
                    logger.exception('conversion cycle failed')
                with self._lock:
                    self._cycles += 1
            self._wake.wait(self._wait_time())

    def _wait_time(self) -> float:
        """Until the next check, or sooner when a failed model's back-off ends first.

        Only while listing works and the node is not muted: otherwise a back-off that is due (but cannot be
        attempted) would make the loop spin.
        """
        due = self.book.next_due()
        if due is None or self.list_error is not None or self._muted():
            return self.check_interval
        return max(MIN_WAIT, min(self.check_interval, due - time.monotonic()))

    def run_cycle(self) -> None:
        """List the models to convert and convert those that are due, one after another."""
        exchange = self._exchange()
        if exchange is None:
            return
        try:
            models = convertible_models(exchange, self.logic.source_format, self.logic.target_format)
        except Exception as e:
            error = f'{type(e).__name__}: {e}'
            with self._lock:
                self._list_error = error
            self._list_failures.failed(error, exc_info=e)  # logged when it starts, once a minute, when it ends
            return
        self._list_failures.succeeded()
        with self._lock:
            self._list_error = None
            done = set(self._converted)
        for model_id in self.book.prune(m.id for m in models):
            logger.info('model %s is not listed for conversion any more; its failures are forgotten', model_id)
        for model in models:
            if self._stop.is_set():
                return
            if model.id in done:
                logger.debug('model %s was converted already; the listing has not caught up', model.id)
                continue
            if self.book.due(model.id):
                self._attempt(exchange, model)

    def _attempt(self, exchange: DataExchange, model: ListedModel) -> None:
        started = time.monotonic()
        with self._lock:
            self._current = model
        folder = self.work_root / model.id
        try:
            uploaded, error = self._convert(exchange, model, folder), None
        except Exception as e:  # _Stopped included: told apart below
            uploaded, error = False, e
        finally:
            with self._lock:  # cleared before the outcome is recorded, so no reader sees it recorded yet still current
                self._current = None
        if isinstance(error, _Stopped):
            logger.info('conversion of model %s interrupted: the node stops', model.id)
            return
        if isinstance(error, NodeNeedsRestartError):
            logger.error('converting model %s asks for a fresh process: %s', model.id, error)
            self.request_stop()
            shutil.rmtree(folder, ignore_errors=True)
            if self._on_restart_needed is not None:
                self._on_restart_needed(error)
            return
        if error is not None:
            if self._stop.is_set():  # the node stops (its Loop client may be closed already): not the model's fault
                logger.info('conversion of model %s ended by the stop: %s: %s', model.id, type(error).__name__, error)
                return
            self._failed(model, error, started, folder)
            return
        self.book.forget(model.id)
        with self._lock:
            self._converted.append(model.id)
        shutil.rmtree(folder, ignore_errors=True)
        logger.info(
            'model %s (version %s) %s in %s format after %.1f s',
            model.id,
            model.version,
            'uploaded' if uploaded else 'was already',
            self.logic.target_format,
            time.monotonic() - started,
        )

    def _convert(self, exchange: DataExchange, model: ListedModel, folder: Path) -> bool:
        logic = self.logic
        logger.info('converting model %s (version %s): %s -> %s', model.id, model.version, *self._formats())
        shutil.rmtree(folder, ignore_errors=True)
        source, converted, meta = folder / 'source', folder / 'converted', folder / 'meta'
        converted.mkdir(parents=True)
        meta.mkdir()
        model_json = exchange.download_model(model.id, logic.source_format, source, replace=True)
        self._check_stop()
        files = checked_outputs(logic.convert(source, converted))
        self._check_stop()
        write_json(meta / 'model.json', {**model_json, 'format': logic.target_format})
        return upload_model_format(exchange, model.id, logic.target_format, [*files, meta / 'model.json'])

    def _failed(self, model: ListedModel, error: Exception, started: float, folder: Path) -> None:
        counted = not is_loop_unavailable(error)
        record = self.book.record_failure(
            model.id, model.version, f'{type(error).__name__}: {error}', counted=counted, started_at=started
        )
        if record.given_up:
            shutil.rmtree(folder, ignore_errors=True)
            logger.error('model %s (version %s): %s', model.id, model.version, record.describe(self.book.max_attempts))
            return
        retry_in = (record.next_attempt_at or started) - time.monotonic()
        logger.warning(
            'model %s (version %s): %s; next attempt in %.1f s',
            model.id,
            model.version,
            record.describe(self.book.max_attempts),
            max(0.0, retry_in),
            exc_info=error if counted and record.attempts == 1 else None,  # the traceback once, not per retry
        )

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise _Stopped

    def _formats(self) -> tuple[str, str]:
        return self.logic.source_format, self.logic.target_format
