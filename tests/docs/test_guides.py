"""The four guides of the documentation, followed as a newcomer would: each guide's script (``docs/examples/``,
included into the guide) runs as a real process against the local Loop, and the guide's ``llnode control``
commands drive it.

A guide whose code no longer runs, or no longer does what its page says, fails here.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
import requests
from PIL import Image

from llnode.localloop import LocalLoop
from llnode.localloop.command import control_main
from tests.polling import wait_for
from tests.samples import Sample, sample_process

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / 'docs' / 'examples'
ORGANIZATION, PROJECT = 'zauberzeug', 'demo'

#: every example a test here runs; test_every_example_is_run checks that none is left out
RUN_HERE = {
    'detector.py',
    'trainer.py',
    'annotator.py',
    'converter.py',
    'local_loop_faults.py',
    'toolkit.py',
    'custom_node.py',
}


def control(loop: LocalLoop, *command: str, capsys: pytest.CaptureFixture[str]) -> Any:
    """``llnode control --url <loop> <command>`` as a guide runs it, in the terminal where the guide exported the
    ``LOOP_*`` variables ``llnode loop`` printed (``llnode control`` logs in with them); its printed JSON."""
    capsys.readouterr()
    settings = loop.settings()
    with mock.patch.dict(os.environ, {'LOOP_USERNAME': settings.username, 'LOOP_PASSWORD': settings.password}):
        code = control_main(['--url', loop.url, *command])
    assert code == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def run_example(local_loop: LocalLoop, tmp_path: Path) -> Iterator[Any]:
    """``run_example(name)``: ``python docs/examples/<name>`` with the Loop's ``LOOP_*`` variables and ``PORT=0``;
    every started example must end by itself within 15 s of SIGTERM, without a traceback."""
    started: list[Sample] = []

    def run(name: str) -> Any:
        context = sample_process(EXAMPLES / name, local_loop, tmp_path / f'{name}-data', env={'PORT': '0'})
        sample = context.__enter__()
        started.append(sample)
        contexts.append(context)
        return sample

    contexts: list[Any] = []
    yield run
    for sample, context in zip(started, contexts, strict=True):
        sample.process.send_signal(signal.SIGTERM)
        code = sample.process.wait(15)
        context.__exit__(None, None, None)
        assert code == 0, sample.text()
        assert 'Traceback' not in sample.text(), sample.text()


def test_every_example_is_run() -> None:
    assert {path.name for path in EXAMPLES.glob('*.py')} == RUN_HERE


def dark_square_jpeg() -> bytes:
    image = np.full((240, 320, 3), 220, dtype=np.uint8)
    image[50:90, 100:160] = 10
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format='JPEG', quality=95)
    return buffer.getvalue()


def test_detector_guide(local_loop: LocalLoop, run_example: Any, capsys: pytest.CaptureFixture[str]) -> None:
    detector = run_example('detector.py')
    wait_for(lambda: requests.get(f'{detector.url}/readyz', timeout=5).ok, timeout=30, what='the detector to be ready')

    answer = requests.post(f'{detector.url}/detect', files={'file': ('image.jpg', dark_square_jpeg())}, timeout=10)
    assert answer.status_code == 200, answer.text
    [box] = answer.json()['box_detections']
    assert (box['model_name'], box['category_name']) == ('1.1', 'circle')
    assert abs(box['x'] - 100) <= 2 and abs(box['y'] - 50) <= 2
    assert abs(box['width'] - 60) <= 4 and abs(box['height'] - 40) <= 4

    control(local_loop, 'deploy', '--version', '1.2', capsys=capsys)

    def serving_version() -> bool:
        model = requests.get(f'{detector.url}/about', timeout=5).json()['model_info']
        return model is not None and model['version'] == '1.2'

    wait_for(serving_version, timeout=30, what='the detector to serve version 1.2')


def test_trainer_guide(local_loop: LocalLoop, run_example: Any, capsys: pytest.CaptureFixture[str]) -> None:
    run_example('trainer.py')
    wait_for(
        lambda: any(n['node_type'] == 'trainer' and n['connected'] for n in local_loop.nodes()),
        timeout=30,
        what='the trainer to connect',
    )
    models_before = len(control(local_loop, 'models', capsys=capsys)['models'])
    started = control(local_loop, 'begin-training', capsys=capsys)
    assert started['accepted'], started

    def new_model() -> dict[str, Any] | None:
        models = control(local_loop, 'models', capsys=capsys)['models']
        fresh = [m for m in models if 'mean_box' in m['formats']]
        return fresh[0] if len(models) > models_before and fresh else None

    model = wait_for(new_model, timeout=60, what='the trained model to arrive')
    _, path = local_loop.store.model_zip(ORGANIZATION, PROJECT, model['id'], 'mean_box')
    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist()) == ['mean_box.json', 'model.json']
        learned = json.loads(archive.read('mean_box.json'))
    categories = {c['name']: c['id'] for c in control(local_loop, 'categories', capsys=capsys)['categories']}
    assert set(learned) <= {categories['circle'], categories['square'], categories['triangle']} and learned
    wait_for(
        lambda: any(p['status'] == 200 for p in local_loop.store.detection_posts(ORGANIZATION, PROJECT)),
        timeout=30,
        what="the trainer's detections",
    )


def test_annotator_guide(local_loop: LocalLoop, run_example: Any) -> None:
    run_example('annotator.py')
    node = wait_for(
        lambda: next((n for n in local_loop.nodes() if n['node_type'] == 'annotation_node' and n['connected']), None),
        timeout=30,
        what='the annotator to connect',
    )
    image_id = local_loop.store.image_ids(ORGANIZATION, PROJECT)[0]
    category = local_loop.store.categories(ORGANIZATION, PROJECT)[0]

    def event(event_type: str, x: int, y: int) -> str:
        data = {
            'coordinate': {'x': x, 'y': y},
            'event_type': event_type,
            'context': {'organization': ORGANIZATION, 'project': PROJECT},
            'image_uuid': image_id,
            'category': category,
        }
        ack = local_loop.send(node['id'], 'handle_user_input', {'frontend_id': 'tab-1', 'data': data})
        assert ack['success'], ack
        svg: str = ack['payload']  # what the Loop's UI overlays
        return svg

    event('left_mouse_down', 10, 20)
    assert '10,20 50,20 50,60 10,60' in event('mouse_move', 50, 60)
    assert '10,20 60,20 60,70 10,70' in event('left_mouse_up', 60, 70)

    # the ack came after the node sent the annotation, so the Loop has it now
    item = local_loop.store.images(ORGANIZATION, PROJECT, [image_id])[0]
    [annotation] = item['segmentation_annotations']
    assert annotation['category_id'] == category['id']
    assert [(p['x'], p['y']) for p in annotation['shape']['points']] == [(10, 20), (60, 20), (60, 70), (10, 70)]


def test_converter_guide(local_loop: LocalLoop, run_example: Any, capsys: pytest.CaptureFixture[str]) -> None:
    run_example('converter.py')
    mocked = [m['id'] for m in control(local_loop, 'models', capsys=capsys)['models'] if 'mocked' in m['formats']]
    assert len(mocked) == 3

    def converted() -> bool:
        return all('mocked_upper' in local_loop.store.model(ORGANIZATION, PROJECT, m)['formats'] for m in mocked)

    wait_for(converted, timeout=60, what='every mocked model to be converted')
    _, path = local_loop.store.model_zip(ORGANIZATION, PROJECT, mocked[0], 'mocked_upper')
    with zipfile.ZipFile(path) as archive:
        assert archive.read('file_1.txt') == b'CONTENT OF FILE ONE'


def test_local_loop_fault_example() -> None:
    """The local Loop page's example, run as a script: the first request fails with the injected 503."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / 'local_loop_faults.py')],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        'first try: 503',
        'second try: 10 complete images',
        'the rule answered 1 request',
    ]


