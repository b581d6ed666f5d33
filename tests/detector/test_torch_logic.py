"""The torch logic on CPU with a tiny conv module written here: device choice, eval and inference mode, resizing,
mixed-size batches, boxes back in original pixels, gray and RGBA input, half ignored on CPU, lazy torch import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llnode.detector.batching import InferenceWorker
from llnode.detector.logic import ImageInputError, LogicResultError
from llnode.detector.torch_logic import BatchMeta, ImageGeometry, TorchDetectorLogic, choose_device
from llnode.schema import BoxDetection, Category, ImageMetadata, ModelInformation, PointDetection

torch = pytest.importorskip('torch')

RESOLUTION = 32


class TinyNet(torch.nn.Module):
    """One conv layer; records what it saw so tests can check mode, dtype and shapes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, kernel_size=3, padding=1)
        self.seen: list[dict[str, Any]] = []

    def forward(self, x: Any) -> Any:
        self.seen.append(
            {
                'inference_mode': torch.is_inference_mode_enabled(),
                'training': self.training,
                'shape': tuple(x.shape),
                'dtype': x.dtype,
                'input': x.detach().clone(),
            }
        )
        return self.conv(x)


def make_info(folder: Path, resolution: int | None = RESOLUTION) -> ModelInformation:
    return ModelInformation(
        id='m-torch',
        organization='o',
        project='p',
        version='2.0',
        resolution=resolution,
        categories=[Category(id='c1', name='thing', type='box')],
        model_root_path=str(folder),
    )


@pytest.fixture
def model_folder(tmp_path: Path) -> Path:
    """A model folder with the tiny net's weights, as a trainer would have uploaded them."""
    torch.manual_seed(0)
    torch.save(TinyNet().state_dict(), tmp_path / 'weights.pt')
    return tmp_path


class BoxLogic(TorchDetectorLogic):
    """Emits one box covering the middle half of the model input, and one point at its centre, per image."""

    def load_module(self, model_folder: Path, model_info: ModelInformation, device: Any) -> Any:
        self.load_args = (model_folder, model_info, device)
        net = TinyNet()
        net.load_state_dict(torch.load(model_folder / 'weights.pt', map_location=device))
        return net

    def to_detections(self, outputs: Any, batch: BatchMeta) -> list[ImageMetadata]:
        assert outputs.shape == (len(batch), 2, batch.resolution, batch.resolution)
        quarter = batch.resolution / 4
        results = []
        for geometry in batch.images:
            x, y, w, h = geometry.box_to_image(quarter, quarter, 2 * quarter, 2 * quarter)
            px, py = geometry.point_to_image(2 * quarter, 2 * quarter)
            results.append(
                ImageMetadata(
                    box_detections=[BoxDetection('thing', x, y, w, h, batch.model_name, 0.9, 'c1')],
                    point_detections=[PointDetection('thing', px, py, batch.model_name, 0.8, 'c1')],
                )
            )
        return results


def test_auto_device_is_cpu_without_cuda_and_bad_devices_are_refused() -> None:
    if torch.cuda.is_available():
        assert choose_device('auto').type == 'cuda'
    else:
        assert choose_device('auto') == torch.device('cpu')
        with pytest.raises(ValueError, match='CUDA is not available'):
            choose_device('cuda')
    assert choose_device('cpu') == torch.device('cpu')
    with pytest.raises(ValueError, match='unknown torch device'):
        choose_device('nonsense')


def test_module_is_loaded_from_the_folder_in_eval_mode_and_runs_in_inference_mode(model_folder: Path) -> None:
    logic = BoxLogic(make_info(model_folder), device='cpu')
    folder, info, device = logic.load_args
    assert folder == model_folder and info is logic.model_info and device == torch.device('cpu')
    assert not logic.module.training
    assert next(logic.module.parameters()).device == torch.device('cpu')
    result = logic.evaluate(np.zeros((10, 20, 3), np.uint8))
    seen = logic.module.seen[-1]
    assert seen['inference_mode'] is True and seen['training'] is False
    assert seen['shape'] == (1, 3, RESOLUTION, RESOLUTION) and seen['dtype'] == torch.float32
    assert not torch.is_inference_mode_enabled()  # only inside the call
    assert result.box_detections[0].model_name == '2.0'


def test_a_mixed_size_batch_is_resized_stacked_and_scaled_back(model_folder: Path) -> None:
    logic = BoxLogic(make_info(model_folder), device='cpu')
    sizes = [(64, 128), (32, 32), (10, 7)]  # (height, width): downscale, unchanged, upscale
    results = logic.batch_evaluate([np.zeros((h, w, 3), np.uint8) for h, w in sizes])
    assert len(logic.module.seen) == 1  # one forward for the whole batch
    assert logic.module.seen[0]['shape'] == (3, 3, RESOLUTION, RESOLUTION)
    boxes = [(b.x, b.y, b.width, b.height) for r in results for b in r.box_detections]
    assert boxes == [
        (32, 16, 64, 32),
        (8, 8, 16, 16),
        (2, 3, 3, 5),
    ]  # the middle half of each image, edges rounded half up
    points = [(p.x, p.y) for r in results for p in r.point_detections]
    assert points == [(64.0, 32.0), (16.0, 16.0), (3.5, 5.0)]


