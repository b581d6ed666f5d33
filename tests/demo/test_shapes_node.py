"""ShapesTrainer and ShapesDetectorFactory on the real nodes against the local Loop: a training to idle (the
``shapes_torch`` model stored with its files, a real confusion matrix per box category, detections of every image
uploaded), the trained model deployed and served by a DetectorNode that finds the shapes of rendered demo images
it never saw; then both samples as processes (``samples/torch_trainer.py --nproc 2`` and
``samples/torch_detector.py``), with ``/detect`` over HTTP."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

pytest.importorskip('torch')

from llnode.demo.shapes_net import evaluate_f1
from llnode.demo.torch_detector import ShapesDetectorFactory
from llnode.demo.torch_trainer import ShapesTrainer
from llnode.detector import DetectorNode
from llnode.localloop import LocalLoop, demo
from llnode.trainer import TrainerNode
from llnode.trainer.callbacks import f1_score
from tests.demo.test_shapes_net import BOX_IDS, QUICK_F1_FLOOR
from tests.polling import wait_for
from tests.samples import sample_process
from tests.trainer.trainer_support import ORGANIZATION, PROJECT, accepted_detection_posts, begin, project_image_ids

pytestmark = pytest.mark.slow

#: demo images in the Loop and epochs: measured F1 ~0.9 on the test split in ~5 s of training on 2 cores
LOOP_IMAGES = 60
EPOCHS = 12
#: demo image indices no training saw (the Loop's images are 0..LOOP_IMAGES+8)
UNSEEN = range(5000, 5006)
#: fast cycles for the nodes (as the trainer tests use)
TRAINER_OPTIONS = {'repeat_interval': 0.1, 'retry_delay': 0.05, 'max_retry_delay': 0.2, 'metrics_interval': 0.0}


@pytest.fixture
def nodes() -> Iterator[list[Any]]:
    """Nodes a test started; stopped at teardown, newest first."""
    started: list[Any] = []
    yield started
    for node in reversed(started):
        node.stop()


def shapes_model(loop: LocalLoop, training_number: int) -> dict[str, Any]:
    (model,) = [m for m in loop.store.models(ORGANIZATION, PROJECT) if m['training_number'] == training_number]
    return dict(model)


def unseen_images() -> list[tuple[bytes, list[dict[str, Any]]]]:
    return [(jpeg, annotations['box_annotations']) for jpeg, annotations in map(demo.render, UNSEEN)]


def test_a_training_on_the_trainer_node_then_the_detector_serves_it(
    make_local_loop: Callable[..., LocalLoop], nodes: list[Any], tmp_path: Path
) -> None:
    loop = make_local_loop(demo=True, demo_images=LOOP_IMAGES)
    trainer = TrainerNode(
        'shapes trainer',
        ShapesTrainer(epochs=EPOCHS, threads=1),
        settings=loop.settings(data_folder=tmp_path / 'trainer'),
        **TRAINER_OPTIONS,
    )
    nodes.append(trainer)
    trainer.start()
    wait_for(lambda: any(n['id'] == trainer.uuid and n['connected'] for n in loop.nodes()), timeout=15, what='link')
    number = begin(loop, trainer)['training_number']
    wait_for(lambda: not trainer.machine.active, timeout=90, what='the training to end', interval=0.1)
    assert trainer.status().errors == {}

    # the metrics: a real confusion matrix per box category of the training, the last one good enough
    updates = loop.store.training_updates(ORGANIZATION, PROJECT)
    assert updates and all(set(u['confusion_matrix']) == set(BOX_IDS) for u in updates)
    assert f1_score(updates[-1]['confusion_matrix']) >= QUICK_F1_FLOOR

    # the model: model.json (with the network's resolution) plus the weights and the architecture
    model = shapes_model(loop, number)
    with zipfile.ZipFile(loop.store.model_path(model['id'], 'shapes_torch')) as archive:
        assert sorted(archive.namelist()) == ['model.json', 'model.pt', 'shapes_net.json']
        info = json.loads(archive.read('model.json'))
        assert info['resolution'] == json.loads(archive.read('shapes_net.json'))['resolution'] == 128
        assert [c['id'] for c in info['categories'] if c['type'] == 'box'] == BOX_IDS

    # the detecting stage: every project image, with boxes found by the new model
    posts = accepted_detection_posts(loop)
    assert sorted(i for post in posts for i in post) == sorted(project_image_ids(loop))

    # deployed, the detector follows and finds the shapes of images no training saw
    loop.store.set_deployment_target(ORGANIZATION, PROJECT, model['id'])
    detector = DetectorNode(
        'shapes detector',
        ShapesDetectorFactory(device='cpu'),
        settings=loop.settings(data_folder=tmp_path / 'detector'),
        repeat_interval=0.2,
    )
    nodes.append(detector)
    detector.start()

    wait_for(
        lambda: detector.models.current_version == model['version'], timeout=30, what=f'{model["version"]} to serve'
    )
    predictions, truths = [], []
    for jpeg, true_boxes in unseen_images():
        answer = detector.detect(jpeg, autoupload='disabled')
        assert all(d.model_name == model['version'] for d in answer.box_detections)
        predictions.append([d.to_dict() for d in answer.box_detections])
        truths.append(true_boxes)
    assert evaluate_f1(predictions, truths) >= QUICK_F1_FLOOR, (predictions, truths)


def test_the_samples_train_with_two_processes_and_serve_over_http(
    make_local_loop: Callable[..., LocalLoop], tmp_path: Path
) -> None:
    loop = make_local_loop(demo=True, demo_images=LOOP_IMAGES)
    with sample_process(
        'torch_trainer.py',
        loop,
        tmp_path / 'trainer',
        '--nproc',
        '2',
        '--epochs',
        str(EPOCHS),
    ) as trainer:
        node = wait_for(lambda: next((n for n in loop.nodes() if n['connected'] and n['node_type'] == 'trainer'), None))
        result = loop.begin_training(node=node['id'])
        assert result['accepted'], result
        number = result['training_number']
        wait_for(
            lambda: (
                any(m['training_number'] == number for m in loop.store.models(ORGANIZATION, PROJECT))
                and accepted_detection_posts(loop)
            ),
            timeout=90,
            what='the model and its detections',
            interval=0.1,
        )
        assert f1_score(loop.store.training_updates(ORGANIZATION, PROJECT)[-1]['confusion_matrix']) >= QUICK_F1_FLOOR
    assert 'Traceback' not in trainer.text(), trainer.text()

    model = shapes_model(loop, number)
    loop.store.set_deployment_target(ORGANIZATION, PROJECT, model['id'])
    with sample_process('torch_detector.py', loop, tmp_path / 'detector', '--device', 'cpu') as detector:
        jpeg, true_boxes = unseen_images()[0]

        def detect() -> dict[str, Any] | None:
            response = requests.post(f'{detector.url}/detect', files={'file': ('i.jpg', io.BytesIO(jpeg))}, timeout=10)
            answer = response.json() if response.status_code == 200 else None
            boxes = (answer or {}).get('box_detections') or []
            return answer if boxes and boxes[0]['model_name'] == model['version'] else None

        answer = wait_for(detect, timeout=30, what='the detector to answer with the trained model', interval=0.2)
        assert evaluate_f1(answer['box_detections'], true_boxes) >= QUICK_F1_FLOOR, (answer, true_boxes)
    assert 'Traceback' not in detector.text(), detector.text()
