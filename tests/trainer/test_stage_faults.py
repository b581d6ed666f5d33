"""Faults during the stages, injected into the local Loop: 5xx and 429 during the data download, the model upload
and the detections upload are ridden out (each format and each detections slice stored exactly once); other 4xx
on uploads and critical errors give the training up at once; ordinary errors are retried and given up after
``max_attempts``, with the error kept in the status."""

from __future__ import annotations

from collections.abc import Callable

import pytest

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
    project_image_ids,
    stored_uploads,
    wait_idle,
)

MODEL_PUT = r'/trainings/\d+/models/latest/{}/file$'


def uploads_of(loop: LocalLoop, number: int) -> list[tuple[str, int]]:
    return [
        (u['format'], u['status'])
        for u in loop.store.model_uploads(ORGANIZATION, PROJECT)
        if u['training_number'] == number
    ]


def hits(loop: LocalLoop) -> list[int]:
    return [rule['hits'] for rule in loop.fault_rules()]


# ---------------------------------------------------------------------- model upload


def test_5xx_during_the_model_upload_is_retried_without_uploading_a_format_twice(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]
) -> None:
    local_loop.inject_fault('PUT', MODEL_PUT.format('mocked_2'), 503, count=2)
    node = make_trainer(local_loop, ScriptedLogic(epochs=1))
    number = begin(local_loop, node)['training_number']
    wait_idle(node)
    assert hits(local_loop) == [2]
    assert uploads_of(local_loop, number) == [('mocked', 200), ('mocked_2', 200)]
    assert node.status().errors == {}
    assert len(accepted_detection_posts(local_loop)) == 1


def test_429_during_the_model_upload_waits_for_retry_after(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]
) -> None:
    local_loop.inject_fault('PUT', MODEL_PUT.format('mocked'), 429, count=3, retry_after=0)
    node = make_trainer(local_loop, ScriptedLogic(epochs=1))
    number = begin(local_loop, node)['training_number']
    wait_idle(node)
    assert hits(local_loop) == [3]
    assert stored_uploads(local_loop, number) == {f: 1 for f in FORMATS}


def test_a_409_means_the_format_is_stored_and_names_the_model_id(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]
) -> None:
    """The Loop stored the upload but its answer was lost: the retry gets 409 with the id and goes on with it."""
    local_loop.inject_fault('PUT', MODEL_PUT.format('mocked'), 502, lose_answer=True)
    node = make_trainer(local_loop, ScriptedLogic(epochs=1))
    number = begin(local_loop, node)['training_number']
    wait_idle(node)
    assert uploads_of(local_loop, number) == [('mocked', 200), ('mocked', 409), ('mocked_2', 200)]
    assert stored_uploads(local_loop, number) == {f: 1 for f in FORMATS}
    assert node.status().errors == {}
    (model,) = [m for m in local_loop.store.models(ORGANIZATION, PROJECT) if m['training_number'] == number]
    detections = local_loop.store.detections(ORGANIZATION, PROJECT)
    assert {d['box_detections'][0]['model_name'] for d in detections} == {model['version']}


def test_a_409_without_an_id_counts_as_stored(local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]) -> None:
    local_loop.inject_fault('PUT', MODEL_PUT.format('mocked_2'), 409, detail='exists already')
    node = make_trainer(local_loop, ScriptedLogic(epochs=1))
    number = begin(local_loop, node)['training_number']
    wait_idle(node)
    assert uploads_of(local_loop, number) == [('mocked', 200)]
    assert node.status().errors == {}
    assert accepted_detection_posts(local_loop)  # the id of the other format is used for detecting


@pytest.mark.parametrize('status', [400, 403, 422])
def test_other_4xx_on_the_model_upload_give_the_training_up(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode], status: int
) -> None:
    local_loop.inject_fault('PUT', MODEL_PUT.format('mocked'), status)
    node = make_trainer(local_loop, ScriptedLogic(epochs=1))
    number = begin(local_loop, node)['training_number']
    wait_idle(node)
    assert hits(local_loop) == [1]  # not retried
    assert uploads_of(local_loop, number) == []
    assert accepted_detection_posts(local_loop) == []
    errors = node.status().errors
    assert set(errors) == {'upload_model'}
    assert f'refused with {status}' in errors['upload_model']


