"""The trainer's state machine: a plain enum loop in one named worker thread, checkpointed after every transition.

It reads like a worker's main loop (python-rq): take the current training, run the stage that starts in its
state (:data:`~llnode.trainer.stages.STAGE_FROM`), record the outcome, repeat until cleanup; then wait for the
next training. Outcomes of a stage (reference-behaviour §4.3, with 0.27's back-off and a limit the reference
lacks):

- success: the stage's error and attempts are cleared, the state moves on;
- any other exception: the error is recorded, the state goes back to where the stage started, and the stage is
  retried after ``retry_delay * 2**(n-1)`` seconds (at most ``max_retry_delay``, with jitter:
  :class:`llnode.backoff.Backoff`) for the n-th failure in a row;
  after ``max_attempts`` failures the training is given up: cleanup, with the error kept in the status. Failures
  that only say the Loop is unavailable (no connection, a timeout, 5xx, 408, 429) are retried the same way but
  do not count toward ``max_attempts``: an outage of the Loop is waited out, it never throws a finished
  training away (a deterministic failure, e.g. a training that runs out of memory, is given up);
- :class:`CriticalError`: cleanup at once, the error kept;
- :class:`~llnode.node.restart.NodeNeedsRestartError`: the state goes back to where the stage started (the
  checkpoint keeps it, so the fresh process redoes the stage), the error is kept, the worker ends and
  ``on_restart_needed(error)`` asks the node for a fresh process;
- abort (``abort_training``): cleanup without uploads, in every state;
- node shutdown: the stage is interrupted (the run's cancel event reaches transfers; ``logic.abort(run)`` ends a
  training), the state goes back to where the stage started and the checkpoint keeps it for the restart.

A training runs only while the machine holds the training slot (:mod:`llnode.trainer.slot`, 0.27): ``begin``
claims it before it changes anything, a resumed training waits for it in the worker (``waiting_for_slot``), and
it is released when the training is cleared or the machine shuts down.

``_lock`` (owned by the machine) guards ``_training``, ``_run``, ``_work``, ``_last_errors``, ``_node_errors``
and every change of the training record; checkpoint writes happen under it, so a record on disk is always one
the machine has seen whole.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llnode.backoff import Backoff
from llnode.loop.errors import LoopConnectionError, LoopHTTPError, LoopRateLimited
from llnode.loop.exchange import DataExchange
from llnode.node.restart import NodeNeedsRestartError
from llnode.schema import TrainerState, TrainingDetails
from llnode.trainer.logic import BestState, CriticalError, TrainerLogic, TrainingInterrupted
from llnode.trainer.run import Run
from llnode.trainer.stages import STAGE_FROM, LoopUnavailable, Stage, StageWork
from llnode.trainer.training import Checkpoint, CheckpointError, Training

if TYPE_CHECKING:
    from llnode.trainer.slot import TrainingSlot

logger = logging.getLogger('llnode.trainer.machine')

#: Reference 0.27 (§5.4): the first retry after 5 s, doubling up to 300 s.
RETRY_DELAY = 5.0
MAX_RETRY_DELAY = 300.0
#: Failures in a row after which a stage gives the training up (the reference retries forever).
MAX_ATTEMPTS = 10

#: Transitions kept per training for :meth:`TrainingMachine.state_history` (a retry loop cannot grow it forever).
HISTORY_LIMIT = 10_000

#: Status progress per state is taken from here (the ``running`` stage reports through the run).
_PROGRESS_STATES = frozenset(
    {
        TrainerState.DATA_DOWNLOADING,
        TrainerState.DETECTING,
        TrainerState.TRAIN_MODEL_UPLOADING,
        TrainerState.DETECTION_UPLOADING,
    }
)


class TrainingRefused(Exception):
    """``begin_training`` while a training is active: nothing was changed (acked with ``payload: 'refused'``)."""


def is_loop_unavailable(error: BaseException) -> bool:
    """Whether ``error`` only says the Loop cannot be reached or served nothing for now (worth waiting out)."""
    if isinstance(error, (LoopConnectionError, LoopUnavailable, LoopRateLimited, ConnectionError)):
        return True
    return isinstance(error, LoopHTTPError) and (error.status >= 500 or error.status in (408, 429))


@dataclass
class Snapshot:
    """The machine as the status shows it."""

    state: str
    errors: dict[str, str] = field(default_factory=dict)
    progress: float | None = None
    uptime: float | None = None
    context: dict[str, str] | None = None


class TrainingMachine:
    """Runs the trainings of one trainer node, one at a time.

    ``make_exchange(organization, project)`` gives the data exchange for a training's project;
    ``send_metrics(training, state)`` publishes a best state (True when the Loop acknowledged it);
    ``on_cleanup(training)`` runs just before a finished training is cleared (the node reports
    ``ready_for_cleanup``), ``on_cleared(training)`` right after (the node reports ``idle``, may restart).
    ``slot`` is the training slot shared with sibling trainers (default: one that is always free).
    ``on_restart_needed(error)`` gets a :class:`NodeNeedsRestartError` raised by a stage, after the worker stopped.
    """

    def __init__(
        self,
        logic: TrainerLogic,
        *,
        data_folder: Path,
        node_uuid: str,
        node_name: str,
        make_exchange: Callable[[str, str], DataExchange],
        send_metrics: Callable[[Training, BestState], bool],
        on_cleanup: Callable[[Training], None] | None = None,
        on_cleared: Callable[[Training], None] | None = None,
        inference_batch_size: int = 10,
        max_attempts: int | None = MAX_ATTEMPTS,
        retry_delay: float = RETRY_DELAY,
        max_retry_delay: float = MAX_RETRY_DELAY,
        metrics_interval: float = 5.0,
        keep_old_trainings: bool = False,
        thread_name: str = 'llnode-trainer',
        slot: TrainingSlot | None = None,
        on_restart_needed: Callable[[NodeNeedsRestartError], None] | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        if max_attempts is not None and (isinstance(max_attempts, bool) or max_attempts < 1):
            raise ValueError(f'max_attempts must be a positive integer or None (no limit), got {max_attempts!r}')
        if not 0 <= retry_delay <= max_retry_delay:
            raise ValueError(f'need 0 <= retry_delay <= max_retry_delay, got {retry_delay}, {max_retry_delay}')
        self.logic = logic
        self.data_folder = Path(data_folder)
        self.node_uuid = node_uuid
        self.node_name = node_name
        self.checkpoint = Checkpoint(self.data_folder, node_uuid)
        self._make_exchange = make_exchange
        self._send_metrics = send_metrics
        self._on_cleanup = on_cleanup
        self._on_cleared = on_cleared
        self._on_restart_needed = on_restart_needed
        self.inference_batch_size = inference_batch_size
        self.max_attempts = max_attempts
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        #: the stage retries' policy (``backoff`` wins over ``retry_delay``/``max_retry_delay``)
        self.backoff = backoff or Backoff(base=retry_delay, cap=max_retry_delay)
        self.metrics_interval = metrics_interval
        self.keep_old_trainings = keep_old_trainings
        if slot is None:
            from llnode.trainer.slot import AlwaysFreeSlot  # the slot module builds on this one

            slot = AlwaysFreeSlot()
        self.slot = slot

        self._lock = threading.Lock()
        self._training: Training | None = None
        self._run: Run | None = None
        self._work: StageWork | None = None
        self._last_errors: dict[str, str] = {}  # errors of the last training, shown until the next one begins
        self._node_errors: dict[str, str] = {}  # e.g. a corrupt checkpoint
        self._history: list[tuple[str, float]] = []  # (state, time.monotonic()) of the current or last training
        self._streaks: dict[str, int] = {}  # failures in a row per stage, any kind (for the back-off)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._idle = threading.Event()  # set while the worker has no training
        self._idle.set()
        self._thread = threading.Thread(target=self._loop, name=thread_name, daemon=True)
        #: wall seconds of each stage's successful runs, the logic's hooks included (bench/trainer.py subtracts
        #: what it measures inside its logic); written by the worker thread only
        self.stage_seconds: dict[str, float] = {}

    # ------------------------------------------------------------------ public API

    def start(self) -> None:
        # made again here: a Thread made before a fork (gunicorn builds the node in its master) is marked stopped
        # in the child by CPython, so its is_alive() and join() would lie there (started already: start() raises)
        if self._thread.ident is None:
            self._thread = threading.Thread(target=self._loop, name=self._thread.name, daemon=True)
        self._thread.start()

    @property
    def training(self) -> Training | None:
        with self._lock:
            return self._training

    @property
    def run(self) -> Run | None:
        with self._lock:
            return self._run

    @property
    def active(self) -> bool:
        with self._lock:
            return self._training is not None

    def state_history(self) -> list[tuple[str, float]]:
        """The states the current (or last) training went through in this process, with ``time.monotonic()``
        of each transition; for tests and benchmarks, which cannot catch a state that lasts a millisecond."""
        with self._lock:
            return list(self._history)

    def wait_idle(self, timeout: float) -> bool:
        """True once no training is active (for resets and tests)."""
        return self._idle.wait(timeout)

    def snapshot(self) -> Snapshot:
        with self._lock:
            training, run, work = self._training, self._run, self._work
            errors = {**self._node_errors}
            if training is None:
                idle = TrainerState.BLOCKED if self.slot.taken_by_sibling else TrainerState.IDLE
                return Snapshot(idle.value, {**self._last_errors, **errors})
            state = training.training_state
            errors.update(training.errors)
            if not self.slot.held:
                return Snapshot(TrainerState.WAITING_FOR_SLOT.value, errors, None, training.uptime, training.context)
            progress: float | None = None
            if state == TrainerState.RUNNING and run is not None:
                progress = run.progress
            elif state in _PROGRESS_STATES and work is not None:
                progress = work.progress
            return Snapshot(state.value, errors, progress, training.uptime, training.context)

    def begin(self, organization: str, project: str, details: TrainingDetails) -> Training:
        """Create and checkpoint a new training and let the worker run it.

        :class:`TrainingRefused` if one is active, :class:`~llnode.trainer.slot.TrainingSlotTaken` if a sibling
        holds the training slot; in both cases nothing was changed.
        """
        with self._lock:
            if self._training is not None:
                active = self._training
                raise TrainingRefused(
                    f'training {active.id} (#{active.training_number} of {active.organization}/{active.project}) '
                    f'is still active ({active.training_state.value})'
                )
            if self._stop.is_set():
                raise TrainingRefused('the trainer is shutting down')
            Training.check_names(organization, project)
            self.slot.claim(self._slot_holder(organization, project, details.training_number))
            try:  # old trainings are discarded only once the slot is won
                if not self.keep_old_trainings:
                    _discard_old_trainings(self.data_folder / organization / project)
                training = Training.create(self.data_folder, organization, project, details)
                self.checkpoint.save(training)
                self._activate(training)
            except BaseException:
                self.slot.release()
                raise
            self._last_errors = {}
            self._node_errors = {}
        logger.info(
            'training %s begins: #%d of %s/%s, variant %r, base model %s',
            training.id,
            training.training_number,
            organization,
            project,
            training.model_variant,
            training.base_model_uuid,
        )
        self._wake.set()
        return training

    def resume(self) -> bool:
        """Continue the checkpointed training when none is active; True if one was loaded.

        An unusable checkpoint is moved aside and reported in the status errors (key ``checkpoint``).
        """
        with self._lock:
            if self._training is not None or self._stop.is_set():
                return False
            try:
                training = self.checkpoint.load()
            except CheckpointError as e:
                moved = self.checkpoint.move_aside()
                self._node_errors['checkpoint'] = f'{e} (moved aside to {moved.name if moved else "?"})'
                return False
            if training is None:
                return False
            training.images_folder.mkdir(parents=True, exist_ok=True)
            training.training_folder.mkdir(parents=True, exist_ok=True)
            past_download = training.training_state not in (TrainerState.INITIALIZED, TrainerState.READY_FOR_CLEANUP)
            if past_download and not training.image_data_path.is_file():
                logger.warning('training %s: its downloaded data is gone; starting it over', training.id)
                training.training_state = TrainerState.INITIALIZED
            self.checkpoint.save(training)
            self._activate(training)
        logger.info('training %s resumes at %s', training.id, training.training_state.value)
        self._wake.set()
        return True

    def request_stop(self) -> bool:
        """A graceful stop: only while ``running`` (0.27); the logic's ``stop(run)`` is called. True if it acted."""
        with self._lock:
            training, run = self._training, self._run
            if training is None or run is None or training.training_state != TrainerState.RUNNING:
                state = training.training_state.value if training is not None else 'idle'
                logger.info('stop_training ignored: the trainer is %s, not running', state)
                return False
            training.stop_requested = True
            self.checkpoint.save(training)
        logger.info('training %s: stop requested', training.id)
        run.request_stop()
        try:
            self.logic.stop(run)
        except Exception:
            logger.exception('logic.stop failed')
        return True

    def request_abort(self) -> bool:
        """Discard the training in whatever state it is (no uploads); the logic's ``abort(run)`` is called."""
        with self._lock:
            training, run = self._training, self._run
            if training is None or run is None:
                logger.info('abort_training ignored: no training is active')
                return False
            training.abort_requested = True
            self.checkpoint.save(training)
        logger.info('training %s: abort requested', training.id)
        run.request_abort()
        try:
            self.logic.abort(run)
        except Exception:
            logger.exception('logic.abort failed')
        self._wake.set()
        return True

    def clear_errors(self) -> None:
        """Forget reported errors (backdoor ``/reset`` and ``/provide_new_model off``)."""
        with self._lock:
            self._node_errors.clear()
            self._last_errors.clear()
            if self._training is not None:
                self._training.errors.clear()

    def shutdown(self, timeout: float) -> bool:
        """Stop the worker for a node stop; the checkpoint keeps the last finished stage. True if it ended in time."""
        self._stop.set()
        self._wake.set()
        with self._lock:
            training, run = self._training, self._run
        if run is not None:
            run.request_shutdown()
            if training is not None and training.training_state == TrainerState.RUNNING:
                try:
                    self.logic.abort(run)
                except Exception:
                    logger.exception('logic.abort failed during shutdown')
        ended = True
        if self._thread.is_alive():
            self._thread.join(timeout)
            ended = not self._thread.is_alive()
            if not ended:
                logger.warning('the training worker did not end within %.1f s', timeout)
        if run is not None:
            run.publisher.close(timeout=1.0)
        self.slot.release()
        return ended

    # ------------------------------------------------------------------ worker

    def _activate(self, training: Training) -> None:
        """Make ``training`` the active one (caller holds ``_lock``)."""
        run = Run(
            training,
            node_uuid=self.node_uuid,
            node_name=self.node_name,
            send_metrics=lambda state: self._send_metrics(training, state),
            on_published=lambda state: self._published(run, state),
            metrics_interval=self.metrics_interval,
        )
        self._training, self._run, self._work = training, run, None
        self._history = [(training.training_state.value, time.monotonic())]
        self._streaks = {}
        self._idle.clear()

    def _published(self, run: Run, state: BestState) -> None:
        self.logic.on_metrics_published(run, state)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            with self._lock:
                training, run = self._training, self._run
                if training is None or run is None:
                    self._idle.set()  # under the lock: begin() clears it under the same lock
            if training is None or run is None:
                self._wake.wait()
                continue
            try:
                self._drive(training, run)
            except Exception:
                # Only the machine's own bookkeeping gets here (e.g. a checkpoint write on a full disk).
                logger.exception('training %s: the worker failed; trying again', training.id)
                self._stop.wait(self.retry_delay or 1.0)

    def _slot_holder(self, organization: str, project: str, training_number: int) -> str:
        return f'node {self.node_uuid}, training #{training_number} of {organization}/{project}'

    def _drive(self, training: Training, run: Run) -> None:
        _delete_discarded(training.project_folder)
        if not self.slot.held and not training.abort_requested:  # a resumed training: wait for its turn
            holder = self._slot_holder(training.organization, training.project, training.training_number)
            if not self.slot.wait_for(holder, run.cancel_event) and run.shutdown_requested:
                return  # the node stops; the checkpoint keeps the training
        while not self._stop.is_set():
            state = training.training_state
            if state == TrainerState.READY_FOR_CLEANUP:
                self._cleanup(training, run)
                return
            if training.abort_requested:
                self._transition(training, TrainerState.READY_FOR_CLEANUP)
                continue
            stage = STAGE_FROM.get(state)
            if stage is None:  # cannot happen for a loaded checkpoint (mapped back on load); be safe anyway
                logger.error('training %s: no stage starts in state %s; cleaning up', training.id, state.value)
                self._transition(training, TrainerState.READY_FOR_CLEANUP)
                continue
            self._perform(training, run, stage)

    def _work_for(self, training: Training, run: Run) -> StageWork:
        with self._lock:
            work = self._work
        if work is None:
            exchange = self._make_exchange(training.organization, training.project)
            work = StageWork(training, run, self.logic, exchange, inference_batch_size=self.inference_batch_size)
            with self._lock:
                self._work = work
        return work

    def _transition(self, training: Training, state: TrainerState, **changes: Any) -> None:
        with self._lock:
            self._transition_locked(training, state, **changes)

    def _transition_locked(self, training: Training, state: TrainerState, **changes: Any) -> None:
        """:meth:`_transition` for a caller that holds ``_lock`` (so that its own changes show with the state)."""
        training.training_state = state
        for name, value in changes.items():
            setattr(training, name, value)
        self.checkpoint.save(training)
        if len(self._history) < HISTORY_LIMIT:
            self._history.append((state.value, time.monotonic()))

    def _perform(self, training: Training, run: Run, stage: Stage) -> None:
        key = stage.key
        work = self._work_for(training, run)
        self._transition(training, stage.during)
        logger.info('training %s: %s (%s)', training.id, stage.during.value, key)
        timer = _StageTimer()
        try:
            with timer:
                work.perform(stage)
        except TrainingInterrupted:
            self._interrupted(training, run, stage)
        except NodeNeedsRestartError as e:
            self._restart_needed(training, stage, e)
        except CriticalError as e:
            message = str(e) or type(e).__name__
            logger.error('training %s: %s failed critically: %s; cleaning up', training.id, key, message)
            with self._lock:  # the error shows together with the state it leads to, never with the stage's state
                training.errors[key] = message
                training.attempts.pop(key, None)
                self._transition_locked(training, TrainerState.READY_FOR_CLEANUP)
        except Exception as e:
            if run.cancelled:
                self._interrupted(training, run, stage)
                return
            self._failed(training, run, stage, e)
        else:
            with self._lock:  # the cleared error shows together with the next state, as the failures' errors do
                training.errors.pop(key, None)
                training.attempts.pop(key, None)
                self._streaks.pop(key, None)
                self.stage_seconds[key] = self.stage_seconds.get(key, 0.0) + timer.seconds
                self._transition_locked(training, stage.after)

    def _restart_needed(self, training: Training, stage: Stage, error: NodeNeedsRestartError) -> None:
        message = str(error) or type(error).__name__
        logger.error('training %s: %s needs a fresh process: %s', training.id, stage.key, message)
        self._stop.set()  # the worker ends after this stage; begin() refuses from now on
        with self._lock:
            training.errors[stage.key] = f'{message} (the node restarts)'
            self._transition_locked(training, stage.start)
        if self._on_restart_needed is not None:
            self._on_restart_needed(error)

    def _interrupted(self, training: Training, run: Run, stage: Stage) -> None:
        if run.shutdown_requested:
            logger.info(
                'training %s: %s interrupted by the node stop; it is redone after restart', training.id, stage.key
            )
            self._transition(training, stage.start)
        else:
            logger.info('training %s: aborted during %s', training.id, stage.key)
            self._transition(training, TrainerState.READY_FOR_CLEANUP)

    def _failed(self, training: Training, run: Run, stage: Stage, error: Exception) -> None:
        key = stage.key
        message = str(error) or type(error).__name__
        unavailable = is_loop_unavailable(error)
        # The error is recorded in the same step as the state it leads to (back to the stage's start, or cleanup):
        # no reader sees the error while the state still says the stage runs.
        with self._lock:
            streak = self._streaks[key] = self._streaks.get(key, 0) + 1
            if not unavailable:
                training.attempts[key] = training.attempts.get(key, 0) + 1
            failures = training.attempts.get(key, 0)
            gave_up = not unavailable and self.max_attempts is not None and failures >= self.max_attempts
            if gave_up:
                training.errors[key] = f'{message} (gave up after {failures} attempts)'
                self._transition_locked(training, TrainerState.READY_FOR_CLEANUP)
            else:
                training.errors[key] = message
                self._transition_locked(training, stage.start)
        if gave_up:
            logger.error(
                'training %s: %s failed %d times (%s); giving the training up', training.id, key, failures, message
            )
            return
        delay = self.backoff.delay(streak)
        logger.warning(
            'training %s: %s failed (%s): %s; retrying in %.1f s',
            training.id,
            key,
            'the Loop is unavailable' if unavailable else f'attempt {failures}',
            message,
            delay,
        )
        logger.debug('training %s: %s failure', training.id, key, exc_info=error)
        run.cancel_event.wait(delay)  # an abort or the node stop ends the wait

    def _cleanup(self, training: Training, run: Run) -> None:
        run.publisher.close()
        work = self._work_for(training, run)
        work.cleanup()
        if self._on_cleanup is not None:
            try:
                self._on_cleanup(training)
            except Exception:
                logger.exception('training %s: on_cleanup failed', training.id)
        with self._lock:
            self.checkpoint.delete()
            self._last_errors = dict(training.errors)
            self._training, self._run, self._work = None, None, None
            self._history.append(('idle', time.monotonic()))
            self.slot.release()
            self._idle.set()
        logger.info(
            'training %s cleared%s',
            training.id,
            f' with errors: {training.errors}' if training.errors else '',
        )
        if self._on_cleared is not None:
            try:
                self._on_cleared(training)
            except Exception:
                logger.exception('training %s: on_cleared failed', training.id)


class _StageTimer:
    """Wall time of a stage (the user's hooks included; the bench subtracts what it measures in the logic)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._started = 0.0

    def __enter__(self) -> _StageTimer:
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._started


#: Where the old training folders of a project wait for the worker to delete them (``{project}/.old_trainings``).
OLD_TRAININGS = '.old_trainings'


def _discard_old_trainings(project_folder: Path) -> None:
    """Move every earlier training folder of a project out of the way (unless ``KEEP_OLD_TRAININGS``).

    Renames are instant, so ``begin_training`` answers at once; the worker deletes them (:func:`_delete_discarded`).
    """
    trainings = project_folder / 'trainings'
    if not trainings.is_dir():
        return
    trash = project_folder / OLD_TRAININGS
    trash.mkdir(exist_ok=True)
    for entry in trainings.iterdir():
        os.replace(entry, trash / f'{entry.name}-{uuid.uuid4().hex[:8]}')


def _delete_discarded(project_folder: Path) -> None:
    """Delete the training folders :func:`_discard_old_trainings` moved aside (in the worker thread)."""
    trash = project_folder / OLD_TRAININGS
    if trash.is_dir():
        shutil.rmtree(trash, ignore_errors=True)
