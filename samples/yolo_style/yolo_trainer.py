"""The YOLO-style trainer logic: a :class:`~llnode.trainer.SubprocessTrainerLogic` built the way yolov5_node's
``Yolov5TrainerLogic`` is, on llnode's hooks (see ``docs/porting.rst`` for the walk through).

- ``start_command`` / ``base_model_command`` / ``resume_command``: write ``dataset.json`` (``yolo_format.py``) and
  ``hyp.json`` (the sample's ``hyp.json`` with the Loop's hyperparameters over it), then return the argv of
  ``train.py``, which settles its batch size itself with the toolkit;
- ``progress``: the last epoch line of the training log; ``get_new_best``: the newest ``epoch{N}.pt`` with its
  confusion matrix (``model_files.py``), with the log's metrics of that epoch; ``on_metrics_published``: move those
  weights to ``published/latest.pt``;
- ``model_files``: the published weights and ``hyp.json`` (format ``yolo_style_pytorch``) plus their TorchScript
  export made by ``export.py`` in a subprocess (format ``yolo_style_torchscript``);
- ``detect``: ``detect.py`` in a subprocess over the images, its predictions turned into the Loop's detections
  with the toolkit's ``to_detections``.

This module does not import torch: only the scripts the node starts do.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import model_files
import training_log
import yolo_format

from llnode.detector.postprocess import Prediction, to_detections
from llnode.durable import write_json
from llnode.schema import Detections, ModelInformation, PretrainedModel
from llnode.trainer import BestState, CriticalError, Executor, SubprocessTrainerLogic, TrainingRun
from llnode.trainer.batch_size import requested_batch_size

HERE = Path(__file__).resolve().parent
#: the base hyperparameters; the Loop's hyperparameters of a training override the keys they share
BASE_HYPERPARAMETERS = HERE / 'hyp.json'
HYPERPARAMETERS_FILE = 'hyp.json'
#: the formats (the same strings as network.py's, which imports torch)
PYTORCH_FORMAT = 'yolo_style_pytorch'
TORCHSCRIPT_FORMAT = 'yolo_style_torchscript'
#: the grace (seconds) between SIGTERM and SIGKILL for the export and detection subprocesses
HELPER_GRACE = 3.0
#: what detect.py writes, in the training folder
DETECTIONS_FILE = 'detections.jsonl'


class HelperScriptError(RuntimeError):
    """``export.py`` or ``detect.py`` failed; the message carries the end of its log. The stage is retried."""


class YoloTrainerLogic(SubprocessTrainerLogic):
    """Trains the sample's network with ``train.py`` (format ``yolo_style_pytorch``, plus a TorchScript export).

    ``device`` and ``vram_limit_gb`` are handed to every script the node starts (``--vram-limit-gb`` caps each
    process: a cap does not survive a spawn).
    """

    model_format = PYTORCH_FORMAT
    architecture = 'yolo_style_shapes_net'
    pretrained_models = (PretrainedModel(name='shapes', label='ShapesNet', description='the demo network, untrained'),)

    def __init__(self, *, device: str = 'auto', vram_limit_gb: float = 0.0, sync_interval: float = 1.0) -> None:
        super().__init__()
        self.device = device
        self.vram_limit_gb = float(vram_limit_gb)
        self.sync_interval = sync_interval
        self._reported: dict[Path, Path] = {}  # training folder -> the weightfile reported last

    # ------------------------------------------------------------------ starting train.py

    def hyperparameters(self, run: TrainingRun) -> dict[str, Any]:
        """The sample's base hyperparameters with the training's over them; a clear CriticalError when unusable."""
        hyp = json.loads(BASE_HYPERPARAMETERS.read_text())
        hyp.update({k: v for k, v in (run.hyperparameters or {}).items() if k in hyp})
        resolution, epochs = hyp['resolution'], hyp['epochs']
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 32 or resolution % 16:
            raise CriticalError(f'hyperparameter resolution must be a multiple of 16, at least 32, not {resolution!r}')
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise CriticalError(f'hyperparameter epochs must be a positive integer, not {epochs!r}')
        try:
            requested_batch_size(hyp)
        except ValueError as error:
            raise CriticalError(f'hyperparameter max_batch_size: {error}') from None
        return hyp

    def _prepare(self, run: TrainingRun) -> list[str]:
        """dataset.json and hyp.json in the training folder; the common argv of train.py."""
        dataset = yolo_format.create_file_structure(run)
        hyp_path = Path(run.training_folder) / HYPERPARAMETERS_FILE
        write_json(hyp_path, self.hyperparameters(run))
        return [
            sys.executable,
            str(HERE / 'train.py'),
            '--data',
            str(dataset),
            '--hyp',
            str(hyp_path),
            '--project',
            str(run.training_folder),
            '--device',
            self.device,
            '--vram-limit-gb',
            str(self.vram_limit_gb),
        ]

    def start_command(self, run: TrainingRun) -> list[str]:
        return self._prepare(run)

    def base_model_command(self, run: TrainingRun) -> list[str]:
        assert run.base_model_folder is not None
        return [*self._prepare(run), '--weights', str(run.base_model_folder / 'model.pt')]

    def can_resume(self, run: TrainingRun) -> bool:
        return (model_files.weights_folder(run.training_folder) / model_files.LAST_CHECKPOINT).is_file()

    def resume_command(self, run: TrainingRun) -> list[str]:
        return [*self._prepare(run), '--resume']

    def error_from_log(self, run: TrainingRun, tail: list[str]) -> str | None:
        if any('No CUDA GPUs are available' in line for line in tail):
            return 'graphics card not found'
        return super().error_from_log(run, tail)

    # ------------------------------------------------------------------ while train.py runs

    def _log_tail(self) -> list[str]:
        executor = self.executor
        return executor.log_tail(200) if executor is not None else []

    def progress(self, run: TrainingRun) -> float | None:
        line = training_log.last_epoch(self._log_tail())
        return line.progress if line is not None else None

    def get_new_best(self, run: TrainingRun) -> BestState | None:
        weightfile = model_files.newest(run.training_folder)
        if weightfile is None or self._reported.get(Path(run.training_folder)) == weightfile:
            return None
        matrix = json.loads(weightfile.with_suffix('.json').read_text())
        epoch = model_files.epoch_of(weightfile)
        metrics = training_log.epoch_metrics(self._log_tail(), epoch or 0)
        self._reported[Path(run.training_folder)] = weightfile
        run.logger.info('new best state: epoch %s %s', epoch, metrics)
        return BestState(matrix, epoch=epoch, meta_information={'weightfile': str(weightfile), 'metrics': metrics})

    def on_metrics_published(self, run: TrainingRun, state: BestState) -> None:
        weightfile = state.meta_information.get('weightfile')
        if weightfile:
            model_files.publish(run.training_folder, Path(weightfile))

    # ------------------------------------------------------------------ the model

    def model_files(self, run: TrainingRun) -> dict[str, list[Path]]:
        latest = model_files.published(run.training_folder)
        if not latest.is_file():
            raise CriticalError(f'no model: the training published no weights ({latest} is missing)')
        upload = Path(run.training_folder) / 'upload'
        upload.mkdir(parents=True, exist_ok=True)
        weights = upload / 'model.pt'
        shutil.copyfile(latest, weights)
        torchscript = upload / 'model.torchscript'
        self._run_script(run, 'export', ['--weights', str(weights), '--out', str(torchscript)])
        hyp = Path(run.training_folder) / HYPERPARAMETERS_FILE
        return {PYTORCH_FORMAT: [weights, hyp], TORCHSCRIPT_FORMAT: [torchscript]}

    def model_metadata(self, run: TrainingRun) -> dict[str, Any]:
        hyp = json.loads((Path(run.training_folder) / HYPERPARAMETERS_FILE).read_text())
        return {'resolution': hyp['resolution'], 'conf_threshold': hyp['detect_nms_conf_thres']}

    def detect(
        self, run: TrainingRun, model_info: ModelInformation, model_folder: Path, image_paths: Sequence[Path]
    ) -> list[Detections]:
        folder = Path(run.training_folder)
        source = folder / 'detect_images.txt'
        source.write_text(''.join(f'{path}\n' for path in image_paths))
        out = folder / DETECTIONS_FILE
        out.unlink(missing_ok=True)
        hyp = json.loads((model_folder / HYPERPARAMETERS_FILE).read_text())
        self._run_script(
            run,
            'detect',
            [
                '--weights',
                str(model_folder / 'model.pt'),
                '--source',
                str(source),
                '--out',
                str(out),
                '--conf-thres',
                str(hyp['detect_nms_conf_thres']),
                '--iou-thres',
                str(hyp['detect_nms_iou_thres']),
            ],
        )
        detections = []
        for line in out.read_text().splitlines():
            item = json.loads(line)
            predictions = [Prediction(**p) for p in item['predictions']]
            detections.append(
                to_detections(predictions, model_info, item['height'], item['width'], image_id=item['image_id'])
            )
        return detections

    def clear_training_data(self, run: TrainingRun) -> None:
        """Keep the logs, hyp.json and the published weights; drop the dataset, epochs and helper files."""
        folder = Path(run.training_folder)
        for name in (yolo_format.DATASET_FILE, 'detect_images.txt', DETECTIONS_FILE):
            (folder / name).unlink(missing_ok=True)
        shutil.rmtree(folder / 'upload', ignore_errors=True)
        for path in model_files.epoch_files(folder):
            path.unlink(missing_ok=True)
            path.with_suffix('.json').unlink(missing_ok=True)
        self._reported.pop(folder, None)

    # ------------------------------------------------------------------ helpers

    def _run_script(self, run: TrainingRun, name: str, args: list[str]) -> None:
        """Run ``{name}.py`` of this sample to its end (its own log, ``{name}.log``); stop and abort end it."""
        executor = Executor(run.training_folder, logs_folder=f'logs_{name}', last_log_name=f'{name}.log', keep_logs=3)
        argv = [sys.executable, str(HERE / f'{name}.py'), *args]
        if name == 'detect':
            argv += ['--device', self.device, '--vram-limit-gb', str(self.vram_limit_gb)]
        executor.start(argv, {'PYTHONUNBUFFERED': '1'})
        try:
            while executor.wait(0.2) is None:
                if run.wait_for_stop(0):
                    executor.stop(grace=HELPER_GRACE)
                    run.check_stop()
        finally:
            code = executor.stop(grace=HELPER_GRACE)
        if code != 0:
            tail = executor.log_tail(10)
            raise HelperScriptError(f'{name}.py exited with code {code}: {" | ".join(tail[-5:]) or "no output"}')
