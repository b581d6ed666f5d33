"""A full training on a TrainerNode against the local Loop over a real Socket.IO link: from ``begin_training`` to
idle, with every wire effect checked on the Loop's side (status, metrics, models, detections)."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable

import requests

from llnode.localloop import LocalLoop
from llnode.trainer import TrainerNode
from tests.polling import wait_for
from tests.trainer.trainer_support import (
    FORMATS,
    ORGANIZATION,
    PROJECT,
    TRAINING_STATES,
    ScriptedLogic,
    accepted_detection_posts,
    begin,
    project_image_ids,
    stored_uploads,
    wait_idle,
)


def test_a_training_goes_from_begin_training_to_idle(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]
) -> None:
    logic = ScriptedLogic(epochs=3)
    node = make_trainer(local_loop, logic)
    result = begin(local_loop, node, hyperparameters={'resolution': 320, 'fliplr': 0.5})
    assert result['ack'] == {'success': True, 'error_msg': None, 'payload': None}
    number = result['training_number']
    wait_idle(node)
    assert node.status().errors == {}
    assert [state for state, _ in node.machine.state_history()] == [*TRAINING_STATES, 'idle']

    # metrics: newer states only (a send in flight may make the sender skip to the newest), the last one always;
    # counts of the downloaded data and the hyperparameters
    updates = local_loop.store.training_updates(ORGANIZATION, PROJECT)
    epochs = [u['best_epoch'] for u in updates]
    assert epochs == sorted(set(epochs))
    assert epochs[-1] == 3
    images = local_loop.store.images(
        ORGANIZATION, PROJECT, local_loop.store.image_ids(ORGANIZATION, PROJECT, 'complete')
    )
    train = sum(1 for i in images if i['set'] == 'train')
    assert {(u['train_image_count'], u['test_image_count']) for u in updates} == {(train, len(images) - train)}
    assert updates[-1] == {
        'trainer_id': node.uuid,
        'trainer_name': 'test trainer',
        'confusion_matrix': {c['id']: {'tp': 3, 'fp': 2, 'fn': 2} for c in result['details']['categories']},
        'train_image_count': train,
        'test_image_count': len(images) - train,
        'hyperparameters': {'resolution': 320, 'fliplr': 0.5},
        'best_epoch': 3,
    }
    assert [s.epoch for s in logic.published] == epochs

    # the model: both formats stored once, with the node's categories-only model.json plus the metadata
    assert stored_uploads(local_loop, number) == {f: 1 for f in FORMATS}
    (model,) = [m for m in local_loop.store.models(ORGANIZATION, PROJECT) if m['training_number'] == number]
    assert model['formats'] == sorted(FORMATS)
    zip_path = local_loop.store.model_path(model['id'], 'mocked')
    with zipfile.ZipFile(zip_path) as archive:
        assert sorted(archive.namelist()) == ['extra.txt', 'model.json', 'weights.bin']
        assert archive.read('weights.bin') == b'epoch 3'

    # detections: every project image once, by the uploaded model, with one detection per category type
    ids = project_image_ids(local_loop)
    posted = [i for post in accepted_detection_posts(local_loop) for i in post]
    assert sorted(posted) == sorted(ids)
    detections = local_loop.store.detections(ORGANIZATION, PROJECT)
    assert len(detections) == len(ids)
    assert {d['box_detections'][0]['model_name'] for d in detections} == {model['version']}
    assert all(len(d['box_detections']) == 3 and len(d['point_detections']) == 1 for d in detections)

    # the Loop saw the last status, the checkpoint and the core's files are gone, the logic cleared its data
    wait_for(lambda: _reported_state(local_loop, node) == 'idle', what='the idle status to reach the Loop')
    assert not node.machine.checkpoint.exists()
    assert logic.count('clear_training_data') == 1
    training_folder = node.settings.data_folder / ORGANIZATION / PROJECT / 'trainings'
    (folder,) = list(training_folder.iterdir())
    assert not (folder / 'llnode' / 'detections').exists()


def test_the_status_is_the_exact_training_status(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]
) -> None:
    logic = ScriptedLogic(forever=True, epoch_seconds=0.05)
    node = make_trainer(local_loop, logic)
    idle = _last_status(local_loop, node)
    assert idle == {
        'id': node.uuid,
        'name': 'test trainer',
        'state': 'idle',
        'uptime': None,
        'errors': {},
        'progress': None,
        'pretrained_models': [{'name': 'small', 'label': 'Small', 'description': 'a small model'}],
        'architecture': 'scripted',
        'context': None,
    }
    begin(local_loop, node)
    wait_for(lambda: _reported_state(local_loop, node) == 'running', what='running to reach the Loop')
    running = _last_status(local_loop, node)
    assert running['context'] == {'organization': ORGANIZATION, 'project': PROJECT}
    assert isinstance(running['uptime'], float)
    assert running['uptime'] >= 0
    assert running['progress'] is None or 0 <= running['progress'] <= 1
    assert set(running) == set(idle)
    assert node.abort_training()
    wait_idle(node)


def test_stats_show_the_training(local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]) -> None:
    logic = ScriptedLogic(forever=True, epoch_seconds=0.05)
    node = make_trainer(local_loop, logic)
    client = node.flask_app.test_client()
    stats = client.get('/stats').get_json()
    assert (stats['node_type'], stats['state']) == ('trainer', 'running')
    assert stats['loop'] == {'connected': True, 'last_error': None, 'problem': None}
    assert stats['training'] == {'state': 'idle', 'training_number': None, 'progress': None}
    result = begin(local_loop, node)
    wait_for(logic.training.is_set, what='the training to run')
    response = client.get('/stats')
    assert response.status_code == 200
    training = response.get_json()['training']
    assert (training['state'], training['training_number']) == ('running', result['training_number'])
    assert node.abort_training()
    wait_idle(node)
    assert client.get('/stats').get_json()['training']['training_number'] is None


def test_begin_training_is_refused_while_a_training_is_active(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]
) -> None:
    logic = ScriptedLogic(forever=True)
    node = make_trainer(local_loop, logic)
    first = begin(local_loop, node)
    wait_for(logic.training.is_set, what='the training to run')
    training = node.machine.training
    assert training is not None
    second = local_loop.begin_training(node=node.uuid)
    assert not second['accepted']
    assert second['ack']['success'] is False
    assert second['ack']['payload'] == 'refused'
    assert training.id in second['ack']['error_msg']
    assert node.machine.training is training  # nothing changed: same training, its folder still there
    assert training.training_folder.is_dir()
    assert node.stop_training()
    wait_idle(node)
    assert stored_uploads(local_loop, first['training_number']) == {f: 1 for f in FORMATS}
    assert stored_uploads(local_loop, second['training_number']) == {}


def test_invalid_details_are_refused_with_the_reference_message(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]
) -> None:
    node = make_trainer(local_loop)
    assert local_loop.hub is not None
    ack = local_loop.send(
        node.uuid,
        'begin_training',
        ORGANIZATION,
        PROJECT,
        {'categories': [], 'training_number': '1', 'model_variant': '', 'hyperparameters': {}},
    )
    assert ack == {'success': False, 'error_msg': 'training_number missing or not an int', 'payload': None}
    ack = local_loop.send(node.uuid, 'begin_training', ORGANIZATION, PROJECT, {'categories': []})
    assert ack['success'] is False
    assert not node.machine.active
    assert not node.machine.checkpoint.exists()


def test_old_trainings_are_deleted_only_after_acceptance(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]
) -> None:
    node = make_trainer(local_loop, ScriptedLogic(epochs=1))
    begin(local_loop, node)
    wait_idle(node)
    trainings = node.settings.data_folder / ORGANIZATION / PROJECT / 'trainings'
    (old,) = list(trainings.iterdir())
    refused = local_loop.send(node.uuid, 'begin_training', ORGANIZATION, PROJECT, {'categories': 'no'})
    assert refused['success'] is False
    assert old.exists()
    begin(local_loop, node)
    wait_for(lambda: not old.exists(), what='the old training folder to go')
    wait_idle(node)
    assert not (trainings.parent / '.old_trainings').exists()  # deleted by the worker, not in the Socket.IO thread
    assert len(list(trainings.iterdir())) == 1


def test_keep_old_trainings_keeps_them(local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]) -> None:
    node = make_trainer(local_loop, ScriptedLogic(epochs=1), settings={'keep_old_trainings': True})
    for _ in range(2):
        begin(local_loop, node)
        wait_idle(node)
    trainings = node.settings.data_folder / ORGANIZATION / PROJECT / 'trainings'
    assert len(list(trainings.iterdir())) == 2


def test_a_base_model_is_installed_into_the_training_folder(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]
) -> None:
    logic = ScriptedLogic(forever=True)
    node = make_trainer(local_loop, logic)
    begin(local_loop, node, base_model_version='1.1')
    wait_for(logic.training.is_set, what='the training to run')
    run = node.machine.run
    assert run is not None
    assert run.base_model_folder == run.training_folder
    assert json.loads((run.training_folder / 'base_model.json').read_text())['version'] == '1.1'
    assert (run.training_folder / 'file_1.txt').read_bytes() == b'content of file one'
    assert not (run.training_folder / 'model.json').exists()
    node.abort_training()
    wait_idle(node)


def test_the_uploaded_model_can_be_downloaded_as_a_detector_would(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]
) -> None:
    node = make_trainer(local_loop, ScriptedLogic(epochs=1))
    number = begin(local_loop, node)['training_number']
    wait_idle(node)
    (model,) = [m for m in local_loop.store.models(ORGANIZATION, PROJECT) if m['training_number'] == number]
    response = requests.get(
        f'{local_loop.url}/api/{ORGANIZATION}/projects/{PROJECT}/models/{model["id"]}/mocked_2/file', timeout=10
    )
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        info = json.loads(archive.read('model.json'))
    assert info['id'] == model['id']
    assert info['conf_threshold'] == 0.4
    assert [c['name'] for c in info['categories']] == ['circle', 'square', 'triangle', 'purple point']


def _last_status(loop: LocalLoop, node: TrainerNode) -> dict:
    stored = loop.store.node(node.uuid)
    assert stored is not None
    return dict(stored['status'])


def _reported_state(loop: LocalLoop, node: TrainerNode) -> str | None:
    stored = loop.store.node(node.uuid)
    return None if stored is None else stored['status'].get('state')
