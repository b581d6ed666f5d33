"""A TrainingRun for logic tests without a node: the flags as Events (set from the test thread), the progress and
best states the logic reported, and ``request_stop``/``request_abort`` that act as the core does."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llnode.schema import Category
from llnode.trainer.logic import BestState, TrainerLogic, TrainingInterrupted


class FakeRun:
    """Implements :class:`llnode.trainer.logic.TrainingRun`; ``training_folder`` is created."""

    def __init__(
        self,
        training_folder: Path,
        images_folder: Path,
        *,
        categories: Sequence[Category],
        hyperparameters: dict[str, Any] | None = None,
        image_data: Sequence[dict[str, Any]] = (),
        logic: TrainerLogic | None = None,
    ) -> None:
        self.organization = 'zauberzeug'
        self.project = 'demo'
        self.training_number = 1
        self.model_variant = ''
        self.hyperparameters: dict[str, Any] = dict(hyperparameters or {})
        self.categories = list(categories)
        self.base_model_uuid: str | None = None
        self.training_folder = training_folder
        self.images_folder = images_folder
        self.training_folder.mkdir(parents=True, exist_ok=True)
        self.logger = logging.getLogger('tests.trainer.fake_run')
        self.logic = logic
        self._image_data = list(image_data)
        self._stop = threading.Event()
        self._abort = threading.Event()
        self._interrupt = threading.Event()  # set by either request, as TrainingRun's wait_for_stop sees them
        self.progress: list[float | None] = []
        self.reported: list[BestState] = []

    @property
    def image_data(self) -> list[dict[str, Any]]:
        return self._image_data

    @property
    def base_model_folder(self) -> Path | None:
        return None

    @property
    def node_uuid(self) -> str:
        return '00000000-0000-0000-0000-000000000001'

    @property
    def node_name(self) -> str:
        return 'fake run'

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    @property
    def abort_requested(self) -> bool:
        return self._abort.is_set()

    def check_stop(self) -> None:
        if self._abort.is_set():
            raise TrainingInterrupted(aborted=True)
        if self._stop.is_set():
            raise TrainingInterrupted(aborted=False)

    def wait_for_stop(self, timeout: float) -> bool:
        return self._interrupt.wait(timeout)

    def set_progress(self, fraction: float | None) -> None:
        self.progress.append(fraction)

    def report_best(self, state: BestState) -> None:
        self.reported.append(state)

    # as the core does it: set the flag, then call the logic's hook (from the calling thread)
    def request_stop(self) -> None:
        self._stop.set()
        self._interrupt.set()
        if self.logic is not None:
            self.logic.stop(self)

    def request_abort(self) -> None:
        self._abort.set()
        self._interrupt.set()
        if self.logic is not None:
            self.logic.abort(self)
