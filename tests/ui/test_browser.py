"""The web UI in a real headless Chromium: log in, the grid with the demo's annotations, drawing a box that the
API then holds, a training's chart getting a point, a deployment seen on /nodes, and an annotator's tool
completing an annotation from mouse events. One browser for all (see conftest); each test its own Loop."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from llnode.annotator import AnnotatorNode
from llnode.detector import DetectorNode
from llnode.localloop import LocalLoop
from llnode.trainer import TrainerNode
from tests.detector.node_helpers import TestingFactory
from tests.linked_nodes import NodeFactory
from tests.polling import wait_for
from tests.samples import load_sample
from tests.trainer.trainer_support import ScriptedLogic
from tests.ui.conftest import ORGANIZATION, PROJECT, log_in

pytestmark = pytest.mark.timeout(120)

PROJECT_PATH = f'/projects/{ORGANIZATION}/{PROJECT}'


def api_session(loop: LocalLoop) -> requests.Session:
    session = requests.Session()
    session.post(f'{loop.url}/api/login', data={'username': 'u', 'password': 'p'}, timeout=10).raise_for_status()
    return session


def stored_image(loop: LocalLoop, image_id: str) -> dict[str, Any]:
    """The image as a trainer downloads it (``GET /api/.../images?ids=``)."""
    with api_session(loop) as session:
        answer = session.get(
            f'{loop.url}/api/{ORGANIZATION}/projects/{PROJECT}/images', params={'ids': image_id}, timeout=10
        )
        answer.raise_for_status()
        return dict(answer.json()['images'][0])


def image_id_in(loop: LocalLoop, state: str) -> str:
    return loop.store.image_ids(ORGANIZATION, PROJECT, state)[0]


def to_screen(page: Any, x: float, y: float) -> tuple[float, float]:
    """Screen position of image pixel ``(x, y)`` on the image page's stage."""
    box = page.locator('#stage').bounding_box()
    width, height = (float(v) for v in page.locator('#stage').get_attribute('viewBox').split()[2:])
    return box['x'] + x * box['width'] / width, box['y'] + y * box['height'] / height


def drag(page: Any, start: tuple[float, float], end: tuple[float, float]) -> None:
    page.mouse.move(*to_screen(page, *start))
    page.mouse.down()
    page.mouse.move(*to_screen(page, *end), steps=5)
    page.mouse.up()


@pytest.fixture
def nodes() -> Iterator[list[Any]]:
    made: list[Any] = []
    yield made
    for node in reversed(made):
        node.stop()


def test_login_and_the_grid_shows_the_demo_annotations(page: Any, ui_loop: LocalLoop) -> None:
    page.goto(f'{PROJECT_PATH}/images')
    assert '/login' in page.url, 'a page needs a login first'
    log_in(page, next_path=f'{PROJECT_PATH}/images')
    thumbs = page.locator('#grid a.thumb')
    total = len(ui_loop.store.image_ids(ORGANIZATION, PROJECT))
    assert thumbs.count() == total
    # the complete images carry their true boxes, drawn as SVG over the thumbnail
    complete = image_id_in(ui_loop, 'complete')
    boxes = ui_loop.store.image(ORGANIZATION, PROJECT, complete)['box_annotations']
    drawn = page.locator(f'#grid a.thumb[data-image="{complete}"] svg rect.annotation')
    assert drawn.count() == len(boxes) > 0
    assert float(drawn.first.get_attribute('width')) == boxes[0]['width']
    # the thumbnails load (drawn once on the server, then cached)
    first = page.locator('#grid a.thumb img').first
    wait_for(lambda: first.evaluate('img => img.complete && img.naturalWidth > 0'), what='a thumbnail to load')
    # a filter: only inbox images
    page.select_option('select[name=state]', 'inbox')
    page.click('#filters button[type=submit]')
    page.wait_for_url(re.compile(r'state=inbox'))
    assert page.locator('#grid a.thumb').count() == len(ui_loop.store.image_ids(ORGANIZATION, PROJECT, 'inbox'))


def test_drawing_moving_and_deleting_boxes_is_stored_as_the_api_serves_it(page: Any, ui_loop: LocalLoop) -> None:
    image_id = image_id_in(ui_loop, 'inbox')
    log_in(page, next_path=f'{PROJECT_PATH}/images/{image_id}')
    page.click('#modes button[data-mode=box]')
    page.select_option('#category', label='circle (box)')
    drag(page, (100, 100), (200, 180))
    drag(page, (300, 300), (360, 350))
    assert page.locator('#layer-annotations rect.annotation').count() == 2
    # move the first box 20 px right, then select the second and delete it
    page.click('#modes button[data-mode=select]')
    drag(page, (150, 140), (170, 140))
    page.mouse.click(*to_screen(page, 330, 325))
    page.keyboard.press('Delete')
    page.click('#modes button[data-mode=point]')
    page.select_option('#category', label='purple point (point)')
    page.mouse.click(*to_screen(page, 50, 60))
    page.click('#save')
    page.wait_for_selector('#message:text("annotations saved")')
    item = stored_image(ui_loop, image_id)
    assert len(item['box_annotations']) == 1
    box = item['box_annotations'][0]
    assert box['category_name'] == 'circle'
    assert abs(box['x'] - 120) <= 2 and abs(box['y'] - 100) <= 2
    assert abs(box['width'] - 100) <= 2 and abs(box['height'] - 80) <= 2
    assert [(round(p['x']), round(p['y'])) for p in item['point_annotations']] == [(50, 60)]
    # move the image to complete: the next training gets it
    page.click('#state-buttons button[data-state=complete]')
    page.wait_for_selector('#image-state:text("complete")')
    assert image_id in ui_loop.store.image_ids(ORGANIZATION, PROJECT, 'complete')


