"""The toolkit page's node fragments, run as far as they can run here: their classes are executed from the page
with stand-ins for what the page leaves to the node's author (the engine, the dataset writer, the epoch reader),
then driven as the node would drive them. The last lines of the two nodes (parse the command line, serve until
stopped) are cut off; ``samples/yolo_style/`` serves a complete pair in tests/trainer/test_yolo_style.py. The
training script runs whole, on the CPU fallback.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import pytest

from llnode.config import Settings
from llnode.detector import DetectorNode
from llnode.schema import Category, ImageMetadata, ModelInformation
from llnode.trainer import BestState, TrainerNode
from tests.docs.test_names import python_blocks

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / 'docs' / 'toolkit.rst'


def page_block(first_line: str) -> str:
    """The toolkit page's Python block that starts with ``first_line``, up to its command line part."""
    [code] = [code for _, code in python_blocks(PAGE.read_text()) if code.startswith(first_line)]
    head, served, _ = code.partition('\nparser = node_parser(')
    assert served, 'the block ends by parsing the command line and serving the node'
    return head


def run_block(code: str, monkeypatch: pytest.MonkeyPatch, **stand_ins: Any) -> dict[str, Any]:
    """The block run as a module of its own (dataclasses look their module up), with ``stand_ins`` in it."""
    module = ModuleType('toolkit_page')
    module.__dict__.update(stand_ins)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(code, str(PAGE), 'exec'), module.__dict__)
    return module.__dict__


MODEL_INFO = ModelInformation(
    id='m-1',
    organization='zauberzeug',
    project='demo',
    version='1.0',
    resolution=320,
    categories=[Category(id='c-0', name='cat', type='box')],
)


def test_the_detector_fragment_builds_a_logic_that_detects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engines: list[Any] = []

    class Engine:
        """Raw output of two overlapping boxes of class 0, in image pixels."""

        def __init__(self, path: Path, resolution: int) -> None:
            self.path, self.resolution, self.destroyed = path, resolution, False
            engines.append(self)

        def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            boxes = np.array([[10.0, 20.0, 110.0, 70.0], [12.0, 21.0, 111.0, 71.0]])
            return boxes, np.array([0.9, 0.6]), np.array([0, 0])

        def destroy(self) -> None:
            self.destroyed = True

    page = run_block(page_block('import sys\nfrom dataclasses import dataclass'), monkeypatch, load_engine=Engine)
    params = page['YoloParams'](0.2, 0.45)
    assert params.model_format == 'yolo_wts'  # the property of a frozen dataclass factory
    node = DetectorNode(
        'yolo detector',
        params,
        settings=Settings(data_folder=tmp_path / 'data', organization='zauberzeug', project='demo'),
    )
    assert node.factory is params

    folder = tmp_path / 'model'
    folder.mkdir()
    logic = params.build(dataclasses.replace(MODEL_INFO, model_root_path=str(folder)))
    assert engines[0].path == folder / 'model.engine' and engines[0].resolution == 320
    result = logic.evaluate(np.zeros((240, 320, 3), dtype=np.uint8))
    assert isinstance(result, ImageMetadata)
    [box] = result.box_detections  # the second box is suppressed (IoU above 0.45)
    assert (box.category_name, box.x, box.y, box.width, box.height, box.confidence) == ('cat', 10, 20, 100, 50, 0.9)
    logic.close()
    assert engines[0].destroyed


def test_the_trainer_fragment_returns_the_command_and_the_best_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written: list[Any] = []

    def write_dataset(train: list[Any], val: list[Any], folder: Path) -> None:
        written.append((train, val, folder))

    def read_best_epoch(folder: Path) -> Any:
        tp, fp, fn = {'c-0': 8, 'c-1': 1}, {'c-0': 2}, {'c-1': 3}
        return SimpleNamespace(tp=tp, fp=fp, fn=fn, epoch=7, weights=folder / 'epoch7.pt')

    page = run_block(
        page_block('# trainer.py (the node)'), monkeypatch, write_dataset=write_dataset, read_best_epoch=read_best_epoch
    )
    logic = page['YoloTrainer'](vram_limit_gb=2.5)
    assert logic.model_format == 'yolo_pytorch'
    TrainerNode(
        'yolo trainer',
        logic,
        settings=Settings(data_folder=tmp_path / 'data', organization='zauberzeug', project='demo'),
    )

    run = SimpleNamespace(
        train_images=lambda: ['a'],
        val_images=lambda: ['b'],
        training_folder=tmp_path,
        hyperparameters={'max_batch_size': '16'},
    )
    command = logic.start_command(run)
    assert written == [(['a'], ['b'], tmp_path)]
    assert command == [
        sys.executable,
        'train.py',
        '--folder',
        str(tmp_path),
        '--max-batch-size',
        '16',
        '--vram-limit-gb',
        '2.5',
    ]
    run.hyperparameters = {'max_batch_size': '16.0'}
    with pytest.raises(ValueError, match='max_batch_size'):  # the comment's "ValueError for '16.0'"
        logic.start_command(run)

    best = logic.get_new_best(run)
    assert isinstance(best, BestState) and best.epoch == 7
    assert best.confusion_matrix == {'c-0': {'tp': 8, 'fp': 2, 'fn': 0}, 'c-1': {'tp': 1, 'fp': 0, 'fn': 3}}
    assert best.meta_information['weightfile'] == str(tmp_path / 'epoch7.pt')
    assert best.meta_information['f1'] == pytest.approx((16 / 18 + 2 / 5) / 2)


def test_the_training_script_fragment_takes_the_cpu_fallback_without_building_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a machine without CUDA (made so here, also on a GPU machine) the script's probe is the documented
    fallback: at most 8, bounded by the request and by an eighth of the training images; nothing is built."""
    import llnode.trainer.cuda

    monkeypatch.setattr(llnode.trainer.cuda, 'cuda_available', lambda: False)
    [code] = [code for _, code in python_blocks(PAGE.read_text()) if code.startswith('# train.py')]
    built: list[str] = []

    def build_model() -> Any:
        built.append('model')

    def build_optimizer() -> Any:
        built.append('optimizer')

    for requested, images, expected in (('0', 1000, 8), ('16', 1000, 8), ('4', 1000, 4), ('0', 40, 4)):
        monkeypatch.setattr(
            sys, 'argv', ['train.py', '--folder', str(tmp_path), '--max-batch-size', requested, '--vram-limit-gb', '2']
        )
        page = run_block(
            code,
            monkeypatch,
            build_model=build_model,
            build_optimizer=build_optimizer,
            random_batch=lambda size: None,
            train_images=['image'] * images,
        )
        assert page['args'].vram_limit_gb == 2.0
        assert page['batch_size'] == expected, (requested, images)
    assert built == []
