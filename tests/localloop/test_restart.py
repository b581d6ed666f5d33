"""The local Loop keeps everything across a restart on the same data folder and port, and stops promptly."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import requests

from llnode.localloop import LocalLoop
from tests.localloop.helpers import CONTROL, PROJECT, connect_node, login
from tests.localloop.test_uploads import item_parts, jpeg, metadata


def test_everything_survives_a_restart(make_local_loop: Callable[..., LocalLoop]) -> None:
    loop = make_local_loop(demo=True, demo_images=5, users=(('u', 'p'), ('alice', 'secret')), ping_interval=1.0)
    session = login(loop)
    image_ids = loop.store.image_ids('zauberzeug', 'demo')
    demo_jpeg = session.get(f'{loop.url}{PROJECT}/images/{image_ids[0]}/main', timeout=10).content
    uploaded = requests.post(
        f'{loop.url}{PROJECT}/images', files=item_parts('image_x', metadata(), jpeg()), timeout=10
    ).json()['image_ids']
    model = session.put(
        f'{loop.url}{PROJECT}/trainings/4/models/latest/mocked/file',
        files=[('files', ('w.bin', b'weights'))],
        timeout=10,
    ).json()
    assert session.put(f'{loop.url}{CONTROL}/deployment', json={'model_id': model['id']}, timeout=10).ok
    client = connect_node(loop, 'trainer', cookie=session.cookies['session'])
    client.call('update_trainer', {'id': 'trainer-1', 'name': 'persisted', 'state': 'idle'}, timeout=10)
    client.disconnect()
    port, data_dir = loop.port, loop.data_dir
    loop.stop()

    again = LocalLoop(data_dir, port=port, demo=True, demo_images=5, users=(('u', 'p'),))
    with again:
        assert again.port == port
        # the old session cookie still works, and the second user still exists
        assert session.get(f'{again.url}{PROJECT}/data', timeout=10).status_code == 200
        login(again, 'alice', 'secret')
        assert again.store.image_ids('zauberzeug', 'demo') == [*image_ids, *uploaded]  # demo not seeded twice
        assert session.get(f'{again.url}{PROJECT}/images/{image_ids[0]}/main', timeout=10).content == demo_jpeg
        assert session.get(f'{again.url}{PROJECT}/images/{uploaded[0]}/main', timeout=10).content == jpeg()
        target = session.get(f'{again.url}{PROJECT}/deployment/target', timeout=10).json()
        assert target == {'model_uuid': model['id'], 'version': model['version']}
        download = requests.get(f'{again.url}{PROJECT}/models/{model["id"]}/mocked/file', timeout=10)
        assert download.status_code == 200
        node = again.store.node('trainer-1')
        assert node is not None
        assert node['status']['name'] == 'persisted'
        assert node['connected'] is False
        assert len(again.store.upload_batches('zauberzeug', 'demo')) == 1


def test_stop_releases_the_port_and_a_stopped_loop_refuses_connections(
    make_local_loop: Callable[..., LocalLoop],
) -> None:
    loop = make_local_loop()
    port = loop.port
    started = time.monotonic()
    loop.stop()
    assert time.monotonic() - started < 5
    with pytest.raises(requests.ConnectionError):
        requests.get(f'http://127.0.0.1:{port}/api/status', timeout=5)
    loop.stop()  # a second stop does nothing


@pytest.mark.parametrize('websocket', [False, True])
def test_stop_with_connected_nodes_is_prompt_and_restart_on_the_port_works(
    make_local_loop: Callable[..., LocalLoop], websocket: bool
) -> None:
    loop = make_local_loop(websocket=websocket)
    session = login(loop)
    clients = [connect_node(loop, 'trainer', cookie=session.cookies['session']) for _ in range(3)]
    started = time.monotonic()
    loop.stop(timeout=10)
    assert time.monotonic() - started < 5
    restarted = LocalLoop(loop.data_dir, port=loop.port, websocket=websocket).start()
    try:
        assert requests.get(f'{restarted.url}/api/status', timeout=10).status_code == 200
    finally:
        restarted.stop()
        for client in clients:
            client.eio.disconnect(abort=True)


def test_delay_ms_delays_every_answer(make_local_loop: Callable[..., LocalLoop]) -> None:
    loop = make_local_loop(delay_ms=150)
    started = time.monotonic()
    for _ in range(3):
        assert requests.get(f'{loop.url}/api/status', timeout=10).status_code == 200
    assert time.monotonic() - started >= 0.45


def test_the_same_object_starts_again_on_its_port(make_local_loop: Callable[..., LocalLoop]) -> None:
    loop = make_local_loop(demo=True, demo_images=2)
    port = loop.port
    loop.stop()
    loop.start()
    assert loop.port == port
    assert login(loop).get(f'{loop.url}{PROJECT}/data', timeout=10).status_code == 200
