"""The YOLO-style node pair of ``samples/yolo_style/`` end to end against the local Loop: the trainer node (a
process) runs ``train.py`` as a subprocess on the demo project with a computed validation split, parses its log,
uploads the state dict and the TorchScript export, runs ``detect.py`` as a subprocess over every project image;
the detector node (a process) follows the deployment to the TorchScript format and finds the shapes of the test
split's images (F1 checked). Before that, the parts the node parses: the epoch lines and the weight files."""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from llnode.localloop import LocalLoop
from llnode.trainer.batch_size import dataset_limit, no_gpu_batch_size
from llnode.trainer.validation_set import split_position
from tests.polling import wait_for
from tests.samples import load_sample, sample_process
from tests.trainer.trainer_support import ORGANIZATION, PROJECT, accepted_detection_posts, project_image_ids

#: demo images in the Loop, and the training: measured box F1 0.8-0.9 on the test split (2 cores, loaded machine)
LOOP_IMAGES = 60
HYPERPARAMETERS = {'epochs': 15, 'resolution': 128, 'compute_validation_set': True}
#: the pooled box F1 (IoU >= 0.5) the detector must reach on the test split's images
F1_FLOOR = 0.6
FORMATS = {
    'yolo_style_pytorch': ['hyp.json', 'model.json', 'model.pt'],
    'yolo_style_torchscript': ['model.json', 'model.torchscript'],
}


# ---------------------------------------------------------------------------------------------------------------
# the parts the trainer node reads (no torch needed)


def test_an_epoch_line_reads_back_as_written_and_gives_the_progress() -> None:
    training_log = load_sample('yolo_style/training_log.py')
    line = training_log.EpochLine(3, 12, {'loss': 0.81234, 'val_f1': 0.5, 'batch': 4.0})
    text = line.format()
    assert text == 'epoch 3/12 loss 0.8123 val_f1 0.5000 batch 4'
    parsed = training_log.parse_line(text)
    assert (parsed.epoch, parsed.epochs, parsed.progress) == (3, 12, 0.25)
    assert parsed.metrics == {'loss': 0.8123, 'val_f1': 0.5, 'batch': 4.0}
    tail = ['WARNING something', text, 'epoch 4/12 loss 0.7 val_f1 0.6 batch 4', 'Traceback (most recent call last):']
    assert training_log.last_epoch(tail).epoch == 4
    assert training_log.epoch_metrics(tail, 3)['val_f1'] == 0.5
    assert training_log.epoch_metrics(tail, 9) == {}
    assert training_log.parse_line('epoch 3/12 of something else') is None
    assert training_log.last_epoch(['batch size 4 (cpu)']) is None


def test_publishing_a_best_epoch_moves_it_and_drops_older_epochs_but_not_newer(tmp_path: Path) -> None:
    model_files = load_sample('yolo_style/model_files.py')
    weights = model_files.weights_folder(tmp_path)
    weights.mkdir(parents=True)
    for epoch in (1, 3, 5):
        (weights / f'epoch{epoch}.pt').write_text(f'weights {epoch}')
        (weights / f'epoch{epoch}.json').write_text('{}')
    (weights / 'epoch7.pt').write_text('no json yet: still being written')
    assert model_files.newest(tmp_path).name == 'epoch5.pt'
    assert model_files.publish(tmp_path, weights / 'epoch3.pt') == model_files.published(tmp_path)
    assert model_files.published(tmp_path).read_text() == 'weights 3'
    assert sorted(p.name for p in weights.iterdir() if p.is_file()) == ['epoch5.json', 'epoch5.pt', 'epoch7.pt']
    assert model_files.publish(tmp_path, weights / 'epoch3.pt') is None  # gone: published already


# ---------------------------------------------------------------------------------------------------------------
# the pair against the local Loop


def items_of_set(loop: LocalLoop, image_set: str) -> list[dict[str, Any]]:
    """The annotated images of a set (those a training gets: state ``complete``), with their annotations."""
    items = loop.store.images(ORGANIZATION, PROJECT, loop.store.image_ids(ORGANIZATION, PROJECT, 'complete'))
    return [item for item in items if item['set'] == image_set]


