"""In-process trainers: a training loop driven through ``InProcessTrainerLogic.train`` in a worker thread, with a
fake run: stop and abort from another thread within one batch, only best states published, the best checkpoint
as the model files, resuming after a failed attempt, and a tiny real torch training. Then end to end: the real
TrainerNode against the local Loop, a full training to idle and a stop that uploads the best model so far."""

from __future__ import annotations

import contextlib
import copy
import json
import queue
import threading
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import pytest

from llnode.localloop import LocalLoop
from llnode.schema import Category, Detections, ModelInformation
from llnode.trainer import TrainerNode
from llnode.trainer.callbacks import ORDER_CHECKPOINT, Callback, ConfusionCounter
from llnode.trainer.inprocess import InProcessTrainerLogic, TrainingHooks
from llnode.trainer.logic import CriticalError, TrainingInterrupted, TrainingRun
from tests.polling import wait_for
from tests.trainer.fake_run import FakeRun as SharedFakeRun
from tests.trainer.trainer_support import (
    ORGANIZATION,
    PROJECT,
    accepted_detection_posts,
    begin,
    fixed_detections,
    project_image_ids,
    stored_uploads,
    wait_idle,
)

CATEGORIES = [Category(id='uuid-cat', name='cat', type='classification'), Category(id='uuid-dog', name='dog')]
JOIN_TIMEOUT = 10.0


class FakeRun(SharedFakeRun):
    """The shared fake run on ``folder/training`` with this file's categories and three epochs."""

    def __init__(self, folder: Path, logic: InProcessTrainerLogic | None = None) -> None:
        super().__init__(
            folder / 'training', folder / 'images', categories=CATEGORIES, hyperparameters={'epochs': 3}, logic=logic
        )


def write_json_model(model: Any, handle: IO[bytes]) -> None:
    handle.write(json.dumps(model).encode())


class Moments(Callback):
    """A user callback that records train end and exceptions."""

    def __init__(self) -> None:
        self.train_end: list[dict[str, Any]] = []
        self.errors: list[BaseException] = []

    def on_train_end(self, run: Any, logs: Any) -> None:
        self.train_end.append(dict(logs))

    def on_exception(self, run: Any, error: BaseException) -> None:
        self.errors.append(error)