def test_begin_a_training_and_its_chart_gets_points(page: Any, ui_loop: LocalLoop, nodes: list[Any]) -> None:
    factory = NodeFactory(TrainerNode, ScriptedLogic, 'ui trainer', {'repeat_interval': 0.1, 'metrics_interval': 0.0})
    trainer = factory(ui_loop, ScriptedLogic(forever=True, epoch_seconds=0.3))
    nodes.append(trainer)
    log_in(page, next_path=f'{PROJECT_PATH}/trainings')
    page.click('#begin')
    page.wait_for_url(re.compile(r'/trainings/\d+$'))
    page.wait_for_selector('#chart circle.point.f1')
    assert page.locator('#points tbody tr').count() >= 1
    page.wait_for_selector('#training-state:text("running")')
    page.click('#training-buttons button[data-command=stop_training]')
    page.wait_for_selector('#command-message:text("success")')
    page.wait_for_selector('#training-state:text("finished")', timeout=60_000)
    # a second training, aborted: it ends without a model
    wait_for(lambda: trainer.status().state == 'idle', what='the trainer to be idle again')
    page.goto(f'{PROJECT_PATH}/trainings')
    page.click('#begin')
    page.wait_for_url(re.compile(r'/trainings/\d+$'))
    page.wait_for_selector('#training-state:text("running")')
    page.click('#training-buttons button[data-command=abort_training]')
    page.wait_for_selector('#command-message:text("success")')
    page.wait_for_selector('#training-state:text("ended")', timeout=30_000)
    assert page.locator('#training-model').inner_text() == '-'


def test_deploying_a_model_changes_the_detector_version_on_nodes(
    page: Any, ui_loop: LocalLoop, nodes: list[Any], tmp_path: Path
) -> None:
    detector = DetectorNode(
        'ui detector',
        TestingFactory(),
        settings=ui_loop.settings(data_folder=tmp_path / 'detector', sync_cycles=1),
        repeat_interval=0.2,
    )
    nodes.append(detector.start())
    log_in(page, next_path='/nodes')
    row = page.locator(f'tr[data-node="{detector.uuid}"] .model-version')
    wait_for(lambda: row.count() and row.inner_text().strip() == '1.1', timeout=20, what='the detector on 1.1')
    page.goto(f'{PROJECT_PATH}/models')
    page.click('tr[data-version="1.2"] button.deploy')
    page.wait_for_selector('tr[data-version="1.2"] .ok:text("deployed")')
    page.goto('/nodes')
    wait_for(lambda: row.count() and row.inner_text().strip() == '1.2', timeout=20, what='the detector on 1.2')


def test_an_annotator_tool_completes_an_annotation_from_mouse_events(
    page: Any, ui_loop: LocalLoop, nodes: list[Any]
) -> None:
    sample = load_sample('segmentation_annotator.py')
    logged_out: list[str] = []

    class Tool(sample.SegmentationTool):  # type: ignore[name-defined,misc]
        def logout_user(self, frontend_id: str) -> bool:
            logged_out.append(frontend_id)
            return True

    annotator = NodeFactory(AnnotatorNode, Tool, 'ui annotator', {'repeat_interval': 0.1})(ui_loop)
    nodes.append(annotator)
    image_id = image_id_in(ui_loop, 'complete')
    box = ui_loop.store.image(ORGANIZATION, PROJECT, image_id)['box_annotations'][0]
    centre = (box['x'] + box['width'] / 2, box['y'] + box['height'] / 2)
    log_in(page, next_path=f'{PROJECT_PATH}/images/{image_id}')
    page.click('#open-tool')
    page.mouse.move(*to_screen(page, *centre))
    # hovering shows the region the tool would take: the SVG the node answers, drawn over the image
    page.wait_for_selector('#layer-tool polygon', state='attached')
    page.mouse.down()
    page.mouse.up()
    page.wait_for_selector('#layer-segmentations polygon', state='attached')
    page.wait_for_selector('#message:text("the tool finished an annotation")')
    stored = stored_image(ui_loop, image_id)['segmentation_annotations']
    assert len(stored) == 1
    xs = [p['x'] for p in stored[0]['shape']['points']]
    assert box['x'] - 3 <= min(xs) and max(xs) <= box['x'] + box['width'] + 3
    page.click('#close-tool')
    wait_for(lambda: logged_out, what='user_logout to reach the tool')
    assert logged_out[0].startswith('llnode-ui-')
