"""The work of each training stage (reference-behaviour §4.3, §4.5), one method per stage.

Every stage can be redone after a crash at any moment, and redoing it never repeats what the Loop already has:

- ``prepare`` skips images already on disk; a metadata chunk that fails is an error (never a smaller dataset);
  failed image downloads are an error too (the retry fetches only what is missing), corrupt images are dropped
  and counted in ``skipped_image_count``;
- ``download_model`` is done once ``base_model.json`` exists;
- ``upload_model`` keeps the Loop's model id per format in ``model_uploads.json`` (durably, after each format),
  and takes a 409 as "already stored";
- ``detecting`` fixes the image list in a manifest with a run id before the first batch; each batch is one
  durable file in the run's own folder, so a restart goes on after the last finished batch and files of an
  earlier run are never uploaded;
- ``upload_detections`` sends the manifest's detections in slices of 100 and stores the next index after each
  accepted slice, so each slice is sent again only if the process died between the Loop's answer and that write.

The core's own files live in ``{training_folder}/llnode/``; the base model's files and ``base_model.json`` go to
the training folder itself, as in the reference. Stages raise :class:`TrainingInterrupted` (aborted) when the run
is cancelled, :class:`CriticalError` to give the training up, anything else to be retried.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llnode.durable import fsync_dir, write_bytes, write_json
from llnode.loop.errors import LoopError, LoopHTTPError
from llnode.loop.exchange import IMAGE_STATES, METADATA_CHUNK, DataExchange
from llnode.node.restart import NodeNeedsRestartError
from llnode.schema import Detections, ModelInformation, SchemaError, TrainerState
from llnode.trainer.logic import CriticalError, TrainerLogic, TrainingInterrupted
from llnode.trainer.run import Run
from llnode.trainer.training import CORE_FOLDER, Training
from llnode.trainer.validation_set import assign_validation_set

logger = logging.getLogger('llnode.trainer.stages')

MODEL_UPLOADS_FILE = 'model_uploads.json'
DETECTIONS_FOLDER = 'detections'
MANIFEST_FILE = 'manifest.json'
UPLOAD_PROGRESS_FILE = 'upload_progress.json'
BASE_MODEL_JSON = 'base_model.json'


@dataclass(frozen=True)
class Stage:
    """One row of the state table: the stage's error key, the state it starts from, runs in and ends in."""

    key: str
    start: TrainerState
    during: TrainerState
    after: TrainerState


STAGES = (
    Stage('prepare', TrainerState.INITIALIZED, TrainerState.DATA_DOWNLOADING, TrainerState.DATA_DOWNLOADED),
    Stage(
        'download_model',
        TrainerState.DATA_DOWNLOADED,
        TrainerState.TRAIN_MODEL_DOWNLOADING,
        TrainerState.TRAIN_MODEL_DOWNLOADED,
    ),
    Stage('run_training', TrainerState.TRAIN_MODEL_DOWNLOADED, TrainerState.RUNNING, TrainerState.TRAINING_FINISHED),
    Stage(
        'sync_confusion_matrix',
        TrainerState.TRAINING_FINISHED,
        TrainerState.CONFUSION_MATRIX_SYNCING,
        TrainerState.CONFUSION_MATRIX_SYNCED,
    ),
    Stage(
        'upload_model',
        TrainerState.CONFUSION_MATRIX_SYNCED,
        TrainerState.TRAIN_MODEL_UPLOADING,
        TrainerState.TRAIN_MODEL_UPLOADED,
    ),
    Stage('detecting', TrainerState.TRAIN_MODEL_UPLOADED, TrainerState.DETECTING, TrainerState.DETECTED),
    Stage('upload_detections', TrainerState.DETECTED, TrainerState.DETECTION_UPLOADING, TrainerState.READY_FOR_CLEANUP),
)

#: The stage that starts in each state.
STAGE_FROM = {stage.start: stage for stage in STAGES}