def f1_of(predicted: list[list[dict[str, Any]]], truths: list[list[dict[str, Any]]]) -> float:
    from llnode.demo.shapes_net import evaluate_f1

    return evaluate_f1(predicted, truths)


@pytest.mark.slow
def test_the_yolo_style_pair_trains_uploads_both_formats_deploys_and_detects(
    make_local_loop: Callable[..., LocalLoop], tmp_path: Path
) -> None:
    pytest.importorskip('torch')
    loop = make_local_loop(demo=True, demo_images=LOOP_IMAGES)
    with sample_process('yolo_style/trainer.py', loop, tmp_path / 'trainer', '--device', 'cpu') as trainer:
        node = wait_for(lambda: next((n for n in loop.nodes() if n['connected'] and n['node_type'] == 'trainer'), None))
        result = loop.begin_training(node=node['id'], hyperparameters=HYPERPARAMETERS)
        assert result['accepted'], result
        number = result['training_number']
        wait_for(
            lambda: (
                sorted(i for post in accepted_detection_posts(loop) for i in post) == sorted(project_image_ids(loop))
            ),
            timeout=150,
            what='the detections of every project image',
            interval=0.2,
        )
    output = trainer.text()
    assert 'Traceback' not in output, output

    # train.py's log: the validation split the node computed, the batch size the toolkit chose (CPU fallback)
    (log,) = (tmp_path / 'trainer').rglob('last_training.log')
    text = log.read_text()
    train_ids = [item['id'] for item in items_of_set(loop, 'train')]
    val_count = sum(split_position(i) < 0.1 for i in train_ids) or 1
    assert f'{len(train_ids) - val_count} training images, {val_count} validation images, device cpu' in text, text
    batch = no_gpu_batch_size(dataset_limit(len(train_ids) - val_count))
    assert f'batch size {batch} (cpu)' in text
    assert f'epoch {HYPERPARAMETERS["epochs"]}/{HYPERPARAMETERS["epochs"]} ' in text
    # the node parsed the epochs and their metrics, and published a confusion matrix per category
    assert re.search(r"new best state: epoch \d+ \{'loss': [0-9.]+, 'val_f1': [0-9.]+", output), output
    updates = loop.store.training_updates(ORGANIZATION, PROJECT)
    categories = [c['id'] for c in loop.store.categories(ORGANIZATION, PROJECT)]
    assert updates and sorted(updates[-1]['confusion_matrix']) == sorted(categories)

    # both formats uploaded, with the resolution in model.json
    (model,) = [m for m in loop.store.models(ORGANIZATION, PROJECT) if m['training_number'] == number]
    for model_format, names in FORMATS.items():
        with zipfile.ZipFile(loop.store.model_path(model['id'], model_format)) as archive:
            assert sorted(archive.namelist()) == names
            assert json.loads(archive.read('model.json'))['resolution'] == HYPERPARAMETERS['resolution']

    # deployed: the detector serves the TorchScript export and finds the shapes of the test split
    loop.store.set_deployment_target(ORGANIZATION, PROJECT, model['id'])
    test_items = items_of_set(loop, 'test')
    assert test_items
    with sample_process('yolo_style/detector.py', loop, tmp_path / 'detector', '--device', 'cpu') as detector:

        def detect(item: dict[str, Any]) -> dict[str, Any] | None:
            jpeg = loop.store.image_jpeg(ORGANIZATION, PROJECT, item['id'])
            assert jpeg is not None
            response = requests.post(f'{detector.url}/detect', files={'file': ('i.jpg', io.BytesIO(jpeg))}, timeout=10)
            if response.status_code != 200:
                return None
            answer: dict[str, Any] = response.json()
            found = answer['box_detections'] + answer['point_detections']
            return answer if found and all(d['model_name'] == model['version'] for d in found) else None

        wait_for(lambda: detect(test_items[0]), timeout=30, what='the detector to serve the trained model')
        answers = [detect(item) or {'box_detections': []} for item in test_items]
    assert 'Traceback' not in detector.text(), detector.text()
    predicted = [answer['box_detections'] for answer in answers]
    f1 = f1_of(predicted, [item['box_annotations'] for item in test_items])
    print(f'box F1 on the {len(test_items)} test images: {f1:.3f}')
    assert f1 >= F1_FLOOR, (predicted, [item['box_annotations'] for item in test_items])
