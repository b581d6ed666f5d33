"""A TrainingRun for logic tests without a node: the flags as Events (a test sets ``stop_event``/``abort_event``
directly, or calls ``request_stop``/``request_abort`` to act as the core does, flag then the logic's hook), the
progress and best states the logic reported."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llnode.schema import Category
from llnode.trainer.logic import BestState, TrainerLogic, TrainingInterrupted

#: one box category, for tests that need some category but no particular one
DEFAULT_CATEGORIES = (Category(id='c1', name='box', type='box'),)


class FakeRun:
    """Implements :class:`llnode.trainer.logic.TrainingRun`; ``training_folder`` is created, ``images_folder``
    defaults to ``training_folder/../images`` and ``base_folder`` is what ``base_model_folder`` answers."""

    def __init__(
        self,
        training_folder: Path,
        images_folder: Path | None = None,
        *,
        categories: Sequence[Category] = DEFAULT_CATEGORIES,
        hyperparameters: dict[str, Any] | None = None,
        image_data: Sequence[dict[str, Any]] = (),
        logic: TrainerLogic | None = None,
        model_variant: str = '',
    ) -> None:
        self.organization = 'zauberzeug'
        self.project = 'demo'
        self.training_number = 1
        self.model_variant = model_variant
        self.hyperparameters: dict[str, Any] = dict(hyperparameters or {})
        self.categories = list(categories)
        self.base_model_uuid: str | None = None
        self.base_folder: Path | None = None
        self.training_folder = training_folder
        self.images_folder = images_folder if images_folder is not None else training_folder.parent / 'images'
        self.training_folder.mkdir(parents=True, exist_ok=True)
        self.logger = logging.getLogger('tests.trainer.fake_run')
        self.logic = logic
        self._image_data = list(image_data)
        self.stop_event = threading.Event()
        self.abort_event = threading.Event()
        self.progress: list[float | None] = []
        self.reported: list[BestState] = []

    @property
    def image_data(self) -> list[dict[str, Any]]:
        return self._image_data

    @property
    def base_model_folder(self) -> Path | None:
        return self.base_folder

    @property
    def node_uuid(self) -> str:
        return '00000000-0000-0000-0000-000000000001'

    @property
    def node_name(self) -> str:
        return 'fake run'

    @property
    def stop_requested(self) -> bool:
        return self.stop_event.is_set()

    @property
    def abort_requested(self) -> bool:
        return self.abort_event.is_set()

    def check_stop(self) -> None:
        if self.abort_requested:
            raise TrainingInterrupted(aborted=True)
        if self.stop_requested:
            raise TrainingInterrupted(aborted=False)

    def wait_for_stop(self, timeout: float) -> bool:
        """Whether a stop or an abort came within ``timeout`` (either flag; a test may set them directly)."""
        deadline = time.monotonic() + timeout
        while not (self.stop_requested or self.abort_requested):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.stop_event.wait(min(remaining, 0.01))
        return True

    def set_progress(self, fraction: float | None) -> None:
        self.progress.append(fraction)

    def report_best(self, state: BestState) -> None:
        self.reported.append(state)

    # as the core does it: set the flag, then call the logic's hook (from the calling thread)
    def request_stop(self) -> None:
        self.stop_event.set()
        if self.logic is not None:
            self.logic.stop(self)

    def request_abort(self) -> None:
        self.abort_event.set()
        if self.logic is not None:
            self.logic.abort(self)
