"""A trainer that only pretends to train: the llnode version of the reference's ``mock_trainer`` sample.

Its "training" is a small Python process that runs until it is stopped; while it runs, the logic reports random
but improving confusion matrices (keyed by the training's category uuids). The trained model comes in two formats,
``mocked`` and ``mocked_2``, and its detections are fixed: one per category of the model, by category type. It is
what the Loop's own tests drive, and a quick way to watch a whole training cycle::

    llnode loop --demo --user demo:demo          # in another terminal: the local Loop on 127.0.0.1:8080
    LOOP_HOST=127.0.0.1:8080 LOOP_USERNAME=demo LOOP_PASSWORD=demo LOOP_ORGANIZATION=zauberzeug \\
        LOOP_PROJECT=demo python samples/mock_trainer.py --port 8005 --backdoor

With ``llnode loop --demo`` running, start a training from the Loop (``llnode control``); stop it with
``stop_training`` and the model is uploaded, detections run and the trainer is idle again. ``--backdoor`` mounts
the test routes (``/steps``, ``/provide_new_model``, ``/error_configuration``, ``/kill_training_process``, ...).

Like every sample it listens on 127.0.0.1 only; ``--host 0.0.0.0`` (or ``NODE_HOST=0.0.0.0``) serves other
machines too. Every option is also an environment variable (``--help`` names them).
"""

from __future__ import annotations

import logging
import os
import random
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from llnode.helpers import node_parser, run_node
from llnode.schema import (
    BoxDetection,
    ClassificationDetection,
    Detections,
    ModelInformation,
    Point,
    PointDetection,
    PretrainedModel,
    SegmentationDetection,
    Shape,
)
from llnode.startup import run_main
from llnode.trainer.logic import BestState, TrainingRun
from llnode.trainer.node import TrainerNode
from llnode.trainer.subprocess_logic import Command, SubprocessTrainerLogic

#: the failures the backdoor ``PUT /error_configuration`` can switch on (loop-protocol §5)
ERROR_KEYS = ('begin_training', 'crash_training', 'get_new_model', 'save_model')

#: the file whose presence makes the running mock process print ``mocked crash`` and exit 1
CRASH_FLAG = 'mock_crash.flag'

#: the mock training process: runs until stopped, writes a line a second, crashes on request, and ends when the
#: node that started it (its first argument: the node's pid) is gone, so a SIGKILLed node leaves no orphan behind
TRAINING_SCRIPT = f"""
import os, sys, time
parent = int(sys.argv[1])
tick = 0
while True:
    if os.path.exists({CRASH_FLAG!r}):
        print('mocked crash', flush=True)
        sys.exit(1)
    if os.getppid() != parent:
        sys.exit(0)
    if tick % 10 == 0:
        print('mock training, second', tick // 10, flush=True)
    tick += 1
    time.sleep(0.1)
"""