class ScriptedLogic(InProcessTrainerLogic):
    """A loop over fake batches; ``on_batch(epoch, batch)`` runs inside each batch; ``tps`` scripts the confusion
    matrix of each epoch (None: nothing measured); the model is a dict naming its epoch."""

    model_format = 'fake_format'

    def __init__(
        self,
        *,
        epochs: int = 3,
        batches: int = 4,
        tps: list[int | None] | None = None,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> None:
        super().__init__(save_checkpoint=write_json_model)
        self.epochs, self.batches, self.on_batch = epochs, batches, on_batch
        self.tps = tps if tps is not None else [None] * epochs
        self.moments = Moments()
        self.batches_run: list[tuple[int, int]] = []

    def callbacks(self, run: TrainingRun) -> list[Callback]:
        return [self.moments]

    def fit(self, run: TrainingRun, hooks: TrainingHooks) -> None:
        model = {'epoch': None}
        hooks.train_begin(model=model)
        for epoch in hooks.epochs(self.epochs):
            for batch in hooks.batches(range(self.batches)):
                self.batches_run.append((epoch, batch))
                model['epoch'] = epoch
                if self.on_batch is not None:
                    self.on_batch(epoch, batch)
                hooks.log(loss=1.0 / (1 + len(self.batches_run)))
            tp = self.tps[epoch]
            if tp is not None:
                hooks.log(confusion_matrix={'uuid-cat': {'tp': tp, 'fp': 2, 'fn': 2}})


def train_in_thread(logic: InProcessTrainerLogic, run: FakeRun) -> tuple[threading.Thread, list[BaseException | None]]:
    """``logic.train(run)`` in a named thread as the node's worker runs it; the outcome lands in the list."""
    outcome: list[BaseException | None] = []

    def work() -> None:
        try:
            logic.train(run)
        except BaseException as error:
            outcome.append(error)
        else:
            outcome.append(None)

    thread = threading.Thread(target=work, name='test-training-worker', daemon=True)
    thread.start()
    return thread, outcome


class BatchGate:
    """Lets the training loop run one batch at a time: the loop announces each batch and waits for a release."""

    def __init__(self) -> None:
        self.started: queue.Queue[tuple[int, int]] = queue.Queue()
        self.release = threading.Semaphore(0)

    def in_batch(self, epoch: int, batch: int) -> None:
        self.started.put((epoch, batch))
        assert self.release.acquire(timeout=JOIN_TIMEOUT), 'the test never released the batch'

    def next_started(self) -> tuple[int, int]:
        return self.started.get(timeout=JOIN_TIMEOUT)


@pytest.mark.parametrize('action', ['stop', 'abort'])
def test_stop_or_abort_from_another_thread_ends_the_loop_within_one_batch(tmp_path: Path, action: str) -> None:
    gate = BatchGate()
    logic = ScriptedLogic(epochs=3, batches=5, tps=[5, 6, 7], on_batch=gate.in_batch)
    run = FakeRun(tmp_path, logic)
    thread, outcome = train_in_thread(logic, run)
    for expected in [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (1, 0), (1, 1)]:
        assert gate.next_started() == expected
        if expected == (1, 1):
            run.request_stop() if action == 'stop' else run.request_abort()
        gate.release.release()
    thread.join(JOIN_TIMEOUT)
    assert not thread.is_alive()

    assert logic.batches_run[-1] == (1, 1)  # the batch running at the request finished; no other began
    assert gate.started.empty()
    [error] = outcome
    assert isinstance(error, TrainingInterrupted)
    assert error.aborted is (action == 'abort')
    assert [state.epoch for state in run.reported] == [0]  # epoch 1 never ended
    if action == 'stop':
        assert [logs['stopped'] for logs in logic.moments.train_end] == [True]
        assert logic.moments.errors == []
        [path] = logic.model_files(run)  # the model that is uploaded: the best so far (epoch 0)
        assert json.loads(path.read_text()) == {'epoch': 0}
    else:
        assert logic.moments.train_end == []
        assert logic.moments.errors == [error]


def test_a_stop_before_any_scored_epoch_uploads_the_current_model(tmp_path: Path) -> None:
    gate = BatchGate()
    logic = ScriptedLogic(epochs=2, batches=3, on_batch=gate.in_batch)
    run = FakeRun(tmp_path, logic)
    thread, outcome = train_in_thread(logic, run)
    assert gate.next_started() == (0, 0)
    run.request_stop()
    gate.release.release()
    thread.join(JOIN_TIMEOUT)
    assert isinstance(outcome[0], TrainingInterrupted)
    assert not outcome[0].aborted
    assert logic.batches_run == [(0, 0)]
    [path] = logic.model_files(run)
    assert json.loads(path.read_text()) == {'epoch': 0}
    assert run.reported == []


def test_an_abort_leaves_no_model_to_upload(tmp_path: Path) -> None:
    logic = ScriptedLogic(epochs=2, batches=2)
    run = FakeRun(tmp_path, logic)
    logic.on_batch = lambda epoch, batch: run.request_abort()
    with pytest.raises(TrainingInterrupted) as raised:
        logic.train(run)
    assert raised.value.aborted
    assert logic.batches_run == [(0, 0)]
    with pytest.raises(CriticalError, match='no model to upload'):
        logic.model_files(run)


def test_an_abort_wins_over_a_stop_and_over_a_normal_return(tmp_path: Path) -> None:
    class Ignoring(ScriptedLogic):
        """A loop that swallows the interruption and returns."""

        def fit(self, run: TrainingRun, hooks: TrainingHooks) -> None:
            with contextlib.suppress(TrainingInterrupted):
                super().fit(run, hooks)

    logic = Ignoring(epochs=2, batches=2)
    run = FakeRun(tmp_path, logic)

    def both(epoch: int, batch: int) -> None:
        run.request_stop()
        run.request_abort()

    logic.on_batch = both
    with pytest.raises(TrainingInterrupted) as raised:
        logic.train(run)
    assert raised.value.aborted
    assert logic.moments.train_end == []
    assert len(logic.moments.errors) == 1


def test_a_loop_that_ends_itself_on_should_stop_finishes_normally(tmp_path: Path) -> None:
    class Cooperative(InProcessTrainerLogic):
        model_format = 'fake_format'

        def __init__(self) -> None:
            super().__init__(save_checkpoint=write_json_model)
            self.moments = Moments()
            self.batches = 0

        def callbacks(self, run: TrainingRun) -> list[Callback]:
            return [self.moments]

        def fit(self, run: TrainingRun, hooks: TrainingHooks) -> None:
            hooks.model = {'batches': 0}
            while not hooks.should_stop:
                self.batches += 1
                hooks.model['batches'] = self.batches
                if self.batches == 3:
                    run.request_stop()  # type: ignore[attr-defined]

    logic = Cooperative()
    run = FakeRun(tmp_path, logic)
    logic.train(run)  # returns normally: training_finished
    assert logic.batches == 3
    assert [logs['stopped'] for logs in logic.moments.train_end] == [True]
    assert json.loads(logic.model_files(run)[0].read_text()) == {'batches': 3}


def test_only_new_best_states_are_reported_and_the_best_checkpoint_is_the_model(tmp_path: Path) -> None:
    logic = ScriptedLogic(epochs=6, batches=2, tps=[2, 1, 6, 6, None, 4])
    run = FakeRun(tmp_path, logic)
    logic.train(run)
    assert [state.epoch for state in run.reported] == [0, 2]
    assert run.reported[1].confusion_matrix == {'uuid-cat': {'tp': 6, 'fp': 2, 'fn': 2}}
    assert run.reported[1].meta_information['score'] == pytest.approx(0.75)
    [path] = logic.model_files(run)
    assert path == run.training_folder / 'best_checkpoint' / 'model.pt'
    assert json.loads(path.read_text()) == {'epoch': 2}
    assert run.progress[-1] == 1.0
    assert run.progress == sorted(run.progress)
    assert [logs['stopped'] for logs in logic.moments.train_end] == [False]


def test_a_failed_attempt_is_retried_from_its_best_checkpoint(tmp_path: Path) -> None:
    """An error in fit goes to the node (stage retry); the next attempt keeps the earlier best unless it beats it."""

    def crash_in_epoch_2(epoch: int, batch: int) -> None:
        if epoch == 2:
            raise RuntimeError('CUDA error: something transient')

    first = ScriptedLogic(epochs=3, batches=1, tps=[3, 7, 9], on_batch=crash_in_epoch_2)
    run = FakeRun(tmp_path, first)
    with pytest.raises(RuntimeError, match='transient'):
        first.train(run)
    assert [type(e) for e in first.moments.errors] == [RuntimeError]
    assert first.moments.train_end == []
    assert [state.epoch for state in run.reported] == [0, 1]

    second = ScriptedLogic(epochs=3, batches=1, tps=[5, 6, 8])  # the same run, a fresh attempt
    run.reported.clear()
    second.train(run)
    assert [state.epoch for state in run.reported] == [2]  # 5 and 6 are worse than the earlier best (7)
    assert json.loads(second.model_files(run)[0].read_text()) == {'epoch': 2}


def test_a_logic_without_fit_or_model_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match='model_format'):
        InProcessTrainerLogic()
    logic = InProcessTrainerLogic('fmt')
    with pytest.raises(NotImplementedError, match='fit'):
        logic.train(FakeRun(tmp_path, logic))
    with pytest.raises(TypeError, match='callables'):
        InProcessTrainerLogic('fmt', score=3)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------------