def test_pixels_become_rgb_in_0_to_1_for_rgb_gray_and_rgba(model_folder: Path) -> None:
    logic = BoxLogic(make_info(model_folder), device='cpu')
    rgb = np.zeros((16, 48, 3), np.uint8)
    rgb[..., 0] = 255  # pure red
    gray = np.full((40, 40), 51, np.uint8)
    gray1 = np.full((8, 8, 1), 102, np.uint8)
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 2] = 255  # pure blue, fully transparent: alpha is dropped
    logic.batch_evaluate([rgb, gray, gray1, rgba])
    batch = logic.module.seen[-1]['input']
    assert batch.shape == (4, 3, RESOLUTION, RESOLUTION)
    means = batch.mean(dim=(2, 3))
    expected = torch.tensor([[1.0, 0.0, 0.0], [0.2, 0.2, 0.2], [0.4, 0.4, 0.4], [0.0, 0.0, 1.0]])
    assert torch.allclose(means, expected, atol=1e-4), means


def test_a_resized_image_keeps_its_layout(model_folder: Path) -> None:
    """Left half white, right half black stays so after resizing: no transposed or mixed-up axes."""
    logic = BoxLogic(make_info(model_folder), device='cpu')
    image = np.zeros((20, 100, 3), np.uint8)
    image[:, :50] = 255
    logic.evaluate(image)
    resized = logic.module.seen[-1]['input'][0]
    assert torch.all(resized[:, :, : RESOLUTION // 2 - 1] > 0.99)
    assert torch.all(resized[:, :, RESOLUTION // 2 + 1 :] < 0.01)


def test_half_is_ignored_on_cpu(model_folder: Path) -> None:
    logic = BoxLogic(make_info(model_folder), device='cpu', half=True)
    assert logic.half is False
    logic.evaluate(np.zeros((5, 5, 3), np.uint8))
    assert logic.module.seen[-1]['dtype'] == torch.float32
    assert next(logic.module.parameters()).dtype == torch.float32


def test_normalize_hook_and_resolution_override(model_folder: Path) -> None:
    class Normalized(BoxLogic):
        def normalize(self, batch: Any) -> Any:
            return (batch - 0.5) / 0.5

    logic = Normalized(make_info(model_folder, resolution=None), device='cpu', resolution=16)
    logic.evaluate(np.zeros((4, 4), np.uint8))
    seen = logic.module.seen[-1]
    assert seen['shape'] == (1, 3, 16, 16) and torch.allclose(seen['input'], torch.full((1, 3, 16, 16), -1.0))


def test_bad_setup_and_bad_input_are_clear_errors(model_folder: Path) -> None:
    with pytest.raises(ValueError, match='positive input resolution'):
        BoxLogic(make_info(model_folder, resolution=None), device='cpu')
    with pytest.raises(ValueError, match='needs a model folder'):
        BoxLogic(ModelInformation(id='m', organization='o', project='p', version='1', resolution=8))

    class NotAModule(BoxLogic):
        def load_module(self, model_folder: Path, model_info: ModelInformation, device: Any) -> Any:
            return object()

    with pytest.raises(LogicResultError, match=r'NotAModule\.load_module returned object'):
        NotAModule(make_info(model_folder), device='cpu')

    class ShortResults(BoxLogic):
        def to_detections(self, outputs: Any, batch: BatchMeta) -> list[ImageMetadata]:
            return []

    with pytest.raises(LogicResultError, match=r'ShortResults\.batch_evaluate returned 0 results for 1 images'):
        ShortResults(make_info(model_folder), device='cpu').evaluate(np.zeros((4, 4, 3), np.uint8))
    logic = BoxLogic(make_info(model_folder), device='cpu')
    with pytest.raises(ImageInputError, match='image 1 must be uint8, got float32'):
        logic.batch_evaluate([np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.float32)])
    with pytest.raises(ImageInputError, match='image 0 must have 1, 3 or 4 channels'):
        logic.evaluate(np.zeros((4, 4, 2), np.uint8))
    logic.close()
    with pytest.raises(RuntimeError, match='is closed'):
        logic.evaluate(np.zeros((4, 4, 3), np.uint8))


def test_geometry_clips_boxes_to_the_image() -> None:
    geometry = ImageGeometry(width=100, height=50, resolution=10)
    assert (geometry.scale_x, geometry.scale_y) == (10.0, 5.0)
    assert geometry.box_to_image(-2, 8, 5, 5) == (0, 40, 30, 10)


def test_concurrent_requests_through_the_worker_share_torch_batches(model_folder: Path) -> None:
    logic = BoxLogic(make_info(model_folder), device='cpu')
    with InferenceWorker(logic, max_batch_size=4) as worker:
        futures = [worker.submit([np.zeros((8 * (i + 1), 16, 3), np.uint8)]) for i in range(6)]
        heights = [f.result(10)[0].box_detections[0].height for f in futures]
    assert heights == [4 * (i + 1) for i in range(6)]  # each caller got the box of its own image
    assert sum(s['shape'][0] for s in logic.module.seen) == 6


def test_importing_the_torch_logic_does_not_import_torch() -> None:
    code = 'import sys, llnode.detector.torch_logic, llnode.detector\nassert "torch" not in sys.modules\nprint("ok")'
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == 'ok'
