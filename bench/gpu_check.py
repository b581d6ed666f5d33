"""Every CUDA path of llnode and the YOLO-style sample, checked on a real GPU in one call; prints one JSON line.

Why a script: the test suite runs on machines without a GPU, where the toolkit takes its documented CPU fallbacks.
What only a card can show is checked here, each check in a fresh process (a VRAM cap cannot be lifted once set,
and the reference says it must be set in every process anyway):

- ``vram_budget``: ``limit_cuda_memory`` caps the process (``usable_memory_bytes`` reports the budget, an
  allocation under it succeeds, one over it raises an error ``is_out_of_memory`` recognises), a limit above the
  card is ignored;
- ``free_cuda_memory``: cached blocks go back to the driver (``memory_reserved`` drops, ``get_free_memory_mb``
  rises);
- ``measure_batch_size``: under a 2 GB cap, a probe step that holds 64 MB per sample finds 16 through real
  out-of-memory errors; a request of 24 is used as asked (it fits), 40 samples bound it to 4
  (``dataset_limit`` 5, rounded down to a power of two); the step and the margin are released afterwards;
- ``probe_batch_size``: the same for a detection-like pass (96 MB per sample under 1 GB: 8; limit 5: 4);
- ``half_precision``: :class:`~llnode.detector.torch_logic.TorchDetectorLogic` with ``half=True`` runs its module
  and inputs in float16 and gives the float32 result within tolerance;
- ``yolo_pair``: the YOLO-style sample on ``cuda``: ``train.py`` (its batch size probed on the card), the
  TorchScript export, ``detect.py``, and the detector logic in FP32 and FP16 on the test split (box F1 of each,
  and how far FP16 boxes are from FP32 ones).

Without CUDA it prints ``{"cuda": false, ...}`` and exits 0. Exit code 1 when a check failed.
``--check yolo_pair --device cpu`` runs that one check's code on CPU (a dry run of the script itself).

    python bench/gpu_check.py [--only NAME,NAME] [--timeout S]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from machine import machine  # bench/machine.py: benchmarks run as scripts from bench/

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / 'samples' / 'yolo_style'
#: where the YOLO pair runs; ``--check yolo_pair --device cpu`` tries the check's own code without a card
DEVICE = 'cuda'
GB = 1024**3
MB = 1024**2


class CheckFailed(AssertionError):
    """A check found llnode doing something other than it documents."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


# ---------------------------------------------------------------------------------------------------------------
# the checks (each runs in its own process: ``gpu_check.py --check NAME``)


def check_vram_budget() -> dict[str, Any]:
    import torch

    from llnode.trainer import cuda
    from llnode.trainer.batch_size import is_out_of_memory

    total = torch.cuda.get_device_properties(0).total_memory
    cuda.limit_cuda_memory(total / GB + 1)  # above the card: ignored
    expect(cuda.usable_memory_bytes() == total, 'a limit above the card changed the budget')
    cuda.limit_cuda_memory(1.0)
    expect(cuda.usable_memory_bytes() == GB, f'budget {cuda.usable_memory_bytes()} after limit_cuda_memory(1.0)')
    fits = torch.empty(int(0.8 * GB), dtype=torch.uint8, device='cuda')
    del fits
    cuda.free_cuda_memory()
    refused = ''
    try:
        torch.empty(int(1.2 * GB), dtype=torch.uint8, device='cuda')
    except Exception as error:  # torch.cuda.OutOfMemoryError
        expect(is_out_of_memory(error), f'is_out_of_memory does not recognise {type(error).__name__}: {error}')
        refused = type(error).__name__
    expect(bool(refused), '1.2 GB were allocated under a 1 GB cap')
    return {'card_gb': round(total / GB, 1), 'over_budget_error': refused}


