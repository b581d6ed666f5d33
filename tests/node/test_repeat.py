"""The repeat cycle: runs on_repeat, survives exceptions, muted by SKIP_REPEAT_ON_START and PUT /socketio off;
and the Loop socket link of trainer-like nodes (a fake link injected through the constructor's factories)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests

from llnode.config import Settings
from llnode.node import Node
from llnode.node.repeat import RepeatThread
from tests.node.conftest import Served, new_threads_gone, wait_for

#: How long a muted node is watched to show that no cycle runs (many repeat intervals of 0.02 s).
MUTED_WATCH_S = 0.3


class CountingNode(Node):
    def __init__(self, *args: Any, fail_every_other: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.repeats = 0
        self.fail_every_other = fail_every_other

    def on_repeat(self) -> None:
        self.repeats += 1
        if self.fail_every_other and self.repeats % 2:
            raise RuntimeError(f'cycle {self.repeats} failed')


def test_on_repeat_runs_every_interval_and_survives_exceptions(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    with CountingNode('failing', settings=settings, repeat_interval=0.02, fail_every_other=True) as node:
        wait_for(lambda: node.repeats >= 6, what='six cycles, three of them failing')
    assert 'repeat cycle failed' in caplog.text and 'cycle 1 failed' in caplog.text


def test_interval_paces_the_cycles(settings: Settings) -> None:
    with CountingNode('paced', settings=settings, repeat_interval=0.2) as node:
        wait_for(lambda: node.repeats >= 1, what='the first cycle, right after start')
        started = time.monotonic()
        wait_for(lambda: node.repeats >= 3, what='two more cycles')
        assert time.monotonic() - started >= 0.35  # two waits of 0.2 s between them


def test_stop_wakes_a_long_wait_at_once(settings: Settings) -> None:
    node = CountingNode('sleepy', settings=settings, repeat_interval=60).start()
    wait_for(lambda: node.repeats == 1, what='the first cycle')
    started = time.monotonic()
    assert node.stop(timeout=5)
    assert time.monotonic() - started < 1.0


def test_skip_repeat_on_start_mutes_until_unmuted(settings: Settings) -> None:
    node = CountingNode('skipper', settings=settings.replace(skip_repeat_on_start=True), repeat_interval=0.02)
    with node:
        assert node.muted
        time.sleep(MUTED_WATCH_S)  # a negative check: nothing may happen during many intervals
        assert node.repeats == 0
        node.unmute()
        wait_for(lambda: node.repeats >= 2, what='cycles after unmute')


def test_put_socketio_mutes_and_unmutes_the_cycle(settings: Settings, serve: Callable[..., Served]) -> None:
    node = CountingNode('switch', settings=settings, repeat_interval=0.02)
    served = serve(node, 'waitress')
    wait_for(lambda: node.repeats >= 1, what='a cycle')
    assert requests.put(f'{served.url}/socketio', data='off', timeout=5).json() == 'off'
    assert node.muted
    count = node.repeats
    time.sleep(MUTED_WATCH_S)  # negative check over many intervals
    assert node.repeats <= count + 1  # at most the cycle that was running when muted
    assert requests.put(f'{served.url}/socketio', data='on', timeout=5).json() == 'on'
    assert not node.muted
    wait_for(lambda: node.repeats >= count + 3, what='cycles after unmute')


def test_repeat_thread_rejects_bad_intervals() -> None:
    for bad in (0, -1, float('nan'), float('inf'), '5'):
        with pytest.raises(ValueError, match='positive number'):
            RepeatThread(lambda: None, interval=bad, name='x')  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- the Loop link


class FakeLoopClient:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.closed = False

    def close(self) -> None:
        self.closed = True


class FakeLoopSocket:
    """Behaves like LoopSocket toward the node: handlers, ensure_connected (with a switch), close."""

    reachable = True

    def __init__(self, client: FakeLoopClient, node_type: str) -> None:
        self.client = client
        self.node_type = node_type
        self.handlers: dict[str, Callable[..., Any]] = {}
        self.lanes: dict[str, Callable[..., Any] | None] = {}
        self.connected = False
        self.closed = False
        self.attempts = 0

    def on(self, event: str, handler: Callable[..., Any], *, lane: Callable[..., Any] | None = None) -> None:
        self.handlers[event] = handler
        self.lanes[event] = lane

    def ensure_connected(self) -> bool:
        if self.closed:
            return False
        if not self.connected:
            self.attempts += 1
            self.connected = type(self).reachable
        return self.connected

    def close(self, timeout: float = 5.0) -> None:
        self.closed = True
        self.connected = False


class FakeTrainer(CountingNode):
    node_type = 'trainer'
    needs_loop_socket = True


@pytest.fixture
def link_factories() -> Any:
    sockets: list[FakeLoopSocket] = []
    clients: list[FakeLoopClient] = []

    class Reachability(FakeLoopSocket):
        reachable = True

    def make_client(settings: Settings) -> FakeLoopClient:
        clients.append(FakeLoopClient(settings))
        return clients[-1]

    def make_socket(client: FakeLoopClient, node_type: str) -> FakeLoopSocket:
        sockets.append(Reachability(client, node_type))
        return sockets[-1]

    return make_client, make_socket, clients, sockets, Reachability


def test_loop_link_is_built_at_start_connected_by_the_cycle_and_closed_on_stop(
    settings: Settings, link_factories: Any
) -> None:
    make_client, make_socket, clients, sockets, _ = link_factories
    node = FakeTrainer(
        'trainer',
        settings=settings,
        repeat_interval=0.02,
        loop_client_factory=make_client,
        loop_socket_factory=make_socket,
    )
    node.handle_loop_event('begin_training', lambda *args: True)
    with node:
        assert node.loop_client is clients[0] and clients[0].settings is settings
        assert node.loop_socket is sockets[0] and sockets[0].client is clients[0]
        assert sockets[0].node_type == 'trainer'
        assert set(sockets[0].handlers) == {'restart', 'begin_training'}
        wait_for(lambda: node.repeats >= 2, what='cycles after connecting')
        assert sockets[0].connected and sockets[0].attempts == 1
    assert sockets[0].closed and clients[0].closed
    assert node.loop_socket is None and node.loop_client is None


def test_first_cycle_connects_right_after_start(settings: Settings, link_factories: Any) -> None:
    make_client, make_socket, _, sockets, _ = link_factories
    node = FakeTrainer(
        'prompt',
        settings=settings,
        repeat_interval=60,
        loop_client_factory=make_client,
        loop_socket_factory=make_socket,
    )
    with node:
        wait_for(
            lambda: sockets[0].connected and node.repeats == 1, timeout=2, what='a connection without waiting 60 s'
        )


def test_on_repeat_waits_for_the_loop_link(settings: Settings, link_factories: Any) -> None:
    make_client, make_socket, _, sockets, reachability = link_factories
    reachability.reachable = False
    node = FakeTrainer(
        'offline',
        settings=settings,
        repeat_interval=0.02,
        loop_client_factory=make_client,
        loop_socket_factory=make_socket,
    )
    with node:
        wait_for(lambda: sockets[0].attempts >= 3, what='reconnect attempts every cycle')
        assert node.repeats == 0  # on_repeat is skipped while the Loop is unreachable (reference behaviour)
        reachability.reachable = True
        wait_for(lambda: node.repeats >= 1, what='on_repeat once connected')


def test_socketio_off_closes_the_link_and_on_builds_a_new_one(
    settings: Settings, link_factories: Any, serve: Callable[..., Served]
) -> None:
    make_client, make_socket, clients, sockets, _ = link_factories
    node = FakeTrainer(
        'switching',
        settings=settings,
        repeat_interval=0.02,
        loop_client_factory=make_client,
        loop_socket_factory=make_socket,
    )

    def lane(*args: Any) -> str:
        return 'training'

    node.handle_loop_event('stop_training', lambda: True, lane=lane)
    served = serve(node, 'werkzeug')
    wait_for(lambda: sockets[0].connected, what='the first link')
    assert requests.get(f'{served.url}/readyz', timeout=5).status_code == 200
    assert requests.put(f'{served.url}/socketio', data='off', timeout=5).json() == 'off'
    assert sockets[0].closed and node.loop_socket is None
    ready = requests.get(f'{served.url}/readyz', timeout=5)
    assert ready.status_code == 503 and ready.json() == {'detail': 'not connected to the Loop'}
    time.sleep(MUTED_WATCH_S)  # negative check: no new link while muted
    assert len(sockets) == 1
    assert requests.put(f'{served.url}/socketio', data='on', timeout=5).json() == 'on'
    wait_for(lambda: len(sockets) == 2 and sockets[1].connected, what='a new link after unmute')
    assert set(sockets[1].handlers) == {'restart', 'stop_training'}  # handlers survive the rebuild
    assert sockets[1].lanes == {'restart': None, 'stop_training': lane}  # and so do their lanes
    assert len(clients) == 1  # the HTTP client is kept
    assert served.stop() == 0
    assert sockets[1].closed and clients[0].closed


def test_loop_restart_event_ends_run_with_code_0(settings: Settings, link_factories: Any) -> None:
    make_client, make_socket, _, sockets, _ = link_factories
    before = set(threading.enumerate())
    node = FakeTrainer(
        'restartable',
        settings=settings,
        repeat_interval=0.02,
        loop_client_factory=make_client,
        loop_socket_factory=make_socket,
    )
    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(node.run()), name='test-runner')
    runner.start()
    wait_for(lambda: sockets and sockets[0].connected, what='the link')
    ack = sockets[0].handlers['restart']()  # what the Loop's `restart` event calls
    assert ack is None  # no ack payload, as the reference
    runner.join(5)
    assert result == [0]
    assert sockets[0].closed
    new_threads_gone(before)


def test_nodes_without_a_loop_socket_refuse_loop_handlers(settings: Settings) -> None:
    with pytest.raises(RuntimeError, match='no Loop socket'):
        Node('detector-like', settings=settings).handle_loop_event('x', lambda: None)


def test_a_repeat_thread_made_before_a_fork_runs_and_joins_in_the_child() -> None:
    """gunicorn builds a node in its master and starts it in the forked worker: CPython marks every Thread made
    before a fork as stopped in the child, so is_alive() and join() of such a thread lied there (the converter's
    /readyz said its worker was not running while it converted)."""
    cycled = threading.Event()
    repeat = RepeatThread(cycled.set, interval=0.01, name='test-repeat-fork')
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through its exit code
        code = 1
        try:
            repeat.start()
            alive = repeat._thread.is_alive() and cycled.wait(5)
            code = 0 if alive and repeat.stop(5) else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
