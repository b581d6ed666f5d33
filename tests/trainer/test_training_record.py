"""The training record and its checkpoint file, without a node: JSON round trip, mid-stage states mapped back to
the stage's start, every kind of unusable file refused with a clear error; the retry delays and which failures
count toward ``max_attempts``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from llnode.backoff import Backoff
from llnode.loop.errors import (
    LoopAuthError,
    LoopConnectionError,
    LoopHTTPError,
    LoopProtocolError,
    LoopRateLimited,
    LoopTimeout,
)
from llnode.schema import Category, TrainerState, TrainingDetails
from llnode.trainer.machine import MAX_RETRY_DELAY, RETRY_DELAY, is_loop_unavailable
from llnode.trainer.stages import LoopUnavailable
from llnode.trainer.training import RESUME_FROM, Checkpoint, CheckpointError, Training

CATEGORIES = [Category('c1', 'box cat', type='box'), Category('c2', 'point cat', type='point')]


def new_training(tmp_path: Path) -> Training:
    details = TrainingDetails(CATEGORIES, 3, 'small', {'resolution': 832}, base_model_uuid=None)
    return Training.create(tmp_path / 'data', 'zauberzeug', 'demo', details)


def test_create_makes_the_folders_and_a_fresh_record(tmp_path: Path) -> None:
    training = new_training(tmp_path)
    assert training.training_folder == tmp_path / 'data' / 'zauberzeug' / 'demo' / 'trainings' / training.id
    assert training.training_folder.is_dir()
    assert training.images_folder == tmp_path / 'data' / 'zauberzeug' / 'demo' / 'images'
    assert training.images_folder.is_dir()
    assert training.training_state == TrainerState.INITIALIZED
    assert abs(training.start_time - time.time()) < 5


@pytest.mark.parametrize('bad', ['', '..', 'a/b', 'a\\b'])
def test_create_refuses_names_that_would_leave_the_data_folder(tmp_path: Path, bad: str) -> None:
    details = TrainingDetails(CATEGORIES, 3, 'small', {})
    with pytest.raises(ValueError, match='organization'):
        Training.create(tmp_path, bad, 'demo', details)


def test_a_checkpoint_round_trips(tmp_path: Path) -> None:
    training = new_training(tmp_path)
    training.training_state = TrainerState.TRAIN_MODEL_UPLOADED
    training.attempts = {'upload_model': 2}
    training.errors = {'upload_model': 'PUT answered 503'}
    training.model_uuid_for_detecting = 'm1'
    training.save_image_data([{'id': 'a', 'set': 'train'}, {'id': 'b', 'set': 'val'}, {'id': 'c', 'set': 'test'}])
    checkpoint = Checkpoint(tmp_path / 'data', 'node-uuid')
    checkpoint.save(training)
    assert checkpoint.path.name == 'last_training__node-uuid.json'
    loaded = checkpoint.load()
    assert loaded == training
    assert (loaded.train_image_count, loaded.test_image_count) == (2, 1)  # val counts as train (0.27)
    assert loaded.load_image_data() == [
        {'id': 'a', 'set': 'train'},
        {'id': 'b', 'set': 'val'},
        {'id': 'c', 'set': 'test'},
    ]
    assert 'image_data' not in json.loads(checkpoint.path.read_text())


@pytest.mark.parametrize(('during', 'start'), list(RESUME_FROM.items()), ids=[s.value for s in RESUME_FROM])
def test_a_state_written_during_a_stage_resumes_at_the_stage_start(
    tmp_path: Path, during: TrainerState, start: TrainerState
) -> None:
    training = new_training(tmp_path)
    training.training_state = during
    checkpoint = Checkpoint(tmp_path, 'n')
    checkpoint.save(training)
    loaded = checkpoint.load()
    assert loaded is not None
    assert loaded.training_state == start


def test_an_abort_request_in_the_checkpoint_resumes_in_cleanup(tmp_path: Path) -> None:
    training = new_training(tmp_path)
    training.training_state = TrainerState.RUNNING
    training.abort_requested = True
    checkpoint = Checkpoint(tmp_path, 'n')
    checkpoint.save(training)
    loaded = checkpoint.load()
    assert loaded is not None
    assert loaded.training_state == TrainerState.READY_FOR_CLEANUP


def test_no_checkpoint_is_none_and_leftover_temp_files_are_removed(tmp_path: Path) -> None:
    checkpoint = Checkpoint(tmp_path, 'n')
    leftover = tmp_path / f'.{checkpoint.path.name}.abc.tmp'
    leftover.write_text('{"half')
    assert checkpoint.load() is None
    assert not leftover.exists()


def corrupted(tmp_path: Path, change: dict) -> Checkpoint:
    data = new_training(tmp_path).to_json_dict()
    data.update(change)
    checkpoint = Checkpoint(tmp_path, 'n')
    checkpoint.path.write_text(json.dumps(data))
    return checkpoint


@pytest.mark.parametrize(
    ('change', 'message'),
    [
        ({'format': 'something else'}, 'unknown checkpoint format'),
        ({'training_state': 'idle'}, 'not a state of a training'),
        ({'training_state': 'no such state'}, 'malformed'),
        ({'training_number': True}, '"training_number" has the wrong type'),
        ({'training_number': '3'}, '"training_number" has the wrong type'),
        ({'context': None}, '"context" has the wrong type'),
        ({'categories': [{'name': 'no id'}]}, 'malformed'),
        ({'start_time': 'yesterday'}, '"start_time" has the wrong type'),
        ({'attempts': {'prepare': 'many'}}, 'malformed'),
    ],
)
def test_an_unusable_checkpoint_is_a_checkpoint_error(tmp_path: Path, change: dict, message: str) -> None:
    checkpoint = corrupted(tmp_path, change)
    with pytest.raises(CheckpointError, match=message):
        checkpoint.load()


def test_a_missing_field_is_named(tmp_path: Path) -> None:
    data = new_training(tmp_path).to_json_dict()
    del data['training_folder']
    checkpoint = Checkpoint(tmp_path, 'n')
    checkpoint.path.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match='no "training_folder"'):
        checkpoint.load()


def test_move_aside_keeps_the_file_under_a_new_name(tmp_path: Path) -> None:
    checkpoint = Checkpoint(tmp_path, 'n')
    checkpoint.path.write_bytes(b'garbage')
    moved = checkpoint.move_aside()
    assert moved is not None
    assert moved.read_bytes() == b'garbage'
    assert moved.name.startswith('last_training__n.json.corrupt-')
    assert not checkpoint.exists()
    assert checkpoint.move_aside() is None


def test_unreadable_image_data_is_a_checkpoint_error(tmp_path: Path) -> None:
    training = new_training(tmp_path)
    assert training.load_image_data() == []
    training.image_data_path.parent.mkdir(parents=True)
    training.image_data_path.write_text('{"not": "a list"}')
    with pytest.raises(CheckpointError, match='list'):
        training.load_image_data()


def test_retry_delays_double_from_5_s_up_to_300_s() -> None:
    policy = Backoff(base=RETRY_DELAY, cap=MAX_RETRY_DELAY)
    assert [policy.ceiling(n) for n in range(1, 10)] == [5, 10, 20, 40, 80, 160, 300, 300, 300]
    assert policy.ceiling(1000) == 300


@pytest.mark.parametrize(
    ('error', 'unavailable'),
    [
        (LoopConnectionError('refused'), True),
        (LoopTimeout('no answer'), True),
        (ConnectionError('update_training not acknowledged'), True),
        (LoopHTTPError('GET', 'u', 503), True),
        (LoopHTTPError('PUT', 'u', 408), True),
        (LoopRateLimited('PUT', 'u', 429), True),
        (LoopUnavailable('detections upload failed with 502'), True),
        (LoopHTTPError('GET', 'u', 404), False),
        (LoopAuthError('POST', 'u', 401), False),
        (LoopProtocolError('no image_ids'), False),
        (RuntimeError('CUDA out of memory'), False),
    ],
)
def test_only_an_unavailable_loop_is_waited_out(error: Exception, unavailable: bool) -> None:
    assert is_loop_unavailable(error) is unavailable