# ---------------------------------------------------------------------- detections upload


@pytest.mark.slow
def test_5xx_during_the_detections_upload_resumes_after_the_last_accepted_slice(
    make_local_loop: Callable[..., LocalLoop], make_trainer: Callable[..., TrainerNode]
) -> None:
    loop = make_local_loop(demo=True, demo_images=200)
    loop.inject_fault('POST', r'/detections$', 503, count=2, after=1)
    node = make_trainer(loop, ScriptedLogic(epochs=1), settings={'inference_batch_size': 32})
    begin(loop, node)
    wait_idle(node, timeout=60)
    assert hits(loop) == [2]
    ids = project_image_ids(loop)
    assert len(ids) > 200
    assert accepted_detection_posts(loop) == [ids[0:100], ids[100:200], ids[200:]]
    assert node.status().errors == {}


def test_429_during_the_detections_upload_waits_for_retry_after(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]
) -> None:
    local_loop.inject_fault('POST', r'/detections$', 429, count=2, retry_after=0)
    node = make_trainer(local_loop, ScriptedLogic(epochs=1))
    begin(local_loop, node)
    wait_idle(node)
    assert hits(local_loop) == [2]
    assert accepted_detection_posts(local_loop) == [project_image_ids(local_loop)]


def test_a_4xx_on_the_detections_upload_gives_the_training_up(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]
) -> None:
    local_loop.inject_fault('POST', r'/detections$', 422)
    node = make_trainer(local_loop, ScriptedLogic(epochs=1))
    number = begin(local_loop, node)['training_number']
    wait_idle(node)
    assert stored_uploads(local_loop, number) == {f: 1 for f in FORMATS}
    assert set(node.status().errors) == {'upload_detections'}


# ---------------------------------------------------------------------- data download


def test_a_failed_metadata_chunk_is_retried_never_skipped(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]
) -> None:
    local_loop.inject_fault('GET', r'/images$', 503, count=2)
    logic = ScriptedLogic(forever=True)
    node = make_trainer(local_loop, logic)
    begin(local_loop, node)
    wait_for(logic.training.is_set, what='the training to run')
    run = node.machine.run
    assert run is not None
    assert len(run.image_data) == len(local_loop.store.image_ids(ORGANIZATION, PROJECT, 'complete'))
    assert hits(local_loop) == [2]
    node.abort_training()
    wait_idle(node)


def test_failed_image_downloads_are_retried_and_only_the_missing_ones_fetched(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]
) -> None:
    local_loop.inject_fault('GET', r'/images/[^/]+/main$', 503, count=3)
    local_loop.inject_fault('GET', r'/images/[^/]+/main$', 429, count=2, retry_after=0)
    logic = ScriptedLogic(forever=True)
    node = make_trainer(local_loop, logic)
    begin(local_loop, node)
    wait_for(logic.training.is_set, what='the training to run')
    training = node.machine.training
    assert training is not None
    complete = local_loop.store.image_ids(ORGANIZATION, PROJECT, 'complete')
    assert training.skipped_image_count == 0
    assert sorted(item['id'] for item in node.machine.run.image_data) == sorted(complete)  # type: ignore[union-attr]
    assert hits(local_loop) == [3, 2]
    node.abort_training()
    wait_idle(node)


def test_a_corrupt_image_is_dropped_and_counted(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]
) -> None:
    complete = local_loop.store.image_ids(ORGANIZATION, PROJECT, 'complete')
    local_loop.inject_fault('GET', rf'/images/{complete[0]}/main$', 200, count=10, detail='not a jpeg')
    logic = ScriptedLogic(forever=True)
    node = make_trainer(local_loop, logic)
    begin(local_loop, node)
    wait_for(logic.training.is_set, what='the training to run')
    training, run = node.machine.training, node.machine.run
    assert training is not None
    assert run is not None
    assert training.skipped_image_count == 1
    assert [item['id'] for item in run.image_data] == complete[1:]
    assert (training.train_image_count or 0) + (training.test_image_count or 0) == len(complete) - 1
    node.abort_training()
    wait_idle(node)