def check_free_cuda_memory() -> dict[str, Any]:
    import torch

    from llnode.trainer import cuda

    block = torch.empty(GB, dtype=torch.uint8, device='cuda')
    del block
    reserved_before = torch.cuda.memory_reserved()
    free_before = cuda.get_free_memory_mb()
    cuda.free_cuda_memory()
    reserved_after = torch.cuda.memory_reserved()
    free_after = cuda.get_free_memory_mb()
    expect(reserved_before >= GB, f'only {reserved_before} bytes were cached after a 1 GB block')
    expect(reserved_after < reserved_before - GB // 2, f'free_cuda_memory kept {reserved_after} bytes reserved')
    expect(free_after > free_before + 500, f'free memory went from {free_before:.0f} to {free_after:.0f} MB')
    return {
        'reserved_mb': [round(reserved_before / MB), round(reserved_after / MB)],
        'free_mb': [round(free_before), round(free_after)],
    }


def _holding_step(per_sample: int) -> Any:
    """A ProbeStep whose trials hold ``per_sample`` bytes per sample of the batch on the card."""
    import torch

    from llnode.trainer.cuda import ProbeStep

    class HoldingStep(ProbeStep):
        def __init__(self) -> None:
            self.released = False

        def train_step(self, batch_size: int) -> str | None:
            held = torch.empty(batch_size * per_sample, dtype=torch.uint8, device='cuda')
            held.fill_(1)
            del held
            return None

        def val_step(self, batch_size: int) -> str | None:
            return None

        def release(self) -> None:
            self.released = True

    return HoldingStep()


def check_measure_batch_size() -> dict[str, Any]:
    import torch

    from llnode.trainer import cuda

    cuda.limit_cuda_memory(2.0)
    steps: list[Any] = []

    def build() -> Any:
        steps.append(_holding_step(64 * MB))
        return steps[-1]

    found = cuda.measure_batch_size(build, probe='gpu check')
    expect(found == 16, f'64 MB per sample under a 2 GB cap: batch size {found}, expected 16')
    asked = cuda.measure_batch_size(build, max_batch_size=24, probe='gpu check')
    expect(asked == 24, f'a request of 24 that fits (1.5 GB of 2 GB) became {asked}')
    limited = cuda.measure_batch_size(build, sample_count=40, probe='gpu check')
    expect(limited == 4, f'40 samples bound the size to dataset_limit 5, so 4 (a bound is no candidate), got {limited}')
    expect(all(step.released for step in steps), 'a probe step was not released')
    cuda.free_cuda_memory()
    left = torch.cuda.memory_allocated()
    expect(left < 64 * MB, f'{left} bytes still allocated after the probes (margin or step kept)')
    return {'found': found, 'asked_24': asked, 'dataset_bound': limited, 'left_allocated_mb': round(left / MB, 1)}


def check_probe_batch_size() -> dict[str, Any]:
    import torch

    from llnode.trainer import cuda

    cuda.limit_cuda_memory(1.0)

    def run_batch(batch_size: int) -> str | None:
        held = torch.empty(batch_size * 96 * MB, dtype=torch.uint8, device='cuda')
        held.fill_(1)
        del held
        return None

    found = cuda.probe_batch_size(run_batch, probe='gpu check')
    expect(found == 8, f'96 MB per sample under a 1 GB cap: batch size {found}, expected 8')
    bounded = cuda.probe_batch_size(run_batch, probe='gpu check', limit=5)
    expect(bounded == 4, f'limit 5: batch size {bounded}, expected 4 (a power of two)')
    return {'found': found, 'limit_5': bounded}


def check_half_precision() -> dict[str, Any]:
    import numpy as np
    import torch

    from llnode.detector.torch_logic import BatchMeta, TorchDetectorLogic
    from llnode.schema import ImageMetadata, ModelInformation

    seen: dict[str, Any] = {}

    class MeanLogic(TorchDetectorLogic):
        def load_module(
            self, model_folder: Path, model_info: ModelInformation, device: torch.device
        ) -> torch.nn.Module:
            torch.manual_seed(0)
            return torch.nn.Sequential(
                torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1)
            )

        def forward(self, batch: torch.Tensor) -> Any:
            seen['input'] = str(batch.dtype)
            return self.module(batch)

        def to_detections(self, outputs: Any, batch: BatchMeta) -> list[ImageMetadata]:
            seen['output'] = str(outputs.dtype)
            seen.setdefault('values', []).append(outputs.float().flatten().cpu().numpy())
            return [ImageMetadata() for _ in batch.images]

    with tempfile.TemporaryDirectory() as folder:
        info = ModelInformation(
            id='m', organization='o', project='p', version='1.0', resolution=64, model_root_path=folder
        )
        image = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
        half = MeanLogic(info, device='cuda', half=True)
        expect(half.half, 'half=True on CUDA was not taken')
        expect(next(half.module.parameters()).dtype == torch.float16, 'the module was not converted to float16')
        half.batch_evaluate([image])
        expect(seen['input'] == 'torch.float16' and seen['output'] == 'torch.float16', f'dtypes {seen}')
        full = MeanLogic(info, device='cuda', half=False)
        full.batch_evaluate([image])
        difference = float(np.abs(seen['values'][0] - seen['values'][1]).max())
        expect(difference < 1e-2, f'float16 differs from float32 by {difference}')
        on_cpu = MeanLogic(info, device='cpu', half=True)
        expect(not on_cpu.half, 'half=True was taken on CPU')
        for logic in (half, full, on_cpu):
            logic.close()
    return {'input': seen['input'], 'output': seen['output'], 'max_difference': round(difference, 5)}


