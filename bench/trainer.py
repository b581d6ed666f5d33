"""Trainer node timings against an in-process local Loop; prints one JSON line.

- ``data_download``: seconds from sending ``begin_training`` to the state ``data_downloaded`` for the demo images
  (1,000 by default, 640x480 JPEG), into an empty node data folder; the Loop draws its demo images before the
  clock starts (``Store.prerender``), so this measures the transfer, not the drawing.
- ``cycle``: the wall time of a whole mock training from ``begin_training`` to idle (data download, 3 epochs,
  metrics, two model formats uploaded, detections for every project image in batches of 10, their upload).
- ``stages``: per stage, the wall time and the time spent outside the logic's own code (the node's overhead:
  transfers, files, checkpoints), from the same cycle.
- ``mock_trainer``: one cycle of ``samples/mock_trainer.py`` (a real training subprocess, stopped with
  ``stop_training`` once its first metrics reached the Loop): the cycle's wall time and the part outside ``running``.

Times come from the node's state history (``TrainingMachine.state_history``: monotonic time of each transition).

    python bench/trainer.py [--images 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from machine import machine  # bench/machine.py: benchmarks run as scripts from bench/

from llnode.localloop import LocalLoop
from llnode.schema import BoxDetection, Detections, ModelInformation, PointDetection
from llnode.trainer import BestState, TrainerLogic, TrainerNode, TrainingRun

ORGANIZATION, PROJECT = 'zauberzeug', 'demo'


class BenchLogic(TrainerLogic):
    """A trainer logic that does almost nothing, timing its own hooks per stage (``user_seconds``)."""

    model_format = 'mocked'

    def __init__(self, epochs: int = 3) -> None:
        super().__init__()
        self.epochs = epochs
        self.user_seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    def _spent(self, stage: str, started: float) -> None:
        with self._lock:
            self.user_seconds[stage] = self.user_seconds.get(stage, 0.0) + time.perf_counter() - started

    def train(self, run: TrainingRun) -> None:
        started = time.perf_counter()
        weights = run.training_folder / 'weights.bin'
        for epoch in range(1, self.epochs + 1):
            run.check_stop()
            weights.write_bytes(os.urandom(1024) * epoch)
            run.report_best(BestState({c.id: {'tp': epoch, 'fp': 1, 'fn': 1} for c in run.categories}, epoch=epoch))
        self._spent('run_training', started)

    def model_files(self, run: TrainingRun) -> dict[str, list[Path]]:
        started = time.perf_counter()
        weights = run.training_folder / 'weights.bin'
        second = run.training_folder / 'weights_2.bin'
        second.write_bytes(weights.read_bytes())
        self._spent('upload_model', started)
        return {'mocked': [weights], 'mocked_2': [second]}

    def detect(
        self, run: TrainingRun, model_info: ModelInformation, model_folder: Path, image_paths: Sequence[Path]
    ) -> list[Detections]:
        started = time.perf_counter()
        result = []
        for path in image_paths:
            detections = Detections(image_id=path.stem)
            for c in model_info.categories:
                if c.type == 'point':
                    detections.point_detections.append(PointDetection(c.name, 100, 200, model_info.version, 0.9, c.id))
                else:
                    detections.box_detections.append(BoxDetection(c.name, 1, 2, 30, 40, model_info.version, 0.9, c.id))
            result.append(detections)
        self._spent('detecting', started)
        return result


def entered(node: TrainerNode, state: str) -> float:
    """``time.monotonic()`` when the node's last training entered ``state``."""
    for name, when in node.machine.state_history():
        if name == state:
            return when
    raise SystemExit(f'the training never reached {state}: {node.machine.state_history()}')


def wait_connected(loop: LocalLoop, node: TrainerNode, timeout: float = 30.0) -> None:
    assert loop.hub is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        link = node.loop_socket
        if link is not None and link.connected and any(n['id'] == node.uuid for n in loop.hub.connected()):
            return
        time.sleep(0.01)
    raise SystemExit('the trainer did not connect to the local Loop')


