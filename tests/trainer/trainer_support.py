"""A small, scriptable trainer logic for the core's tests, and helpers to drive a TrainerNode against the local Loop.

``ScriptedLogic`` trains a few short "epochs" (checking ``run.check_stop()`` each time), reports an improving
best state per epoch, writes two model formats (``mocked`` and ``mocked_2``) into the training folder and returns
fixed detections: one per category of the model, by category type (as the reference's mock trainer does).
Knobs make it fail, fail critically, or train until stopped.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llnode.localloop import LocalLoop
from llnode.schema import (
    Detections,
    ModelInformation,
    PretrainedModel,
)
from llnode.trainer import BestState, CriticalError, TrainerLogic, TrainerNode, TrainingInterrupted, TrainingRun
from tests.polling import wait_for
from tests.samples import load_sample

ORGANIZATION, PROJECT = 'zauberzeug', 'demo'
FORMATS = ('mocked', 'mocked_2')

#: the states of a training from begin to cleanup, in order (loop-protocol §7.5.3)
TRAINING_STATES = [
    'initialized',
    'data_downloading',
    'data_downloaded',
    'train_model_downloading',
    'train_model_downloaded',
    'running',
    'training_finished',
    'confusion_matrix_syncing',
    'confusion_matrix_synced',
    'train_model_uploading',
    'train_model_uploaded',
    'detecting',
    'detected',
    'detection_uploading',
    'ready_for_cleanup',
]


class ScriptedLogic(TrainerLogic):
    """A trainer logic whose behaviour tests choose; it records every hook call in ``calls`` (thread-safe)."""

    model_format = 'mocked'
    architecture = 'scripted'
    pretrained_models = (PretrainedModel('small', 'Small', 'a small model'),)

    def __init__(
        self,
        *,
        epochs: int = 3,
        epoch_seconds: float = 0.01,
        forever: bool = False,
        train_failures: int = 0,
        critical: bool = False,
        detect_seconds: float = 0.0,
        error_on_stop: bool = False,
    ) -> None:
        super().__init__()
        self.epochs = epochs
        self.epoch_seconds = epoch_seconds
        self.forever = forever
        self.train_failures = train_failures
        self.critical = critical
        self.detect_seconds = detect_seconds
        self.error_on_stop = error_on_stop
        self.lock = threading.Lock()
        self.calls: list[str] = []
        self.published: list[BestState] = []
        self.training = threading.Event()  # set while train() runs its epochs
        self.detected_images: list[str] = []

    def record(self, call: str) -> None:
        with self.lock:
            self.calls.append(call)

    def count(self, call: str) -> int:
        with self.lock:
            return self.calls.count(call)

    # ------------------------------------------------------------------ hooks

    def train(self, run: TrainingRun) -> None:
        self.record('train')
        if self.train_failures > 0:
            self.train_failures -= 1
            raise RuntimeError('scripted training failure')
        if self.critical:
            raise CriticalError('scripted critical failure')
        self.training.set()
        try:
            epoch = 0
            while self.forever or epoch < self.epochs:
                run.check_stop()
                if run.wait_for_stop(self.epoch_seconds):
                    run.check_stop()
                epoch += 1
                weights = run.training_folder / 'weights.bin'
                weights.write_bytes(f'epoch {epoch}'.encode())
                matrix = {c.id: {'tp': epoch, 'fp': 2, 'fn': 2} for c in run.categories}
                run.report_best(BestState(matrix, epoch=epoch, meta_information={'weights': str(weights)}))
                run.set_progress(min(1.0, epoch / max(1, self.epochs)))
        except TrainingInterrupted as e:
            if self.error_on_stop and not e.aborted:
                raise RuntimeError('the training process crashed while stopping') from e
            raise
        finally:
            self.training.clear()

    def stop(self, run: TrainingRun) -> None:
        self.record('stop')

    def abort(self, run: TrainingRun) -> None:
        self.record('abort')

    def on_metrics_published(self, run: TrainingRun, state: BestState) -> None:
        with self.lock:
            self.published.append(state)

    def model_files(self, run: TrainingRun) -> dict[str, list[Path]]:
        self.record('model_files')
        weights = run.training_folder / 'weights.bin'
        if not weights.exists():
            weights.write_bytes(b'untrained')
        extra = run.training_folder / 'extra.txt'
        extra.write_text('more model data')
        second = run.training_folder / 'weights_2.bin'
        second.write_bytes(weights.read_bytes() + b' (format 2)')
        return {'mocked': [weights, extra], 'mocked_2': [second]}

    def model_metadata(self, run: TrainingRun) -> dict[str, Any]:
        return {'conf_threshold': 0.4}

    def detect(
        self, run: TrainingRun, model_info: ModelInformation, model_folder: Path, image_paths: Sequence[Path]
    ) -> list[Detections]:
        self.record('detect')
        if self.detect_seconds:
            run.wait_for_stop(self.detect_seconds)
        with self.lock:
            self.detected_images += [p.stem for p in image_paths]
        return [fixed_detections(model_info, path.stem) for path in image_paths]

    def clear_training_data(self, run: TrainingRun) -> None:
        self.record('clear_training_data')


def fixed_detections(model_info: ModelInformation, image_id: str) -> Detections:
    """One detection per category of the model, by category type: the sample mock trainer's (the reference's)."""
    detections: Detections = load_sample('mock_trainer.py').mock_detections(model_info, image_id)
    return detections


# ---------------------------------------------------------------------- driving a node


def begin(loop: LocalLoop, node: TrainerNode, **options: Any) -> dict[str, Any]:
    """``begin_training`` sent by the Loop to ``node``; asserts it was accepted."""
    result = loop.begin_training(node=node.uuid, **options)
    assert result['accepted'], result
    return result


def wait_state(node: TrainerNode, *states: str, timeout: float = 15.0) -> str:
    return str(
        wait_for(
            lambda: node.status().state if node.status().state in states else None,
            timeout=timeout,
            what=f'{node.name} to reach {" or ".join(states)} (now {node.status().state})',
        )
    )


def wait_idle(node: TrainerNode, timeout: float = 20.0) -> None:
    wait_for(lambda: not node.machine.active, timeout=timeout, what=f'{node.name} to finish its training')


def stored_uploads(loop: LocalLoop, training_number: int) -> dict[str, int]:
    """Format -> how many uploads of it the Loop stored (status 200) for a training."""
    counts: dict[str, int] = {}
    for upload in loop.store.model_uploads(ORGANIZATION, PROJECT):
        if upload['training_number'] == training_number and upload['status'] == 200:
            counts[upload['format']] = counts.get(upload['format'], 0) + 1
    return counts


def accepted_detection_posts(loop: LocalLoop) -> list[list[str]]:
    return [p['image_ids'] for p in loop.store.detection_posts(ORGANIZATION, PROJECT) if p['status'] == 200]


def project_image_ids(loop: LocalLoop) -> list[str]:
    """Every image the detecting stage covers (inbox, annotate, review, complete), in the trainer's order."""
    ids: list[str] = []
    for state in ('inbox', 'annotate', 'review', 'complete'):
        ids += loop.store.image_ids(ORGANIZATION, PROJECT, state)
    return ids
