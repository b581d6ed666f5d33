"""The training record and its checkpoint: what a trainer must remember to resume a training after any crash.

The record is the reference's ``Training`` (reference-behaviour §4.4) with what resuming needs besides: attempts
per stage (so the give-up limit survives a restart), the stage errors, and the stop/abort requests (an abort
that came in just before a crash still ends in cleanup). It is checkpointed to
``{DATA_FOLDER}/last_training__{node uuid}.json`` durably (temp file, fsync, rename, fsync of the folder) when the
training is created and after every transition, unlike the reference (written in place, first after a stage;
weak point C15). The bulky ``image_data`` is not part of it: it lives in ``image_data.json`` in the training
folder (``llnode/image_data.json``), written once after the download.

A checkpoint that cannot be read is a :class:`CheckpointError`; :meth:`Checkpoint.move_aside` renames it to
``…json.corrupt-<time>`` so the node keeps reporting (the reference fails before every status send, for good).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid as uuid_module
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llnode.durable import remove_stale_temps, write_bytes, write_json
from llnode.schema import Category, SchemaError, TrainerState, TrainingDetails

logger = logging.getLogger('llnode.trainer.training')

#: Identifies the checkpoint layout; a checkpoint of another layout is refused as unreadable.
CHECKPOINT_FORMAT = 'llnode-training/1'

#: The core's own files inside a training folder (the logic's and the base model's files live beside it).
CORE_FOLDER = 'llnode'
IMAGE_DATA_FILE = 'image_data.json'

#: States a training can be in (``idle``, ``blocked`` and ``waiting_for_slot`` describe the node, not a training).
TRAINING_STATES = (
    TrainerState.INITIALIZED,
    TrainerState.DATA_DOWNLOADING,
    TrainerState.DATA_DOWNLOADED,
    TrainerState.TRAIN_MODEL_DOWNLOADING,
    TrainerState.TRAIN_MODEL_DOWNLOADED,
    TrainerState.RUNNING,
    TrainerState.TRAINING_FINISHED,
    TrainerState.CONFUSION_MATRIX_SYNCING,
    TrainerState.CONFUSION_MATRIX_SYNCED,
    TrainerState.TRAIN_MODEL_UPLOADING,
    TrainerState.TRAIN_MODEL_UPLOADED,
    TrainerState.DETECTING,
    TrainerState.DETECTED,
    TrainerState.DETECTION_UPLOADING,
    TrainerState.READY_FOR_CLEANUP,
)

#: A state in which a stage was running, mapped to the state the stage started from: a checkpoint written while
#: a stage ran (or a hand-made one) resumes by redoing that stage. ``preparing`` is the reference's unused state.
RESUME_FROM = {
    TrainerState.PREPARING: TrainerState.INITIALIZED,
    TrainerState.DATA_DOWNLOADING: TrainerState.INITIALIZED,
    TrainerState.TRAIN_MODEL_DOWNLOADING: TrainerState.DATA_DOWNLOADED,
    TrainerState.RUNNING: TrainerState.TRAIN_MODEL_DOWNLOADED,
    TrainerState.CONFUSION_MATRIX_SYNCING: TrainerState.TRAINING_FINISHED,
    TrainerState.TRAIN_MODEL_UPLOADING: TrainerState.CONFUSION_MATRIX_SYNCED,
    TrainerState.DETECTING: TrainerState.TRAIN_MODEL_UPLOADED,
    TrainerState.DETECTION_UPLOADING: TrainerState.DETECTED,
}


class CheckpointError(ValueError):
    """A checkpoint file exists but cannot be used (not JSON, wrong layout, a field of the wrong type)."""


@dataclass
class Training:
    """One training of this trainer, from ``begin_training`` to cleanup.

    Mutated only by its owner (:class:`~llnode.trainer.machine.TrainingMachine`, under its lock).
    """

    id: str
    organization: str
    project: str
    training_number: int
    model_variant: str
    hyperparameters: dict[str, Any]
    categories: list[Category]
    base_model_uuid: str | None
    project_folder: Path
    images_folder: Path
    training_folder: Path
    training_state: TrainerState = TrainerState.INITIALIZED
    start_time: float = field(default_factory=time.time)
    skipped_image_count: int = 0
    #: images of the downloaded training data with ``set`` train (plus ``val``, as 0.27 counts) and ``test``
    train_image_count: int | None = None
    test_image_count: int | None = None
    model_uuid_for_detecting: str | None = None
    #: failed attempts in a row per stage error key (cleared when the stage succeeds)
    attempts: dict[str, int] = field(default_factory=dict)
    #: stage error key -> message, as the status shows it
    errors: dict[str, str] = field(default_factory=dict)
    stop_requested: bool = False
    abort_requested: bool = False

    @classmethod
    def create(cls, data_folder: Path, organization: str, project: str, details: TrainingDetails) -> Training:
        """A new training with its folders: ``{data}/{org}/{project}/images`` (shared) and ``…/trainings/{id}``."""
        cls.check_names(organization, project)
        training_id = str(uuid_module.uuid4())
        project_folder = Path(data_folder) / organization / project
        training = cls(
            id=training_id,
            organization=organization,
            project=project,
            training_number=details.training_number,
            model_variant=details.model_variant,
            hyperparameters=dict(details.hyperparameters),
            categories=list(details.categories),
            base_model_uuid=details.base_model_uuid,
            project_folder=project_folder,
            images_folder=project_folder / 'images',
            training_folder=project_folder / 'trainings' / training_id,
        )
        training.images_folder.mkdir(parents=True, exist_ok=True)
        training.training_folder.mkdir(parents=True, exist_ok=True)
        return training

    @staticmethod
    def check_names(organization: str, project: str) -> None:
        """Organisation and project become folder names: non-empty, no slashes, not ``.``/``..``."""
        for what, value in (('organization', organization), ('project', project)):
            if not isinstance(value, str) or not value or value in ('.', '..') or '/' in value or '\\' in value:
                raise ValueError(f'{what} must be a non-empty name without slashes, got {value!r}')

    @property
    def context(self) -> dict[str, str]:
        return {'organization': self.organization, 'project': self.project}

    @property
    def uptime(self) -> float:
        """Seconds since the training was created; counts on across restarts (``start_time`` is checkpointed)."""
        return max(0.0, time.time() - self.start_time)

    # ------------------------------------------------------------------ image data

    @property
    def core_folder(self) -> Path:
        """``{training_folder}/llnode``: the node's own files of this training."""
        return self.training_folder / CORE_FOLDER

    @property
    def image_data_path(self) -> Path:
        return self.core_folder / IMAGE_DATA_FILE

    def save_image_data(self, image_data: list[dict[str, Any]]) -> None:
        """Keep the downloaded metadata items (durably, beside the training's other files) and count the sets."""
        write_bytes(self.image_data_path, json.dumps(image_data, separators=(',', ':')).encode())
        sets = [item.get('set') for item in image_data]
        self.train_image_count = sum(1 for s in sets if s in ('train', 'val'))
        self.test_image_count = sum(1 for s in sets if s == 'test')

    def load_image_data(self) -> list[dict[str, Any]]:
        """The metadata items saved by the data download; ``[]`` before it (or if the file is gone)."""
        try:
            data = json.loads(self.image_data_path.read_bytes())
        except FileNotFoundError:
            return []
        except ValueError as e:
            raise CheckpointError(f'{self.image_data_path} is not valid JSON: {e}') from e
        if not isinstance(data, list):
            raise CheckpointError(f'{self.image_data_path} does not hold a list of image items')
        return data

    # ------------------------------------------------------------------ JSON form

    def to_json_dict(self) -> dict[str, Any]:
        return {
            'format': CHECKPOINT_FORMAT,
            'id': self.id,
            'context': self.context,
            'project_folder': str(self.project_folder),
            'images_folder': str(self.images_folder),
            'training_folder': str(self.training_folder),
            'categories': [c.to_dict() for c in self.categories],
            'hyperparameters': self.hyperparameters,
            'training_number': self.training_number,
            'training_state': self.training_state.value,
            'model_variant': self.model_variant,
            'start_time': self.start_time,
            'base_model_uuid': self.base_model_uuid,
            'skipped_image_count': self.skipped_image_count,
            'train_image_count': self.train_image_count,
            'test_image_count': self.test_image_count,
            'model_uuid_for_detecting': self.model_uuid_for_detecting,
            'attempts': dict(self.attempts),
            'errors': dict(self.errors),
            'stop_requested': self.stop_requested,
            'abort_requested': self.abort_requested,
        }

    @classmethod
    def from_json_dict(cls, data: Any) -> Training:
        """Parse a checkpoint; raises :class:`CheckpointError` naming what is wrong."""
        if not isinstance(data, dict):
            raise CheckpointError('the checkpoint is not a JSON object')
        if data.get('format') != CHECKPOINT_FORMAT:
            raise CheckpointError(f'unknown checkpoint format {data.get("format")!r} (expected {CHECKPOINT_FORMAT!r})')
        try:
            context = _typed(data, 'context', dict)
            state = TrainerState(_typed(data, 'training_state', str))
            if state not in TRAINING_STATES and state not in RESUME_FROM:
                raise CheckpointError(f'"training_state" {state.value!r} is not a state of a training')
            categories = [Category.from_dict(c, path=f'categories[{n}]') for n, c in enumerate(data['categories'])]
            training = cls(
                id=_typed(data, 'id', str),
                organization=_typed(context, 'organization', str),
                project=_typed(context, 'project', str),
                training_number=_typed(data, 'training_number', int),
                model_variant=_typed(data, 'model_variant', str),
                hyperparameters=_typed(data, 'hyperparameters', dict),
                categories=categories,
                base_model_uuid=_typed(data, 'base_model_uuid', str, optional=True),
                project_folder=Path(_typed(data, 'project_folder', str)),
                images_folder=Path(_typed(data, 'images_folder', str)),
                training_folder=Path(_typed(data, 'training_folder', str)),
                training_state=RESUME_FROM.get(state, state),
                start_time=float(_typed(data, 'start_time', (int, float))),
                skipped_image_count=_typed(data, 'skipped_image_count', int),
                train_image_count=_typed(data, 'train_image_count', int, optional=True),
                test_image_count=_typed(data, 'test_image_count', int, optional=True),
                model_uuid_for_detecting=_typed(data, 'model_uuid_for_detecting', str, optional=True),
                attempts={str(k): int(v) for k, v in _typed(data, 'attempts', dict).items()},
                errors={str(k): str(v) for k, v in _typed(data, 'errors', dict).items()},
                stop_requested=_typed(data, 'stop_requested', bool),
                abort_requested=_typed(data, 'abort_requested', bool),
            )
        except (KeyError, TypeError, ValueError, SchemaError) as e:
            if isinstance(e, CheckpointError):
                raise
            raise CheckpointError(f'the checkpoint is malformed: {type(e).__name__}: {e}') from e
        if training.abort_requested:
            training.training_state = TrainerState.READY_FOR_CLEANUP
        return training


