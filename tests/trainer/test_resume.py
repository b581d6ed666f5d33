"""The checkpoint: written at creation and after every transition, without the bulky image data; a node stopped in
the middle of a stage resumes at that stage after a restart (uptime counting on); a corrupt checkpoint is moved
aside and reported while the node keeps reporting; the detecting stage resumes after its last finished batch and
never uploads files of an earlier run."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from llnode.durable import write_json
from llnode.localloop import LocalLoop
from llnode.schema import Category, TrainerState, TrainingDetails
from llnode.trainer import TrainerNode
from llnode.trainer.training import Checkpoint, Training
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
    wait_state,
)

DEMO_MODEL_1_1 = '00000000-0000-0000-0000-000000000011'


def read_checkpoint(node: TrainerNode) -> dict:
    return dict(json.loads(node.machine.checkpoint.path.read_text()))


def test_the_checkpoint_is_written_at_creation_and_carries_no_image_data(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]
) -> None:
    logic = ScriptedLogic(forever=True)
    node = make_trainer(local_loop, logic)
    categories = local_loop.store.categories(ORGANIZATION, PROJECT)
    details = {'categories': categories, 'training_number': 7, 'model_variant': 'small', 'hyperparameters': {'a': 1}}
    training = node.begin_training(ORGANIZATION, PROJECT, details)
    data = read_checkpoint(node)  # begin_training returns after the durable write
    assert data['id'] == training.id
    assert data['context'] == {'organization': ORGANIZATION, 'project': PROJECT}
    assert data['training_number'] == 7
    assert data['hyperparameters'] == {'a': 1}
    assert 'image_data' not in data
    wait_for(logic.training.is_set, what='the training to run')
    data = read_checkpoint(node)
    assert data['training_state'] == 'running'
    assert 'image_data' not in data
    image_data = json.loads((training.training_folder / 'llnode' / 'image_data.json').read_text())
    assert len(image_data) == len(local_loop.store.image_ids(ORGANIZATION, PROJECT, 'complete'))
    node.abort_training()
    wait_idle(node)
    assert not node.machine.checkpoint.exists()


def test_a_node_stopped_while_training_resumes_the_training_after_restart(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]
) -> None:
    first = ScriptedLogic(forever=True)
    node = make_trainer(local_loop, first)
    number = begin(local_loop, node)['training_number']
    wait_for(lambda: first.published, what='the training to report')
    before = read_checkpoint(node)
    node.stop()
    assert first.count('abort') == 1  # the shutdown ends the training through the logic
    assert first.count('clear_training_data') == 0
    data = read_checkpoint(node)
    assert data['training_state'] == 'train_model_downloaded'  # the stage is redone after the restart
    assert data['start_time'] == before['start_time']

    second = ScriptedLogic(epochs=2)
    again = make_trainer(local_loop, second)
    assert again.uuid == node.uuid
    wait_idle(again)
    assert second.count('train') == 1
    assert stored_uploads(local_loop, number) == {f: 1 for f in FORMATS}
    assert accepted_detection_posts(local_loop)
    assert not again.machine.checkpoint.exists()


def test_uptime_counts_on_across_a_restart(local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]) -> None:
    node = make_trainer(local_loop, ScriptedLogic(forever=True))
    begin(local_loop, node)
    wait_state(node, 'running')
    training = node.machine.training
    assert training is not None
    node.stop()
    again = make_trainer(local_loop, ScriptedLogic(forever=True))
    wait_state(again, 'running')
    resumed = again.machine.training
    assert resumed is not None
    assert resumed.id == training.id
    assert resumed.start_time == training.start_time
    uptime = again.status().uptime
    assert uptime is not None
    assert uptime >= training.uptime - 0.5
    again.abort_training()
    wait_idle(again)


def test_detecting_resumes_after_the_last_finished_batch(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]
) -> None:
    first = ScriptedLogic(epochs=1, detect_seconds=0.05)
    node = make_trainer(local_loop, first, settings={'inference_batch_size': 2})
    begin(local_loop, node)
    wait_for(lambda: first.count('detect') >= 3, what='some detection batches')
    node.stop()
    assert read_checkpoint(node)['training_state'] == 'train_model_uploaded'
    second = ScriptedLogic(epochs=1)
    again = make_trainer(local_loop, second, settings={'inference_batch_size': 2})
    wait_idle(again)
    ids = project_image_ids(local_loop)
    assert sorted(first.detected_images + second.detected_images) == sorted(ids)  # no image twice
    assert second.count('train') == 0
    posted = [i for post in accepted_detection_posts(local_loop) for i in post]
    assert posted == ids


def write_checkpoint(node_uuid: str, data_folder: Path, loop: LocalLoop, **changes: object) -> Training:
    categories = [Category.from_dict(c) for c in loop.store.categories(ORGANIZATION, PROJECT)]
    details = TrainingDetails(categories, loop.store.next_training_number(ORGANIZATION, PROJECT), '', {})
    training = Training.create(data_folder, ORGANIZATION, PROJECT, details)
    for name, value in changes.items():
        setattr(training, name, value)
    Checkpoint(data_folder, node_uuid).save(training)
    return training


def test_stale_detection_files_of_an_earlier_run_are_never_uploaded(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]
) -> None:
    node_uuid = str(uuid.uuid4())
    data_folder = local_loop.settings().data_folder
    training = write_checkpoint(
        node_uuid,
        data_folder,
        local_loop,
        training_state=TrainerState.TRAIN_MODEL_UPLOADED,
        model_uuid_for_detecting=DEMO_MODEL_1_1,
    )
    training.save_image_data([])
    detections = training.training_folder / 'llnode' / 'detections'
    stale = {'image_id': 'stale-image', 'box_detections': []}
    write_json(detections / 'old-run' / 'detections_0.json', [stale])
    write_json(detections / 'old-run' / 'detections_1.json', [stale])
    manifest = {'run_id': 'old-run', 'model_id': 'another-model', 'image_ids': ['stale-image'], 'batch_size': 1}
    write_json(detections / 'manifest.json', {**manifest, 'batches': 2})
    write_json(detections / 'upload_progress.json', {'run_id': 'old-run', 'next': 1})

    logic = ScriptedLogic(epochs=1)
    node = make_trainer(local_loop, logic, uuid=node_uuid)
    wait_idle(node)
    posted = [i for post in accepted_detection_posts(local_loop) for i in post]
    assert posted == project_image_ids(local_loop)
    detections_stored = local_loop.store.detections(ORGANIZATION, PROJECT)
    assert {d['box_detections'][0]['model_name'] for d in detections_stored} == {'1.1'}


def test_a_batch_file_beyond_the_manifest_is_never_uploaded(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]
) -> None:
    node_uuid = str(uuid.uuid4())
    data_folder = local_loop.settings().data_folder
    training = write_checkpoint(
        node_uuid,
        data_folder,
        local_loop,
        training_state=TrainerState.DETECTED,
        model_uuid_for_detecting=DEMO_MODEL_1_1,
    )
    training.save_image_data([])
    ids = project_image_ids(local_loop)[:3]
    run_folder = training.training_folder / 'llnode' / 'detections' / 'run'
    write_json(run_folder / 'detections_0.json', [{'image_id': ids[0]}, {'image_id': ids[1]}])
    write_json(run_folder / 'detections_1.json', [{'image_id': ids[2]}])
    write_json(run_folder / 'detections_2.json', [{'image_id': 'left-over'}])
    manifest = {'run_id': 'run', 'model_id': DEMO_MODEL_1_1, 'image_ids': ids, 'batch_size': 2, 'batches': 2}
    write_json(run_folder.parent / 'manifest.json', manifest)
    node = make_trainer(local_loop, ScriptedLogic(), uuid=node_uuid)
    wait_idle(node)
    assert accepted_detection_posts(local_loop) == [ids]


def test_a_checkpoint_written_during_a_stage_redoes_that_stage(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]
) -> None:
    node_uuid = str(uuid.uuid4())
    write_checkpoint(
        node_uuid, local_loop.settings().data_folder, local_loop, training_state=TrainerState.DATA_DOWNLOADING
    )
    logic = ScriptedLogic(epochs=1)
    node = make_trainer(local_loop, logic, uuid=node_uuid)
    wait_idle(node)
    assert logic.count('train') == 1
    assert accepted_detection_posts(local_loop)


def test_an_abort_in_the_checkpoint_is_finished_after_a_crash(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]
) -> None:
    node_uuid = str(uuid.uuid4())
    training = write_checkpoint(
        node_uuid,
        local_loop.settings().data_folder,
        local_loop,
        training_state=TrainerState.RUNNING,
        abort_requested=True,
    )
    training.save_image_data([])
    logic = ScriptedLogic(epochs=1)
    node = make_trainer(local_loop, logic, uuid=node_uuid)
    wait_idle(node)
    assert logic.calls == ['clear_training_data']
    assert stored_uploads(local_loop, training.training_number) == {}


@pytest.mark.parametrize(
    'content',
    [
        b'{"id": "half a checkp',
        b'\xff\xfe not even text',
        b'[1, 2, 3]',
        b'{"format": "llnode-training/1", "id": 5}',
    ],
    ids=['truncated', 'binary', 'not-an-object', 'wrong-fields'],
)
def test_a_corrupt_checkpoint_is_moved_aside_and_reported(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode], content: bytes
) -> None:
    node_uuid = str(uuid.uuid4())
    checkpoint = Checkpoint(local_loop.settings().data_folder, node_uuid)
    checkpoint.path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.path.write_bytes(content)
    node = make_trainer(local_loop, ScriptedLogic(epochs=1), uuid=node_uuid)
    assert not checkpoint.path.exists()
    (moved,) = list(checkpoint.path.parent.glob(f'{checkpoint.path.name}.corrupt-*'))
    assert moved.read_bytes() == content
    errors = node.status().errors
    assert set(errors) == {'checkpoint'}
    assert moved.name in errors['checkpoint']
    # the node keeps reporting (with the error), and takes the next training
    wait_for(
        lambda: 'checkpoint' in (local_loop.store.node(node.uuid) or {}).get('status', {}).get('errors', {}),
        what='the error to reach the Loop',
    )
    number = begin(local_loop, node)['training_number']
    wait_idle(node)
    assert stored_uploads(local_loop, number) == {f: 1 for f in FORMATS}
