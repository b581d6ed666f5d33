"""A CPU-bound generator in its own process, as the reference 0.27's ``trainer/subprocess.py``, in a synchronous form.

Preparing training data (decoding and resizing thousands of images) would hold the GIL that the node's threads
(heartbeat, Socket.IO, REST) need. :func:`iterator_cpu_bound` runs the generator in a spawned process and hands
its items over a queue of one, so the producer runs at most one item ahead of the consumer::

    with iterator_cpu_bound(prepare_images, image_paths, size=640) as items:
        for item in items:
            ...

The process is spawned (never forked) on every platform, so a process that has initialised CUDA is never copied;
the function and its arguments must be picklable and importable (a module-level function). An exception in the
child is raised again in the caller; a child that dies without finishing is a :class:`RuntimeError`; leaving the
``with`` block early kills the child. The reference's version is an async context manager; this one blocks the
calling thread (a training stage), which is what llnode's trainers run in. Nothing in llnode uses it.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import pickle
import queue
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

logger = logging.getLogger('llnode.trainer.subprocess')

T = TypeVar('T')

#: How long the consumer waits for an item before it checks that the child still lives.
POLL_S = 0.5
#: How long a child that was asked to end may take before it is killed.
JOIN_TIMEOUT_S = 5.0


class _Done:
    """The child's last message: the generator is exhausted."""


class _Failed:
    """The child's generator raised; carries the exception, or its text when it cannot be pickled."""

    def __init__(self, error: BaseException) -> None:
        self.error: BaseException | None = error
        self.text = f'{type(error).__name__}: {error}'


@contextlib.contextmanager
def iterator_cpu_bound(it: Callable[..., Iterator[T]], *args: Any, **kwargs: Any) -> Iterator[Iterator[T]]:
    """Run ``it(*args, **kwargs)`` in a spawned process; the ``with`` block gets an iterator over its items."""
    context = multiprocessing.get_context('spawn')
    items: Any = context.Queue(maxsize=1)
    process = context.Process(
        target=_produce, args=(it, items, args, kwargs), name='llnode-iterator-cpu-bound', daemon=True
    )
    process.start()
    try:
        yield _consume(process, items)
    finally:
        if process.is_alive():
            process.kill()
        process.join(JOIN_TIMEOUT_S)
        items.close()
        items.cancel_join_thread()


def _consume(process: Any, items: Any) -> Iterator[Any]:
    while True:
        try:
            item = items.get(True, POLL_S)
        except queue.Empty:
            if not process.is_alive():
                raise RuntimeError(
                    f'the generator process ended (exit code {process.exitcode}) before its generator was done'
                ) from None
            continue
        if isinstance(item, _Done):
            return
        if isinstance(item, _Failed):
            if item.error is not None:
                raise item.error
            raise RuntimeError(f'the generator process failed: {item.text}')
        yield item


def _produce(it: Callable[..., Iterator[Any]], items: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    try:
        for item in it(*args, **kwargs):
            items.put(item)
    except Exception as e:
        logger.exception('the CPU-bound generator failed')
        failure = _Failed(e)
        try:
            pickle.loads(pickle.dumps(e))
        except Exception:  # the exception does not travel: send its text (the queue pickles in a thread, too late)
            failure.error = None
        items.put(failure)
        return
    items.put(_Done())