class MockTrainerLogic(SubprocessTrainerLogic):
    """The reference's mock trainer on the subprocess API; ``provide_new_model`` and ``error_configuration`` are
    the switches of the backdoor routes."""

    model_format = 'mocked'
    architecture = 'mocked'
    pretrained_models = (
        PretrainedModel(name='small', label='Small', description='a small model'),
        PretrainedModel(name='medium', label='Medium', description='a medium model'),
        PretrainedModel(name='large', label='Large', description='a large model'),
    )
    stop_grace = 5.0  # the mock process ends at once on SIGTERM

    def __init__(self, model_format: str | None = None, *, seed: int | None = None) -> None:
        super().__init__(model_format)
        self.provide_new_model = True
        self.iteration = 0
        self.latest_known_confusion_matrix: dict[str, dict[str, int]] = {}
        self._random = random.Random(seed)
        self._state_lock = threading.Lock()  # owns iteration, the random source, the matrices, _errors, _folder
        self._errors = dict.fromkeys(ERROR_KEYS, False)
        self._folder: Path | None = None  # the training folder of the current run (for the crash flag)

    # ------------------------------------------------------------------ backdoor switches

    @property
    def error_configuration(self) -> dict[str, bool]:
        """The injected failures (a copy); set it to a dict of flags, as the backdoor does."""
        with self._state_lock:
            return dict(self._errors)

    @error_configuration.setter
    def error_configuration(self, flags: dict[str, bool]) -> None:
        unknown = set(flags) - set(ERROR_KEYS)
        if unknown:
            raise ValueError(f'unknown error flags {sorted(unknown)}; known: {", ".join(ERROR_KEYS)}')
        with self._state_lock:
            self._errors = {key: bool(flags.get(key, False)) for key in ERROR_KEYS}
            folder = self._folder
        if folder is not None:
            self._set_crash_flag(folder)  # a running mock process crashes at once

    def _set_crash_flag(self, folder: Path) -> None:
        flag = folder / CRASH_FLAG
        if self.error_configuration['crash_training']:
            flag.touch()
        else:
            flag.unlink(missing_ok=True)

    # ------------------------------------------------------------------ the training

    def start_command(self, run: TrainingRun) -> Command:
        if self.error_configuration['begin_training']:
            raise RuntimeError('mocked failure to begin the training')
        with self._state_lock:
            self._folder = run.training_folder
            self.iteration = 0
        self._set_crash_flag(run.training_folder)
        return [sys.executable, '-c', TRAINING_SCRIPT, str(os.getpid())]

    def error_from_log(self, run: TrainingRun, tail: list[str]) -> str | None:
        if any('mocked crash' in line for line in tail):
            return 'mocked crash'
        return super().error_from_log(run, tail)

    def get_new_best(self, run: TrainingRun) -> BestState | None:
        """A random confusion matrix per category uuid: ``tp`` never below the last published one, ``fp`` and ``fn``
        at least 2."""
        if self.error_configuration['get_new_model']:
            raise RuntimeError('mocked failure to get a new model')
        if not self.provide_new_model:
            return None
        with self._state_lock:
            self.iteration += 1
            matrix = {}
            for category in run.categories:
                tp = self.latest_known_confusion_matrix.get(category.id, {}).get('tp', 0)
                matrix[category.id] = {
                    'tp': tp + self._random.randint(0, 10),
                    'fp': self._random.randint(2, 10),
                    'fn': self._random.randint(2, 10),
                }
            return BestState(confusion_matrix=matrix, epoch=self.iteration, meta_information={'mocked': True})

    def progress(self, run: TrainingRun) -> float | None:
        with self._state_lock:
            return min(1.0, self.iteration / 100)

    def on_metrics_published(self, run: TrainingRun, state: BestState) -> None:
        with self._state_lock:
            self.latest_known_confusion_matrix = state.confusion_matrix

    # ------------------------------------------------------------------ the model and its detections

    def model_files(self, run: TrainingRun) -> dict[str, list[Path]]:
        """One tiny weight file and one extra file, uploaded as both formats (no ``model.json``: the node adds it)."""
        if self.error_configuration['save_model']:
            raise RuntimeError('mocked failure to save the model')
        folder = run.training_folder / 'mock_model'
        folder.mkdir(exist_ok=True)
        weights = folder / 'weightfile.weights'
        weights.write_bytes(b'\x01')
        extra = folder / 'some_more_data.txt'
        extra.write_text('mocked model data\n')
        return {'mocked': [weights, extra], 'mocked_2': [weights, extra]}

    def detect(
        self, run: TrainingRun, model_info: ModelInformation, model_folder: Path, image_paths: Sequence[Path]
    ) -> list[Detections]:
        return [mock_detections(model_info, path.stem) for path in image_paths]

    def clear_training_data(self, run: TrainingRun) -> None:
        with self._state_lock:
            self._folder = None
            self.latest_known_confusion_matrix = {}  # the next training improves on its own states


def mock_detections(model_info: ModelInformation, image_id: str) -> Detections:
    """One detection per category of the model, by its type, at the reference mock's fixed places."""
    version = model_info.version
    detections = Detections(image_id=image_id)
    for c in model_info.categories:
        if c.type == 'box':
            detections.box_detections.append(BoxDetection(c.name, 1, 2, 30, 40, version, 0.99, c.id))
        elif c.type == 'point':
            detections.point_detections.append(PointDetection(c.name, 100, 200, version, 0.97, c.id))
        elif c.type == 'segmentation':
            shape = Shape(points=[Point(x=1, y=2), Point(x=3, y=4)])
            detections.segmentation_detections.append(SegmentationDetection(c.name, shape, version, 0.96, c.id))
        elif c.type == 'classification':
            detections.classification_detections.append(ClassificationDetection(c.name, version, 0.95, c.id))
    return detections


def main(argv: list[str] | None = None) -> int:
    parser = node_parser(description=(__doc__ or '').split('\n\n')[0], host='127.0.0.1', port=8005)
    parser.add_argument('--name', env_var='NODE_NAME', default='mocked trainer', help='the node name the Loop shows')
    parser.add_argument('--backdoor', action='store_true', help='serve the trainer test routes (testing only)')
    parser.add_argument(
        '--sync-interval', type=float, default=5.0, help='seconds between new best states while training (default 5)'
    )
    parser.add_argument('--log-level', default='INFO')
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    logic = MockTrainerLogic()
    logic.sync_interval = args.sync_interval
    node = TrainerNode(args.name, logic, use_backdoor_controls=args.backdoor or None)
    return run_node(node, args)


if __name__ == '__main__':
    sys.exit(run_main(main))  # a start-up error: one line on stderr, exit code 2