# a real torch training


class TinyTorchLogic(InProcessTrainerLogic):
    """Trains a linear classifier of 8 features into the two categories on random tensors (CPU)."""

    model_format = 'tiny_torch'

    def __init__(self) -> None:
        super().__init__()
        self.snapshots: dict[int, dict[str, Any]] = {}

    def callbacks(self, run: TrainingRun) -> list[Callback]:
        snapshots = self.snapshots

        class Snapshot(Callback):
            execution_order = ORDER_CHECKPOINT + 1

            def on_epoch_end(self, run: TrainingRun, epoch: int, logs: Any) -> None:
                snapshots[epoch] = copy.deepcopy(logs['model'].state_dict())

        return [Snapshot()]

    def fit(self, run: TrainingRun, hooks: TrainingHooks) -> None:
        import torch

        generator = torch.Generator().manual_seed(7)
        features = torch.randn(96, 8, generator=generator)
        labels = (features[:, 0] + 0.5 * features[:, 1] > 0).long()
        model = torch.nn.Linear(8, len(run.categories))
        torch.nn.init.zeros_(model.weight)
        torch.nn.init.zeros_(model.bias)
        ids = [category.id for category in run.categories]
        hooks.train_begin(model=model)
        for _ in hooks.epochs(4):
            for start in hooks.batches(range(0, 64, 16)):
                loss = torch.nn.functional.cross_entropy(
                    model(features[start : start + 16]), labels[start : start + 16]
                )
                loss.backward()
                with torch.no_grad():  # plain SGD by hand: torch.optim's first use costs seconds of imports
                    for parameter in model.parameters():
                        parameter.sub_(0.5 * parameter.grad)
                        parameter.grad = None
                hooks.log(loss=loss.item())
            with torch.no_grad():
                predicted = model(features[64:]).argmax(dim=1)
            counter = ConfusionCounter(run.categories)
            for p, t in zip(predicted.tolist(), labels[64:].tolist(), strict=True):
                counter.add_image([ids[p]], [ids[t]])
            hooks.log(confusion_matrix=counter.as_dict())


