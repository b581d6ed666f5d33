"""The trainer's backdoor routes (loop-protocol §5) on a served TrainerNode, over real HTTP, against the local
Loop: only mounted when asked for, JSON ``null`` answers, 409 when no training process runs, 422 for a logic that
lacks what a route needs, and their effects on the logic and on the Loop."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from llnode.localloop import LocalLoop
from llnode.trainer import BestState, TrainerNode, TrainingRun
from llnode.trainer.training import Checkpoint
from tests.linked_nodes import wait_connected
from tests.node.conftest import Served
from tests.polling import wait_for
from tests.trainer.conftest import FAST
from tests.trainer.trainer_support import ORGANIZATION, PROJECT, ScriptedLogic, begin, wait_idle

NODE_UUID = 'b4cd0000-0000-4000-8000-000000000001'


class MockLikeLogic(ScriptedLogic):
    """What the reference's mock trainer offers the backdoor: a process, a new-model switch, error flags."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(forever=True, **kwargs)
        self.provide_new_model = False
        self.error_configuration: dict[str, bool] = {}
        self.killed = 0
        self.iteration = 0

    def process_running(self) -> bool:
        return self.training.is_set()

    def kill_process(self) -> None:
        self.killed += 1

    def get_new_best(self, run: TrainingRun) -> BestState | None:
        if not self.provide_new_model:
            return None
        self.iteration += 1
        return BestState({c.id: {'tp': self.iteration, 'fp': 2, 'fn': 2} for c in run.categories}, epoch=self.iteration)


@pytest.fixture
def serve_trainer() -> Iterator[Callable[..., Served]]:
    served: list[Served] = []

    def start(loop: LocalLoop, logic: ScriptedLogic, *, backdoor: bool = True, uuid: str | None = None) -> Served:
        node = TrainerNode(
            'backdoor trainer', logic, settings=loop.settings(), uuid=uuid, use_backdoor_controls=backdoor, **FAST
        )
        server = Served(node, 'waitress')
        served.append(server)
        wait_connected(loop, node)
        return server

    yield start
    for server in served:
        if server.serving:
            server.stop()


def test_the_routes_are_only_there_when_asked_for(local_loop: LocalLoop, serve_trainer: Callable[..., Served]) -> None:
    served = serve_trainer(local_loop, MockLikeLogic(), backdoor=False)
    assert requests.post(f'{served.url}/force_status_update', timeout=5).status_code == 404
    assert requests.put(f'{served.url}/provide_new_model', data='on', timeout=5).status_code == 404


def test_provide_new_model_and_error_configuration_set_the_logic(
    local_loop: LocalLoop, serve_trainer: Callable[..., Served]
) -> None:
    logic = MockLikeLogic()
    checkpoint = Checkpoint(local_loop.settings().data_folder, NODE_UUID)
    checkpoint.path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.path.write_text('{"broken')  # gives the node an error that 'off' clears
    served = serve_trainer(local_loop, logic, uuid=NODE_UUID)
    node: TrainerNode = served.node  # type: ignore[assignment]
    assert set(node.status().errors) == {'checkpoint'}
    response = requests.put(f'{served.url}/provide_new_model', data='on', timeout=5)
    assert (response.status_code, response.json()) == (200, None)
    assert logic.provide_new_model is True
    assert requests.put(f'{served.url}/provide_new_model', data='maybe', timeout=5).status_code == 400
    assert set(node.status().errors) == {'checkpoint'}
    assert requests.put(f'{served.url}/provide_new_model', data='off', timeout=5).json() is None
    assert logic.provide_new_model is False
    assert node.status().errors == {}

    flags = {'begin_training': False, 'crash_training': True}
    response = requests.put(f'{served.url}/error_configuration', json=flags, timeout=5)
    assert (response.status_code, response.json()) == (200, None)
    assert logic.error_configuration == {**flags, 'get_new_model': False, 'save_model': False}
    assert requests.put(f'{served.url}/error_configuration', json={'crash': True}, timeout=5).status_code == 422
    assert requests.put(f'{served.url}/error_configuration', data=b'{', timeout=5).status_code == 400


def test_a_logic_without_the_needed_members_gets_422(
    local_loop: LocalLoop, serve_trainer: Callable[..., Served]
) -> None:
    served = serve_trainer(local_loop, ScriptedLogic())
    for method, route, body in (
        ('PUT', '/provide_new_model', 'on'),
        ('PUT', '/error_configuration', '{"crash_training": true}'),
        ('POST', '/kill_training_process', ''),
    ):
        response = requests.request(method, f'{served.url}{route}', data=body, timeout=5)
        assert response.status_code == 422, (route, response.text)
        assert 'ScriptedLogic' in response.json()['detail']


def test_steps_and_kill_need_a_running_process(local_loop: LocalLoop, serve_trainer: Callable[..., Served]) -> None:
    logic = MockLikeLogic()
    served = serve_trainer(local_loop, logic)
    for route, body in (('/steps', '3'), ('/kill_training_process', '')):
        response = requests.post(f'{served.url}{route}', data=body, timeout=5)
        assert (response.status_code, response.json()) == (409, {'detail': 'trainer is not running'})
    assert requests.post(f'{served.url}/steps', data='many', timeout=5).status_code == 400


def test_steps_publish_new_best_states_at_once(local_loop: LocalLoop, serve_trainer: Callable[..., Served]) -> None:
    logic = MockLikeLogic(epoch_seconds=60)  # no metrics of its own while the test steps
    served = serve_trainer(local_loop, logic)
    begin(local_loop, served.node)  # type: ignore[arg-type]
    wait_for(logic.training.is_set, what='the training process to run')
    response = requests.post(f'{served.url}/steps', data='3', timeout=10)
    assert (response.status_code, response.json()) == (200, None)
    updates = local_loop.store.training_updates(ORGANIZATION, PROJECT)
    assert [u['best_epoch'] for u in updates] == [1, 2, 3]
    assert [s.epoch for s in logic.published] == [1, 2, 3]
    assert logic.provide_new_model is False  # switched on for the steps only
    assert requests.post(f'{served.url}/kill_training_process', timeout=5).json() is None
    assert logic.killed == 1


def test_force_status_update_and_reset(local_loop: LocalLoop, serve_trainer: Callable[..., Served]) -> None:
    logic = MockLikeLogic()
    served = serve_trainer(local_loop, logic)
    node: TrainerNode = served.node  # type: ignore[assignment]
    begin(local_loop, node)
    wait_for(logic.training.is_set, what='the training to run')
    assert requests.post(f'{served.url}/force_status_update', timeout=10).json() is None
    stored = local_loop.store.node(node.uuid)
    assert stored is not None
    assert stored['status']['state'] == 'running'
    response = requests.post(f'{served.url}/reset', timeout=40)
    assert (response.status_code, response.json()) == (200, None)
    assert not node.machine.active
    assert not node.machine.checkpoint.exists()
    assert logic.count('abort') == 1
    wait_idle(node)
    wait_for(lambda: node.loop_socket is not None and node.loop_socket.connected, what='the reconnect after reset')
    stored = local_loop.store.node(node.uuid)
    assert stored is not None
    assert stored['status']['state'] == 'idle'