def test_toolkit_example() -> None:
    """The toolkit page's example, run as a script: it prints what the page says each function gives."""
    environment = {k: v for k, v in os.environ.items() if k not in {'CONF_THRESHOLD', 'NODE_HOST', 'NODE_PORT'}}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / 'toolkit.py')],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=environment,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        'limit 1024, sizes up to 300 fit: 256',
        'limit and request 200, all fit: 200',
        'limit and request 1000, 512 does not fit: 256 after trying [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]',
        '100 images, dataset limit 12 -> 8 after trying [1, 2, 4, 8]',
        "max_batch_size '': 0",
        'max_batch_size None: 0',
        "max_batch_size '16': 16",
        'max_batch_size absent: 0',
        "ValueError: hyperparameter max_batch_size must be a whole number, got '16.0'",
        'without a GPU: 8 or, for a limit of 5, 4',
        '29 of 200 train images become val',
        'the same ones again: True',
        "CriticalError: hyperparameter compute_validation_set must be true or false (a JSON boolean), got 'yes'",
        "{'cat': {'tp': 8, 'fp': 2, 'fn': 0}, 'dog': {'tp': 1, 'fp': 0, 'fn': 3}, 'cow': {'tp': 0, 'fp': 0, 'fn': 0}}",
        'macro F1: 0.430',
        'sums: [0, 4096, 16384, 36864]',
        'kept: [(0, 0.9), (1, 0.7), (0, 0.6)]',
        'box: cat 10 10 100 50 0.9',
        'point: eye 10.0 50.0 0.7',
        'default: 0.2',
        'from CONF_THRESHOLD: 0.35',
        'the command line wins: 0.5',
        'host and port: 0.0.0.0 80',
    ]


def test_custom_node_example(run_example: Any) -> None:
    """The observability page's node type: its route is served and described, its metric scraped."""
    node = run_example('custom_node.py')
    assert requests.get(f'{node.url}/camera', timeout=10).json() == {'fps': 25.0}
    scraped = requests.get(f'{node.url}/metrics', timeout=10).text
    assert 'llnode_camera_fps 25.0' in scraped.splitlines()
    assert 'llnode_node_info{' in scraped  # the families of every node are still there
    document = requests.get(f'{node.url}/openapi.json', timeout=10).json()
    camera = document['paths']['/camera']['get']
    assert camera['summary'] == 'The camera settings'
    assert set(camera['responses']) == {'200', '503', '500'}
