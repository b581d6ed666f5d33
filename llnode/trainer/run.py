"""``Run``: one training as the user's logic sees it (the :class:`~llnode.trainer.logic.TrainingRun` protocol).

It carries the training's facts, the stop/abort/shutdown flags (events, so a training loop can wait on them),
the progress of the ``running`` stage, and the metrics publisher: :meth:`Run.report_best` hands a state to a
named sender thread and returns at once; the thread sends ``update_training`` at most once per interval, always
the newest state, and the ``sync_confusion_matrix`` stage sends whatever is still unsent
(:meth:`MetricsPublisher.flush`). The newest unsent state is also kept in the training folder, so a state
reported just before a crash still reaches the Loop after the restart.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llnode.durable import write_json
from llnode.schema import Context
from llnode.trainer.logic import BestState, TrainingInterrupted
from llnode.trainer.training import Training

logger = logging.getLogger('llnode.trainer.run')

#: Where the newest best state that the Loop has not acknowledged yet is kept, in the training's core folder.
PENDING_STATE_FILE = 'unpublished_best_state.json'

#: Shortest pause before a failed ``update_training`` is tried again.
FAILED_SEND_RETRY = 1.0

#: How long ``close()`` and ``flush()`` wait for the sender thread (a send in flight ends within its own timeout).
SENDER_JOIN_TIMEOUT = 10.0


class MetricsPublisher:
    """Publishes best states with ``send(state) -> bool`` (True: the Loop acknowledged it) from a named thread.

    ``on_published(state)`` runs after each acknowledged state. ``pending_path`` keeps the newest unsent state on
    disk (best effort: a state whose ``meta_information`` is not JSON stays in memory only).
    ``_lock`` guards ``_pending`` and ``_thread``.
    """

    def __init__(
        self,
        send: Callable[[BestState], bool],
        *,
        interval: float,
        name: str,
        on_published: Callable[[BestState], None] | None = None,
        pending_path: Path | None = None,
    ) -> None:
        if not interval >= 0:
            raise ValueError(f'the metrics interval must be >= 0 seconds, got {interval!r}')
        self._send = send
        self.interval = float(interval)
        self.name = name
        self._on_published = on_published
        self._pending_path = pending_path
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending: BestState | None = self._load_pending()
        self._last_attempt = float('-inf')
        self.sent = 0  # acknowledged sends (written under _lock)
        self.failed = 0

    @property
    def pending(self) -> BestState | None:
        """The newest state the Loop has not acknowledged yet."""
        with self._lock:
            return self._pending

    def report(self, state: BestState) -> None:
        """Queue ``state`` as the newest one (replacing an unsent older one); returns at once."""
        if not isinstance(state, BestState):
            raise TypeError(f'report_best expects a BestState, got {type(state).__name__}')
        if not isinstance(state.confusion_matrix, dict):
            raise TypeError('BestState.confusion_matrix must be a dict (category uuid -> {tp, fp, fn})')
        with self._lock:
            if self._stop.is_set():
                logger.warning('a best state was reported after the training stage ended; it is kept for the sync')
            self._pending = state
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()
        self._wake.set()

    def flush(self) -> bool:
        """Stop the sender thread and send the unsent state now, in the calling thread.

        Returns False when there was nothing to send; raises when the send failed (the state stays pending).
        """
        self.close()
        with self._lock:
            state = self._pending
        if state is None:
            return False
        self._persist(state)
        if not self._send(state):
            raise ConnectionError('the Loop did not acknowledge update_training')
        self._published(state)
        return True

    def close(self, timeout: float = SENDER_JOIN_TIMEOUT) -> bool:
        """End the sender thread (an unsent state stays pending); True if it ended within ``timeout``."""
        self._stop.set()
        self._wake.set()
        with self._lock:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                logger.warning('%s did not end within %.1f s', self.name, timeout)
                return False
        return True

    # ------------------------------------------------------------------ thread

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            if self._stop.is_set():
                return
            delay = self._last_attempt + self.interval - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            with self._lock:
                self._wake.clear()
                state = self._pending
            if state is None:
                continue
            self._last_attempt = time.monotonic()
            self._persist(state)
            try:
                ok = self._send(state)
            except Exception as e:
                logger.warning('update_training failed: %s', e)
                ok = False
            if ok:
                self._published(state)
            else:
                with self._lock:
                    self.failed += 1
                # try again later (with the newest state by then); never faster than FAILED_SEND_RETRY
                if self._stop.wait(max(0.0, FAILED_SEND_RETRY - self.interval)):
                    return
                self._wake.set()

    def _published(self, state: BestState) -> None:
        with self._lock:
            self.sent += 1
            newest = self._pending is state
            if newest:
                self._pending = None
        if newest and self._pending_path is not None:
            with contextlib.suppress(OSError):
                self._pending_path.unlink()
        if self._on_published is not None:
            try:
                self._on_published(state)
            except Exception:
                logger.exception('on_metrics_published failed')

    # ------------------------------------------------------------------ the unsent state on disk

    def _persist(self, state: BestState) -> None:
        if self._pending_path is None:
            return
        try:
            write_json(
                self._pending_path,
                {
                    'confusion_matrix': state.confusion_matrix,
                    'epoch': state.epoch,
                    'meta_information': state.meta_information,
                },
            )
        except (TypeError, ValueError):
            logger.debug('the best state is not JSON; it is kept in memory only')
        except OSError as e:
            logger.warning('keeping the unsent best state on disk failed: %s', e)

    def _load_pending(self) -> BestState | None:
        if self._pending_path is None:
            return None
        try:
            data = json.loads(self._pending_path.read_bytes())
            matrix, epoch = data['confusion_matrix'], data.get('epoch')
            if not isinstance(matrix, dict) or not (epoch is None or isinstance(epoch, int)):
                raise ValueError('unexpected shape')
            return BestState(matrix, epoch, dict(data.get('meta_information') or {}))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            logger.warning('ignoring the unreadable unsent best state %s: %s', self._pending_path, e)
            return None


class Run:
    """A training as the logic sees it; the node keeps one per training (created again after a restart)."""

    def __init__(
        self,
        training: Training,
        *,
        node_uuid: str,
        node_name: str,
        send_metrics: Callable[[BestState], bool],
        on_published: Callable[[BestState], None] | None = None,
        metrics_interval: float = 5.0,
    ) -> None:
        self.training = training
        self.organization = training.organization
        self.project = training.project
        self.training_number = training.training_number
        self.model_variant = training.model_variant
        self.hyperparameters = training.hyperparameters
        self.categories = training.categories
        self.base_model_uuid = training.base_model_uuid
        self.training_folder = training.training_folder
        self.images_folder = training.images_folder
        self.logger = logging.getLogger('llnode.trainer.training')
        self._node_uuid = node_uuid
        self._node_name = node_name
        self._stop = threading.Event()
        self._abort = threading.Event()
        self._shutdown = threading.Event()
        self._cancel = threading.Event()  # abort or shutdown
        self._interrupt = threading.Event()  # any of the three
        self._progress: float | None = None
        self._image_data: list[dict[str, Any]] | None = None
        self._image_data_lock = threading.Lock()
        self.publisher = MetricsPublisher(
            send_metrics,
            interval=metrics_interval,
            name=f'llnode-trainer-metrics-{training.id[:8]}',
            on_published=on_published,
            pending_path=training.core_folder / PENDING_STATE_FILE,
        )
        if training.stop_requested:
            self.request_stop()
        if training.abort_requested:
            self.request_abort()

    def __repr__(self) -> str:
        return f'<Run {self.organization}/{self.project} #{self.training_number} {self.training.id}>'

    # ------------------------------------------------------------------ TrainingRun facts

    @property
    def image_data(self) -> list[dict[str, Any]]:
        """The downloaded training images' metadata items, read from the training folder on first use."""
        with self._image_data_lock:
            if self._image_data is None:
                self._image_data = self.training.load_image_data()
            return self._image_data

    @property
    def training_folder_path(self) -> Path:
        """The reference's name of :attr:`training_folder` (a ``Path`` in both)."""
        return self.training_folder

    @property
    def context(self) -> Context:
        """Organization and project, as the reference's ``training.context``."""
        return Context(self.organization, self.project)

    def train_images(self) -> list[dict[str, Any]]:
        """The image items of set ``train`` (without the validation images)."""
        return [item for item in self.image_data if item.get('set') == 'train']

    def val_images(self) -> list[dict[str, Any]]:
        """The validation images (set ``val``); the test images when the training has no validation set."""
        return [item for item in self.image_data if item.get('set') == 'val'] or self.test_images()

    def test_images(self) -> list[dict[str, Any]]:
        """The image items of set ``test``."""
        return [item for item in self.image_data if item.get('set') == 'test']

    @property
    def base_model_folder(self) -> Path | None:
        return self.training_folder if (self.training_folder / 'base_model.json').is_file() else None

    @property
    def node_uuid(self) -> str:
        return self._node_uuid

    @property
    def node_name(self) -> str:
        return self._node_name

    # ------------------------------------------------------------------ stop, abort, shutdown

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    @property
    def abort_requested(self) -> bool:
        """An abort, or a node shutdown (the training must end now; the node keeps its checkpoint for resume)."""
        return self._abort.is_set() or self._shutdown.is_set()

    @property
    def shutdown_requested(self) -> bool:
        """The node stops: the stage ends now and is redone after the restart."""
        return self._shutdown.is_set()

    @property
    def cancel_event(self) -> threading.Event:
        """Set on abort or shutdown (not on a graceful stop): downloads and uploads use it as their cancel event."""
        return self._cancel

    @property
    def cancelled(self) -> bool:
        """An abort or shutdown: stages give up their work at the next chance (a stop only ends ``train``)."""
        return self._cancel.is_set()

    def check_stop(self) -> None:
        if self.abort_requested:
            raise TrainingInterrupted(aborted=True)
        if self._stop.is_set():
            raise TrainingInterrupted(aborted=False)

    def wait_for_stop(self, timeout: float) -> bool:
        return self._interrupt.wait(max(0.0, timeout))

    def request_stop(self) -> None:
        self._stop.set()
        self._interrupt.set()

    def request_abort(self) -> None:
        self._abort.set()
        self._cancel.set()
        self._interrupt.set()

    def request_shutdown(self) -> None:
        self._shutdown.set()
        self._cancel.set()
        self._interrupt.set()

    # ------------------------------------------------------------------ progress and metrics

    @property
    def progress(self) -> float | None:
        return self._progress

    def set_progress(self, fraction: float | None) -> None:
        if fraction is None:
            self._progress = None
            return
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or math.isnan(fraction):
            raise ValueError(f'progress must be a number from 0 to 1 or None, got {fraction!r}')
        self._progress = min(1.0, max(0.0, float(fraction)))

    def report_best(self, state: BestState) -> None:
        self.publisher.report(state)
