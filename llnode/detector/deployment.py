"""Which model serves, which one should, and the thread that gets the detector from the one to the other.

The reference does all of this inside its repeat cycle (reference-behaviour §1.4-1.5): a long download holds up
status syncs, a failed download or build drops the target (so a specific version is never retried), two failed
builds in a row end the process, and with ``EXCLUSIVE_MODEL_BUILD`` a failed build leaves no model at all. Here:

- one named updater thread installs, builds and swaps; the repeat cycle only says what the target is;
- the new model is built beside the old one, which serves until the swap (one reference switched under the
  lock); the old one's inference worker then drains and its logic is closed;
- with ``exclusive`` the old model is released first (requests get "updating model to version X"), and if the
  new one fails to build the old one is built again, so a bad model never leaves the detector without one;
- a failed download or build keeps the target, records ``update_model`` in the errors and is retried with
  exponential back-off (:class:`~llnode.detector.model_store.RetryBackoff`), in every version mode;
- a build that raises :class:`~llnode.node.restart.NodeNeedsRestartError` (at start too, where the reference
  swallows it) is handed to ``on_restart_needed``: the node stops for a fresh process.

The lock (``_lock``) is owned by the manager and guards the fields listed in ``__init__``; it is never held
while downloading, building or running inference.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llnode.detector.batching import InferenceWorker
from llnode.detector.logic import DetectorFactory, DetectorLogic
from llnode.detector.model_store import ModelStore, RetryBackoff, read_model_info
from llnode.failure_log import FailureLog
from llnode.node.errors import Unavailable
from llnode.node.restart import NodeNeedsRestartError
from llnode.schema import ModelInformation, VersionMode

logger = logging.getLogger('llnode.detector.deployment')

#: How long a swapped-out model may take to finish the requests it already accepted.
DRAIN_TIMEOUT = 30.0

#: How long ``stop()`` waits for a running download or build before giving up on the thread.
STOP_TIMEOUT = 10.0

UPDATE_ERROR_KEY = 'update_model'


@dataclass(frozen=True)
class ModelTarget:
    """A model version the detector should run: the Loop's model id and its version string."""

    id: str
    version: str


@dataclass(frozen=True)
class ActiveModel:
    """The model that serves: its ``model.json``, the user's logic and the worker every inference goes through."""

    info: ModelInformation
    logic: DetectorLogic
    worker: InferenceWorker

    @property
    def version(self) -> str:
        return self.info.version


class NotServing(Unavailable):
    """No model can answer now: none is loaded yet, or an exclusive swap runs (HTTP 503)."""


