"""ShapesTrainer with ``nproc=2``: two CPU processes under torch.distributed (gloo). The pair learns to the same F1
floor as one process; a stop and an abort reach the worker rank, which leaves the loop by itself (exit code 0);
a dead worker fails the training instead of hanging it; a killed node leaves no worker behind. Every test checks
that no worker process is left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip('torch')

from llnode.demo.torch_trainer import ShapesTrainer
from llnode.trainer.callbacks import f1_score
from llnode.trainer.logic import TrainingInterrupted
from tests.demo.test_shapes_net import BOX_IDS, QUICK_EPOCHS, QUICK_F1_FLOOR, ShapesRun, demo_data
from tests.polling import wait_for

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

#: bounds for a rank to notice a stop (one batch) and for the workers to start (a fresh interpreter, import torch)
STOP_TIMEOUT = 30.0
START_TIMEOUT = 60.0


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie counts as ended)."""
    try:
        state = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != 'Z'


class Training:
    """``logic.train(run)`` in a named thread; ``error`` is what it raised."""

    def __init__(self, logic: ShapesTrainer, run: ShapesRun) -> None:
        self.logic = logic
        self.run = run
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._train, name='test-shapes-training')
        self.thread.start()

    def _train(self) -> None:
        try:
            self.logic.train(self.run)  # type: ignore[arg-type]
        except BaseException as error:
            self.error = error

    def wait_in_loop(self) -> None:
        """Until the ranks train (a batch reported progress)."""
        wait_for(lambda: self.run.progress, timeout=START_TIMEOUT, what='the ranks to train a batch', interval=0.05)

    def join(self, timeout: float = STOP_TIMEOUT) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), 'the training did not end'


#: demo images for the learning test (F1 0.86 after 10 epochs on two ranks, 0.90 on one) and the others
LEARNING_IMAGES = 60
CONTROL_IMAGES = 24


@pytest.fixture
def shapes_run(tmp_path: Path) -> ShapesRun:
    return ShapesRun(tmp_path, demo_data(tmp_path / 'images', CONTROL_IMAGES), tmp_path / 'images')


@pytest.fixture
def trainers() -> Iterator[list[ShapesTrainer]]:
    """The trainers a test made; afterwards none of their worker processes may be alive."""
    made: list[ShapesTrainer] = []
    yield made
    leftover = [pid for logic in made for pid in logic.worker_pids if alive(pid)]
    for pid in leftover:
        os.kill(pid, signal.SIGKILL)
    assert not leftover, f'worker processes left behind: {leftover}'


def test_two_processes_learn_to_the_same_floor(tmp_path: Path, trainers: list[ShapesTrainer]) -> None:
    shapes_run = ShapesRun(tmp_path, demo_data(tmp_path / 'images', LEARNING_IMAGES), tmp_path / 'images')
    logic = ShapesTrainer(epochs=QUICK_EPOCHS, nproc=2)
    trainers.append(logic)
    logic.train(shapes_run)  # type: ignore[arg-type]
    assert len(logic.worker_pids) == 1
    assert logic.worker_exit_codes == [0]
    best = shapes_run.reported[-1]
    assert set(best.confusion_matrix) == set(BOX_IDS)
    assert f1_score(best.confusion_matrix) >= QUICK_F1_FLOOR
    # every rank scored its half of the test images; the sums cover all of them
    true_boxes = sum(len(i['box_annotations']) for i in shapes_run.image_data if i['set'] == 'test')
    assert sum(row['tp'] + row['fn'] for row in best.confusion_matrix.values()) == true_boxes
    assert shapes_run.progress[-1] == 1.0
    assert [p.name for p in logic.model_files(shapes_run)] == ['model.pt', 'shapes_net.json']  # type: ignore[arg-type]


@pytest.mark.parametrize('action', ['stop', 'abort'])
def test_stop_and_abort_reach_the_worker_rank(
    shapes_run: ShapesRun, trainers: list[ShapesTrainer], action: str
) -> None:
    logic = ShapesTrainer(epochs=200, nproc=2)
    trainers.append(logic)
    training = Training(logic, shapes_run)
    training.wait_in_loop()
    asked = time.monotonic()
    getattr(shapes_run, f'request_{action}')()
    training.join()
    assert time.monotonic() - asked < STOP_TIMEOUT
    assert isinstance(training.error, TrainingInterrupted)
    assert training.error.aborted is (action == 'abort')
    assert logic.worker_exit_codes == [0], 'the worker did not leave the loop by itself'
    if action == 'stop':  # the model trained so far is kept for upload
        assert [p.name for p in logic.model_files(shapes_run)] == ['model.pt', 'shapes_net.json']  # type: ignore[arg-type]


def test_a_dead_worker_fails_the_training_instead_of_hanging_it(
    shapes_run: ShapesRun, trainers: list[ShapesTrainer]
) -> None:
    logic = ShapesTrainer(epochs=200, nproc=2)
    trainers.append(logic)
    training = Training(logic, shapes_run)
    training.wait_in_loop()
    os.kill(logic.worker_pids[0], signal.SIGKILL)
    training.join()
    assert isinstance(training.error, RuntimeError) and not isinstance(training.error, TrainingInterrupted)
    assert logic.worker_exit_codes == [-signal.SIGKILL]


NODE_SCRIPT = """
import sys, threading
from pathlib import Path
from llnode.demo.torch_trainer import ShapesTrainer
from tests.demo.test_shapes_net import ShapesRun, demo_data

folder = Path(sys.argv[1])
run = ShapesRun(folder, demo_data(folder / 'images', 40), folder / 'images')
logic = ShapesTrainer(epochs=500, nproc=2)
threading.Thread(target=logic.train, args=(run,), daemon=True).start()
while not run.progress:
    threading.Event().wait(0.05)
print('workers', *logic.worker_pids, flush=True)
threading.Event().wait()
"""


def test_a_killed_node_leaves_no_worker_behind(tmp_path: Path) -> None:
    node = subprocess.Popen(
        [sys.executable, '-c', NODE_SCRIPT, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    workers: list[int] = []
    try:
        assert node.stdout is not None
        line = node.stdout.readline()  # blocks until the ranks train (or the script dies: an empty line)
        assert line.startswith('workers '), f'the node script said {line!r}'
        workers = [int(pid) for pid in line.split()[1:]]
        assert workers and all(alive(pid) for pid in workers)
        node.kill()
        node.wait(10)
        wait_for(lambda: not any(alive(pid) for pid in workers), timeout=10, what='the orphaned worker to exit')
    finally:
        if node.poll() is None:
            node.kill()
            node.wait(10)
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
