"""Train by running a command (a script, ``torchrun ...``) as a subprocess: the reference's ``TrainerLogic``.

A user subclasses :class:`SubprocessTrainerLogic` and says how to start the training (``start_command``, and
optionally ``base_model_command``, ``resume_command`` with ``can_resume``), how to read a new best state and the
progress while it runs (``get_new_best``, ``progress``), which errors its log shows (``error_from_log``), and the
base class's ``model_files`` and ``detect``. The library runs the command with an :class:`Executor` (own process
group, fresh log per run, bounded stop) and turns how it ended into the training's outcome:

========================================  =====================================================================
how the process ended                     outcome of ``train``
========================================  =====================================================================
stop requested (or the backdoor's kill)   returns normally: the model trained so far is uploaded (0.27 §5.3)
abort requested                           raises ``TrainingInterrupted(aborted=True)``: nothing is uploaded
stop or abort before the process started  raises ``TrainingInterrupted(aborted=True)`` (0.27 §5.3)
``error_from_log`` names an error         raises :class:`TrainingProcessError` naming it (the stage is retried)
non-zero exit code                        raises :class:`TrainingProcessError` with the last log lines (retried)
exit code 0                               returns normally
the command cannot be started             raises ``CriticalError`` (a retry would not find it either)
========================================  =====================================================================

The process is stopped (SIGTERM to its group, SIGKILL after a grace period, reaped) on every way out of ``train``.
Each run writes a new log, so an error of an earlier attempt is never found again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from llnode.trainer.executor import Executor, ExecutorError
from llnode.trainer.logic import BestState, CriticalError, TrainerLogic, TrainingInterrupted, TrainingRun

Command = str | Sequence[str]

#: what the default :meth:`SubprocessTrainerLogic.error_from_log` looks for, and the error it reports (as 0.27)
KNOWN_LOG_ERRORS: tuple[tuple[str, str], ...] = (
    ('CUDA out of memory', 'graphics card is out of memory'),
    ('CUDA error: invalid device ordinal', 'graphics card not found'),
)


class TrainingProcessError(RuntimeError):
    """The training process failed (an error in its log, or a non-zero exit); the stage is retried."""

    def __init__(self, message: str, tail: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.tail = list(tail)


class SubprocessTrainerLogic(TrainerLogic):
    """A trainer whose training is a command run in its own process group (see the module docstring).

    Tunables (class attributes, or set on the instance): ``sync_interval`` (seconds between ``get_new_best`` /
    ``progress`` polls while the process runs), ``stop_grace`` (SIGTERM to SIGKILL on a graceful stop),
    ``abort_grace`` (the same on an abort), ``log_tail_lines`` (lines given to ``error_from_log``).
    """

    sync_interval: float = 5.0
    stop_grace: float = 30.0
    abort_grace: float = 3.0
    log_tail_lines: int = 50
    #: how often the watch loop looks at the process between polls (seconds)
    watch_interval: float = 0.1

    def __init__(self, model_format: str | None = None) -> None:
        super().__init__(model_format)
        self._lock = threading.Lock()  # owns _executor, _run, _process_started, _kill_requested
        self._executor: Executor | None = None
        self._run: TrainingRun | None = None
        self._process_started = False
        self._kill_requested = False

    # ------------------------------------------------------------------ what a user overrides

    def start_command(self, run: TrainingRun) -> Command:
        """The command that trains from scratch (a string split like a shell would, or an argv list)."""
        raise NotImplementedError(f'{type(self).__name__} must implement start_command(run)')

    def base_model_command(self, run: TrainingRun) -> Command:
        """The command that trains on from the base model in ``run.base_model_folder``; default: start_command."""
        return self.start_command(run)

    def can_resume(self, run: TrainingRun) -> bool:
        """True if the training folder holds what ``resume_command`` needs (e.g. a checkpoint); default False."""
        return False

    def resume_command(self, run: TrainingRun) -> Command:
        """The command that resumes an interrupted training (used when ``can_resume`` is True)."""
        raise NotImplementedError(f'{type(self).__name__} must implement resume_command(run) when can_resume')

    def environment(self, run: TrainingRun) -> dict[str, str]:
        """Extra environment variables for the command; the default makes Python write its output unbuffered."""
        return {'PYTHONUNBUFFERED': '1'}

    def error_from_log(self, run: TrainingRun, tail: list[str]) -> str | None:
        """The error the last lines of this run's log show, or None. Subclasses add theirs and call super()."""
        for line in tail:
            for marker, error in KNOWN_LOG_ERRORS:
                if marker in line:
                    return error
        return None

    def get_new_best(self, run: TrainingRun) -> BestState | None:
        """A new best state since the last call (polled every ``sync_interval`` s while training), or None."""
        return None

    def progress(self, run: TrainingRun) -> float | None:
        """The training's progress 0..1 (polled with ``get_new_best``), or None when unknown."""
        return None

    # ------------------------------------------------------------------ for the user's hooks and the backdoor

    @property
    def executor(self) -> Executor | None:
        """The executor of the current (or last) training run; e.g. to read its log in ``get_new_best``."""
        with self._lock:
            return self._executor

    def process_running(self) -> bool:
        """True while the training process runs (the backdoor routes ask this)."""
        executor = self.executor
        return executor is not None and executor.is_running()

    def kill_process(self) -> None:
        """End the training process and wait for it (backdoor ``/kill_training_process``).

        As in the reference, a process ended this way counts as finished: ``train`` returns normally.
        """
        with self._lock:
            executor = self._executor
            if executor is None or not executor.is_running():
                return
            self._kill_requested = True
        executor.stop(grace=self.abort_grace)

    # ------------------------------------------------------------------ TrainerLogic hooks

    def train(self, run: TrainingRun) -> None:
        executor = Executor(run.training_folder)
        with self._lock:
            self._executor = executor
            self._run = run
            self._process_started = False
            self._kill_requested = False
        try:
            command, how = self._choose_command(run)
            env = self.environment(run)
            with self._lock:
                # a stop or abort before the process started ends the training here (0.27 §5.3)
                if run.stop_requested or run.abort_requested:
                    raise TrainingInterrupted(aborted=True)
                try:
                    executor.start(command, env)
                except ExecutorError as e:
                    raise CriticalError(f'cannot start the training: {e}') from e
                self._process_started = True
            run.logger.info('training process %s started (%s, log %s)', executor.pid, how, executor.log_path)
            self._watch(run, executor)
            self._finish(run, executor)
        finally:
            executor.stop(grace=self.abort_grace if run.abort_requested else self.stop_grace)

    def stop(self, run: TrainingRun) -> None:
        """Before the process started: ``train`` raises ``TrainingInterrupted(aborted=True)``; after: SIGTERM."""
        self._signal(run)

    def abort(self, run: TrainingRun) -> None:
        """SIGTERM now; the training thread sends SIGKILL after ``abort_grace`` and discards the training."""
        self._signal(run)

    # ------------------------------------------------------------------ internals

    def _signal(self, run: TrainingRun) -> None:
        """Start ending the process without waiting (called from a Socket.IO thread: must stay short)."""
        with self._lock:
            executor = self._executor if self._run is run and self._process_started else None
        if executor is not None:
            executor.terminate()

    def _choose_command(self, run: TrainingRun) -> tuple[Command, str]:
        if self.can_resume(run):
            return self.resume_command(run), 'resuming'
        if run.base_model_folder is not None:
            return self.base_model_command(run), f'from base model {run.base_model_uuid}'
        return self.start_command(run), 'from scratch'

    def _watch(self, run: TrainingRun, executor: Executor) -> None:
        """Until the process ends, a stop or abort comes, or the log shows an error; polls metrics meanwhile."""
        next_poll = time.monotonic() + self.sync_interval
        while executor.is_running():
            if run.wait_for_stop(self.watch_interval) or self._kill_requested:
                return
            if time.monotonic() >= next_poll:
                next_poll = time.monotonic() + self.sync_interval
                if self.error_from_log(run, executor.log_tail(self.log_tail_lines)):
                    return
                self._poll(run)

    def _finish(self, run: TrainingRun, executor: Executor) -> None:
        if run.abort_requested:
            executor.stop(grace=self.abort_grace)
            raise TrainingInterrupted(aborted=True)
        if run.stop_requested or self._kill_requested:
            code = executor.stop(grace=self.stop_grace)
            run.logger.info('training process stopped on request (exit code %s)', code)
            self._poll(run)
            return
        # the process ended by itself, or its log shows an error while it still runs
        code = executor.stop(grace=self.stop_grace)
        tail = executor.log_tail(self.log_tail_lines)
        error = self.error_from_log(run, tail)
        if error:
            raise TrainingProcessError(f'training process failed: {error}', tail)
        if run.stop_requested:  # a stop that came while the process was being ended: the model is kept
            self._poll(run)
            return
        if code != 0:
            last = ' | '.join(tail[-5:]) or 'no output'
            raise TrainingProcessError(f'training process exited with code {code}: {last}', tail)
        self._poll(run)

    def _poll(self, run: TrainingRun) -> None:
        """Hand a new best state and the progress to the run; a failing user hook is logged, not fatal."""
        try:
            state = self.get_new_best(run)
            if state is not None:
                run.report_best(state)
        except Exception:
            run.logger.exception('get_new_best failed')
        try:
            fraction = self.progress(run)
            if fraction is not None:
                run.set_progress(fraction)
        except Exception:
            run.logger.exception('progress failed')