class ModelManager:
    """Keeps the detector's model in line with its target.

    ``fetch(target, folder)`` downloads the target's files into the empty ``folder`` (the node passes the Loop
    download). ``may_update()`` says whether updates are allowed now (operation mode ``idle``, not muted).
    ``on_change()`` is called after every swap and every change of the update error (the node syncs its status).
    ``worker_options`` go to every :class:`InferenceWorker` (batch size, wait, queue). ``on_restart_needed(error)``
    gets a :class:`NodeNeedsRestartError` raised by a build (the node asks for a fresh process).
    """

    def __init__(
        self,
        store: ModelStore,
        factory: DetectorFactory,
        fetch: Callable[[ModelTarget, Path], object],
        *,
        exclusive: bool = False,
        version_mode: VersionMode = VersionMode.FOLLOW_LOOP,
        may_update: Callable[[], bool] = lambda: True,
        on_change: Callable[[], None] = lambda: None,
        worker_options: dict[str, Any] | None = None,
        backoff: RetryBackoff | None = None,
        name: str = 'detector',
        on_restart_needed: Callable[[NodeNeedsRestartError], None] | None = None,
    ) -> None:
        self.store = store
        self.factory = factory
        self.exclusive = exclusive
        self._fetch = fetch
        self._may_update = may_update
        self._on_change = on_change
        self._on_restart_needed = on_restart_needed
        self._worker_options = dict(worker_options or {})
        self.backoff = backoff or RetryBackoff(initial=5.0, maximum=300.0)
        self._name = name
        self._update_failure_log = FailureLog(logger, f'{name}: model update')

        self._lock = threading.Lock()
        # guarded by _lock:
        self._active: ActiveModel | None = None
        self._updating_to: str | None = None  # set while an exclusive swap has no model serving
        self._version_mode = version_mode
        self._target: ModelTarget | None = None
        self._loop_target: ModelTarget | None = None
        self._errors: dict[str, str] = {}
        self._update_failures = 0  # failed installs or builds since start (a metric)

        self._busy = threading.Lock()  # held by whoever installs/builds/swaps (updater thread, load_current)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f'llnode-model-updater-{name}', daemon=True)

    # ------------------------------------------------------------------ reading

    def active(self) -> ActiveModel | None:
        """The model that serves now, or None."""
        with self._lock:
            return self._active

    def serving(self) -> ActiveModel:
        """The model that serves now; :class:`NotServing` (with the reference's messages) when there is none."""
        with self._lock:
            active, updating = self._active, self._updating_to
        if active is not None:
            return active
        if updating is not None:
            raise NotServing(f'updating model to version {updating}', retry_after=1)
        raise NotServing('detector not yet initialized', retry_after=5)

    @property
    def updating_to(self) -> str | None:
        """The version an exclusive swap is building while no model serves, else None."""
        with self._lock:
            return self._updating_to

    @property
    def current_version(self) -> str | None:
        with self._lock:
            return None if self._active is None else self._active.version

    @property
    def target(self) -> ModelTarget | None:
        with self._lock:
            return self._target

    @property
    def loop_target(self) -> ModelTarget | None:
        """The deployment target the Loop named at the last successful poll."""
        with self._lock:
            return self._loop_target

    @property
    def version_mode(self) -> VersionMode:
        with self._lock:
            return self._version_mode

    @property
    def update_failures(self) -> int:
        """Model updates (install or build) that failed since the manager was created."""
        with self._lock:
            return self._update_failures

    def errors(self) -> dict[str, str]:
        """A copy of the current errors (``update_model`` while an update fails)."""
        with self._lock:
            return dict(self._errors)

    # ------------------------------------------------------------------ steering

    def set_loop_target(self, target: ModelTarget | None) -> None:
        """Record the Loop's deployment target; in ``follow_loop`` it becomes the target."""
        with self._lock:
            self._loop_target = target
            if self._version_mode == VersionMode.FOLLOW_LOOP and target is not None and target != self._target:
                logger.info('%s: the Loop deploys model version %s', self._name, target.version)
                self._target = target
        self.request_update()

    def follow_loop(self) -> None:
        """Mode ``follow_loop``: take the Loop's deployment target (the known one at once, later ones as polled)."""
        with self._lock:
            self._version_mode = VersionMode.FOLLOW_LOOP
            if self._loop_target is not None:
                self._target = self._loop_target
        self.request_update()

    def pause(self) -> None:
        """Mode ``pause``: no new targets; an update to the target already chosen still completes (reference)."""
        with self._lock:
            self._version_mode = VersionMode.PAUSE

    def use_version(self, target: ModelTarget) -> None:
        """Mode ``specific_version`` with ``target``."""
        with self._lock:
            self._version_mode = VersionMode.SPECIFIC_VERSION
            if target != self._target:
                self._target = target
                self.backoff.succeeded(target.version)  # a user's explicit choice is tried at once
        self.request_update()

    def reset(self, version_mode: VersionMode) -> None:
        """Forget targets, errors and back-off, and drop the serving model (the backdoor ``/reset``)."""
        with self._busy:
            with self._lock:
                old, self._active = self._active, None
                self._updating_to = None
                self._version_mode = version_mode
                self._target = self._loop_target = None
                self._errors.clear()
            self.backoff.reset()
            if old is not None:
                _retire(old, self._name)

    def request_update(self) -> None:
        """Ask the updater thread to check the target now."""
        self._wake.set()

    # ------------------------------------------------------------------ lifecycle

    def load_current(self) -> ActiveModel | None:
        """Build the model ``current_model`` points to (at start, before any Loop contact); None if there is none.

        A build failure is logged and leaves the detector without a model; the Loop's target then installs one.
        """
        with self._busy:
            self.store.clean_leftovers()
            version = self.store.current_version()
            if version is None:
                problem = self.store.current_problem()
                if problem is not None:  # a link to a broken folder: the reason belongs in /readyz and /stats
                    self._set_error(f'Could not load the current model: {problem}')
                logger.info('%s: no current model', self._name)
                return None
            try:
                model = self._build(self.store.folder(version))
            except NodeNeedsRestartError as e:
                self._restart_needed(e)
                return None
            except Exception as e:
                message = f'Could not load model {version}: {_describe(e)}'
                logger.warning('%s: %s', self._name, message)  # the cause, for the log, /readyz and /stats
                logger.debug('%s: loading the current model failed', self._name, exc_info=e)
                self._set_error(message)
                return None
            with self._lock:
                self._active = model
            logger.info('%s: serving model version %s', self._name, version)
            return model

    def start(self) -> None:
        # made again here: a Thread made before a fork (gunicorn builds the node in its master) is marked stopped
        # in the child by CPython, so its is_alive() and join() would lie there (started already: start() raises)
        if self._thread.ident is None:
            self._thread = threading.Thread(target=self._run, name=self._thread.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = STOP_TIMEOUT) -> bool:
        """Stop the updater (a running download or build finishes first, within ``timeout``) and the model."""
        self._stop.set()
        self._wake.set()
        clean = True
        if self._thread.is_alive():
            self._thread.join(timeout)
            clean = not self._thread.is_alive()
        with self._lock:
            old, self._active = self._active, None
        if old is not None:
            clean &= old.worker.drain_and_stop(timeout=min(timeout, DRAIN_TIMEOUT), close_logic=True)
        return clean

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.update_once()
            except Exception:  # update_once records what it expects; this is a bug guard
                logger.exception('%s: model update failed unexpectedly', self._name)
            delay = self._retry_delay()
            if delay is not None and not self._wake.is_set():
                self._stop.wait(delay)  # a retry after back-off; a new request wakes the loop earlier anyway
                self._wake.set()

    def _retry_delay(self) -> float | None:
        with self._lock:
            target, current = self._target, None if self._active is None else self._active.version
        if target is None or target.version == current:
            return None
        remaining = self.backoff.remaining(target.version)
        return remaining if remaining > 0 else None

    # ------------------------------------------------------------------ updating

    def update_once(self) -> bool:
        """Bring the serving model to the target if allowed and due; True if a swap happened."""
        if not self._may_update():
            return False
        with self._busy:
            with self._lock:
                target = self._target
                current = None if self._active is None else self._active.version
            if target is not None and target.version == current:
                self._repair_current_link(target.version)
                return False
            if target is None or not self.backoff.ready(target.version):
                return False
            try:
                self._update_to(target)
            except NodeNeedsRestartError as e:
                with self._lock:
                    self._update_failures += 1
                self._set_error(f'Could not update model: {_describe(e)} (the node restarts)')
                self._restart_needed(e)
                return False
            except Exception as e:
                with self._lock:
                    self._update_failures += 1
                delay = self.backoff.failed(target.version)
                message = f'Could not update model: {_describe(e)}'
                self._update_failure_log.failed(message, exc_info=e)  # logged when it starts, then once a minute
                logger.debug('%s: next model update try in %.1f s', self._name, delay)
                self._set_error(message)
                return False
            self._update_failure_log.succeeded()
            self.backoff.succeeded(target.version)
            self._notify()  # the swap cleared the update error in the same step
            return True

    def _update_to(self, target: ModelTarget) -> None:
        version = target.version
        logger.info('%s: updating to model version %s (%s)', self._name, version, target.id)
        self.store.install(version, lambda folder: self._fetch(target, folder))
        folder = self.store.folder(version)
        if self.exclusive:
            self._exclusive_swap(folder, version)
        else:
            new = self._build(folder)
            with self._lock:
                old, self._active = self._active, new
                self._errors.pop(UPDATE_ERROR_KEY, None)  # with the swap: no one sees the new model and the old error
            if old is not None:
                _retire(old, self._name)
        logger.info('%s: now serving model version %s', self._name, version)
        self._record_current(version)

    def _record_current(self, version: str) -> bool:
        """Point ``current_model`` at the version that serves, so a restart builds it first.

        The link follows the swap: a failure here (a full or read-only disk) leaves the new model serving, puts
        the error in the status and is tried again each cycle (:meth:`_repair_current_link`).
        """
        try:
            self.store.activate(version)
        except Exception as e:
            message = f'Serving model {version}, but could not make it the current model on disk: {_describe(e)}'
            logger.warning('%s: %s (tried again next cycle)', self._name, message)
            self._set_error(message)
            return False
        return True

    def _repair_current_link(self, version: str) -> None:
        """Retry an earlier failure of :meth:`_record_current` (a readlink per cycle while nothing is wrong)."""
        if self.store.current_version() == version:
            return
        if self._record_current(version):
            logger.info('%s: current model on disk is version %s again', self._name, version)
            self._set_error(None)

    def _exclusive_swap(self, folder: Path, version: str) -> None:
        """Release the old model, then build the new one; on failure build the old one again."""
        with self._lock:
            old, self._active = self._active, None
            self._updating_to = version
        try:
            if old is not None:
                _retire(old, self._name)
                del old  # the logic must be unreachable before gc can free its memory (GPU included)
            gc.collect()
            try:
                new = self._build(folder)
            except NodeNeedsRestartError:
                raise  # rebuilding the old model in this process would not help either
            except Exception:
                self._restore_previous()
                raise
            with self._lock:
                self._active = new
                self._errors.pop(UPDATE_ERROR_KEY, None)
        finally:
            with self._lock:
                self._updating_to = None

    def _restore_previous(self) -> None:
        version = self.store.current_version()
        if version is None:
            return
        try:
            model = self._build(self.store.folder(version))
        except Exception:
            logger.exception('%s: rebuilding the previous model %s failed too', self._name, version)
            return
        with self._lock:
            self._active = model
        logger.info('%s: serving the previous model version %s again', self._name, version)

    def _build(self, folder: Path) -> ActiveModel:
        info = read_model_info(folder)
        logic = self.factory.build(info)
        if not isinstance(logic, DetectorLogic):
            raise TypeError(
                f'{type(self.factory).__name__}.build returned {type(logic).__name__}, expected a DetectorLogic'
            )
        worker = InferenceWorker(logic, name=f'llnode-inference-{self._name}-{info.version}', **self._worker_options)
        return ActiveModel(info=info, logic=logic, worker=worker)

    def _restart_needed(self, error: NodeNeedsRestartError) -> None:
        logger.error('%s: building a model asks for a fresh process: %s', self._name, error)
        if self._on_restart_needed is not None:
            self._on_restart_needed(error)

    def _set_error(self, message: str | None) -> None:
        with self._lock:
            before = self._errors.get(UPDATE_ERROR_KEY)
            if message is None:
                self._errors.pop(UPDATE_ERROR_KEY, None)
            else:
                self._errors[UPDATE_ERROR_KEY] = message
        if before != message:
            self._notify()

    def _notify(self) -> None:
        try:
            self._on_change()
        except Exception:
            logger.exception('%s: on_change failed', self._name)


def _retire(model: ActiveModel, name: str) -> None:
    """Let the swapped-out model finish what it accepted, then close its logic."""
    if not model.worker.drain_and_stop(timeout=DRAIN_TIMEOUT, close_logic=True):
        logger.warning('%s: model version %s did not finish its requests in time', name, model.version)


def _describe(error: BaseException) -> str:
    """An error for the status: the Loop's answer for HTTP errors, else the exception's own text."""
    body = getattr(error, 'body', None)
    if isinstance(body, str) and body.strip():
        return body.strip()[:500]
    text = str(error).strip()
    return text or type(error).__name__
