"""The GPU budget and in-process batch-size probing, as the reference 0.27's ``trainer/cuda.py``.

torch is imported inside the functions, never at import time, so this module can be imported (and its CPU
fallbacks used) where torch is missing. Nothing in llnode calls these functions; they are tools for a training
implementation, typically called in the training script:

- :func:`limit_cuda_memory` caps this process's share of the card (``--vram-limit-gb`` / ``VRAM_LIMIT_GB``); the
  cap does not survive a spawn, so every process that uses the GPU calls it.
- :func:`measure_batch_size` finds the largest training batch size that fits, by running a few real train steps
  and one validation step per candidate size (a :class:`ProbeStep`), with a safety margin held back.
- :func:`probe_batch_size` does the same for a pass without a requested size, e.g. the detection pass.
- :func:`get_free_memory_mb` is the free memory of the card, or the free RAM on boards whose GPU shares memory
  with the CPU (Jetson), where the card's own figure is meaningless.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from llnode.trainer.batch_size import (
    MAX_BATCH_SIZE,
    VRAM_LIMIT_GB_FLAG,
    VRAM_LIMIT_GB_HELP,
    dataset_limit,
    find_batch_size,
    is_out_of_memory,
    no_gpu_batch_size,
)

logger = logging.getLogger('llnode.trainer.cuda')

#: The share of the budget held back (as an allocated block) while probing, for what training adds later.
SAFETY_MARGIN = 0.05
#: Training steps per trial of a batch size (then one validation step).
DEFAULT_STEPS_PER_TRIAL = 4
#: The budget set by :func:`limit_cuda_memory` in this process, in GB (None: the whole card).
_budget_gb: float | None = None

GB = 1024**3


class ProbeStep(ABC):
    """One training step and one validation step of the real model, run at a given batch size while probing.

    ``train_step``/``val_step`` may return a short detail for the log (e.g. the loss). ``on_out_of_memory`` is
    called after a trial ran out of memory (drop gradients and cached batches there); ``release`` once at the end.
    """

    @abstractmethod
    def train_step(self, batch_size: int) -> str | None: ...

    @abstractmethod
    def val_step(self, batch_size: int) -> str | None: ...

    def on_out_of_memory(self) -> None:  # noqa: B027 - optional hook
        """Free what a failed trial left behind."""

    def release(self) -> None:  # noqa: B027 - optional hook
        """Free the model and optimizer built for probing."""


def _torch() -> Any:
    import torch

    return torch


def cuda_available() -> bool:
    """True when torch is installed and sees a CUDA device."""
    try:
        torch = _torch()
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def free_cuda_memory() -> None:
    """Collect garbage and hand the cached blocks back to the driver (no-op without CUDA)."""
    gc.collect()
    if cuda_available():
        _torch().cuda.empty_cache()


def limit_cuda_memory(gb: float) -> None:
    """Cap this process's GPU memory at ``gb`` GB; ≤ 0 or no CUDA does nothing, ≥ the card's size is ignored."""
    global _budget_gb  # noqa: PLW0603 - one budget per process, as the reference keeps it
    if gb is None or gb <= 0 or not cuda_available():
        return
    torch = _torch()
    total = torch.cuda.get_device_properties(0).total_memory
    if gb * GB >= total:
        logger.warning(
            'the VRAM limit of %.1f GB is not below the card memory of %.1f GB; it is ignored', gb, total / GB
        )
        return
    torch.cuda.set_per_process_memory_fraction(gb * GB / total)
    _budget_gb = float(gb)
    logger.info('GPU memory limited to %.1f GB of %.1f GB', gb, total / GB)


def usable_memory_bytes() -> int:
    """The budget set by :func:`limit_cuda_memory`, else the card's total memory (0 without CUDA)."""
    if _budget_gb is not None:
        return int(_budget_gb * GB)
    if not cuda_available():
        return 0
    return int(_torch().cuda.get_device_properties(0).total_memory)


def _shares_memory_with_cpu() -> bool:
    try:
        return bool(_torch().cuda.get_device_properties(0).is_integrated)
    except Exception:
        return False