def one_cycle(loop: LocalLoop, data_folder: Path) -> dict[str, Any]:
    """A whole training on a fresh node (empty image cache); the timings of it."""
    logic = BenchLogic()
    node = TrainerNode('bench trainer', logic, settings=loop.settings(data_folder=data_folder))
    node.start()
    try:
        wait_connected(loop, node)
        started = time.monotonic()
        result = loop.begin_training(node=node.uuid)
        if not result['accepted']:
            raise SystemExit(f'begin_training was refused: {result}')
        if not node.machine.wait_idle(600):
            raise SystemExit(f'the training did not finish within 600 s (now {node.status().state})')
        downloaded, finished = entered(node, 'data_downloaded'), entered(node, 'idle')
        status = node.status()
        if status.errors:
            raise SystemExit(f'the training failed: {status.errors}')
        stage_seconds = dict(node.machine.stage_seconds)
    finally:
        node.stop()
    stages = {
        key: {
            'wall_s': round(seconds, 4),
            'outside_user_code_s': round(seconds - logic.user_seconds.get(key, 0.0), 4),
        }
        for key, seconds in stage_seconds.items()
    }
    return {'data_download_s': downloaded - started, 'cycle_s': finished - started, 'stages': stages}


def mock_trainer_cycle(loop: LocalLoop, data_folder: Path) -> dict[str, Any]:
    """One training of ``samples/mock_trainer.py``'s logic, stopped once its first metrics were published."""
    path = Path(__file__).resolve().parents[1] / 'samples' / 'mock_trainer.py'
    spec = importlib.util.spec_from_file_location('mock_trainer', path)
    if spec is None or spec.loader is None:
        raise SystemExit(f'cannot load {path}')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    logic = module.MockTrainerLogic(seed=1)
    logic.sync_interval = 0.2
    node = TrainerNode('bench mock trainer', logic, settings=loop.settings(data_folder=data_folder))
    node.start()
    try:
        wait_connected(loop, node)
        started = time.monotonic()
        if not loop.begin_training(node=node.uuid)['accepted']:
            raise SystemExit('begin_training was refused by the mock trainer')
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            run = node.machine.run
            if run is not None and run.publisher.sent > 0:
                break
            time.sleep(0.01)
        else:
            raise SystemExit(f'the mock trainer published no metrics (state {node.status().state})')
        node.stop_training()
        if not node.machine.wait_idle(120):
            raise SystemExit(f'the mock training did not finish (state {node.status().state})')
        if node.status().errors:
            raise SystemExit(f'the mock training failed: {node.status().errors}')
        running, finished = entered(node, 'running'), entered(node, 'training_finished')
        idle = entered(node, 'idle')
    finally:
        node.stop()
    return {
        'cycle_s': round(idle - started, 3),
        'running_s': round(finished - running, 3),
        'outside_running_s': round(idle - started - (finished - running), 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--images', type=int, default=1000, help='complete images of the demo project')
    parser.add_argument('--repeats', type=int, default=3, help='training cycles (median reported)')
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix='llnode-bench-trainer-') as tmp:
        root = Path(tmp)
        loop = LocalLoop(root / 'loop', demo=True, demo_images=args.images).start()
        try:
            loop.store.prerender(ORGANIZATION, PROJECT)
            project_images = len(loop.store.image_ids(ORGANIZATION, PROJECT))
            runs = [one_cycle(loop, root / f'node-{n}') for n in range(args.repeats)]
            mock = mock_trainer_cycle(loop, root / 'node-mock')
        finally:
            loop.stop()
    downloads = [r['data_download_s'] for r in runs]
    cycles = [r['cycle_s'] for r in runs]
    middle = sorted(runs, key=lambda r: r['cycle_s'])[len(runs) // 2]
    result = {
        'benchmark': 'trainer',
        'images': args.images,
        'project_images': project_images,
        'image_size': '640x480 jpeg',
        'machine': machine(load_before),
        'data_download_s': round(statistics.median(downloads), 3),
        'data_download_runs_s': [round(d, 3) for d in downloads],
        'data_download_images_per_s': round(args.images / statistics.median(downloads), 1),
        'cycle_s': round(statistics.median(cycles), 3),
        'cycle_runs_s': [round(c, 3) for c in cycles],
        'stages_of_median_cycle': middle['stages'],
        'mock_trainer': mock,
        'logic': 'bench/trainer.py BenchLogic: 3 epochs, 2 formats, one detection per category and image',
    }
    print(json.dumps(result))
    return 0


if __name__ == '__main__':
    sys.exit(main())