def test_a_tiny_torch_model_trains_and_its_best_state_dict_is_the_model_file(tmp_path: Path) -> None:
    torch = pytest.importorskip('torch')
    logic = TinyTorchLogic()
    run = FakeRun(tmp_path, logic)
    logic.train(run)
    assert run.reported, 'no best state was reported'
    best = run.reported[-1]
    assert best.meta_information['score'] > 0.8  # the data is separable; the model learns it
    assert set(best.confusion_matrix) == {'uuid-cat', 'uuid-dog'}
    assert sum(row['tp'] + row['fn'] for row in best.confusion_matrix.values()) == 32  # one label per test image
    [path] = logic.model_files(run)
    loaded = torch.load(path, weights_only=True)
    assert best.epoch is not None
    expected = logic.snapshots[best.epoch]
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[key], expected[key]) for key in expected)
    assert run.progress[-1] == 1.0


# ---------------------------------------------------------------------------------------------------------------
# end to end: the real TrainerNode against the local Loop over Socket.IO


class LoopLogic(InProcessTrainerLogic):
    """A pure-Python in-process trainer for the node: per-epoch confusion matrices over the training's real
    categories (tp scripted per epoch), a JSON model naming its epoch, the reference mock's fixed detections."""

    model_format = 'inprocess_json'

    def __init__(self, tps: list[int], *, batches: int = 3, hold_at: tuple[int, int] | None = None) -> None:
        super().__init__(save_checkpoint=write_json_model)
        self.tps = tps
        self.batches = batches
        self.hold_at = hold_at  # (epoch, batch) where the loop waits until a stop or abort is requested
        self.holding = threading.Event()

    def fit(self, run: TrainingRun, hooks: TrainingHooks) -> None:
        model = {'epoch': None}
        hooks.train_begin(model=model)
        for epoch in hooks.epochs(len(self.tps)):
            for batch in hooks.batches(range(self.batches)):
                model['epoch'] = epoch
                if (epoch, batch) == self.hold_at:
                    self.holding.set()
                    assert run.wait_for_stop(JOIN_TIMEOUT), 'the test never stopped the training'
            hooks.log(confusion_matrix={c.id: {'tp': self.tps[epoch], 'fp': 2, 'fn': 2} for c in run.categories})

    def detect(
        self, run: TrainingRun, model_info: ModelInformation, model_folder: Path, image_paths: Sequence[Path]
    ) -> list[Detections]:
        return [fixed_detections(model_info, path.stem) for path in image_paths]


def stored_model_file(loop: LocalLoop, training_number: int, name: str) -> bytes:
    """A file of the model the Loop stored for the training (asserting the zip holds it and model.json only)."""
    (model,) = [m for m in loop.store.models(ORGANIZATION, PROJECT) if m['training_number'] == training_number]
    with zipfile.ZipFile(loop.store.model_path(model['id'], LoopLogic.model_format)) as archive:
        assert sorted(archive.namelist()) == ['model.json', name]
        return archive.read(name)


def test_a_full_in_process_training_on_the_trainer_node_against_the_local_loop(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]
) -> None:
    logic = LoopLogic(tps=[2, 5, 3])
    node = make_trainer(local_loop, logic)
    result = begin(local_loop, node)
    wait_idle(node)
    assert node.status().errors == {}
    updates = local_loop.store.training_updates(ORGANIZATION, PROJECT)
    assert [u['best_epoch'] for u in updates] in ([0, 1], [1])  # the newest state only, if sends overlapped
    categories = [c['id'] for c in result['details']['categories']]
    assert categories
    assert updates[-1]['confusion_matrix'] == {c: {'tp': 5, 'fp': 2, 'fn': 2} for c in categories}
    assert stored_uploads(local_loop, result['training_number']) == {LoopLogic.model_format: 1}
    assert json.loads(stored_model_file(local_loop, result['training_number'], 'model.pt')) == {'epoch': 1}
    posted = [image_id for post in accepted_detection_posts(local_loop) for image_id in post]
    assert sorted(posted) == sorted(project_image_ids(local_loop))


def test_stop_training_on_the_node_uploads_the_best_model_so_far(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]
) -> None:
    logic = LoopLogic(tps=[4, 6, 1, 9, 9], batches=2, hold_at=(2, 1))  # held inside epoch 2: epoch 1 is the best
    node = make_trainer(local_loop, logic)
    result = begin(local_loop, node)
    wait_for(logic.holding.is_set, what='the loop to reach epoch 2')
    assert node.status().state == 'running'
    assert node.stop_training()
    wait_idle(node)
    assert node.status().errors == {}
    assert local_loop.store.training_updates(ORGANIZATION, PROJECT)[-1]['best_epoch'] == 1
    assert stored_uploads(local_loop, result['training_number']) == {LoopLogic.model_format: 1}
    assert json.loads(stored_model_file(local_loop, result['training_number'], 'model.pt')) == {'epoch': 1}