def free_ram_bytes() -> int:
    """The free RAM of this machine (pages available now)."""
    return int(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_AVPHYS_PAGES'))


def get_free_memory_mb() -> float:
    """Free memory of the GPU (device 0) in MB; the free RAM where the GPU shares it (Jetson) or is unknown."""
    if cuda_available() and not _shares_memory_with_cpu():
        try:
            free, _total = _torch().cuda.mem_get_info(0)
            return float(free) / 1024 / 1024
        except Exception as e:
            logger.warning('the GPU memory info is unavailable (%s); using the free RAM instead', e)
    return free_ram_bytes() / 1024 / 1024


def reserve_margin() -> Any:
    """Allocate ``SAFETY_MARGIN`` of the usable memory as a block (delete it to give it back); None without CUDA."""
    if not cuda_available():
        return None
    size = int(usable_memory_bytes() * SAFETY_MARGIN)
    return _torch().empty(size, dtype=_torch().uint8, device='cuda')


def add_vram_limit_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--vram-limit-gb`` (float, default 0) so a spawned training script takes the node's budget."""
    parser.add_argument(VRAM_LIMIT_GB_FLAG, type=float, default=0.0, dest='vram_limit_gb', help=VRAM_LIMIT_GB_HELP)


def measured_fits(
    run_batch: Callable[[int], str | None], probe: str, on_out_of_memory: Callable[[], None] | None = None
) -> Callable[[int], bool]:
    """A ``fits(batch_size)`` for :func:`~llnode.trainer.batch_size.find_batch_size` that runs ``run_batch``.

    Before each trial the cache is emptied and the peak statistics reset; the peak is logged. Only an
    out-of-memory error counts as "does not fit"; any other error is raised.
    """

    def fits(batch_size: int) -> bool:
        torch = _torch() if cuda_available() else None
        free_cuda_memory()
        if torch is not None:
            torch.cuda.reset_peak_memory_stats()
        reason = ''
        try:
            detail = run_batch(batch_size)
            if torch is not None:
                torch.cuda.synchronize()  # an asynchronous launch fails here, not later
        except Exception as e:
            if not is_out_of_memory(e):
                raise
            reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        if reason:  # outside the except block, so the failed trial's frames (and tensors) are gone
            logger.info('%s batch size %d does not fit: %s', probe, batch_size, reason)
            if on_out_of_memory is not None:
                on_out_of_memory()
            free_cuda_memory()
            return False
        peak = torch.cuda.max_memory_allocated() / GB if torch is not None else 0.0
        logger.info('%s batch size %d fits (peak %.2f GB)%s', probe, batch_size, peak, f': {detail}' if detail else '')
        return True

    return fits


def _check_count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f'{name} must be an int >= {minimum}, got {value!r}')
    return value


def measure_batch_size(
    build_step: Callable[[], ProbeStep],
    *,
    max_batch_size: int = 0,
    sample_count: int | None = None,
    probe: str = 'batch-size probe',
    minimum: int = 1,
    steps_per_trial: int = DEFAULT_STEPS_PER_TRIAL,
) -> int:
    """The largest training batch size that fits the GPU budget, at most ``max_batch_size`` (0: no cap).

    ``build_step()`` builds the model and optimizer for probing (called only after the margin is reserved);
    with ``sample_count`` the size is also bounded by :func:`~llnode.trainer.batch_size.dataset_limit`. A
    requested size that fits is used as asked, a power of two or not; one that does not becomes the largest power
    of two below it that does. Without CUDA it returns :func:`~llnode.trainer.batch_size.no_gpu_batch_size`.
    """
    _check_count('max_batch_size', max_batch_size, 0)
    _check_count('minimum', minimum, 1)
    _check_count('steps_per_trial', steps_per_trial, 1)
    if sample_count is not None:
        _check_count('sample_count', sample_count, 1)
    if 0 < max_batch_size < minimum:
        logger.warning(
            'the requested batch size %d is below the minimum %d; using the minimum', max_batch_size, minimum
        )
    limit = max_batch_size
    if sample_count is not None:
        limit = min(limit or MAX_BATCH_SIZE, dataset_limit(sample_count))
        logger.info('%s: %d training samples allow at most %d per batch', probe, sample_count, limit)
    limit = max(limit or MAX_BATCH_SIZE, minimum)
    if not cuda_available():
        return no_gpu_batch_size(limit, probe, minimum)
    margin = reserve_margin()
    step: ProbeStep | None = None
    try:
        step = build_step()
        trial_step = step

        def trial(batch_size: int) -> str | None:
            detail = None
            for _ in range(steps_per_trial):
                detail = trial_step.train_step(batch_size)
            val = trial_step.val_step(batch_size)
            return val or detail

        size = find_batch_size(
            measured_fits(trial, probe, step.on_out_of_memory),
            limit=limit,
            minimum=minimum,
            candidate=max_batch_size,  # the requested size, never the dataset's bound
        )
    finally:
        if step is not None:
            step.release()
        del step, margin
        free_cuda_memory()
    logger.info('%s batch size: %d (limit %d)', probe, size, limit)
    return size


def probe_batch_size(run_batch: Callable[[int], str | None], *, probe: str = 'batch-size probe', limit: int = 0) -> int:
    """The largest batch size for a pass without a requested size (e.g. detection); one call per trial."""
    _check_count('limit', limit, 0)
    limit = limit or MAX_BATCH_SIZE
    if not cuda_available():
        return no_gpu_batch_size(limit, probe, 1)
    try:
        size = find_batch_size(measured_fits(run_batch, probe), limit=limit)
    finally:
        free_cuda_memory()
    logger.info('%s batch size: %d (limit %d)', probe, size, limit)
    return size
