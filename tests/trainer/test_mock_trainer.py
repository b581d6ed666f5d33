"""``samples/mock_trainer.py`` (reference-behaviour §8.2, tests §7.8): the logic on its own, a full training on a
TrainerNode against the local Loop, and the script as a real process driven through its backdoor routes."""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from llnode.localloop import LocalLoop
from llnode.schema import Category, ModelInformation
from llnode.trainer import TrainerNode
from llnode.trainer.subprocess_logic import TrainingProcessError
from tests.polling import wait_for
from tests.samples import load_sample, sample_process
from tests.trainer.fake_run import FakeRun
from tests.trainer.test_subprocess_logic import Training
from tests.trainer.trainer_support import (
    FORMATS,
    ORGANIZATION,
    PROJECT,
    accepted_detection_posts,
    begin,
    project_image_ids,
    stored_uploads,
    wait_idle,
    wait_state,
)

REPO = Path(__file__).resolve().parents[2]
CATEGORIES = [
    Category(id='c-box', name='box_cat', type='box'),
    Category(id='c-point', name='point_cat', type='point'),
    Category(id='c-seg', name='seg_cat', type='segmentation'),
    Category(id='c-cls', name='cls_cat', type='classification'),
]


sample = load_sample('mock_trainer.py')


@pytest.fixture
def run(tmp_path: Path) -> FakeRun:
    folder = tmp_path / 'trainings' / 't1'
    folder.mkdir(parents=True)
    return FakeRun(folder, categories=CATEGORIES)


def fast_logic() -> Any:
    logic = sample.MockTrainerLogic(seed=7)
    logic.sync_interval = 0.05
    logic.stop_grace = 2.0
    return logic


# ---------------------------------------------------------------------- the logic (reference §7.8)


def test_confusion_matrices_are_random_improving_and_keyed_by_category_uuid(run: FakeRun) -> None:
    logic = fast_logic()
    assert (logic.model_format, logic.architecture) == ('mocked', 'mocked')
    assert [m.name for m in logic.pretrained_models] == ['small', 'medium', 'large']
    last_tp = dict.fromkeys((c.id for c in CATEGORIES), 0)
    for epoch in range(1, 6):
        state = logic.get_new_best(run)
        assert state is not None and state.epoch == epoch
        assert set(state.confusion_matrix) == set(last_tp)
        for uuid, counts in state.confusion_matrix.items():
            assert counts['tp'] >= last_tp[uuid]
            assert counts['fp'] >= 2 and counts['fn'] >= 2
        logic.on_metrics_published(run, state)
        last_tp = {uuid: counts['tp'] for uuid, counts in state.confusion_matrix.items()}
    assert logic.progress(run) == 0.05
    logic.provide_new_model = False
    assert logic.get_new_best(run) is None


def test_two_model_formats_without_a_model_json(run: FakeRun) -> None:
    files = fast_logic().model_files(run)
    assert sorted(files) == list(FORMATS)
    for paths in files.values():
        assert [p.name for p in paths] == ['weightfile.weights', 'some_more_data.txt']
        assert all(p.is_file() and p.is_relative_to(run.training_folder) for p in paths)  # no fixed /tmp paths


def test_fixed_detections_per_category_type(run: FakeRun, tmp_path: Path) -> None:
    model = ModelInformation(id='m1', organization='o', project='p', version='2.0', categories=list(CATEGORIES))
    [first, second] = fast_logic().detect(run, model, tmp_path, [tmp_path / 'img-1.jpg', tmp_path / 'img-2.jpg'])
    assert (first.image_id, second.image_id) == ('img-1', 'img-2')
    assert first.to_dict() == {
        'box_detections': [
            {'category_name': 'box_cat', 'x': 1, 'y': 2, 'width': 30, 'height': 40, 'model_name': '2.0',
             'confidence': 0.99, 'category_id': 'c-box'}
        ],
        'point_detections': [
            {'category_name': 'point_cat', 'x': 100, 'y': 200, 'model_name': '2.0', 'confidence': 0.97,
             'category_id': 'c-point'}
        ],
        'segmentation_detections': [
            {'category_name': 'seg_cat', 'shape': {'points': [{'x': 1, 'y': 2}, {'x': 3, 'y': 4}]}, 'model_name': '2.0',
             'confidence': 0.96, 'category_id': 'c-seg'}
        ],
        'classification_detections': [
            {'category_name': 'cls_cat', 'model_name': '2.0', 'confidence': 0.95, 'category_id': 'c-cls'}
        ],
        'image_id': 'img-1',
    }  # fmt: skip


def test_injected_failures(run: FakeRun) -> None:
    logic = fast_logic()
    with pytest.raises(ValueError, match='unknown error flags'):
        logic.error_configuration = {'explode': True}
    logic.error_configuration = {'begin_training': True}
    with pytest.raises(RuntimeError, match='mocked failure to begin the training'):
        logic.train(run)
    assert not logic.process_running()
    logic.error_configuration = {'get_new_model': True, 'save_model': True}
    with pytest.raises(RuntimeError, match='mocked failure to get a new model'):
        logic.get_new_best(run)
    with pytest.raises(RuntimeError, match='mocked failure to save the model'):
        logic.model_files(run)
    assert logic.error_configuration == {
        'begin_training': False,
        'crash_training': False,
        'get_new_model': True,
        'save_model': True,
    }