def _demo_dataset(folder: Path, count: int) -> tuple[Any, list[Any]]:
    """Demo images and a stand-in run with the validation split computed; ``dataset.json`` written."""
    sys.path.insert(0, str(SAMPLE))
    import yolo_format

    from llnode.localloop import demo
    from llnode.schema import Category
    from llnode.trainer.validation_set import assign_validation_set

    images = folder / 'images'
    images.mkdir(parents=True)
    items = []
    for index in range(count):
        jpeg, annotations = demo.render(index, 0)
        (images / f'img-{index}.jpg').write_bytes(jpeg)
        items.append({'id': f'img-{index}', 'set': 'test' if index % 5 == 0 else 'train', **annotations})
    items = assign_validation_set(items, {'compute_validation_set': True})
    categories = [
        Category(id=c['id'], name=c['name'], type=c['type'], point_size=c['point_size']) for c in demo.DEMO_CATEGORIES
    ]

    def of(name: str) -> Callable[[], list[dict[str, Any]]]:
        return lambda: [item for item in items if item['set'] == name]

    import logging

    run = SimpleNamespace(
        categories=categories,
        images_folder=images,
        training_folder=folder / 'training',
        logger=logging.getLogger('gpu_check'),
        train_images=of('train'),
        val_images=lambda: of('val')() or of('test')(),
        test_images=of('test'),
    )
    run.training_folder.mkdir()
    yolo_format.create_file_structure(run)
    return run, categories


def _script(name: str, *args: str, cwd: Path, timeout: float) -> str:
    done = subprocess.run(
        [sys.executable, str(SAMPLE / f'{name}.py'), *args],
        check=False,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, 'PYTHONUNBUFFERED': '1'},
    )
    output = done.stdout + done.stderr
    expect(done.returncode == 0, f'{name}.py exited with {done.returncode}: {output[-1500:]}')
    return output


def check_yolo_pair() -> dict[str, Any]:
    import numpy as np

    from llnode.demo.shapes_net import evaluate_f1, read_rgb
    from llnode.schema import ModelInformation

    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        run, categories = _demo_dataset(folder, 120)
        training = run.training_folder
        hyp = json.loads((SAMPLE / 'hyp.json').read_text())
        hyp.update(epochs=20, resolution=128)
        (training / 'hyp.json').write_text(json.dumps(hyp))
        started = time.monotonic()
        log = _script(
            'train',
            '--data', str(training / 'dataset.json'),
            '--hyp', str(training / 'hyp.json'),
            '--project', str(training),
            '--device', DEVICE,
            '--vram-limit-gb', '4',
            cwd=training,
            timeout=300,
        )  # fmt: skip
        figures['train_seconds'] = round(time.monotonic() - started, 1)
        expect(f'device {DEVICE}' in log, f'train.py did not train on {DEVICE}')
        batch_lines = [line for line in log.splitlines() if line.startswith('batch size ')]
        expect(len(batch_lines) == 1 and batch_lines[0].endswith(f'({DEVICE})'), f'batch size lines {batch_lines}')
        figures['train_batch_size'] = int(batch_lines[0].split()[2])
        weights = training / 'result' / 'weights' / 'last.pt'
        model = folder / 'model'
        model.mkdir()
        _script('export', '--weights', str(weights), '--out', str(model / 'model.torchscript'), cwd=folder, timeout=120)

        test = run.test_images()
        paths = [run.images_folder / f'{item["id"]}.jpg' for item in test]
        (folder / 'images.txt').write_text(''.join(f'{p}\n' for p in paths))
        out = _script(
            'detect',
            '--weights', str(weights),
            '--source', str(folder / 'images.txt'),
            '--out', str(folder / 'detections.jsonl'),
            '--device', DEVICE,
            cwd=folder,
            timeout=120,
        )  # fmt: skip
        expect(f'on {DEVICE}' in out, f'detect.py did not run on {DEVICE}: {out[-500:]}')
        lines = (folder / 'detections.jsonl').read_text().splitlines()
        expect(len(lines) == len(paths), f'detect.py wrote {len(lines)} lines for {len(paths)} images')

        sys.path.insert(0, str(SAMPLE))
        from yolo_detector import YoloDetector

        info = ModelInformation(
            id='m', organization='o', project='p', version='1.0', categories=categories, resolution=128,
            model_root_path=str(model),
        )  # fmt: skip
        images = [read_rgb(path) for path in paths]
        truths = [item['box_annotations'] for item in test]
        boxes: dict[str, list[list[dict[str, Any]]]] = {}
        for weight_type, half in (('FP32', False), ('FP16', True)):
            logic = YoloDetector(info, device=DEVICE, half=half, conf_threshold=0.3)
            expect(logic.half == (half and DEVICE == 'cuda'), f'{weight_type}: half is {logic.half}')
            started = time.monotonic()
            results = logic.batch_evaluate(images)
            figures[f'{weight_type}_ms_per_image'] = round(1000 * (time.monotonic() - started) / len(images), 2)
            boxes[weight_type] = [[d.to_dict() for d in r.box_detections] for r in results]
            figures[f'{weight_type}_box_f1'] = round(evaluate_f1(boxes[weight_type], truths), 3)
            logic.close()
        expect(figures['FP32_box_f1'] >= 0.6, f'FP32 box F1 {figures["FP32_box_f1"]} on the test split')
        expect(figures['FP16_box_f1'] >= figures['FP32_box_f1'] - 0.1, 'FP16 loses more than 0.1 F1 against FP32')
        shifts = [
            abs(a[key] - b[key])
            for one, other in zip(boxes['FP32'], boxes['FP16'], strict=True)
            if len(one) == len(other)
            for a, b in zip(one, other, strict=True)
            for key in ('x', 'y', 'width', 'height')
        ]
        figures['fp16_max_box_shift_px'] = int(max(shifts, default=0))
        figures['fp16_median_box_shift_px'] = float(np.median(shifts)) if shifts else 0.0
    return figures


