"""ShapesNet, the demo's torch box detector: the scores (tp/fp/fn per category uuid at IoU >= 0.5, greedy by
confidence; F1), target encoding and decoding (a perfect output decodes to the true boxes, also mirrored), the
input transform (the same tensor the detector's torch logic builds), the model files, and that the network learns
the demo's shapes in a short CPU training (the quick setting's F1 floor on held-out images).

``ShapesRun`` and ``demo_data`` are shared with the other ``test_shapes_*`` files: a TrainingRun over demo images
rendered into a folder, as the trainer node would have downloaded them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip('torch')

from llnode.demo import shapes_net  # noqa: E402
from llnode.demo.shapes_net import NetConfig, confusion_matrix, evaluate_f1, match_boxes  # noqa: E402
from llnode.demo.torch_trainer import ShapesTrainer  # noqa: E402
from llnode.localloop import demo  # noqa: E402
from llnode.schema import Category, ModelInformation  # noqa: E402
from llnode.trainer.callbacks import ORDER_LOOP_METRICS, Callback, f1_score  # noqa: E402
from tests.trainer.fake_run import FakeRun  # noqa: E402

CATEGORIES = [Category(id=c['id'], name=c['name'], type=c['type']) for c in demo.DEMO_CATEGORIES]
BOX_IDS = [c.id for c in CATEGORIES if c.type == 'box']
CIRCLE, SQUARE, TRIANGLE = BOX_IDS

#: the quick setting measured on 2 cores: 10 epochs reach F1 0.95 on the test split of 120 demo images in ~5 s
#: (two threads, idle machine; one thread ~7 s), and F1 0.9 on 60 images in half that time
QUICK_EPOCHS = 10
QUICK_IMAGES = 60
QUICK_F1_FLOOR = 0.6


# ---------------------------------------------------------------------------------------------------------------
# shared helpers


def demo_data(folder: Path, count: int, *, seed: int = 0) -> list[dict[str, Any]]:
    """Demo images ``0..count-1`` as ``{id}.jpg`` in ``folder`` and their Loop metadata items (every 5th is
    ``test``), as a trainer finds them after the data download."""
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for index in range(count):
        image_id = f'img-{seed}-{index}'
        path = folder / f'{image_id}.jpg'
        jpeg, annotations = demo.render(index, seed)
        if not path.exists():
            path.write_bytes(jpeg)
        items.append({'id': image_id, 'set': 'test' if index % 5 == 0 else 'train', **annotations})
    return items


class ShapesRun(FakeRun):
    """A TrainingRun over demo images without a Loop (the shared fake run on ``folder/training``)."""

    def __init__(self, folder: Path, image_data: list[dict[str, Any]], images_folder: Path) -> None:
        super().__init__(folder / 'training', images_folder, categories=CATEGORIES, image_data=image_data)


def box(category: str, xywh: tuple[float, float, float, float], confidence: float | None = None) -> dict[str, Any]:
    x, y, w, h = xywh
    result: dict[str, Any] = {'category_id': category, 'x': x, 'y': y, 'width': w, 'height': h}
    if confidence is not None:
        result['confidence'] = confidence
    return result


def held_out(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [item for item in items if item['set'] == 'test']


# ---------------------------------------------------------------------------------------------------------------
# scores


def test_matching_is_per_category_greedy_by_confidence_at_iou_half() -> None:
    truths = [box(CIRCLE, (0, 0, 10, 10)), box(SQUARE, (100, 100, 20, 20))]
    predictions = [
        box(CIRCLE, (1, 0, 10, 10), 0.6),  # IoU 0.82 but less confident: the duplicate, fp
        box(CIRCLE, (5, 0, 10, 10), 0.9),  # IoU 5/15 = 0.33 < 0.5: fp, though it comes first
        box(SQUARE, (100, 100, 20, 20), 0.8),  # exact: tp
        box(TRIANGLE, (0, 0, 10, 10), 0.99),  # right place, wrong category: fp for triangle
    ]
    assert match_boxes(predictions, truths) == {
        CIRCLE: {'tp': 1, 'fp': 1, 'fn': 0},
        SQUARE: {'tp': 1, 'fp': 0, 'fn': 0},
        TRIANGLE: {'tp': 0, 'fp': 1, 'fn': 0},
    }
    # the more confident of two good predictions takes the true box, the other one is the fp
    two_good = [box(CIRCLE, (0, 0, 10, 10), 0.5), box(CIRCLE, (1, 1, 10, 10), 0.7)]
    assert match_boxes(two_good, [box(CIRCLE, (0, 0, 10, 10))]) == {CIRCLE: {'tp': 1, 'fp': 1, 'fn': 0}}


def test_iou_exactly_one_half_matches_and_just_below_does_not() -> None:
    truth = [box(CIRCLE, (0, 0, 10, 10))]
    assert shapes_net.iou(box(CIRCLE, (0, 0, 20, 10)), truth[0]) == 0.5
    assert match_boxes([box(CIRCLE, (0, 0, 20, 10), 0.9)], truth)[CIRCLE]['tp'] == 1
    assert match_boxes([box(CIRCLE, (0, 0, 20.1, 10), 0.9)], truth) == {CIRCLE: {'tp': 0, 'fp': 1, 'fn': 1}}


def test_confusion_matrix_over_images_with_rows_for_every_category() -> None:
    predictions = [[box(CIRCLE, (0, 0, 10, 10), 0.9)], [], [box(SQUARE, (50, 50, 10, 10), 0.4)]]
    truths = [[box(CIRCLE, (0, 0, 10, 10))], [box(TRIANGLE, (5, 5, 30, 30))], []]
    matrix = confusion_matrix(predictions, truths, categories=BOX_IDS)
    assert matrix == {
        CIRCLE: {'tp': 1, 'fp': 0, 'fn': 0},
        SQUARE: {'tp': 0, 'fp': 1, 'fn': 0},
        TRIANGLE: {'tp': 0, 'fp': 0, 'fn': 1},
    }
    assert evaluate_f1(predictions, truths) == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))
    assert evaluate_f1(predictions, truths) == f1_score(matrix)
    # one image's flat lists are one image; boxes in different images never match
    assert evaluate_f1([box(CIRCLE, (0, 0, 10, 10), 0.9)], [box(CIRCLE, (0, 0, 10, 10))]) == 1.0
    assert evaluate_f1([[box(CIRCLE, (0, 0, 10, 10), 0.9)], []], [[], [box(CIRCLE, (0, 0, 10, 10))]]) == 0.0
    assert evaluate_f1([], []) == 0.0
    # a category name is used when a box has no category_id (as in hand-written truths)
    named = {'category_name': 'circle', 'x': 0, 'y': 0, 'width': 10, 'height': 10}
    assert evaluate_f1([[{**named, 'confidence': 0.5}]], [[named]]) == 1.0


@pytest.mark.parametrize(
    ('predictions', 'truths', 'message'),
    [
        ([[box(CIRCLE, (0, 0, 1, 1))]], [[], []], '1 prediction lists for 2 images'),
        ([box(CIRCLE, (0, 0, 1, 1)), []], [], 'mixes boxes and lists'),
        ([{'category_id': CIRCLE, 'x': 0, 'y': 0}], [], 'lacks width, height'),
        ([{'x': 0, 'y': 0, 'width': 1, 'height': 1}], [], 'needs a category_id'),
        ('boxes', [], 'must be a list'),
    ],
)
def test_bad_score_input_is_refused_with_what_is_wrong(predictions: Any, truths: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        evaluate_f1(predictions, truths)


# ---------------------------------------------------------------------------------------------------------------
# targets, decoding, inputs, files


def perfect_outputs(heat: Any, geometry: Any) -> Any:
    """What a perfect network would output for these targets: logits that are high only at the centres."""
    logits = torch.where(heat >= 1.0, torch.tensor(8.0), torch.tensor(-8.0))
    return torch.cat([logits, geometry], dim=0).unsqueeze(0)


def test_targets_decode_back_to_the_true_boxes_also_mirrored() -> None:
    config = NetConfig.for_categories(CATEGORIES, resolution=128)
    assert config.category_ids == tuple(BOX_IDS)  # the point category gets no channel
    _, annotations = demo.render(3)
    truths = annotations['box_annotations']
    assert len(truths) >= 2
    heat, geometry, mask = shapes_net.encode_targets(truths, demo.WIDTH, demo.HEIGHT, config)
    assert heat.shape == (3, 32, 32) and geometry.shape == (4, 32, 32) and int(mask.sum()) == len(truths)
    raw = shapes_net.decode(perfect_outputs(heat, geometry), 3)[0]
    decoded = shapes_net.to_image_boxes(raw, config, demo.WIDTH, demo.HEIGHT)
    assert len(decoded) == len(truths)
    matrix = match_boxes(decoded, truths, iou_threshold=0.9)
    assert all(row['fp'] == row['fn'] == 0 for row in matrix.values()), matrix
    # the flipped sample's targets decode to the mirrored boxes
    sample = shapes_net.Sample('x', torch.zeros(3, 128, 128), demo.WIDTH, demo.HEIGHT, truths, heat, geometry, mask)
    _, heat_f, geometry_f, _ = shapes_net.collate([sample], flip=[True])
    mirrored = [{**t, 'x': demo.WIDTH - t['x'] - t['width']} for t in truths]
    raw = shapes_net.decode(perfect_outputs(heat_f[0], geometry_f[0]), 3)[0]
    decoded = shapes_net.to_image_boxes(raw, config, demo.WIDTH, demo.HEIGHT)
    matrix = match_boxes(decoded, mirrored, iou_threshold=0.9)
    assert all(row['fp'] == row['fn'] == 0 for row in matrix.values()), matrix


def test_decoding_keeps_peaks_above_the_threshold_best_first() -> None:
    outputs = torch.full((1, 6, 8, 8), -10.0)
    outputs[0, 0, 2, 2] = 0.0  # 0.5
    outputs[0, 0, 2, 3] = -0.5  # a neighbour of a higher peak: not a peak
    outputs[0, 1, 6, 6] = 2.0  # 0.88
    outputs[0, 1, 0, 0] = -2.0  # 0.12: below the threshold
    outputs[0, 2:4, 6, 6] = 1.0  # one cell wide and high
    boxes = shapes_net.decode(outputs, 2, threshold=0.3)[0]
    assert [(b.channel, round(b.confidence, 2)) for b in boxes] == [(1, 0.88), (0, 0.5)]
    assert boxes[0].width == boxes[0].height == shapes_net.STRIDE
    assert shapes_net.decode(outputs, 2, threshold=0.3, max_detections=1)[0] == boxes[:1]


def test_the_training_input_is_the_tensor_the_detector_logic_builds(tmp_path: Path) -> None:
    from llnode.demo.torch_detector import ShapesDetectorLogic

    config = NetConfig.for_categories(CATEGORIES, resolution=96)
    shapes_net.save_model(shapes_net.build_net(config, seed=1), tmp_path)
    info = ModelInformation(id='m', organization='o', project='p', version='1.0', categories=CATEGORIES)
    logic = ShapesDetectorLogic(info, device='cpu', model_folder=tmp_path)
    assert logic.resolution == 96  # from shapes_net.json: the model.json has none
    jpeg, _ = demo.render(5)
    image = shapes_net.read_rgb(_write(tmp_path / 'i.jpg', jpeg))
    batch, _ = logic.prepare_batch([image])
    assert torch.equal(batch[0], shapes_net.image_tensor(image, 96))


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_model_files_round_trip_and_unusable_files_are_named(tmp_path: Path) -> None:
    config = NetConfig.for_categories(CATEGORIES, resolution=64, width=8)
    net = shapes_net.build_net(config, seed=3)
    weights, config_file = shapes_net.save_model(net, tmp_path / 'model')
    assert (weights.name, config_file.name) == ('model.pt', 'shapes_net.json')
    loaded = shapes_net.load_model(tmp_path / 'model')
    assert loaded.config == config and not loaded.training
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), loaded.state_dict().values(), strict=True))
    with pytest.raises(shapes_net.NetError, match=r'no shapes_net\.json'):
        shapes_net.load_model(tmp_path)
    other = tmp_path / 'other'
    shapes_net.save_model(shapes_net.build_net(NetConfig.for_categories(CATEGORIES, resolution=64, width=16)), other)
    config.save(other / 'shapes_net.json')  # width 8 described, width 16 stored
    with pytest.raises(shapes_net.NetError, match='do not fit the network'):
        shapes_net.load_model(other)
    (other / 'shapes_net.json').write_text('{"resolution": 64}')
    with pytest.raises(shapes_net.NetError, match='incomplete or malformed'):
        shapes_net.load_model(other)


@pytest.mark.parametrize(
    ('options', 'message'),
    [
        ({'resolution': 100}, 'multiple of 16'),
        ({'width': 2}, 'width'),
        ({'threshold': 1.5}, 'threshold'),
        ({'architecture': 'resnet'}, 'unknown ShapesNet architecture'),
    ],
)
def test_bad_configs_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(shapes_net.NetError, match=message):
        NetConfig.for_categories(CATEGORIES, **options)
    with pytest.raises(shapes_net.NetError, match='at least one box category'):
        NetConfig.for_categories([c for c in CATEGORIES if c.type == 'point'])


def test_bad_trainer_options_are_refused() -> None:
    with pytest.raises(ValueError, match='nproc'):
        ShapesTrainer(nproc=0)
    with pytest.raises(ValueError, match='epochs'):
        ShapesTrainer(epochs=0)
    with pytest.raises(ValueError, match='multiple of 16'):
        ShapesTrainer(resolution=100)
    with pytest.raises(ValueError, match='threads'):
        ShapesTrainer(threads=0)
    with pytest.raises(TypeError):
        ShapesTrainer(unknown_option=1)


# ---------------------------------------------------------------------------------------------------------------
# it learns


@pytest.mark.slow
def test_the_quick_setting_learns_the_shapes_of_held_out_images(tmp_path: Path) -> None:
    items = demo_data(tmp_path / 'images', QUICK_IMAGES)
    run = ShapesRun(tmp_path, items, tmp_path / 'images')
    logic = ShapesTrainer(epochs=QUICK_EPOCHS, threads=1)  # one thread: as fast on a busy machine as on an idle one
    threads = torch.get_num_threads()
    logic.train(run)  # type: ignore[arg-type]
    assert torch.get_num_threads() == threads  # the training's own thread count is undone
    best = run.reported[-1]
    assert set(best.confusion_matrix) == set(BOX_IDS)
    f1 = f1_score(best.confusion_matrix)
    assert f1 >= QUICK_F1_FLOOR, f'F1 {f1:.3f} on the test split after {QUICK_EPOCHS} epochs'
    true_boxes = sum(len(item['box_annotations']) for item in held_out(items))
    assert sum(row['tp'] + row['fn'] for row in best.confusion_matrix.values()) == true_boxes
    assert [s.meta_information['score'] for s in run.reported] == sorted(
        s.meta_information['score'] for s in run.reported
    )
    assert run.progress[-1] == 1.0
    paths = logic.model_files(run)  # type: ignore[arg-type]
    assert [p.name for p in paths] == ['model.pt', 'shapes_net.json']
    # the uploaded weights score what the best state says, through the detector's own logic
    info = ModelInformation(id='m', organization='o', project='p', version='1.1', categories=CATEGORIES)
    image_paths = [tmp_path / 'images' / f'{item["id"]}.jpg' for item in held_out(items)]
    detections = logic.detect(run, info, paths[0].parent, image_paths)  # type: ignore[arg-type]
    predictions = [[d.to_dict() for d in det.box_detections] for det in detections]
    assert [d.image_id for d in detections] == [p.stem for p in image_paths]
    assert evaluate_f1(predictions, [item['box_annotations'] for item in held_out(items)]) == pytest.approx(
        f1, abs=0.03
    )
    assert np.mean([len(p) for p in predictions]) > 0


class CrashOnce(Callback):
    """Records the epochs begun; raises once at the end of epoch ``at`` (after the checkpoint and the report)."""

    execution_order = ORDER_LOOP_METRICS + 1

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at
        self.crashed = False
        self.begun: list[int] = []

    def on_epoch_begin(self, run: Any, epoch: int, logs: Any) -> None:
        self.begun.append(epoch)

    def on_epoch_end(self, run: Any, epoch: int, logs: Any) -> None:
        if epoch == self.at and not self.crashed:
            self.crashed = True
            raise RuntimeError('a crash in the middle of the training')


class CrashingTrainer(ShapesTrainer):
    def __init__(self, crash: CrashOnce, **options: Any) -> None:
        super().__init__(**options)
        self.crash = crash

    def callbacks(self, run: Any) -> list[Callback]:
        return [self.crash]


@pytest.mark.slow
def test_a_failed_attempt_resumes_from_its_best_checkpoint(tmp_path: Path) -> None:
    items = demo_data(tmp_path / 'images', 20)
    run = ShapesRun(tmp_path, items, tmp_path / 'images')
    crash = CrashOnce(at=2)
    logic = CrashingTrainer(crash, epochs=4)
    with pytest.raises(RuntimeError, match='a crash'):
        logic.train(run)  # type: ignore[arg-type]
    first = list(run.reported)
    assert first and crash.begun == [0, 1, 2]
    best_epoch = first[-1].epoch
    assert best_epoch is not None
    weights = logic.model_files(run)[0].read_bytes()  # type: ignore[arg-type]
    crash.begun.clear()
    logic.train(run)  # type: ignore[arg-type]  # the next attempt (the node retries the stage)
    assert crash.begun == list(range(best_epoch + 1, 4))  # from the epoch after the best checkpoint
    later = run.reported[len(first) :]
    assert all(s.meta_information['score'] > first[-1].meta_information['score'] for s in later)
    if not later:  # nothing better: the checkpoint is still the first attempt's best
        assert logic.model_files(run)[0].read_bytes() == weights  # type: ignore[arg-type]


def test_without_test_images_the_matrix_is_measured_on_the_training_images(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    items = [{**item, 'set': 'train'} for item in demo_data(tmp_path / 'images', 6)]
    run = ShapesRun(tmp_path, items, tmp_path / 'images')
    with caplog.at_level(logging.WARNING, logger='tests.trainer.fake_run'):
        ShapesTrainer(epochs=1, resolution=64, width=8).train(run)  # type: ignore[arg-type]
    assert 'no test images' in caplog.text
    [state] = run.reported
    true_boxes = sum(len(item['box_annotations']) for item in items)
    assert sum(row['tp'] + row['fn'] for row in state.confusion_matrix.values()) == true_boxes