def _typed(data: dict[str, Any], key: str, kind: type | tuple[type, ...], *, optional: bool = False) -> Any:
    if key not in data:
        raise CheckpointError(f'the checkpoint has no "{key}"')
    value = data[key]
    if value is None and optional:
        return None
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise CheckpointError(f'"{key}" has the wrong type: {value!r}')
    return value


class Checkpoint:
    """The checkpoint file of one trainer node: ``{data_folder}/last_training__{node_uuid}.json``."""

    def __init__(self, data_folder: Path, node_uuid: str) -> None:
        self.path = Path(data_folder) / f'last_training__{node_uuid}.json'

    def exists(self) -> bool:
        return self.path.exists()

    def save(self, training: Training) -> None:
        """Durably replace the checkpoint with ``training``."""
        write_json(self.path, training.to_json_dict())

    def load(self) -> Training | None:
        """The training in the checkpoint, None if there is none; :class:`CheckpointError` if it is unusable."""
        remove_stale_temps(self.path.parent)
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise CheckpointError(f'{self.path} cannot be read: {e}') from e
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise CheckpointError(f'{self.path} is not valid JSON: {e}') from e
        try:
            return Training.from_json_dict(data)
        except CheckpointError as e:
            raise CheckpointError(f'{self.path}: {e}') from e

    def delete(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def move_aside(self) -> Path | None:
        """Rename an unusable checkpoint to ``…json.corrupt-<time>`` (kept for a person to look at); its new path."""
        target = self.path.with_name(f'{self.path.name}.corrupt-{time.strftime("%Y%m%d-%H%M%S")}-{os.getpid()}')
        try:
            os.replace(self.path, target)
        except FileNotFoundError:
            return None
        logger.error('moved the unusable checkpoint %s aside to %s', self.path, target.name)
        return target
