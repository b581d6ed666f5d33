"""The trainer's user API: what a training implementation gives the node, and what the node gives it back.

A :class:`TrainerLogic` is handed one :class:`TrainingRun` per training; every hook gets the run as its argument,
so the logic never reaches for injected attributes. The node calls the hooks from its one training worker thread
(``train``, ``model_files``, ``detect``, ``clear_training_data``) or from the Socket.IO thread that received a
stop or abort (``stop``, ``abort``: keep them short and thread-safe). Two implementations ship with llnode:
:mod:`llnode.trainer.subprocess_logic` (a training command in its own process group, as the reference's
``TrainerLogic``) and :mod:`llnode.trainer.inprocess` (a training loop in the worker thread, reporting through
callbacks).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from llnode.schema import Category, Detections, ModelInformation, PretrainedModel


class CriticalError(Exception):
    """Give the training up: no retry, straight to cleanup, the message kept in the status errors."""


class TrainingInterrupted(Exception):
    """Raised by :meth:`TrainingRun.check_stop` inside a training loop; the library handles it.

    ``aborted`` is False for a graceful stop (the model trained so far is uploaded) and True for an abort
    (everything is discarded).
    """

    def __init__(self, aborted: bool) -> None:
        super().__init__('training aborted' if aborted else 'training stopped')
        self.aborted = aborted


@dataclass
class BestState:
    """A new best model state, published to the Loop with ``update_training``.

    ``confusion_matrix`` maps category **uuid** to ``{'tp': int, 'fp': int, 'fn': int}``. ``meta_information``
    is free-form and stays local (e.g. the path of the weights of this state).
    """

    confusion_matrix: dict[str, dict[str, int]]
    epoch: int | None = None
    meta_information: dict[str, Any] = field(default_factory=dict)


class TrainingStateData(BestState):
    """The reference's name of :class:`BestState`, with its argument order ``(confusion_matrix, meta_information,
    epoch)``; it is a :class:`BestState`, so ``report_best`` and ``get_new_best`` ports take it as it is."""

    def __init__(
        self,
        confusion_matrix: dict[str, dict[str, int]] | None = None,
        meta_information: dict[str, Any] | None = None,
        epoch: int | None = None,
    ) -> None:
        super().__init__(dict(confusion_matrix or {}), epoch, dict(meta_information or {}))


class TrainingRun(Protocol):
    """One training as the logic sees it (the library's implementation: :class:`llnode.trainer.run.Run`)."""

    organization: str
    project: str
    training_number: int
    model_variant: str
    hyperparameters: dict[str, Any]
    categories: list[Category]
    base_model_uuid: str | None
    training_folder: Path  # this training's own folder; files the logic writes go here
    images_folder: Path  # the project's image cache, ``{id}.jpg``, shared between trainings
    logger: logging.Logger

    @property
    def image_data(self) -> list[dict[str, Any]]:
        """The Loop's metadata items of the downloaded training images (``id``, ``set`` train/test, annotations)."""
        ...

    def train_images(self) -> list[dict[str, Any]]:
        """The items of ``image_data`` in set ``train`` (the validation images are not among them)."""
        ...

    def val_images(self) -> list[dict[str, Any]]:
        """The validation images (set ``val``, see :mod:`llnode.trainer.validation_set`); else the test images."""
        ...

    def test_images(self) -> list[dict[str, Any]]:
        """The items of ``image_data`` in set ``test``."""
        ...

    @property
    def base_model_folder(self) -> Path | None:
        """The folder holding the base model's files and its ``base_model.json``; None when training from scratch."""
        ...

    @property
    def node_uuid(self) -> str: ...

    @property
    def node_name(self) -> str: ...

    @property
    def stop_requested(self) -> bool:
        """A graceful stop was asked for: finish soon and return normally, so the model is uploaded."""
        ...

    @property
    def abort_requested(self) -> bool:
        """An abort was asked for (also when the node shuts down): return or raise soon; nothing is uploaded."""
        ...

    def check_stop(self) -> None:
        """Raise :class:`TrainingInterrupted` if a stop or abort was asked for (call it once per batch)."""
        ...

    def wait_for_stop(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a stop or abort request; True if one came."""
        ...

    def set_progress(self, fraction: float | None) -> None:
        """The progress of the ``running`` stage, 0..1, shown in the status."""
        ...

    def report_best(self, state: BestState) -> None:
        """Publish a new best state with ``update_training``; returns at once (a sender thread does the network).

        Sends are rate-limited (at most one per configured interval); the latest state always reaches the Loop,
        at the latest in the ``sync_confusion_matrix`` stage. ``TrainerLogic.on_metrics_published`` is called
        after the Loop acknowledged a state.
        """
        ...


class TrainerLogic:
    """How to train one model format. Subclass it (or one of the two library implementations).

    ``model_format`` is the Loop's format key for the models this trainer produces (given as a class attribute
    or to the constructor). ``architecture`` and ``pretrained_models`` are reported in the status.
    """

    model_format: str = ''
    architecture: str | None = None
    pretrained_models: Sequence[PretrainedModel] = ()

    def __init__(self, model_format: str | None = None) -> None:
        if model_format is not None:
            self.model_format = model_format
        if not isinstance(self.model_format, str) or not self.model_format:
            raise ValueError(f'{type(self).__name__} needs a model_format (a non-empty string)')

    def train(self, run: TrainingRun) -> None:
        """Train, in the node's training thread. Return normally when the model is ready, also after a stop.

        Raise :class:`CriticalError` to give up; any other exception retries the stage (with back-off).
        Check ``run.check_stop()`` often (once per batch); :class:`TrainingInterrupted` is handled by the node.
        """
        raise NotImplementedError(f'{type(self).__name__} must implement train(run)')

    def stop(self, run: TrainingRun) -> None:
        """A graceful stop was requested (``run.stop_requested`` is already set); end the training soon."""

    def abort(self, run: TrainingRun) -> None:
        """An abort was requested (``run.abort_requested`` is already set); end the training now."""

    def on_metrics_published(self, run: TrainingRun, state: BestState) -> None:
        """The Loop acknowledged ``state``; keep what is needed to upload this model later.

        Called from the metrics sender thread (the training thread in the ``sync_confusion_matrix`` stage, a web
        thread for the backdoor ``/steps``), not necessarily the thread that reported the state.
        """

    def model_files(self, run: TrainingRun) -> Mapping[str, Sequence[Path]] | Sequence[Path]:
        """The files of the trained model: a list (for ``model_format``) or a mapping format -> list.

        No ``model.json`` among them: the node writes that one. Empty means there is no model (critical).
        """
        raise NotImplementedError(f'{type(self).__name__} must implement model_files(run)')

    def model_metadata(self, run: TrainingRun) -> dict[str, Any]:
        """Extra ``model.json`` fields for the uploaded model (``ModelInformation`` fields, e.g. ``conf_threshold``)."""
        return {}

    def detect(
        self, run: TrainingRun, model_info: ModelInformation, model_folder: Path, image_paths: Sequence[Path]
    ) -> list[Detections]:
        """Detections for each image (``image_id`` = the file stem), with the model just uploaded."""
        raise NotImplementedError(f'{type(self).__name__} must implement detect(run, model_info, model_folder, paths)')

    def clear_training_data(self, run: TrainingRun) -> None:
        """Delete what is no longer needed after the training (cleanup); the default keeps everything."""

    def __repr__(self) -> str:
        return f'<{type(self).__name__} format {self.model_format!r}>'
