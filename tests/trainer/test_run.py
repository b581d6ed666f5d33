"""``Run`` and its metrics publisher without a node: ``report_best`` never blocks, the sender thread sends at most
once per interval and always the newest state, failures are retried, ``flush`` sends what is left, an unsent
state survives on disk; stop, abort and shutdown flags."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from llnode.schema import Category, TrainingDetails
from llnode.trainer import BestState, TrainingInterrupted
from llnode.trainer.run import PENDING_STATE_FILE, MetricsPublisher, Run
from llnode.trainer.training import Training
from tests.polling import wait_for


def state(epoch: int) -> BestState:
    return BestState({'c1': {'tp': epoch, 'fp': 1, 'fn': 1}}, epoch=epoch, meta_information={'weights': f'w{epoch}'})


class Recorder:
    """A ``send`` that records what it got; it can block until released, or fail."""

    def __init__(self, *, ok: bool = True) -> None:
        self.sent: list[int] = []
        self.ok = ok
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, best: BestState) -> bool:
        self.entered.set()
        self.release.wait(10)
        with self.lock:
            self.sent.append(best.epoch or 0)
        return self.ok


def test_report_returns_at_once_and_the_sender_skips_to_the_newest_state(tmp_path: Path) -> None:
    send = Recorder()
    send.release.clear()
    published: list[int] = []
    publisher = MetricsPublisher(
        send, interval=0.0, name='test-metrics', on_published=lambda s: published.append(s.epoch or 0)
    )
    started = time.monotonic()
    publisher.report(state(1))
    assert send.entered.wait(5), 'the sender thread sends the first state'
    for epoch in range(2, 6):
        publisher.report(state(epoch))  # the first send is stuck in the network
    assert time.monotonic() - started < 0.5
    send.release.set()
    wait_for(lambda: published == [1, 5], what='the first and the newest state')
    assert publisher.pending is None
    assert publisher.close()
    assert send.sent == [1, 5]


def test_sends_are_at_most_one_per_interval() -> None:
    send = Recorder()
    publisher = MetricsPublisher(send, interval=1.0, name='test-metrics-interval')
    publisher.report(state(1))
    wait_for(lambda: send.sent == [1], what='the first send')
    publisher.report(state(2))
    time.sleep(0.1)  # within the interval nothing more may be sent (a negative check needs a pause)
    assert send.sent == [1]
    wait_for(lambda: send.sent == [1, 2], what='the second send after the interval')
    publisher.close()


def test_a_failed_send_keeps_the_state_and_flush_raises(tmp_path: Path) -> None:
    send = Recorder(ok=False)
    publisher = MetricsPublisher(send, interval=0.0, name='test-metrics-fail')
    publisher.report(state(1))
    wait_for(lambda: send.sent, what='a send attempt')
    publisher.close()
    assert publisher.pending is not None
    with pytest.raises(ConnectionError):
        publisher.flush()
    send.ok = True
    assert publisher.flush() is True
    assert publisher.pending is None
    assert publisher.flush() is False  # nothing left


def test_an_unsent_state_survives_on_disk(tmp_path: Path) -> None:
    path = tmp_path / PENDING_STATE_FILE
    send = Recorder(ok=False)
    publisher = MetricsPublisher(send, interval=0.0, name='test-metrics-disk', pending_path=path)
    publisher.report(state(7))
    wait_for(path.exists, what='the state on disk')
    publisher.close()
    again = MetricsPublisher(Recorder(), interval=0.0, name='test-metrics-disk-2', pending_path=path)
    assert again.pending == state(7)
    assert again.flush()
    assert not path.exists()


def test_a_state_that_is_not_json_stays_in_memory(tmp_path: Path) -> None:
    path = tmp_path / PENDING_STATE_FILE
    publisher = MetricsPublisher(Recorder(ok=False), interval=0.0, name='test-metrics-mem', pending_path=path)
    publisher.report(BestState({'c1': {'tp': 1, 'fp': 0, 'fn': 0}}, meta_information={'model': object()}))
    publisher.close()
    assert not path.exists()
    assert publisher.pending is not None


def test_report_refuses_what_is_not_a_best_state() -> None:
    publisher = MetricsPublisher(Recorder(), interval=0.0, name='test-metrics-bad')
    with pytest.raises(TypeError):
        publisher.report({'c1': {}})  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        publisher.report(BestState([1, 2]))  # type: ignore[arg-type]
    publisher.close()


def new_run(tmp_path: Path) -> Run:
    details = TrainingDetails([Category('c1', 'cat')], 1, '', {'x': 1})
    training = Training.create(tmp_path, 'zauberzeug', 'demo', details)
    return Run(training, node_uuid='u', node_name='n', send_metrics=Recorder(), metrics_interval=0.0)


def test_stop_abort_and_shutdown_flags(tmp_path: Path) -> None:
    run = new_run(tmp_path)
    run.check_stop()
    assert not run.wait_for_stop(0.01)
    run.request_stop()
    assert run.stop_requested
    assert not run.cancelled
    assert run.wait_for_stop(0)
    with pytest.raises(TrainingInterrupted) as stopped:
        run.check_stop()
    assert stopped.value.aborted is False
    run.request_abort()
    with pytest.raises(TrainingInterrupted) as aborted:
        run.check_stop()
    assert aborted.value.aborted is True
    assert run.cancel_event.is_set()

    shut = new_run(tmp_path)
    shut.request_shutdown()
    assert shut.abort_requested
    assert shut.shutdown_requested
    assert shut.cancelled


def test_progress_is_a_fraction(tmp_path: Path) -> None:
    run = new_run(tmp_path)
    run.set_progress(0.25)
    assert run.progress == 0.25
    run.set_progress(7)
    assert run.progress == 1.0
    run.set_progress(None)
    assert run.progress is None
    for bad in (float('nan'), True, '0.5'):
        with pytest.raises(ValueError):
            run.set_progress(bad)  # type: ignore[arg-type]


def test_the_run_carries_the_training_facts(tmp_path: Path) -> None:
    run = new_run(tmp_path)
    assert (run.organization, run.project, run.training_number, run.hyperparameters) == (
        'zauberzeug',
        'demo',
        1,
        {'x': 1},
    )
    assert run.image_data == []
    assert run.base_model_folder is None
    (run.training_folder / 'base_model.json').write_text('{}')
    assert run.base_model_folder == run.training_folder
    assert (run.node_uuid, run.node_name) == ('u', 'n')