class StageWork:
    """The stages of one training, run by the machine's worker thread.

    ``progress`` is the current stage's progress for the status (the ``running`` stage reports through the run).
    """

    def __init__(
        self, training: Training, run: Run, logic: TrainerLogic, exchange: DataExchange, *, inference_batch_size: int
    ) -> None:
        if inference_batch_size < 1:
            raise ValueError(f'inference_batch_size must be at least 1, got {inference_batch_size}')
        self.training = training
        self.run = run
        self.logic = logic
        self.exchange = exchange
        self.inference_batch_size = inference_batch_size
        self.progress: float | None = None
        self.core_folder = training.core_folder
        self.detections_folder = self.core_folder / DETECTIONS_FOLDER

    def perform(self, stage: Stage) -> None:
        """Do the work of ``stage``."""
        self.progress = None
        self.core_folder.mkdir(parents=True, exist_ok=True)
        getattr(self, stage.key)()

    def _check_cancel(self) -> None:
        if self.run.cancelled:
            raise TrainingInterrupted(aborted=True)

    # ------------------------------------------------------------------ prepare: training data

    def prepare(self) -> None:
        """Image ids of ``complete`` images, their metadata (chunks of 100) and files; progress 0 -> 0.5 -> 1."""
        self.progress = 0.0
        ids = list(dict.fromkeys(self.exchange.image_ids('complete')))
        metadata: list[dict[str, Any]] = []
        for start in range(0, len(ids), METADATA_CHUNK):
            self._check_cancel()
            metadata += self.exchange.image_metadata(ids[start : start + METADATA_CHUNK])
            self.progress = 0.5 * min(len(ids), start + METADATA_CHUNK) / len(ids)
        self.progress = 0.5
        logger.info('%s: metadata of %d images; downloading the image files', self.run, len(ids))
        report = self.exchange.download_images(
            ids, self.training.images_folder, progress=self._download_progress, cancel=self.run.cancel_event
        )
        if report.cancelled:
            raise TrainingInterrupted(aborted=True)
        if report.failed:
            raise LoopUnavailable(
                f'{len(report.failed)} of {len(ids)} images could not be downloaded (e.g. {report.failed[:3]}); '
                'the retry fetches only the missing ones'
            )
        folder = self.training.images_folder
        image_data = [item for item in metadata if (folder / f'{item["id"]}.jpg').is_file()]
        self.training.skipped_image_count = len(metadata) - len(image_data)
        if report.corrupt:
            logger.warning('%s: dropped %d corrupt images: %s', self.run, len(report.corrupt), report.corrupt[:10])
        assign_validation_set(image_data, self.training.hyperparameters)
        self.training.save_image_data(image_data)
        self.progress = 1.0
        logger.info(
            '%s: training data ready: %d images (%d train, %d test), %d skipped',
            self.run,
            len(image_data),
            self.training.train_image_count or 0,
            self.training.test_image_count or 0,
            self.training.skipped_image_count,
        )

    def _download_progress(self, done: int, total: int) -> None:
        self.progress = 0.5 + 0.5 * (done / total if total else 1.0)
        if total >= 100 and done and (done % max(1, total // 10) == 0 or done == total):
            logger.info('%s: %d of %d images on disk', self.run, done, total)

    # ------------------------------------------------------------------ download_model: base model

    def download_model(self) -> None:
        """The base model in the logic's format, installed into the training folder (``model.json`` renamed)."""
        model_uuid = self.training.base_model_uuid
        if not model_uuid:
            logger.info('%s: no base model; training from scratch', self.run)
            return
        try:
            uuid.UUID(model_uuid)
        except ValueError:
            logger.warning('%s: base_model_uuid %r is not a UUID; training from scratch', self.run, model_uuid)
            return
        folder = self.training.training_folder
        if (folder / BASE_MODEL_JSON).is_file():
            return
        staging = self.core_folder / 'base_model'
        # a missing or broken model is retried like any error (a download may break on the way) and given up
        # after max_attempts; the reference retries it forever
        self.exchange.download_model(model_uuid, self.logic.model_format, staging, replace=True)
        entries = sorted(staging.iterdir(), key=lambda p: p.name == 'model.json')
        if any(entry.name in (CORE_FOLDER, BASE_MODEL_JSON) for entry in entries):
            raise CriticalError(f'the base model zip holds an entry named {CORE_FOLDER!r} or {BASE_MODEL_JSON!r}')
        for entry in entries:  # model.json last: base_model.json marks the stage as done
            target = folder / (BASE_MODEL_JSON if entry.name == 'model.json' else entry.name)
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(entry, target)
        fsync_dir(folder)
        shutil.rmtree(staging, ignore_errors=True)
        logger.info('%s: base model %s installed', self.run, model_uuid)

    # ------------------------------------------------------------------ run_training and sync

    def run_training(self) -> None:
        """The logic's ``train``; a graceful stop (or an error after one, 0.27 §5.3) counts as finished."""
        run = self.run
        self._check_cancel()
        try:
            self.logic.train(run)
        except TrainingInterrupted as e:
            if e.aborted or run.cancelled:
                raise TrainingInterrupted(aborted=True) from e
            logger.info('%s: training stopped; the model trained so far is kept', run)
        except (CriticalError, NodeNeedsRestartError):
            raise
        except Exception as e:
            if run.cancelled:
                raise TrainingInterrupted(aborted=True) from e
            if not run.stop_requested:
                raise
            logger.warning(
                '%s: train() failed after a stop was requested (%s); the training counts as finished', run, e
            )
        self._check_cancel()

    def sync_confusion_matrix(self) -> None:
        """Send the newest best state the Loop has not acknowledged (none: nothing to do)."""
        if self.run.publisher.flush():
            logger.info('%s: final metrics published', self.run)

    # ------------------------------------------------------------------ upload_model

    def upload_model(self) -> None:
        """Upload every format not uploaded yet; keep each model id durably; pick the id for detecting."""
        files = self._model_files()
        model_json = self._write_model_json()
        uploads_path = self.core_folder / MODEL_UPLOADS_FILE
        uploads = _read_json(uploads_path, {})
        if not isinstance(uploads, dict):
            uploads = {}
        for done, (model_format, paths) in enumerate(files.items()):
            self.progress = done / len(files)
            if model_format in uploads:
                continue
            self._check_cancel()
            logger.info('%s: uploading format %s (%d files)', self.run, model_format, len(paths))
            uploads[model_format] = self._upload_one(model_format, [*paths, model_json])
            write_json(uploads_path, uploads)
        self.progress = 1.0
        ids = [uploads.get(self.logic.model_format)] + [uploads.get(f) for f in files]
        model_id = next((i for i in ids if isinstance(i, str) and i), None)
        self.training.model_uuid_for_detecting = model_id
        if model_id is None:
            message = 'the Loop stored the model but named no model id; no detections can run'
            logger.error('%s: %s', self.run, message)
            self.training.errors['upload_model'] = message

    def _model_files(self) -> dict[str, list[Path]]:
        raw = self.logic.model_files(self.run)
        if isinstance(raw, Mapping):
            items = {str(k): v for k, v in raw.items()}
        elif isinstance(raw, Sequence) and not isinstance(raw, (str, bytes)):
            items = {self.logic.model_format: raw}
        elif raw is None:
            items = {}
        else:
            raise CriticalError(
                f'model_files() must return a list or a mapping format -> list, got {type(raw).__name__}'
            )
        files: dict[str, list[Path]] = {}
        for model_format, paths in items.items():
            if isinstance(paths, (str, bytes, Path)) or not isinstance(paths, Sequence):
                raise CriticalError(f'model_files()[{model_format!r}] must be a list of paths')
            checked = [Path(p) for p in paths]
            if any(p.name == 'model.json' for p in checked):
                raise CriticalError(f'model_files()[{model_format!r}] holds a model.json; the node writes that one')
            if checked:
                files[model_format] = checked
        if not files:
            raise CriticalError('the trainer logic returned no model files')
        return files

    def _write_model_json(self) -> Path:
        metadata = self.logic.model_metadata(self.run) or {}
        if not isinstance(metadata, Mapping):
            raise CriticalError(f'model_metadata() must return a dict, got {type(metadata).__name__}')
        known = set(ModelInformation.__dataclass_fields__)
        unknown = sorted(set(metadata) - known)
        if unknown:
            logger.warning('%s: model_metadata() keys %s are no ModelInformation fields', self.run, unknown)
        content = {'categories': [c.to_dict() for c in self.training.categories], **metadata}
        path = self.core_folder / 'upload' / 'model.json'
        try:
            write_bytes(path, json.dumps(content, allow_nan=False).encode())
        except (TypeError, ValueError) as e:
            raise CriticalError(f'model_metadata() is not JSON: {e}') from e
        return path

    def _upload_one(self, model_format: str, paths: list[Path]) -> str | None:
        try:
            return self.exchange.upload_model(self.training.training_number, model_format, paths)
        except ValueError as e:  # missing or empty files: nothing was sent
            raise CriticalError(f'model files of format {model_format}: {e}') from e
        except LoopHTTPError as e:
            if e.status == 409:  # stored already, and the Loop named no id (older Loops)
                logger.warning('%s: the Loop already holds format %s but sent no model id', self.run, model_format)
                return None
            raise _classified(e, f'upload of format {model_format}') from e

    # ------------------------------------------------------------------ detecting

    def detecting(self) -> None:
        """Detections with the uploaded model for every image of the project, one durable file per batch."""
        model_id = self.training.model_uuid_for_detecting
        if not model_id:
            logger.error('%s: no model id to detect with; skipping detections', self.run)
            return
        model_folder, model_info = self._detection_model(model_id)
        manifest = self._manifest()
        if manifest is None or manifest.get('model_id') != model_id:
            manifest = self._new_manifest(model_id)
        run_folder = self.detections_folder / manifest['run_id']
        run_folder.mkdir(parents=True, exist_ok=True)
        ids: list[str] = manifest['image_ids']
        size: int = manifest['batch_size']
        batches: int = manifest['batches']
        for batch in range(batches):
            path = run_folder / f'detections_{batch}.json'
            if path.is_file():
                continue
            self._check_cancel()
            self.progress = 0.5 + 0.5 * batch / batches
            paths = self._batch_paths(ids[batch * size : (batch + 1) * size])
            result = self.logic.detect(self.run, model_info, model_folder, paths) if paths else []
            write_json(path, _detections_payload(result, paths))
            if batches >= 10 and (batch + 1) % max(1, batches // 10) == 0:
                logger.info('%s: detections for batch %d of %d', self.run, batch + 1, batches)
        self.progress = 1.0
        logger.info('%s: detections done for %d images in %d batches', self.run, len(ids), batches)

    def _detection_model(self, model_id: str) -> tuple[Path, ModelInformation]:
        folder = self.core_folder / 'detection_model'
        info_path = folder / 'model.json'
        data = _read_json(info_path, None)
        if not (isinstance(data, dict) and data.get('id') == model_id):
            data = self.exchange.download_model(model_id, self.logic.model_format, folder, replace=True)
        try:
            info = ModelInformation.from_dict(data)
        except SchemaError as e:
            raise CriticalError(f'model.json of model {model_id} is unusable: {e}') from e
        info.model_root_path = str(folder)
        return folder, info

    def _manifest(self) -> dict[str, Any] | None:
        data = _read_json(self.detections_folder / MANIFEST_FILE, None)
        keys = {'run_id': str, 'model_id': str, 'image_ids': list, 'batch_size': int, 'batches': int}
        if not isinstance(data, dict) or any(not isinstance(data.get(k), t) for k, t in keys.items()):
            return None
        return data

    def _new_manifest(self, model_id: str) -> dict[str, Any]:
        """Fetch every project image (progress 0.1 .. 0.4), then fix the list in a new manifest."""
        shutil.rmtree(self.detections_folder, ignore_errors=True)
        ids: list[str] = []
        for n, state in enumerate(IMAGE_STATES, start=1):
            self.progress = 0.1 * n
            self._check_cancel()
            state_ids = self.exchange.image_ids(state)
            report = self.exchange.download_images(state_ids, self.training.images_folder, cancel=self.run.cancel_event)
            if report.cancelled:
                raise TrainingInterrupted(aborted=True)
            if report.failed or report.corrupt:
                logger.warning(
                    '%s: %d images of state %s could not be downloaded; they get no detections',
                    self.run,
                    len(report.failed) + len(report.corrupt),
                    state,
                )
            ids += state_ids
        self.progress = 0.42
        folder = self.training.images_folder
        present = [i for i in dict.fromkeys(ids) if (folder / f'{i}.jpg').is_file()]
        manifest = {
            'run_id': uuid.uuid4().hex,
            'model_id': model_id,
            'batch_size': self.inference_batch_size,
            'batches': math.ceil(len(present) / self.inference_batch_size),
            'image_ids': present,
        }
        write_json(self.detections_folder / MANIFEST_FILE, manifest)
        return manifest

    def _batch_paths(self, ids: list[str]) -> list[Path]:
        folder = self.training.images_folder
        missing = [i for i in ids if not (folder / f'{i}.jpg').is_file()]
        if missing:  # the image cache was cleaned meanwhile
            self.exchange.download_images(missing, folder, cancel=self.run.cancel_event)
            self._check_cancel()
        return [folder / f'{i}.jpg' for i in ids if (folder / f'{i}.jpg').is_file()]

    # ------------------------------------------------------------------ upload_detections

    def upload_detections(self) -> None:
        """POST the manifest's detections in slices of 100, resuming after the last accepted slice."""
        manifest = self._manifest()
        if manifest is None:
            logger.error('%s: no detections to upload', self.run)
            return
        run_folder = self.detections_folder / manifest['run_id']
        items: list[dict[str, Any]] = []
        for batch in range(manifest['batches']):
            data = _read_json(run_folder / f'detections_{batch}.json', None)
            if not isinstance(data, list):
                raise RuntimeError(f'detections file {batch} of run {manifest["run_id"]} is missing or unreadable')
            items += data
        progress_path = self.detections_folder / UPLOAD_PROGRESS_FILE
        progress = _read_json(progress_path, {})
        start = 0
        if isinstance(progress, dict) and progress.get('run_id') == manifest['run_id']:
            start = int(progress.get('next', 0))
        if not 0 <= start <= len(items):
            start = 0
        total = len(items)

        def on_slice(next_index: int) -> None:
            write_json(progress_path, {'run_id': manifest['run_id'], 'next': next_index})
            before, self.progress = self.progress or 0.0, next_index / total
            if total > 1000 and int(self.progress * 10) > int(before * 10):  # every 10 %
                logger.info('%s: %d of %d detections uploaded', self.run, next_index, total)
            self._check_cancel()

        self.progress = start / total if total else 1.0
        self._check_cancel()
        try:
            self.exchange.upload_detections(items, start=start, on_slice=on_slice)
        except ValueError as e:
            raise CriticalError(f'the detections cannot be sent: {e}') from e
        except LoopHTTPError as e:
            raise _classified(e, 'detections upload') from e
        logger.info('%s: %d detections uploaded', self.run, total)

    # ------------------------------------------------------------------ cleanup

    def cleanup(self) -> None:
        """Delete the detections and the upload files, then let the logic clear its data (errors are logged)."""
        shutil.rmtree(self.detections_folder, ignore_errors=True)
        shutil.rmtree(self.core_folder / 'detection_model', ignore_errors=True)
        shutil.rmtree(self.core_folder / 'upload', ignore_errors=True)
        shutil.rmtree(self.core_folder / 'base_model', ignore_errors=True)
        try:
            self.logic.clear_training_data(self.run)
        except Exception:
            logger.exception('%s: clear_training_data failed', self.run)


class LoopUnavailable(LoopError):
    """The Loop did not take or deliver something for now (5xx, 408, 429, failed downloads): worth waiting out."""


def _classified(error: LoopHTTPError, what: str) -> Exception:
    """5xx, 408 and 429 are worth a retry; any other status (4xx) gives the training up."""
    if error.status >= 500 or error.status in (408, 429):
        return LoopUnavailable(f'{what} failed with {error.status}: {error}')
    return CriticalError(f'{what} was refused with {error.status}: {error}')


def _detections_payload(result: Any, paths: list[Path]) -> list[dict[str, Any]]:
    if not isinstance(result, Sequence) or isinstance(result, (str, bytes)):
        raise CriticalError(f'detect() must return a list of Detections, got {type(result).__name__}')
    items = []
    for n, item in enumerate(result):
        if isinstance(item, Detections):
            data = item.to_dict()
        elif isinstance(item, Mapping):
            try:
                data = Detections.from_dict(dict(item)).to_dict()
            except SchemaError as e:
                raise CriticalError(f'detect() returned a malformed Detections at {n}: {e}') from e
        else:
            raise CriticalError(f'detect() returned a {type(item).__name__} at {n}, not Detections')
        if not data.get('image_id'):
            if len(result) != len(paths):
                raise CriticalError(f'detect() returned Detections without image_id at {n}')
            data['image_id'] = paths[n].stem
        items.append(data)
    return items


def _read_json(path: Path, default: Any) -> Any:
    with contextlib.suppress(FileNotFoundError, ValueError, UnicodeDecodeError, IsADirectoryError):
        return json.loads(path.read_bytes())
    return default
