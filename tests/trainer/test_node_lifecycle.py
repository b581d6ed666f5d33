"""The trainer node's lifecycle: ``TRAINER_IDLE_TIMEOUT_SEC`` and ``RESTART_AFTER_TRAINING`` end ``run()`` with exit
code 0 (never ``sys.exit``), a stop during a training ends every thread the trainer started, the constructor
refuses what it cannot use."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import pytest

from llnode.localloop import LocalLoop
from llnode.loop.socket import LoopSocket
from llnode.trainer import TrainerNode
from tests.node.conftest import new_threads_gone
from tests.polling import wait_for
from tests.trainer.trainer_support import ScriptedLogic, begin, wait_idle


def test_the_idle_timeout_asks_for_a_restart(local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]) -> None:
    node = make_trainer(local_loop, settings={'trainer_idle_timeout_sec': 0.3})
    wait_for(lambda: node.exit_code == 0, timeout=10, what='the idle timeout')


def test_a_training_keeps_the_idle_timeout_away(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]
) -> None:
    logic = ScriptedLogic(forever=True)
    node = make_trainer(local_loop, logic, settings={'trainer_idle_timeout_sec': 0.5})
    begin(local_loop, node)
    wait_for(logic.training.is_set, what='the training to run')
    wait_for(lambda: (node.status().uptime or 0) > 1.0, what='twice the idle timeout with a training')
    assert node.exit_code is None
    node.abort_training()
    wait_idle(node)


def test_restart_after_training_asks_for_a_restart_when_the_training_is_done(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]
) -> None:
    node = make_trainer(local_loop, ScriptedLogic(epochs=1), settings={'restart_after_training': True})
    begin(local_loop, node)
    wait_idle(node)
    wait_for(lambda: node.exit_code == 0, what='the restart request')


def test_stopping_the_node_during_a_training_ends_every_trainer_thread(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]
) -> None:
    before = set(threading.enumerate())
    logic = ScriptedLogic(forever=True)
    node = make_trainer(local_loop, logic)
    begin(local_loop, node)
    wait_for(lambda: logic.published, what='metrics to flow (the sender thread runs)')
    assert any(t.name.startswith('llnode-trainer-metrics') for t in threading.enumerate())
    started = time.monotonic()
    assert node.stop()
    assert time.monotonic() - started < 5
    new_threads_gone(before, prefix='llnode-trainer')
    assert node.machine.checkpoint.exists()  # kept for the restart


def test_an_idle_trainer_reports_its_status_every_cycle(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]
) -> None:
    """The periodic status is the trainer's heartbeat: the Loop hears from an idle trainer every cycle although
    nothing changes (the Loop shows a node that falls silent as gone)."""
    node = make_trainer(local_loop)
    reports: set[str] = set()  # the Loop's ``updated`` time of each status it kept (milliseconds)

    def reported() -> set[str]:
        for entry in local_loop.nodes():
            if entry['id'] == node.uuid:
                assert entry['status']['state'] == 'idle'
                reports.add(entry['updated'])
        return reports

    wait_for(lambda: len(reported()) >= 4, what='four idle status reports', interval=0.02)
    assert node.machine.snapshot().state == 'idle'


def test_a_refused_password_is_named_in_readiness_and_stats_and_logged_once(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode], caplog: pytest.LogCaptureFixture
) -> None:
    password = 'wrong-password-4711'
    with caplog.at_level(logging.DEBUG, logger='llnode'):
        node = make_trainer(
            local_loop,
            settings={'password': password},
            connect=False,
            loop_socket_factory=lambda client, node_type: LoopSocket(
                client, node_type, backoff_initial=0.05, backoff_max=0.1
            ),
        )
        cause = "the Loop refused login for user 'u' (401)"
        wait_for(lambda: node.readiness_problem() == f'not connected to the Loop: {cause}', what='the cause')
        assert node.stats()['loop']['problem'] == cause
        link = node.loop_socket
        assert link is not None
        wait_for(lambda: link.attempts >= 4, what='four refused logins')
    lines = [
        r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and 'refused login' in r.getMessage()
    ]
    assert lines == [f'connecting to the Loop as trainer failed: {cause}']  # not one per attempt
    assert all(password not in r.getMessage() for r in caplog.records)


def test_the_constructor_refuses_what_it_cannot_use(local_loop: LocalLoop) -> None:
    with pytest.raises(TypeError, match='TrainerLogic'):
        TrainerNode('t', object(), settings=local_loop.settings())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match='max_attempts'):
        TrainerNode('t', ScriptedLogic(), settings=local_loop.settings(), max_attempts=0)
    with pytest.raises(ValueError, match='retry_delay'):
        TrainerNode('t', ScriptedLogic(), settings=local_loop.settings(), retry_delay=10, max_retry_delay=1)


def test_begin_training_in_code_checks_its_arguments(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]
) -> None:
    node = make_trainer(local_loop)
    details = {'categories': [], 'training_number': 1, 'model_variant': '', 'hyperparameters': {}}
    with pytest.raises(ValueError, match='organization'):
        node.begin_training('', 'demo', details)
    with pytest.raises(ValueError, match='project'):
        node.begin_training('zauberzeug', '../x', details)
    with pytest.raises(ValueError, match='hyperparameters missing or not a dict'):
        node.begin_training('zauberzeug', 'demo', {**details, 'hyperparameters': []})
    assert not node.machine.active
