"""``llnode.trainer.subprocess.iterator_cpu_bound``: items from a spawned process, one ahead at most; errors come
back; leaving early ends the child."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llnode.trainer.subprocess import iterator_cpu_bound
from tests.polling import wait_for


def squares(n: int, *, offset: int = 0) -> Iterator[tuple[int, int]]:
    for i in range(n):
        yield i * i + offset, os.getpid()


def counted(folder: str, n: int) -> Iterator[int]:
    """Writes a file per item it produced, so the test sees how far ahead the producer runs."""
    for i in range(n):
        Path(folder, f'{i}').touch()
        yield i


def failing() -> Iterator[int]:
    yield 1
    raise ValueError('bad image 7')


class Unpicklable(Exception):
    def __init__(self) -> None:
        super().__init__('cannot travel')
        self.lock = threading.Lock()


def failing_unpicklable() -> Iterator[int]:
    raise Unpicklable()
    yield 0


def pid_then_forever() -> Iterator[int]:
    yield os.getpid()
    while True:
        time.sleep(0.05)
        yield 0


def test_items_come_from_another_process_in_order() -> None:
    with iterator_cpu_bound(squares, 5, offset=1) as items:
        got = list(items)
    assert [value for value, _ in got] == [1, 2, 5, 10, 17]
    assert {pid for _, pid in got} != {os.getpid()}


def test_the_producer_runs_at_most_one_item_ahead(tmp_path: Path) -> None:
    with iterator_cpu_bound(counted, str(tmp_path), 10) as items:
        first = next(items)
        assert first == 0
        time.sleep(0.5)  # give an unbounded producer time to run ahead: it must not
        produced = len(list(tmp_path.iterdir()))
        assert produced <= 3  # the one consumed, one in the queue, one waiting in put()
        assert list(items) == list(range(1, 10))


def test_errors_in_the_child_are_raised_in_the_caller() -> None:
    with iterator_cpu_bound(failing) as items:
        assert next(items) == 1
        with pytest.raises(ValueError, match='bad image 7'):
            next(items)
    with iterator_cpu_bound(failing_unpicklable) as items, pytest.raises(RuntimeError, match='cannot travel'):
        next(items)


def test_leaving_early_kills_the_child() -> None:
    with iterator_cpu_bound(pid_then_forever) as items:
        pid = next(items)
    wait_for(lambda: not _alive(pid), timeout=5, what='the generator process to end')


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