CHECKS: dict[str, Callable[[], dict[str, Any]]] = {
    'vram_budget': check_vram_budget,
    'free_cuda_memory': check_free_cuda_memory,
    'measure_batch_size': check_measure_batch_size,
    'probe_batch_size': check_probe_batch_size,
    'half_precision': check_half_precision,
    'yolo_pair': check_yolo_pair,
}


# ---------------------------------------------------------------------------------------------------------------
# running them


def run_one(name: str) -> int:
    """In the child: run one check, print its JSON line."""
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    started = time.monotonic()
    try:
        result: dict[str, Any] = {'ok': True, **CHECKS[name]()}
    except Exception as error:
        result = {'ok': False, 'error': f'{type(error).__name__}: {error}'[:2000]}
    result['seconds'] = round(time.monotonic() - started, 1)
    print(json.dumps(result))
    return 0


def run_all(names: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        try:
            done = subprocess.run(
                [sys.executable, __file__, '--check', name],
                check=False,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            results[name] = {'ok': False, 'error': f'timed out after {timeout} s'}
            continue
        last = done.stdout.strip().splitlines()[-1:] or ['']
        try:
            results[name] = json.loads(last[0])
        except ValueError:
            results[name] = {'ok': False, 'error': f'exit {done.returncode}: {(done.stdout + done.stderr)[-1500:]}'}
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or '').split('\n\n')[0])
    parser.add_argument('--only', default='', help=f'comma-separated checks (default all: {",".join(CHECKS)})')
    parser.add_argument('--timeout', type=float, default=400.0, help='seconds per check')
    parser.add_argument('--check', choices=sorted(CHECKS), help=argparse.SUPPRESS)
    parser.add_argument('--device', default='cuda', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.check:
        global DEVICE  # noqa: PLW0603 - one device per check process
        DEVICE = args.device
        return run_one(args.check)
    load = os.getloadavg()
    names = [n for n in args.only.split(',') if n] or list(CHECKS)
    unknown = sorted(set(names) - set(CHECKS))
    if unknown:
        parser.error(f'unknown checks {unknown}; known: {", ".join(CHECKS)}')
    try:
        import torch
    except ImportError:
        print(json.dumps({'cuda': False, 'reason': 'torch is not installed', 'machine': machine(load)}))
        return 0
    if not torch.cuda.is_available():
        print(
            json.dumps(
                {'cuda': False, 'reason': 'no CUDA device', 'torch': torch.__version__, 'machine': machine(load)}
            )
        )
        return 0
    started = time.monotonic()
    results = run_all(names, args.timeout)
    report = {
        'cuda': True,
        'device': torch.cuda.get_device_name(0),
        'torch': torch.__version__,
        'ok': all(r.get('ok') for r in results.values()),
        'checks': results,
        'seconds': round(time.monotonic() - started, 1),
        'machine': machine(load),
    }
    print(json.dumps(report))
    return 0 if report['ok'] else 1


if __name__ == '__main__':
    sys.exit(main())
