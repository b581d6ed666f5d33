"""``llnode.trainer.cuda`` on a machine without a GPU: the documented fallbacks, the trial bookkeeping, and that
importing it loads no torch (the GPU paths run in ``bench/gpu_check.py`` on a GPU machine)."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from llnode.trainer import cuda
from llnode.trainer.batch_size import InsufficientMemoryError

needs_cpu_only = pytest.mark.skipif(cuda.cuda_available(), reason='checks the fallbacks of a machine without CUDA')


def test_importing_the_toolkit_loads_no_torch() -> None:
    code = (
        'import sys, llnode.trainer, llnode.trainer.cuda, llnode.trainer.batch_size, llnode.trainer.validation_set, '
        'llnode.trainer.metrics, llnode.detector.postprocess, llnode.helpers.entrypoint; '
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == 'False'


@needs_cpu_only
def test_without_cuda_the_search_falls_back_and_builds_nothing() -> None:
    built: list[int] = []

    def build() -> cuda.ProbeStep:
        built.append(1)
        raise AssertionError('no step is built without CUDA')

    assert cuda.measure_batch_size(build) == 8
    assert cuda.measure_batch_size(build, max_batch_size=6) == 4
    assert cuda.measure_batch_size(build, sample_count=20) == 2  # dataset_limit(20) = 2
    assert cuda.measure_batch_size(build, max_batch_size=2, minimum=3) == 3
    assert cuda.probe_batch_size(lambda bs: None, probe='detection') == 8
    assert built == []
    assert cuda.usable_memory_bytes() == 0
    cuda.limit_cuda_memory(4.0)  # no CUDA: nothing to limit
    assert cuda.usable_memory_bytes() == 0
    assert cuda.get_free_memory_mb() > 0  # the free RAM
    assert cuda.reserve_margin() is None
    cuda.free_cuda_memory()


def test_measure_batch_size_checks_its_inputs() -> None:
    for kwargs in ({'max_batch_size': -1}, {'minimum': 0}, {'steps_per_trial': 0}, {'sample_count': 0}):
        with pytest.raises(ValueError):
            cuda.measure_batch_size(lambda: None, **kwargs)  # type: ignore[arg-type,return-value]
    with pytest.raises(ValueError):
        cuda.probe_batch_size(lambda bs: None, probe='detection', limit=-1)


def test_measured_fits_counts_only_out_of_memory_as_not_fitting() -> None:
    freed: list[int] = []

    def run_batch(batch_size: int) -> str:
        if batch_size > 32:
            raise RuntimeError('CUDA out of memory. Tried to allocate 1.00 GiB')
        if batch_size == 7:
            raise ValueError('a bug in the step')
        return f'loss at {batch_size}'

    fits = cuda.measured_fits(run_batch, 'training', lambda: freed.append(1))
    assert fits(32) is True
    assert fits(64) is False
    assert freed == [1]
    with pytest.raises(ValueError, match='a bug'):
        fits(7)


def test_a_probe_step_is_what_measure_batch_size_drives(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA path's bookkeeping with CUDA faked: trials of 4 train steps and 1 val step, release at the end."""
    calls: list[tuple[str, int]] = []

    class Step(cuda.ProbeStep):
        def train_step(self, batch_size: int) -> str | None:
            calls.append(('train', batch_size))
            if batch_size > 100:
                raise RuntimeError('CUDA out of memory')
            return None

        def val_step(self, batch_size: int) -> str | None:
            calls.append(('val', batch_size))
            return 'ok'

        def on_out_of_memory(self) -> None:
            calls.append(('oom', 0))

        def release(self) -> None:
            calls.append(('release', 0))

    class FakeCuda:
        @staticmethod
        def reset_peak_memory_stats() -> None: ...

        @staticmethod
        def max_memory_allocated() -> int:
            return 0

        @staticmethod
        def empty_cache() -> None: ...

        @staticmethod
        def synchronize() -> None: ...

    class FakeTorch:
        cuda = FakeCuda

    monkeypatch.setattr(cuda, 'cuda_available', lambda: True)
    monkeypatch.setattr(cuda, '_torch', lambda: FakeTorch)
    monkeypatch.setattr(cuda, 'reserve_margin', object)
    assert cuda.measure_batch_size(Step, max_batch_size=200, sample_count=10_000) == 64
    assert calls[:5] == [('train', 1)] * 4 + [('val', 1)]
    assert calls[-3:] == [('train', 128), ('oom', 0), ('release', 0)]
    calls.clear()
    assert cuda.measure_batch_size(Step, max_batch_size=100) == 100  # the exact request after 64 fit
    calls.clear()
    with pytest.raises(InsufficientMemoryError):
        cuda.measure_batch_size(Step, minimum=128)
    assert calls[-1] == ('release', 0)


def test_the_vram_flag_passes_on_to_a_training_script() -> None:
    parser = argparse.ArgumentParser()
    cuda.add_vram_limit_argument(parser)
    assert parser.parse_args(['--vram-limit-gb', '3.5']).vram_limit_gb == 3.5
    assert parser.parse_args([]).vram_limit_gb == 0.0
