"""The Trainer node: receives trainings from the Loop, runs them in its state machine, reports every 5 s.

Wire behaviour is the reference's (loop-protocol §3.5, reference-behaviour §4, changes-0.27 §5): the Socket.IO
events ``begin_training``, ``stop_training`` and ``abort_training`` with the usual ack envelope, ``update_trainer``
every repeat cycle with the exact ``TrainingStatus``, ``update_training`` with ``TrainingOut`` for new best
states, the checkpoint ``last_training__{uuid}.json``. What differs is how it holds up (Appendix C 11-17): a
second ``begin_training`` is refused, retries back off and end, a corrupt checkpoint is moved aside and
reported, uploads and detections resume without repeating what the Loop has, the three training events are
handled one after another in the order the Loop sent them, and nothing calls ``sys.exit``:
``RESTART_AFTER_TRAINING`` and ``TRAINER_IDLE_TIMEOUT_SEC`` end ``run()``/``serve()`` with exit code 0.

Use it from code as well: :meth:`TrainerNode.begin_training`, :meth:`stop_training`, :meth:`abort_training` and
:meth:`status` are what the events call.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from flask import Blueprint

from llnode.config import Settings
from llnode.failure_log import FailureLog
from llnode.loop.errors import LoopConnectionError, LoopError
from llnode.loop.exchange import DataExchange
from llnode.node.errors import Unavailable
from llnode.node.identity import node_key
from llnode.node.metrics import Metric, gauge, state_set
from llnode.node.node import Node
from llnode.node.openapi import ApiDescription
from llnode.node.repeat import REPEAT_INTERVAL
from llnode.schema import (
    Context,
    PretrainedModel,
    SchemaError,
    TrainerState,
    TrainingDetails,
    TrainingOut,
    TrainingStatus,
)
from llnode.trainer.logic import BestState, TrainerLogic
from llnode.trainer.machine import MAX_ATTEMPTS, MAX_RETRY_DELAY, RETRY_DELAY, TrainingMachine, TrainingRefused
from llnode.trainer.slot import TrainingSlot, training_slot_from_settings
from llnode.trainer.training import Training

if TYPE_CHECKING:
    from llnode.loop.http import LoopClient
    from llnode.loop.socket import LoopSocket

logger = logging.getLogger('llnode.trainer')

#: Timeouts of the node's Socket.IO calls (reference: 30 s for the status, the client default of 60 s for metrics).
STATUS_TIMEOUT = 30.0
METRICS_TIMEOUT = 60.0

#: How long ``stop()`` gives the training worker to finish its stage's current step.
WORKER_STOP_TIMEOUT = 10.0

#: How long the backdoor ``/reset`` waits for an aborted training to be cleaned up.
RESET_TIMEOUT = 30.0

#: The Loop socket lane of ``begin_training``, ``stop_training`` and ``abort_training``: handled in arrival order.
TRAINING_LANE = 'training'


def _training_lane(*args: Any) -> str:
    return TRAINING_LANE


class TrainerNode(Node):
    """A trainer: ``TrainerNode('my trainer', MyLogic()).serve(port=8001)``.

    ``logic`` is a :class:`~llnode.trainer.logic.TrainerLogic`. Settings default to ``Settings.from_env()``
    (``INFERENCE_BATCH_SIZE``, ``RESTART_AFTER_TRAINING``, ``KEEP_OLD_TRAININGS``, ``TRAINER_IDLE_TIMEOUT_SEC``
    apply). ``use_backdoor_controls`` mounts the test routes of loop-protocol §5 (default:
    ``USE_BACKDOOR_CONTROLS``). A failing stage is retried after ``retry_delay`` seconds, doubling up to
    ``max_retry_delay``, and given up after ``max_attempts`` failures in a row (None: never).
    ``metrics_interval`` is the least time between two ``update_training`` sends while training.
    ``training_slot`` is shared with sibling trainers on the same GPU (default: from ``TRAINING_SLOT_LOCK``, see
    :mod:`llnode.trainer.slot`); while a sibling holds it the node refuses trainings and reports ``blocked``.
    """

    node_type = 'trainer'
    needs_loop_socket = True

    def __init__(
        self,
        name: str,
        logic: TrainerLogic,
        *,
        settings: Settings | None = None,
        uuid: str | None = None,
        use_backdoor_controls: bool | None = None,
        repeat_interval: float = REPEAT_INTERVAL,
        max_attempts: int | None = MAX_ATTEMPTS,
        retry_delay: float = RETRY_DELAY,
        max_retry_delay: float = MAX_RETRY_DELAY,
        metrics_interval: float = 5.0,
        loop_client_factory: Callable[[Settings], LoopClient] | None = None,
        loop_socket_factory: Callable[[LoopClient, str], LoopSocket] | None = None,
        training_slot: TrainingSlot | None = None,
    ) -> None:
        if not isinstance(logic, TrainerLogic):
            raise TypeError(f'logic must be a TrainerLogic, got {type(logic).__name__}')
        if training_slot is not None and not isinstance(training_slot, TrainingSlot):
            raise TypeError(f'training_slot must be a TrainingSlot, got {type(training_slot).__name__}')
        super().__init__(
            name,
            settings=settings,
            uuid=uuid,
            repeat_interval=repeat_interval,
            loop_client_factory=loop_client_factory,
            loop_socket_factory=loop_socket_factory,
        )
        self.logic = logic
        self.use_backdoor_controls = (
            self.settings.use_backdoor_controls if use_backdoor_controls is None else bool(use_backdoor_controls)
        )
        self.machine = TrainingMachine(
            logic,
            data_folder=self.settings.data_folder,
            node_uuid=self.uuid,
            node_name=self.name,
            make_exchange=self._exchange,
            send_metrics=self.publish_metrics,
            on_cleanup=self._training_cleanup,
            on_cleared=self._training_cleared,
            inference_batch_size=self.settings.inference_batch_size,
            max_attempts=max_attempts,
            retry_delay=retry_delay,
            max_retry_delay=max_retry_delay,
            metrics_interval=metrics_interval,
            keep_old_trainings=self.settings.keep_old_trainings,
            thread_name=f'llnode-trainer-{node_key(name)}',
            slot=training_slot if training_slot is not None else training_slot_from_settings(self.settings),
            on_restart_needed=self.restart_needed,
        )
        self._status_lock = threading.Lock()  # guards _reported_state and _idle_since
        self._status_failures = FailureLog(logger, f'{name}: update_trainer')
        self._reported_state: str | None = None
        self._idle_since: float | None = None
        # One lane: a stop or abort sent right after begin_training finds the training begun (the handlers only
        # hand the work to the training worker, so they return at once).
        self.handle_loop_event('begin_training', self._on_begin_training, lane=_training_lane)
        self.handle_loop_event('stop_training', self._on_stop_training, lane=_training_lane)
        self.handle_loop_event('abort_training', self._on_abort_training, lane=_training_lane)

    # ------------------------------------------------------------------ public API

    def begin_training(self, organization: str, project: str, details: TrainingDetails | dict[str, Any]) -> Training:
        """Start a training (what ``begin_training`` from the Loop does); returns its record.

        Raises :class:`~llnode.schema.SchemaError` (a ``ValueError``) for invalid details and
        :class:`~llnode.trainer.machine.TrainingRefused` while a training is active or a sibling holds the
        training slot (:class:`~llnode.trainer.slot.TrainingSlotTaken`).
        """
        for what, value in (('organization', organization), ('project', project)):
            if not isinstance(value, str) or not value:
                raise ValueError(f'{what} missing or not a non-empty string')
        if not isinstance(details, TrainingDetails):
            details = TrainingDetails.from_dict(details)
        return self.machine.begin(organization, project, details)

    def stop_training(self) -> bool:
        """Stop the running training gracefully (its model is uploaded); ignored outside ``running``."""
        return self.machine.request_stop()

    def abort_training(self) -> bool:
        """Discard the active training in any state (nothing more is uploaded)."""
        return self.machine.request_abort()

    def status(self) -> TrainingStatus:
        """The ``update_trainer`` payload as it is now."""
        snapshot = self.machine.snapshot()
        return TrainingStatus(
            id=self.uuid,
            name=self.name,
            state=snapshot.state,
            uptime=snapshot.uptime,
            errors=dict(snapshot.errors),
            progress=snapshot.progress,
            pretrained_models=self._pretrained_models(),
            architecture=self.logic.architecture,
            context=Context(**snapshot.context) if snapshot.context else None,
        )

    def stats(self) -> dict[str, Any]:
        """``Node.stats()`` plus ``training``: ``state`` (as in the status), ``training_number`` of the active
        training (None without one) and ``progress`` (None outside the stages that report it)."""
        stats = super().stats()
        stats['training'] = self.stats_section('training', self._training_stats)
        return stats

    def api_description(self) -> ApiDescription:
        api = super().api_description()
        if self.use_backdoor_controls:
            from llnode.trainer.backdoor import describe_backdoor

            describe_backdoor(api)
        return api

    def metric_families(self) -> Iterator[Metric]:
        """``Node.metric_families()`` plus ``llnode_trainer_state`` (a state set over every trainer state),
        ``llnode_training_progress`` (0 to 1; only while a stage reports it), ``llnode_training_number`` (only
        while a training is active) and ``llnode_training_errors`` (errors in the status now)."""
        yield from super().metric_families()
        yield from self.metrics_section('training', self._training_families)

    def _training_families(self) -> Iterator[Metric]:
        snapshot = self.machine.snapshot()
        yield state_set(
            'llnode_trainer_state',
            "The trainer's state, as in its status",
            [s.value for s in TrainerState],
            snapshot.state,
        )
        if snapshot.progress is not None:
            yield gauge('llnode_training_progress', 'Progress of the current stage, 0 to 1', snapshot.progress)
        training = self.machine.training
        if training is not None:
            yield gauge('llnode_training_number', 'The number of the active training', training.training_number)
        yield gauge('llnode_training_errors', 'Errors the status reports now', len(snapshot.errors))

    def _training_stats(self) -> dict[str, Any]:
        snapshot = self.machine.snapshot()
        training = self.machine.training  # a second read: it may have ended in between (then None)
        return {
            'state': snapshot.state,
            'training_number': None if training is None else training.training_number,
            'progress': snapshot.progress,
        }

    def send_status(self) -> bool:
        """Send ``update_trainer`` now; True if the Loop acknowledged it. Never raises."""
        link = self.loop_socket
        if link is None or not link.connected:
            logger.debug('%s: not connected; status not sent', self.name)
            return False
        status = self.status()
        try:
            ack = link.call('update_trainer', status.to_dict(), timeout=STATUS_TIMEOUT)
        except LoopError as e:
            self._status_failures.failed(str(e), exc_info=e)  # logged when it starts, then once a minute
            return False
        self._status_failures.succeeded()
        if isinstance(ack, dict) and ack.get('success') is False:
            link.mark_broken(f'the Loop refused update_trainer: {ack.get("error_msg")}')
            return False
        with self._status_lock:
            changed = status.state != self._reported_state
            self._reported_state = status.state
        logger.log(logging.INFO if changed else logging.DEBUG, '%s: status %s', self.name, status.state)
        return True

    def publish_metrics(self, training: Training, state: BestState) -> bool:
        """Send ``update_training`` with ``state`` now; True if the Loop acknowledged it with ``success: true``."""
        link = self.loop_socket
        if link is None or not link.connected:
            raise LoopConnectionError('not connected to the Loop')
        out = TrainingOut(
            trainer_id=self.uuid,
            trainer_name=self.name,
            confusion_matrix=state.confusion_matrix,
            train_image_count=training.train_image_count,
            test_image_count=training.test_image_count,
            hyperparameters=training.hyperparameters,
            best_epoch=state.epoch,
        )
        ack = link.call(
            'update_training', training.organization, training.project, out.to_dict(), timeout=METRICS_TIMEOUT
        )
        if isinstance(ack, dict) and ack.get('success') is True:
            return True
        logger.warning('%s: update_training was not acknowledged: %r', self.name, ack)
        return False

    def reset(self, timeout: float = RESET_TIMEOUT) -> None:
        """Backdoor ``/reset``: abort any training, forget the checkpoint and errors, reconnect, send the status."""
        self.machine.request_abort()
        if not self.machine.wait_idle(timeout):
            raise Unavailable(f'the aborted training was not cleaned up within {timeout:g} s')
        self.machine.checkpoint.delete()
        self.machine.clear_errors()
        link = self.loop_socket
        if link is not None:
            link.mark_broken('reset')
            link.ensure_connected()
        self.send_status()

    # ------------------------------------------------------------------ Node hooks

    def on_start(self) -> None:
        self.machine.resume()
        self.machine.start()

    def on_repeat(self) -> None:
        self.machine.resume()
        if self.send_status():
            self._check_idle_timeout()

    def on_stop(self) -> None:
        self.machine.shutdown(WORKER_STOP_TIMEOUT)

    def blueprints(self) -> list[Blueprint]:
        blueprints = super().blueprints()
        if self.use_backdoor_controls:
            from llnode.trainer.backdoor import backdoor_blueprint

            blueprints.append(backdoor_blueprint(self))
        return blueprints

    # ------------------------------------------------------------------ Loop events

    def _on_begin_training(self, *args: Any) -> Any:
        if len(args) != 3:
            raise ValueError(f'begin_training expects (organization, project, details), got {len(args)} arguments')
        organization, project, details = args
        try:
            self.begin_training(organization, project, details)
        except TrainingRefused as e:
            logger.warning('%s: begin_training refused: %s', self.name, e)
            return {'success': False, 'error_msg': str(e), 'payload': 'refused'}
        except SchemaError as e:
            logger.warning('%s: begin_training with invalid details: %s', self.name, e)
            raise
        return True

    def _on_stop_training(self, *args: Any) -> bool:
        try:
            self.stop_training()
        except Exception:
            logger.exception('%s: stop_training failed', self.name)
        return True

    def _on_abort_training(self, *args: Any) -> bool:
        try:
            self.abort_training()
        except Exception:
            logger.exception('%s: abort_training failed', self.name)
        return True

    # ------------------------------------------------------------------ internals

    def _exchange(self, organization: str, project: str) -> DataExchange:
        client = self.loop_client
        if client is None:
            raise LoopConnectionError('the trainer is not running (no Loop client)')
        return DataExchange(client, organization=organization, project=project)

    def _pretrained_models(self) -> list[PretrainedModel]:
        models = []
        for model in self.logic.pretrained_models or ():
            models.append(model if isinstance(model, PretrainedModel) else PretrainedModel.from_dict(model))
        return models

    def _training_cleanup(self, training: Training) -> None:
        self.send_status()  # the Loop sees ready_for_cleanup (and the errors) once, as from the reference

    def _training_cleared(self, training: Training) -> None:
        self.send_status()
        if self.settings.restart_after_training:
            logger.info('%s: RESTART_AFTER_TRAINING is set; ending the process for a restart', self.name)
            self.request_restart(0)

    def _check_idle_timeout(self) -> None:
        timeout = self.settings.trainer_idle_timeout_sec
        if not timeout or timeout <= 0:
            return
        now = time.monotonic()
        with self._status_lock:
            if self.machine.active:  # no training counts as idle, ``blocked`` by a sibling included
                self._idle_since = None
                return
            if self._idle_since is None:
                self._idle_since = now
                return
            idle_for = now - self._idle_since
        if idle_for > timeout:
            logger.warning(
                '%s: idle for %.0f s (TRAINER_IDLE_TIMEOUT_SEC=%g); restarting', self.name, idle_for, timeout
            )
            self.request_restart(0)
