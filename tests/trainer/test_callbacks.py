"""Training callbacks: execution order, rank restriction, hook order and arguments, best-model tracking and the
Loop metrics, progress, stop checks, and the crash safety of the best checkpoint (a SIGKILLed writer)."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import IO, Any

import pytest

from llnode.schema import Category
from llnode.trainer.callbacks import (
    ORDER_STOP_CHECK,
    BestCheckpoint,
    BestModelTracker,
    Callback,
    ConfusionCounter,
    LoopMetricsReporter,
    ProgressReporter,
    StopCheck,
    current_rank,
    f1_score,
    ordered,
    validate_confusion_matrix,
)
from llnode.trainer.inprocess import TrainingHooks
from llnode.trainer.logic import TrainingInterrupted
from llnode.trainer.metrics import macro_f1
from tests.trainer.fake_run import FakeRun as SharedFakeRun

CATEGORIES = [Category(id='uuid-cat', name='cat'), Category(id='uuid-dog', name='dog')]


class FakeRun(SharedFakeRun):
    """The shared fake run on ``folder`` with this file's categories."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder, categories=CATEGORIES)


class Recorder(Callback):
    """Records every hook call as (name, hook, index, logs as a plain dict) into a shared list."""

    def __init__(self, name: str, calls: list[tuple[Any, ...]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.name = name
        self.calls = calls

    def on_train_begin(self, run: Any, logs: Any) -> None:
        self.calls.append((self.name, 'train_begin', None, dict(logs)))

    def on_epoch_begin(self, run: Any, epoch: int, logs: Any) -> None:
        self.calls.append((self.name, 'epoch_begin', epoch, dict(logs)))

    def on_batch_end(self, run: Any, batch: int, logs: Any) -> None:
        self.calls.append((self.name, 'batch_end', batch, dict(logs)))

    def on_epoch_end(self, run: Any, epoch: int, logs: Any) -> None:
        self.calls.append((self.name, 'epoch_end', epoch, dict(logs)))

    def on_train_end(self, run: Any, logs: Any) -> None:
        self.calls.append((self.name, 'train_end', None, dict(logs)))

    def on_exception(self, run: Any, error: BaseException) -> None:
        self.calls.append((self.name, 'exception', None, {'error': error}))


def matrix(tp: int, fp: int = 0, fn: int = 0, key: str = 'uuid-cat') -> dict[str, dict[str, int]]:
    return {key: {'tp': tp, 'fp': fp, 'fn': fn}}


def write_text(model: Any, handle: IO[bytes]) -> None:
    handle.write(json.dumps(model).encode())


# ---------------------------------------------------------------------------------------------------------------
# order and ranks


def test_ordered_sorts_by_execution_order_and_keeps_ties_in_given_order() -> None:
    calls: list[tuple[Any, ...]] = []
    given = [
        Recorder('late', calls, execution_order=5),
        Recorder('tie-a', calls),
        Recorder('early', calls, execution_order=-3),
        Recorder('tie-b', calls),
        Recorder('tie-c', calls, execution_order=0),
    ]
    assert [cb.name for cb in ordered(given)] == ['early', 'tie-a', 'tie-b', 'tie-c', 'late']  # type: ignore[attr-defined]


def test_class_attribute_settings_work_without_calling_super_init() -> None:
    class Plain(Callback):
        execution_order = 7
        ranks = (0, 2)

        def __init__(self) -> None:  # deliberately no super().__init__()
            self.seen = 0

    plain = Plain()
    assert ordered([plain]) == [plain]
    assert plain.runs_on(2) and not plain.runs_on(1)


@pytest.mark.parametrize(
    ('make', 'error'),
    [
        (object, TypeError),
        (lambda: Callback(execution_order='1'), TypeError),  # type: ignore[arg-type]
        (lambda: Callback(execution_order=True), TypeError),
        (lambda: Callback(ranks=(-1,)), ValueError),
        (lambda: Callback(ranks=('0',)), ValueError),  # type: ignore[arg-type]
    ],
)
def test_bad_callbacks_are_refused_with_a_clear_error(make: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match=r'Callback|execution_order|ranks'):
        ordered([make()])


def test_every_moment_runs_the_callbacks_in_execution_order(tmp_path: Path) -> None:
    calls: list[tuple[Any, ...]] = []
    hooks = TrainingHooks(
        FakeRun(tmp_path),
        [Recorder('b', calls, execution_order=10), Recorder('a', calls, execution_order=-10), Recorder('c', calls)],
        rank=0,
    )
    hooks.train_begin()
    hooks.epoch_begin(0)
    hooks.batch_end(0)
    hooks.epoch_end(0)
    hooks.train_end()
    moments = ['train_begin', 'epoch_begin', 'batch_end', 'epoch_end', 'train_end']
    assert [(name, hook) for name, hook, _, _ in calls] == [(n, m) for m in moments for n in ('a', 'c', 'b')]


def test_current_rank_comes_from_env_rank_else_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv('RANK', raising=False)
    assert current_rank() == 0
    monkeypatch.setenv('RANK', '3')
    assert current_rank() == 3
    assert current_rank({'RANK': ' 2 '}) == 2
    for bad in ('one', '-1', '1.5'):
        with pytest.raises(ValueError, match='RANK must be a non-negative integer'):
            current_rank({'RANK': bad})


@pytest.mark.parametrize(('rank', 'expected'), [('0', ['all', 'rank0']), ('1', ['all', 'rank1'])])
def test_callbacks_limited_to_a_rank_run_only_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rank: str, expected: list[str]
) -> None:
    monkeypatch.setenv('RANK', rank)
    calls: list[tuple[Any, ...]] = []
    callbacks = [Recorder('all', calls), Recorder('rank0', calls, ranks=(0,)), Recorder('rank1', calls, ranks=[1])]
    hooks = TrainingHooks(FakeRun(tmp_path), callbacks)
    assert hooks.rank == int(rank)
    for epoch in hooks.epochs(1):
        hooks.log(confusion_matrix=matrix(epoch))
    hooks.train_end()
    assert sorted({name for name, *_ in calls}) == expected
    assert len(calls) == 4 * len(expected)  # train_begin, epoch_begin, epoch_end, train_end each


def test_bad_env_rank_fails_the_driver_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv('RANK', 'zero')
    with pytest.raises(ValueError, match="RANK must be a non-negative integer, got 'zero'"):
        TrainingHooks(FakeRun(tmp_path), [])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return int(sock.getsockname()[1])


def test_an_initialised_torch_process_group_wins_over_env_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip('torch')
    dist = torch.distributed
    if not dist.is_available() or dist.is_initialized():
        pytest.skip('torch.distributed unavailable or already initialised in this process')
    monkeypatch.setenv('RANK', '5')
    assert current_rank() == 5
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{free_port()}', rank=0, world_size=1)
    try:
        assert current_rank() == 0
    finally:
        dist.destroy_process_group()
    assert current_rank() == 5


# ---------------------------------------------------------------------------------------------------------------
# hooks and their arguments


def test_explicit_calls_give_each_hook_its_index_and_logs(tmp_path: Path) -> None:
    calls: list[tuple[Any, ...]] = []
    run = FakeRun(tmp_path)
    hooks = TrainingHooks(run, [Recorder('r', calls)], rank=0)
    model = {'weights': 1}
    hooks.train_begin(model=model, epochs=2, batches=2, note='n')
    for epoch in range(2):
        hooks.epoch_begin(epoch)
        for batch in range(2):
            hooks.log(loss=epoch + batch / 10)
            hooks.batch_end(batch, {'extra': batch})
        hooks.log(confusion_matrix=matrix(epoch))
        hooks.epoch_end(epoch)
    hooks.train_end({'final': True})

    context = {'model': model, 'epochs': 2, 'batches': 2, 'note': 'n'}
    expected: list[tuple[Any, ...]] = [('r', 'train_begin', None, context)]
    for epoch in range(2):
        expected.append(('r', 'epoch_begin', epoch, {**context, 'epoch': epoch}))
        for batch in range(2):
            logs = {**context, 'epoch': epoch, 'loss': epoch + batch / 10, 'extra': batch}
            expected.append(('r', 'batch_end', batch, logs))
        expected.append(('r', 'epoch_end', epoch, {**context, 'epoch': epoch, 'confusion_matrix': matrix(epoch)}))
    expected.append(('r', 'train_end', None, {**context, 'epoch': 1, 'final': True, 'stopped': False}))
    assert calls == expected
    assert calls[0][3]['model'] is model


def test_iterator_helpers_call_the_same_hooks_as_explicit_calls(tmp_path: Path) -> None:
    calls: list[tuple[Any, ...]] = []
    hooks = TrainingHooks(FakeRun(tmp_path), [Recorder('r', calls)], rank=0)
    seen = []
    for epoch in hooks.epochs(3, start=1):
        for item in hooks.batches(['x', 'y']):
            seen.append((epoch, item))
            hooks.log(loss=len(seen))
    hooks.train_end()
    assert seen == [(1, 'x'), (1, 'y'), (2, 'x'), (2, 'y')]
    assert [(hook, index) for _, hook, index, _ in calls] == [
        ('train_begin', None),
        ('epoch_begin', 1),
        ('batch_end', 0),
        ('batch_end', 1),
        ('epoch_end', 1),
        ('epoch_begin', 2),
        ('batch_end', 0),
        ('batch_end', 1),
        ('epoch_end', 2),
        ('train_end', None),
    ]
    batch_logs = [logs for _, hook, _, logs in calls if hook == 'batch_end']
    assert [logs['loss'] for logs in batch_logs] == [1, 2, 3, 4]
    assert all(logs['epochs'] == 3 and logs['batches'] == 2 for logs in batch_logs)
    assert 'loss' not in calls[4][3]  # a batch's logged values go to that batch only


def test_logs_are_read_only_for_callbacks(tmp_path: Path) -> None:
    class Writer(Callback):
        def on_batch_end(self, run: Any, batch: int, logs: Any) -> None:
            logs['loss'] = 0

    hooks = TrainingHooks(FakeRun(tmp_path), [Writer()], rank=0)
    with pytest.raises(TypeError):
        hooks.batch_end(0, {'loss': 1.0})


def test_misuse_of_the_driver_is_refused(tmp_path: Path) -> None:
    hooks = TrainingHooks(FakeRun(tmp_path), [], rank=0)
    with pytest.raises(ValueError, match='epoch must be an int >= 0'):
        hooks.epoch_begin(-1)
    with pytest.raises(ValueError, match='epochs must be an int >= 1'):
        next(hooks.epochs(0))
    with pytest.raises(RuntimeError, match='already called'):
        hooks.train_begin()  # epoch_begin above began the training
    hooks.train_end()
    with pytest.raises(RuntimeError, match='already ended'):
        hooks.batch_end(0)
    with pytest.raises(RuntimeError, match='already called'):
        hooks.train_end()


# ---------------------------------------------------------------------------------------------------------------
# confusion matrices, scores, best-model tracking and the Loop metrics


def test_scores() -> None:
    assert f1_score(matrix(3, 1, 2)) == pytest.approx(6 / 9)
    both = {**matrix(3, 1, 2), **matrix(0, 2, 0, key='uuid-dog')}
    assert f1_score(both) == pytest.approx(6 / 11)  # pooled counts
    assert macro_f1(both) == pytest.approx((6 / 9 + 0) / 2)
    # a category with no counts scores 0 and counts in the mean (the reference 0.27's rule)
    assert macro_f1({**matrix(4), **matrix(0, key='uuid-dog')}) == 0.5
    assert f1_score({}) == 0.0
    assert macro_f1(matrix(0)) == 0.0


@pytest.mark.parametrize(
    ('bad', 'message'),
    [
        ([], 'must be a dict'),
        ({'': {'tp': 1, 'fp': 0, 'fn': 0}}, 'category uuids'),
        ({'c': 3}, 'must be a dict with tp, fp, fn'),
        ({'c': {'tp': 1, 'fp': 0}}, 'exactly the keys tp, fp, fn'),
        ({'c': {'tp': 1, 'fp': 0, 'fn': 0, 'tn': 4}}, 'exactly the keys tp, fp, fn'),
        ({'c': {'tp': 1.5, 'fp': 0, 'fn': 0}}, 'must be an integer'),
        ({'c': {'tp': True, 'fp': 0, 'fn': 0}}, 'must be an integer'),
        ({'c': {'tp': -1, 'fp': 0, 'fn': 0}}, 'must not be negative'),
    ],
)
def test_bad_confusion_matrices_are_refused(bad: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_confusion_matrix(bad)


def test_numpy_integers_are_accepted_as_plain_ints() -> None:
    np = pytest.importorskip('numpy')
    result = validate_confusion_matrix({'c': {'tp': np.int64(2), 'fp': np.int32(0), 'fn': 1}})
    assert result == {'c': {'tp': 2, 'fp': 0, 'fn': 1}}
    assert type(result['c']['tp']) is int


def test_confusion_counter_from_per_image_matches() -> None:
    counter = ConfusionCounter(CATEGORIES)
    counter.add_image(predicted=['uuid-cat', 'uuid-cat'], expected=['uuid-cat'])
    counter.add_image(predicted=[], expected=['uuid-dog', 'uuid-cat'])
    counter.add('uuid-dog', tp=2, fp=1)
    assert counter.as_dict() == {'uuid-cat': {'tp': 1, 'fp': 1, 'fn': 1}, 'uuid-dog': {'tp': 2, 'fp': 1, 'fn': 1}}
    assert ConfusionCounter(['x']).as_dict() == {'x': {'tp': 0, 'fp': 0, 'fn': 0}}
    with pytest.raises(ValueError, match='non-negative int'):
        counter.add('uuid-cat', tp=-1)


def metrics_hooks(
    run: FakeRun, tmp_path: Path, rank: int | None = 0, **tracker_kwargs: Any
) -> tuple[TrainingHooks, BestModelTracker]:
    tracker = BestModelTracker(**tracker_kwargs)
    checkpoint = BestCheckpoint(tmp_path / 'ckpt' / 'model.pt', tracker, save=write_text)
    return TrainingHooks(run, [tracker, checkpoint, LoopMetricsReporter(tracker, checkpoint)], rank=rank), tracker


def test_only_new_best_states_are_reported_to_the_loop(tmp_path: Path) -> None:
    run = FakeRun(tmp_path)
    hooks, tracker = metrics_hooks(run, tmp_path)
    tps = [2, 1, 6, 6, 4, None, 7]  # F1 with fp=fn=2: 0.5, 0.33, 0.75, 0.75 (a tie is no new best), 0.67, -, 0.78
    hooks.train_begin(model={'epoch': None})
    for epoch, tp in enumerate(tps):
        hooks.model = {'epoch': epoch}
        hooks.epoch_end(epoch, None if tp is None else {'confusion_matrix': matrix(tp, 2, 2)})
    assert [state.epoch for state in run.reported] == [0, 2, 6]
    assert [state.confusion_matrix for state in run.reported] == [matrix(tps[e], 2, 2) for e in (0, 2, 6)]  # type: ignore[arg-type]
    assert run.reported[1].meta_information == {
        'score': pytest.approx(0.75),
        'checkpoint': str(tmp_path / 'ckpt' / 'model.pt'),
    }
    assert (tracker.best_epoch, tracker.best_score) == (6, pytest.approx(14 / 18))
    assert json.loads((tmp_path / 'ckpt' / 'model.pt').read_text()) == {'epoch': 6}


def test_a_custom_score_decides_the_best(tmp_path: Path) -> None:
    run = FakeRun(tmp_path)
    hooks, _ = metrics_hooks(run, tmp_path, score=lambda m: -m['uuid-cat']['fp'])  # fewest false positives
    for epoch, fp in enumerate([5, 3, 4, 1]):
        hooks.epoch_end(epoch, {'confusion_matrix': matrix(1, fp), 'model': {'epoch': epoch}})
    assert [state.epoch for state in run.reported] == [0, 1, 3]


def test_names_instead_of_uuids_are_refused_with_the_uuid_to_use(tmp_path: Path) -> None:
    hooks, _ = metrics_hooks(FakeRun(tmp_path), tmp_path)
    with pytest.raises(ValueError, match="'cat' is a name \\(use 'uuid-cat'\\)"):
        hooks.epoch_end(0, {'confusion_matrix': matrix(1, key='cat'), 'model': {}})


def test_an_unknown_category_key_is_reported_but_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = FakeRun(tmp_path)
    hooks, _ = metrics_hooks(run, tmp_path)
    with caplog.at_level(logging.WARNING, logger='tests.trainer.fake_run'):
        for epoch in range(3):
            hooks.epoch_end(epoch, {'confusion_matrix': matrix(epoch + 1, 1, 1, key='uuid-other'), 'model': {}})
    assert len(run.reported) == 3
    assert [r.getMessage() for r in caplog.records].count(
        "confusion matrix key 'uuid-other' is not a category of this training"
    ) == 1


def test_a_nan_score_is_an_error(tmp_path: Path) -> None:
    hooks, _ = metrics_hooks(FakeRun(tmp_path), tmp_path, score=lambda m: float('nan'))
    with pytest.raises(ValueError, match='NaN'):
        hooks.epoch_end(0, {'confusion_matrix': matrix(1)})


def test_metrics_and_checkpoint_run_only_on_rank_zero(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv('RANK', '1')
    run = FakeRun(tmp_path)
    hooks, tracker = metrics_hooks(run, tmp_path, rank=None)  # the rank from the environment
    assert hooks.rank == 1
    hooks.epoch_end(0, {'confusion_matrix': matrix(1), 'model': {'epoch': 0}})
    hooks.train_end()
    assert tracker.best_epoch == 0  # the tracker runs on every rank
    assert run.reported == []
    assert not (tmp_path / 'ckpt').exists()


# ---------------------------------------------------------------------------------------------------------------
# progress and stop checks


def test_progress_from_epoch_and_batch_counts(tmp_path: Path) -> None:
    run = FakeRun(tmp_path)
    hooks = TrainingHooks(run, [ProgressReporter()], rank=0)
    for _ in hooks.epochs(2):
        for _ in hooks.batches(range(4)):
            pass
    assert run.progress == pytest.approx([1 / 8, 2 / 8, 3 / 8, 4 / 8, 4 / 8, 5 / 8, 6 / 8, 7 / 8, 1, 1])


def test_no_progress_without_totals(tmp_path: Path) -> None:
    run = FakeRun(tmp_path)
    hooks = TrainingHooks(run, [ProgressReporter()], rank=0)
    hooks.epoch_begin(0)
    hooks.batch_end(0)
    hooks.epoch_end(0)
    assert run.progress == []


@pytest.mark.parametrize('aborted', [False, True])
def test_stop_check_raises_at_the_next_moment_after_the_other_callbacks(tmp_path: Path, aborted: bool) -> None:
    calls: list[tuple[Any, ...]] = []
    run = FakeRun(tmp_path)
    hooks = TrainingHooks(run, [StopCheck(), Recorder('user', calls, execution_order=ORDER_STOP_CHECK - 1)], rank=0)
    hooks.epoch_begin(0)
    hooks.batch_end(0)
    (run.abort_event if aborted else run.stop_event).set()
    with pytest.raises(TrainingInterrupted) as raised:
        hooks.batch_end(1)
    assert raised.value.aborted is aborted
    assert [(hook, index) for _, hook, index, _ in calls][-1] == ('batch_end', 1)  # the user callback ran first
    with pytest.raises(TrainingInterrupted):
        hooks.epoch_end(0)
    assert hooks.should_stop


# ---------------------------------------------------------------------------------------------------------------
# the best checkpoint


def test_a_failed_write_keeps_the_previous_checkpoint_and_leaves_no_temp_file(tmp_path: Path) -> None:
    def half_then_fail(model: Any, handle: IO[bytes]) -> None:
        if model.get('fail'):
            handle.write(b'half a checkpo')
            raise OSError('disk full')
        write_text(model, handle)

    run = FakeRun(tmp_path)
    tracker = BestModelTracker()
    checkpoint = BestCheckpoint(tmp_path / 'ckpt' / 'model.pt', tracker, save=half_then_fail)
    hooks = TrainingHooks(run, [tracker, checkpoint], rank=0)
    with pytest.raises(OSError, match='disk full'):
        hooks.epoch_end(0, {'confusion_matrix': matrix(1, 1, 1), 'model': {'fail': True}})
    assert sorted(os.listdir(tmp_path / 'ckpt')) == []  # absent, not half written
    hooks.epoch_end(1, {'confusion_matrix': matrix(2, 1, 1), 'model': {'epoch': 1}})
    with pytest.raises(OSError, match='disk full'):
        hooks.epoch_end(2, {'confusion_matrix': matrix(3, 1, 1), 'model': {'fail': True}})
    assert sorted(os.listdir(tmp_path / 'ckpt')) == ['best.json', 'model.pt']
    assert json.loads((tmp_path / 'ckpt' / 'model.pt').read_text()) == {'epoch': 1}
    assert json.loads((tmp_path / 'ckpt' / 'best.json').read_text())['epoch'] == 1


def test_train_end_saves_the_model_when_no_epoch_was_scored(tmp_path: Path) -> None:
    run = FakeRun(tmp_path)
    tracker = BestModelTracker()
    path = tmp_path / 'ckpt' / 'model.pt'
    hooks = TrainingHooks(run, [tracker, BestCheckpoint(path, tracker, save=write_text)], rank=0)
    hooks.train_begin(model={'final': 1})
    hooks.epoch_end(0)
    hooks.train_end()
    assert json.loads(path.read_text()) == {'final': 1}
    assert not path.with_name('best.json').exists()


def test_without_a_model_the_checkpoint_warns_once_and_writes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = FakeRun(tmp_path)
    tracker = BestModelTracker()
    hooks = TrainingHooks(run, [tracker, BestCheckpoint(tmp_path / 'm.pt', tracker, save=write_text)], rank=0)
    with caplog.at_level(logging.WARNING, logger='tests.trainer.fake_run'):
        hooks.epoch_end(0, {'confusion_matrix': matrix(1)})
        hooks.epoch_end(1, {'confusion_matrix': matrix(2)})
        hooks.train_end()
    assert len([r for r in caplog.records if 'no model to checkpoint' in r.getMessage()]) == 1
    assert not (tmp_path / 'm.pt').exists()


def test_an_earlier_best_seeds_the_tracker_and_a_corrupt_record_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / 'ckpt' / 'model.pt'

    def attempt(scores: list[int]) -> FakeRun:
        run = FakeRun(tmp_path)
        tracker = BestModelTracker()
        hooks = TrainingHooks(run, [tracker, BestCheckpoint(path, tracker, save=write_text)], rank=0)
        for epoch, tp in enumerate(scores):
            hooks.epoch_end(epoch, {'confusion_matrix': matrix(tp, 1, 1), 'model': {'tp': tp}})
        return run

    attempt([5])
    (path.parent / '.model.pt.abc123.tmp').write_bytes(b'leftover of a crash')
    attempt([3])  # worse than the earlier attempt's best: the checkpoint stays
    assert json.loads(path.read_text()) == {'tp': 5}
    assert not (path.parent / '.model.pt.abc123.tmp').exists()
    path.with_name('best.json').write_text('{"score": ')
    with caplog.at_level(logging.WARNING, logger='tests.trainer.fake_run'):
        attempt([3])
    assert json.loads(path.read_text()) == {'tp': 3}
    assert any('ignoring unreadable' in r.getMessage() for r in caplog.records)


CHECKPOINT_WRITER = textwrap.dedent(
    """
    import logging, sys
    from pathlib import Path
    from llnode.trainer.callbacks import BestCheckpoint, BestModelTracker
    from llnode.trainer.inprocess import TrainingHooks

    class Run:
        categories = []
        logger = logging.getLogger('writer')
        stop_requested = False

    SIZE = 2 * 1024 * 1024

    def save(version, handle):
        handle.write(b'V%08d' % version)
        chunk = bytes([version % 251]) * 65536
        for _ in range(SIZE // 65536):
            handle.write(chunk)
        handle.write(b'END')

    tracker = BestModelTracker()
    hooks = TrainingHooks(Run(), [tracker, BestCheckpoint(Path(sys.argv[1]), tracker, save=save)], rank=0)
    hooks.train_begin()  # seeds the tracker from an earlier round: go on after its best epoch
    epoch = 0 if tracker.best_epoch is None else tracker.best_epoch + 1
    while True:
        hooks.epoch_end(epoch, {'confusion_matrix': {'c': {'tp': epoch + 1, 'fp': 0, 'fn': 1}}, 'model': epoch})
        print(epoch, flush=True)
        epoch += 1
    """
)


def check_complete_checkpoint(path: Path) -> int:
    data = path.read_bytes()
    version = int(data[1:9])
    assert data[:1] == b'V' and data.endswith(b'END')
    assert len(data) == 9 + 2 * 1024 * 1024 + 3
    assert data[9:-3] == bytes([version % 251]) * (2 * 1024 * 1024)
    return version


def test_a_sigkilled_checkpoint_writer_leaves_a_complete_checkpoint(tmp_path: Path) -> None:
    """The file is always one complete version (never half of one), its record is that version or the one before,
    and the temp leftovers of the killed write are removed when the next training begins."""
    rng = random.Random(5)
    path = tmp_path / 'ckpt' / 'model.pt'
    for round_ in range(6):
        process = subprocess.Popen(
            [sys.executable, '-c', CHECKPOINT_WRITER, str(path)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert process.stdout is not None
            for _ in range(round_ % 3 + 1):  # wait for one to three finished saves
                line = process.stdout.readline()
                assert line, 'the writer ended early'
            last_printed = int(line)
            threading.Event().wait(rng.uniform(0, 0.03))  # a random moment inside a later write
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
            if process.stdout is not None:
                process.stdout.close()
        version = check_complete_checkpoint(path)
        assert version >= last_printed
        record = json.loads(path.with_name('best.json').read_text())
        assert record['epoch'] in (version, version - 1)
    run = FakeRun(tmp_path)
    tracker = BestModelTracker()
    BestCheckpoint(path, tracker, save=write_text).on_train_begin(run, {})  # type: ignore[arg-type]
    assert sorted(p.name for p in path.parent.iterdir()) == ['best.json', 'model.pt']
    assert tracker.best_epoch == json.loads(path.with_name('best.json').read_text())['epoch']
