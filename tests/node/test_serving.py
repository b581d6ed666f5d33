"""The waitress server's worker wake-up order: the thread that served last serves next (newest waiter first)."""

from __future__ import annotations

import threading
from typing import Any

import requests

from llnode.node.serving import LifoCondition, make_server
from tests.polling import wait_for


def test_notify_wakes_the_newest_waiter_and_notify_all_the_rest() -> None:
    lock = threading.Lock()
    condition = LifoCondition(lock)
    woken: list[int] = []

    def waiter(number: int) -> None:
        with lock:
            assert condition.wait(timeout=10)
            woken.append(number)

    threads = []
    for number in range(3):
        thread = threading.Thread(target=waiter, args=(number,), name=f'test-waiter-{number}')
        thread.start()
        threads.append(thread)
        wait_for(lambda n=number: condition.waiting == n + 1)  # each waits before the next one comes
    with lock:
        condition.notify()
    wait_for(lambda: woken == [2])
    with lock:
        condition.notify_all()
    for thread in threads:
        thread.join(5)
        assert not thread.is_alive()
    assert sorted(woken[1:]) == [0, 1] and condition.waiting == 0


def test_a_wait_that_times_out_leaves_no_waiter_behind() -> None:
    lock = threading.Lock()
    condition = LifoCondition(lock)
    with lock:
        assert condition.wait(timeout=0.01) is False
        assert condition.waiting == 0
        condition.notify()  # nobody to wake: a no-op


def test_sequential_requests_reuse_the_thread_that_served_last() -> None:
    served_by: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        served_by.append(threading.current_thread().name)
        start_response('200 OK', [('Content-Type', 'text/plain')])
        return [b'ok']

    server = make_server(app, '127.0.0.1', 0, server='waitress', threads=8)
    server.start()
    try:
        host, port = server.address
        with requests.Session() as session:
            for _ in range(30):
                assert session.get(f'http://{host}:{port}/', timeout=5).text == 'ok'
    finally:
        assert server.stop(5)
    # Oldest-idle-first (waitress's own order) spreads 30 requests over all 8 threads; newest-first keeps them on
    # one, or two when a request arrives before the last worker is back to waiting.
    assert len(served_by) == 30 and len(set(served_by)) <= 3, set(served_by)
