"""Choosing a batch size by probing: the search and its rules, without any deep-learning framework.

The reference 0.27's ``trainer/batch_size.py`` under the same names and with the same results, so a ported
trainer changes only its imports. :func:`find_batch_size` is given a ``fits(batch_size) -> bool`` (one trial of
the real training step, see :mod:`llnode.trainer.cuda`) and searches by doubling through powers of two, so equal
hardware gives an equal recipe: the minimum, then its doubles up to the largest power of two within the limit,
stopping at the first that does not fit; only when every power of two up to that ceiling fit is the exact
``candidate`` (the size a training asked for) tried as well. The idea of
a doubling search comes from PyTorch Lightning's BatchSizeFinder; this code is llnode's own.

Examples (the reference's documented ones): sizes up to 300 fit → 256 for limit 1024; limit and candidate 200 →
200; limit and candidate 1000 when 512 fails → 256 (the candidate is never tried).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from llnode.trainer.logic import CriticalError

logger = logging.getLogger('llnode.trainer.batch_size')

#: The hyperparameter that caps the batch size; 0 or absent lets the card decide.
REQUESTED_BATCH_SIZE = 'max_batch_size'
#: The command-line flag that passes the VRAM budget to a node and on to its training script.
VRAM_LIMIT_GB_FLAG = '--vram-limit-gb'
VRAM_LIMIT_GB_HELP = (
    'GB of GPU memory a training may use (0: the whole card); the batch size is probed against this budget, '
    'so a lower limit gives a smaller batch instead of an out-of-memory error (to share a GPU or keep headroom)'
)
#: The largest batch size ever probed.
MAX_BATCH_SIZE = 1024
#: The batch size used where no GPU can be probed (a CPU run), within the limit and at least the minimum.
NO_GPU_BATCH_SIZE = 8
#: A batch never holds more than 1/8 of the training images, so an epoch has at least 8 steps.
MIN_TRAIN_STEPS_PER_EPOCH = 8


class InsufficientMemoryError(CriticalError):
    """Even the minimum batch size does not fit: the training cannot run on this card (no retry helps)."""


def smaller_pot(n: int) -> int:
    """The largest power of two ≤ ``n`` (``n`` ≥ 1)."""
    if n < 1:
        raise ValueError(f'smaller_pot needs a number >= 1, got {n!r}')
    return 1 << (int(n).bit_length() - 1)


def batch_count(sample_count: int, batch_size: int) -> int:
    """How many batches ``sample_count`` samples make (the last one may be short): ceiling division."""
    if batch_size < 1:
        raise ValueError(f'the batch size must be >= 1, got {batch_size!r}')
    return -(-sample_count // batch_size)


def dataset_limit(sample_count: int) -> int:
    """The largest batch size for ``sample_count`` (≥ 1) training images: ``max(1, n // 8)``."""
    if sample_count < 1:
        raise ValueError(f'sample_count must be >= 1, got {sample_count}')
    return max(1, sample_count // MIN_TRAIN_STEPS_PER_EPOCH)


def requested_batch_size(hyperparameters: Mapping[str, Any]) -> int:
    """The ``max_batch_size`` hyperparameter as an int; ``''``, None and absent mean 0 (the card decides).

    Read as the reference reads it (``int(value)``): ``16`` and ``'16'`` give 16, a string that is no whole number
    (``'16.0'``) raises :class:`ValueError` naming the hyperparameter. A bool is refused as well.
    """
    value = hyperparameters.get(REQUESTED_BATCH_SIZE) or 0
    if isinstance(value, bool):
        raise ValueError(f'hyperparameter {REQUESTED_BATCH_SIZE} must be a whole number, got {value!r}')
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f'hyperparameter {REQUESTED_BATCH_SIZE} must be a whole number, got {value!r}') from None


def no_gpu_batch_size(limit: int, probe: str = 'training', minimum: int = 1) -> int:
    """The batch size without a GPU to probe: ``max(min(pot(limit), 8), minimum)``; logs a warning."""
    ceiling = smaller_pot(limit) if limit >= 1 else MAX_BATCH_SIZE
    size = max(min(ceiling, NO_GPU_BATCH_SIZE), minimum)
    logger.warning('no CUDA device to probe the %s batch size on; using batch size %d', probe, size)
    return size


def is_out_of_memory(error: BaseException) -> bool:
    """True for a :class:`MemoryError` or an error whose message says the device ran out of memory."""
    if isinstance(error, MemoryError):
        return True
    message = str(error).lower()
    return any(sign in message for sign in ('out of memory', 'alloc_failed', 'cuda error: unknown error'))


def find_batch_size(fits: Callable[[int], bool], *, limit: int, minimum: int = 1, candidate: int = 0) -> int:
    """The largest batch size that ``fits``, never above ``limit`` (see the module docstring).

    ``minimum`` is rounded down to a power of two and tried first (a limit below it is raised to it); the
    doubling stops at the first size that fails or at the ceiling, the largest power of two within the limit.
    Only when the ceiling was reached is ``candidate`` tried, and only if it lies above the ceiling and within the
    limit. Raises :class:`InsufficientMemoryError` when the minimum does not fit.
    """
    start = smaller_pot(max(1, minimum))
    bound = max(limit, start)
    ceiling = max(smaller_pot(bound), start)
    if not fits(start):
        raise InsufficientMemoryError(f'batch size {start} does not fit into the available memory')
    size = start
    while size < ceiling and fits(size * 2):
        size *= 2
    if size == ceiling and ceiling < candidate <= bound and fits(candidate):
        size = candidate  # the named size is reachable: the doubling did not stop below the ceiling
    return size
