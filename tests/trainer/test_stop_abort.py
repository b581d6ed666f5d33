"""Stop versus abort, sent by the Loop over Socket.IO (loop-protocol §3.5.4/§3.5.5, changes-0.27 §5.3): a stop in
``running`` keeps and uploads the model, a stop elsewhere is ignored, an abort discards the training in any state
(also during a retry back-off) without uploading anything more."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from llnode.localloop import LocalLoop
from llnode.trainer import TrainerNode
from tests.polling import wait_for
from tests.trainer.trainer_support import (
    FORMATS,
    ORGANIZATION,
    PROJECT,
    ScriptedLogic,
    accepted_detection_posts,
    begin,
    stored_uploads,
    wait_idle,
    wait_state,
)


def test_stop_while_running_uploads_the_model_and_finishes(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]
) -> None:
    logic = ScriptedLogic(forever=True, epoch_seconds=0.02)
    node = make_trainer(local_loop, logic)
    number = begin(local_loop, node)['training_number']
    wait_for(lambda: logic.published, what='a first best state')
    ack = local_loop.send(node.uuid, 'stop_training')
    assert ack == {'success': True, 'error_msg': None, 'payload': None}
    wait_idle(node)
    assert logic.count('stop') == 1
    assert logic.count('abort') == 0
    assert stored_uploads(local_loop, number) == {f: 1 for f in FORMATS}
    assert accepted_detection_posts(local_loop)
    assert node.status().errors == {}
    # the newest state reached the Loop (the sync stage sends what is left)
    updates = local_loop.store.training_updates(ORGANIZATION, PROJECT)
    assert updates[-1]['best_epoch'] == max(s.epoch or 0 for s in logic.published)


def test_an_error_after_a_stop_still_counts_as_finished(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]
) -> None:
    logic = ScriptedLogic(forever=True, error_on_stop=True)
    node = make_trainer(local_loop, logic)
    number = begin(local_loop, node)['training_number']
    wait_for(logic.training.is_set, what='the training to run')
    assert node.stop_training()
    wait_idle(node)
    assert logic.count('train') == 1  # not retried
    assert stored_uploads(local_loop, number) == {f: 1 for f in FORMATS}


def test_abort_while_running_discards_the_training(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]
) -> None:
    logic = ScriptedLogic(forever=True)
    node = make_trainer(local_loop, logic)
    number = begin(local_loop, node)['training_number']
    wait_for(logic.training.is_set, what='the training to run')
    assert local_loop.send(node.uuid, 'abort_training') == {'success': True, 'error_msg': None, 'payload': None}
    wait_idle(node, timeout=5)
    assert logic.count('abort') == 1
    assert logic.count('model_files') == 0
    assert logic.count('clear_training_data') == 1
    assert stored_uploads(local_loop, number) == {}
    assert accepted_detection_posts(local_loop) == []
    assert not node.machine.checkpoint.exists()
    assert node.status().state == 'idle'


def test_stop_and_abort_sent_back_to_back_are_handled_in_that_order(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]
) -> None:
    logic = ScriptedLogic(forever=True)
    node = make_trainer(local_loop, logic)
    begin(local_loop, node)
    wait_for(logic.training.is_set, what='the training to run')
    sid = local_loop.hub.resolve(node.uuid)  # type: ignore[union-attr]
    acks: list[tuple[str, Any]] = []
    for event in ('stop_training', 'abort_training'):  # one lane: the stop finds the training running
        local_loop.sio.emit(event, to=sid, callback=lambda *answer, event=event: acks.append((event, answer)))
    wait_for(lambda: len(acks) == 2, what='both acks')
    wait_idle(node, timeout=5)
    assert [call for call in logic.calls if call in ('stop', 'abort')] == ['stop', 'abort']
    assert sorted(acks) == [
        (event, ({'success': True, 'error_msg': None, 'payload': None},))
        for event in ('abort_training', 'stop_training')
    ]


def test_abort_during_a_retry_back_off_ends_at_once(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]
) -> None:
    local_loop.inject_fault('GET', r'/data$', 503, count=1000)
    node = make_trainer(local_loop, retry_delay=60.0, max_retry_delay=60.0)
    begin(local_loop, node)
    wait_for(lambda: 'prepare' in node.status().errors, what='the data download to fail')
    assert node.status().state == 'initialized'  # back where the stage started, waiting 60 s to retry
    started = time.monotonic()
    assert node.abort_training()
    wait_idle(node, timeout=5)
    assert time.monotonic() - started < 5


def test_abort_while_detecting_uploads_no_detections(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]
) -> None:
    logic = ScriptedLogic(epochs=1, detect_seconds=0.1)
    node = make_trainer(local_loop, logic, settings={'inference_batch_size': 1})
    number = begin(local_loop, node)['training_number']
    wait_for(lambda: logic.count('detect') >= 2, what='detections to run')
    assert node.abort_training()
    wait_idle(node, timeout=5)
    assert stored_uploads(local_loop, number) == {f: 1 for f in FORMATS}  # uploaded before the abort
    assert accepted_detection_posts(local_loop) == []
    assert logic.count('detect') < 10


def test_stop_outside_running_is_ignored(local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]) -> None:
    logic = ScriptedLogic(epochs=1, detect_seconds=0.05)
    node = make_trainer(local_loop, logic, settings={'inference_batch_size': 2})
    number = begin(local_loop, node)['training_number']
    wait_state(node, 'detecting')
    assert local_loop.send(node.uuid, 'stop_training') == {'success': True, 'error_msg': None, 'payload': None}
    assert not node.stop_training()
    wait_idle(node)
    assert logic.count('stop') == 0
    assert stored_uploads(local_loop, number) == {f: 1 for f in FORMATS}
    posted = [i for post in accepted_detection_posts(local_loop) for i in post]
    assert len(posted) == len(local_loop.store.image_ids(ORGANIZATION, PROJECT))


def test_stop_and_abort_without_a_training_ack_true(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]
) -> None:
    node = make_trainer(local_loop)
    for event in ('stop_training', 'abort_training'):
        assert local_loop.send(node.uuid, event) == {'success': True, 'error_msg': None, 'payload': None}
    assert not node.machine.active


def test_restart_after_training_asks_for_a_restart_after_an_abort(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]
) -> None:
    logic = ScriptedLogic(forever=True)
    node = make_trainer(local_loop, logic, settings={'restart_after_training': True})
    begin(local_loop, node)
    wait_for(logic.training.is_set, what='the training to run')
    assert node.exit_code is None
    node.abort_training()
    wait_for(lambda: node.exit_code == 0, what='the restart request')
