"""A trainer-like node with the real Loop link (LoopClient + LoopSocket) against the local Loop: it connects from
its repeat cycle, ``PUT /socketio off`` really disconnects it, ``on`` reconnects, and the Loop's ``restart``
event ends ``run()`` with exit code 0."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import requests

from llnode.localloop import LocalLoop
from llnode.node import Node
from tests.node.conftest import Served, new_threads_gone, wait_for


class LinkedNode(Node):
    node_type = 'trainer'
    needs_loop_socket = True


def trainers(loop: LocalLoop) -> list[dict[str, Any]]:
    assert loop.hub is not None
    return [n for n in loop.hub.connected() if n['node_type'] == 'trainer']


def test_socketio_switch_disconnects_and_reconnects_the_real_link(
    local_loop: LocalLoop, serve: Callable[..., Served]
) -> None:
    node = LinkedNode('linked trainer', settings=local_loop.settings(), repeat_interval=0.05)
    served = serve(node, 'waitress')
    wait_for(lambda: trainers(local_loop), timeout=10, what='the trainer to connect to the Loop')
    # the Loop registers the trainer on its side of the handshake, a moment before the node's client is connected
    wait_for(
        lambda: requests.get(f'{served.url}/readyz', timeout=5).status_code == 200, what='the node to report ready'
    )
    assert requests.put(f'{served.url}/socketio', data='off', timeout=10).json() == 'off'
    wait_for(lambda: not trainers(local_loop), what='the Loop to see the trainer leave')
    assert requests.get(f'{served.url}/readyz', timeout=5).status_code == 503
    assert requests.put(f'{served.url}/socketio', data='on', timeout=5).json() == 'on'
    wait_for(lambda: trainers(local_loop), timeout=10, what='the trainer to reconnect')
    assert served.stop() == 0
    wait_for(lambda: not trainers(local_loop), what='the Loop to see the trainer leave on stop')


def test_loop_restart_event_ends_run_with_code_0(make_local_loop: Callable[..., LocalLoop]) -> None:
    # A WebSocket-capable Loop: over long-polling, a disconnect racing the in-flight ack of `restart` can leave
    # python-engineio's client waiting for the Loop's next ping (reported to the owner of llnode/loop/socket.py).
    local_loop = make_local_loop(demo=True, demo_images=2, websocket=True)
    before = set(threading.enumerate())
    node = LinkedNode('restarting trainer', settings=local_loop.settings(), repeat_interval=0.05)
    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(node.run()), name='test-runner')
    runner.start()
    try:
        connected = wait_for(lambda: trainers(local_loop), timeout=10, what='the trainer to connect')
        assert local_loop.hub is not None
        assert local_loop.hub.send(connected[0]['sid'], 'restart', timeout=1) is None  # no ack, as the reference
        runner.join(10)
        assert result == [0]
    finally:
        node.stop()
        runner.join(10)
    new_threads_gone(before, timeout=10, prefix='llnode-')  # the Loop's own threads live on until its teardown
