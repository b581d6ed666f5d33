"""The elastic thread pool of gunicorn's worker: threads on demand up to the limit, idle ones end."""

from __future__ import annotations

import threading

import pytest

from llnode.node.threadpool import ElasticThreadPool
from tests.polling import wait_for


def test_threads_start_on_demand_up_to_the_limit_and_end_when_idle() -> None:
    pool = ElasticThreadPool(3, idle_s=0.3, name='test-pool')
    gate = threading.Event()
    futures = [pool.submit(gate.wait, 5) for _ in range(5)]
    wait_for(lambda: pool.threads == 3, what='three threads')
    assert sorted(t.name for t in threading.enumerate() if t.name.startswith('test-pool-')) == [
        'test-pool-1',
        'test-pool-2',
        'test-pool-3',
    ]
    gate.set()
    assert [f.result(5) for f in futures] == [True] * 5  # the two beyond the limit waited for a thread
    wait_for(lambda: pool.threads == 0, timeout=5, what='idle threads to end')
    assert pool.submit(lambda: 7).result(5) == 7  # and new ones start again
    pool.shutdown(wait=True)
    assert pool.threads == 0


def test_a_free_thread_takes_the_next_work_instead_of_a_new_one() -> None:
    pool = ElasticThreadPool(8, idle_s=5, name='test-pool')
    for number in range(20):
        assert pool.submit(lambda n=number: n * 2).result(5) == number * 2
    assert pool.threads == 1
    pool.shutdown(wait=True)


def test_errors_reach_the_future_and_shutdown_refuses_new_work() -> None:
    pool = ElasticThreadPool(2, name='test-pool')

    def fail() -> None:
        raise ValueError('boom')

    with pytest.raises(ValueError, match='boom'):
        pool.submit(fail).result(5)
    pool.shutdown(wait=True)
    with pytest.raises(RuntimeError):
        pool.submit(fail)