def test_crash_training_makes_the_running_process_crash_with_an_error_in_its_log(run: FakeRun) -> None:
    logic = fast_logic()
    training = Training(logic, run)
    pid = training.wait_until_running()
    logic.error_configuration = {'crash_training': True}  # as the backdoor sets it, while the process runs
    error = training.join(timeout=10)
    assert isinstance(error, TrainingProcessError) and str(error) == 'training process failed: mocked crash'
    assert not Path(f'/proc/{pid}').exists()
    assert 'mocked crash' in (run.training_folder / 'last_training.log').read_text()


def test_the_mock_process_ends_when_the_node_that_started_it_dies(tmp_path: Path) -> None:
    """A SIGKILLed node cannot stop its training: the mock process notices it was orphaned and ends."""
    parent = subprocess.Popen(
        [sys.executable, '-c', 'import os, subprocess, sys, time\n'
         f'child = subprocess.Popen([sys.executable, "-c", {sample.TRAINING_SCRIPT!r}, str(os.getpid())])\n'
         'print(child.pid, flush=True)\ntime.sleep(100)'],
        cwd=tmp_path, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        parent.kill()
        parent.wait(5)

        def ended() -> bool:
            try:
                stat = Path(f'/proc/{child}/stat').read_text()
            except FileNotFoundError:
                return True
            return stat[stat.rfind(')') + 2] == 'Z'  # its reaper (pid 1) may not reap zombies

        wait_for(ended, timeout=5, what='the orphaned mock process to end')
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(5)


# ---------------------------------------------------------------------- a full training on a TrainerNode


def test_a_full_mock_training_against_the_local_loop(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]
) -> None:
    logic = fast_logic()
    node = make_trainer(local_loop, logic, name='mocked trainer')
    assert [m.name for m in node.status().pretrained_models] == ['small', 'medium', 'large']
    number = begin(local_loop, node, model_variant='small')['training_number']
    wait_state(node, 'running')
    wait_for(lambda: len(local_loop.store.training_updates(ORGANIZATION, PROJECT)) >= 3, what='three metric updates')
    assert logic.process_running()
    assert local_loop.send(node.uuid, 'stop_training') == {'success': True, 'error_msg': None, 'payload': None}
    wait_idle(node, timeout=30)
    assert node.status().errors == {}
    assert not logic.process_running()

    updates = local_loop.store.training_updates(ORGANIZATION, PROJECT)
    epochs = [u['best_epoch'] for u in updates]
    assert epochs == sorted(set(epochs))
    for earlier, later in itertools.pairwise(updates):
        for uuid, counts in later['confusion_matrix'].items():
            assert counts['tp'] >= earlier['confusion_matrix'][uuid]['tp']
    assert stored_uploads(local_loop, number) == {f: 1 for f in FORMATS}
    ids = project_image_ids(local_loop)
    assert sorted(i for post in accepted_detection_posts(local_loop) for i in post) == sorted(ids)
    (model,) = [m for m in local_loop.store.models(ORGANIZATION, PROJECT) if m['training_number'] == number]
    detections = local_loop.store.detections(ORGANIZATION, PROJECT)
    assert len(detections) == len(ids)
    assert {b['confidence'] for d in detections for b in d['box_detections']} == {0.99}
    assert {b['model_name'] for d in detections for b in d['box_detections']} == {model['version']}


# ---------------------------------------------------------------------- the script as a process


def test_the_sample_script_trains_through_its_backdoor(local_loop: LocalLoop, tmp_path: Path) -> None:
    """``python samples/mock_trainer.py --backdoor`` with the ``LOOP_*`` variables: a training from
    ``begin_training`` to idle, driven by ``/steps`` and ``/kill_training_process``; SIGTERM ends it with 0."""
    data = tmp_path / 'trainer-data'
    # metrics only from /steps
    with sample_process('mock_trainer.py', local_loop, data, '--backdoor', '--sync-interval', '30') as sample:

        def trainer() -> dict[str, Any] | None:
            return next((n for n in local_loop.nodes() if n.get('node_type') == 'trainer' and n.get('id')), None)

        node_id = wait_for(trainer, timeout=30, what='the sample to connect and report', interval=0.05)['id']
        assert requests.post(f'{sample.url}/steps', data='1', timeout=5).status_code == 409  # nothing runs yet
        number = local_loop.begin_training(node=node_id)['training_number']
        wait_for(
            lambda: requests.post(f'{sample.url}/steps', data='2', timeout=10).status_code == 200,
            timeout=30,
            what='the training process to run',
            interval=0.1,
        )
        updates = local_loop.store.training_updates(ORGANIZATION, PROJECT)
        assert [u['best_epoch'] for u in updates] == [1, 2]
        assert requests.post(f'{sample.url}/kill_training_process', timeout=10).status_code == 200
        wait_for(lambda: stored_uploads(local_loop, number) == {f: 1 for f in FORMATS}, timeout=30, what='models')
        wait_for(
            lambda: len(local_loop.store.detections(ORGANIZATION, PROJECT)) == len(project_image_ids(local_loop)),
            timeout=30,
            what='the detections of every project image',
        )
        sample.process.send_signal(signal.SIGTERM)
        assert sample.process.wait(timeout=20) == 0
    assert 'Traceback' not in sample.text(), sample.text()
