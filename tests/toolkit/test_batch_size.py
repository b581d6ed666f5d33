"""``llnode.trainer.batch_size``: the reference 0.27's documented examples, and randomised searches checked against
the rules written out in closed form (not as the search loop)."""

from __future__ import annotations

import logging
import random

import pytest

from llnode.trainer.batch_size import (
    MAX_BATCH_SIZE,
    NO_GPU_BATCH_SIZE,
    REQUESTED_BATCH_SIZE,
    InsufficientMemoryError,
    batch_count,
    dataset_limit,
    find_batch_size,
    is_out_of_memory,
    no_gpu_batch_size,
    requested_batch_size,
    smaller_pot,
)
from llnode.trainer.logic import CriticalError


def up_to(largest: int) -> tuple[list[int], object]:
    """A ``fits`` for which sizes up to ``largest`` fit; it records what it was asked."""
    asked: list[int] = []

    def fits(size: int) -> bool:
        asked.append(size)
        return size <= largest

    return asked, fits


def test_documented_examples() -> None:
    asked, fits = up_to(300)
    assert find_batch_size(fits, limit=1024) == 256
    assert asked == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    asked, fits = up_to(300)
    assert find_batch_size(fits, limit=200, candidate=200) == 200
    assert asked[-1] == 200
    asked, fits = up_to(300)
    assert find_batch_size(fits, limit=1000, candidate=1000) == 256  # 512 failed: the candidate is never tried
    assert 1000 not in asked
    assert (REQUESTED_BATCH_SIZE, MAX_BATCH_SIZE, NO_GPU_BATCH_SIZE) == ('max_batch_size', 1024, 8)


def test_the_minimum_must_fit() -> None:
    _, fits = up_to(3)
    with pytest.raises(InsufficientMemoryError, match='batch size 4'):
        find_batch_size(fits, limit=64, minimum=4)
    assert issubclass(InsufficientMemoryError, CriticalError)  # no retry helps: the training gives up
    asked, fits = up_to(100)
    assert find_batch_size(fits, limit=2, minimum=6) == 4  # the minimum rounded down to a power of two wins
    assert asked == [4]


def expected(largest: int, limit: int, minimum: int, candidate: int) -> int:
    """The documented rules in closed form: the minimum rounded down to a power of two, then every power of two
    above it up to the ceiling (the largest within the limit), stopping at the first that fails; the candidate
    only if the ceiling was reached and it lies in (ceiling, limit]."""
    start = 1 << (minimum.bit_length() - 1)
    bound = max(limit, start)
    ceiling = 1 << (bound.bit_length() - 1)
    powers = [1 << k for k in range(13) if start < 1 << k <= ceiling]
    fitting = [p for p in powers if p <= largest]
    best = max([start, *fitting])
    if best == ceiling and ceiling < candidate <= bound and candidate <= largest:
        best = candidate
    return best


def test_randomised_searches_follow_the_rules() -> None:
    rng = random.Random(15)
    for _ in range(3000):
        limit = rng.randint(1, 1500)
        minimum = rng.randint(1, 40)
        candidate = rng.choice([0, limit, rng.randint(1, 1500)])
        largest = rng.randint(1 << (minimum.bit_length() - 1), 2000)
        asked, fits = up_to(largest)
        assert find_batch_size(fits, limit=limit, minimum=minimum, candidate=candidate) == expected(
            largest, limit, minimum, candidate
        ), (largest, limit, minimum, candidate)
        assert asked == sorted(set(asked))  # each size once, growing
        assert all(a <= max(limit, minimum) for a in asked)
        assert sum(1 for a in asked if a > largest) <= 1  # it stops at the first size that fails


def test_requested_batch_size() -> None:
    assert requested_batch_size({}) == 0
    assert requested_batch_size({'max_batch_size': None}) == 0
    assert requested_batch_size({'max_batch_size': ''}) == 0
    assert requested_batch_size({'max_batch_size': 16}) == 16
    assert requested_batch_size({'max_batch_size': '16'}) == 16
    assert requested_batch_size({'max_batch_size': 16.0}) == 16  # a JSON number, read with int() as the reference
    for bad in ('16.0', 'sixteen', True, [16]):
        with pytest.raises(ValueError, match='max_batch_size'):
            requested_batch_size({'max_batch_size': bad})


def test_small_helpers(caplog: pytest.LogCaptureFixture) -> None:
    assert [dataset_limit(n) for n in (1, 7, 8, 100)] == [1, 1, 1, 12]
    with pytest.raises(ValueError):
        dataset_limit(0)
    assert [smaller_pot(n) for n in (1, 2, 3, 200, 1024, 1025)] == [1, 2, 2, 128, 1024, 1024]
    assert [batch_count(n, 8) for n in (0, 1, 8, 9)] == [0, 1, 1, 2]
    with caplog.at_level(logging.WARNING, logger='llnode.trainer.batch_size'):
        assert no_gpu_batch_size(1024, 'training', 1) == 8
    assert 'no CUDA device' in caplog.text
    assert no_gpu_batch_size(6, 'training', 1) == 4
    assert no_gpu_batch_size(6, 'training', 5) == 5
    assert no_gpu_batch_size(1024, 'detection', 12) == 12


def test_is_out_of_memory() -> None:
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError('CUDA out of memory. Tried to allocate 2.00 GiB'))
    assert is_out_of_memory(RuntimeError('CUDA error: unknown error'))
    assert is_out_of_memory(RuntimeError('NVML_SUCCESS == r INTERNAL ASSERT FAILED ... CUBLAS_STATUS_ALLOC_FAILED'))
    assert not is_out_of_memory(RuntimeError('shape mismatch'))
    assert not is_out_of_memory(ValueError('out of range'))