# ---------------------------------------------------------------------- retries and giving up


def test_a_loop_outage_is_waited_out_beyond_max_attempts(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]
) -> None:
    local_loop.inject_fault('GET', r'/data$', 503, count=6)
    node = make_trainer(local_loop, ScriptedLogic(epochs=1), max_attempts=2)
    number = begin(local_loop, node)['training_number']
    wait_idle(node)
    assert hits(local_loop) == [6]
    assert node.status().errors == {}
    assert stored_uploads(local_loop, number) == {f: 1 for f in FORMATS}


def test_a_deterministic_error_is_given_up_after_max_attempts(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]
) -> None:
    local_loop.inject_fault('GET', r'/data$', 200, count=1000, detail='not the image list')  # a broken answer
    logic = ScriptedLogic(epochs=1)
    node = make_trainer(local_loop, logic, max_attempts=3)
    begin(local_loop, node)
    wait_idle(node)
    assert hits(local_loop) == [3]
    assert logic.count('train') == 0
    assert logic.count('clear_training_data') == 1
    errors = node.status().errors
    assert set(errors) == {'prepare'}
    assert errors['prepare'].endswith('(gave up after 3 attempts)')
    assert 'image_ids' in errors['prepare']
    assert node.status().state == 'idle'
    # the Loop saw the error (kept in the idle status), and the next training starts clean
    wait_for(
        lambda: 'prepare' in (local_loop.store.node(node.uuid) or {}).get('status', {}).get('errors', {}),
        what='the error at the Loop',
    )
    local_loop.clear_faults()
    begin(local_loop, node)
    wait_idle(node)
    assert node.status().errors == {}


def test_a_training_that_keeps_failing_is_given_up(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]
) -> None:
    logic = ScriptedLogic(epochs=1, train_failures=100)
    node = make_trainer(local_loop, logic, max_attempts=2)
    number = begin(local_loop, node)['training_number']
    wait_idle(node)
    assert logic.count('train') == 2
    assert node.status().errors == {'run_training': 'scripted training failure (gave up after 2 attempts)'}
    assert stored_uploads(local_loop, number) == {}


def test_a_failing_training_is_retried(local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]) -> None:
    logic = ScriptedLogic(epochs=1, train_failures=2)
    node = make_trainer(local_loop, logic)
    number = begin(local_loop, node)['training_number']
    wait_idle(node)
    assert logic.count('train') == 3
    assert stored_uploads(local_loop, number) == {f: 1 for f in FORMATS}
    assert node.status().errors == {}


def test_a_critical_error_cleans_up_at_once_and_keeps_the_error(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]
) -> None:
    logic = ScriptedLogic(critical=True)
    node = make_trainer(local_loop, logic)
    number = begin(local_loop, node)['training_number']
    wait_idle(node)
    assert logic.count('train') == 1
    assert stored_uploads(local_loop, number) == {}
    assert node.status().errors == {'run_training': 'scripted critical failure'}


def test_a_base_model_that_does_not_exist_is_retried_then_given_up(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]
) -> None:
    logic = ScriptedLogic(epochs=1)
    node = make_trainer(local_loop, logic, max_attempts=2)
    begin(local_loop, node, base_model_uuid='00000000-0000-0000-0000-000000000000')
    wait_idle(node)
    assert logic.count('train') == 0
    errors = node.status().errors
    assert set(errors) == {'download_model'}
    assert '404' in errors['download_model']
    assert errors['download_model'].endswith('(gave up after 2 attempts)')


def test_a_base_model_uuid_that_is_no_uuid_trains_from_scratch(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]
) -> None:
    logic = ScriptedLogic(epochs=1)
    node = make_trainer(local_loop, logic)
    number = begin(local_loop, node, base_model_uuid='small')['training_number']
    wait_idle(node)
    assert logic.count('train') == 1
    assert stored_uploads(local_loop, number) == {f: 1 for f in FORMATS}
