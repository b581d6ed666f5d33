"""The training slot (0.27): trainers sharing one GPU take turns through an flock on a shared file.

The lock itself with real processes (a holder in another process is named in the refusal and frees the slot when
SIGKILLed; a forked child never keeps it), and two TrainerNodes on one lock file against the local Loop (the second
refuses with ``payload: 'refused'`` and reports ``blocked`` until the first is done; a resumed training reports
``waiting_for_slot`` until the slot frees)."""

from __future__ import annotations

import fcntl
import os
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from llnode.config import ConfigError, Settings
from llnode.localloop import LocalLoop
from llnode.schema import Category, TrainerState, TrainingDetails
from llnode.trainer import TrainerNode, TrainingRefused
from llnode.trainer.machine import TrainingMachine
from llnode.trainer.slot import (
    CLAIM_ATTEMPTS,
    AlwaysFreeSlot,
    FileTrainingSlot,
    TrainingSlotTaken,
    training_slot_from_settings,
)
from llnode.trainer.training import Checkpoint, Training
from tests.polling import wait_for
from tests.trainer.trainer_support import (
    FORMATS,
    ORGANIZATION,
    PROJECT,
    ScriptedLogic,
    begin,
    stored_uploads,
    wait_idle,
    wait_state,
)

HOST = socket.gethostname()

#: A process that takes the slot, says so, and holds it until its stdin closes (or it is killed).
HOLDER_SCRIPT = """
import sys
from llnode.trainer.slot import FileTrainingSlot
slot = FileTrainingSlot(sys.argv[1])
slot.claim('a training in another process')
print('claimed', flush=True)
sys.stdin.read()
"""


def holder_text(pid: int, training: str) -> str:
    return f'pid {pid} on {HOST}, {training}'


# ---------------------------------------------------------------------- the lock


def test_a_slot_held_by_another_process_is_refused_naming_it_and_freed_when_that_process_is_killed(
    tmp_path: Path,
) -> None:
    path = tmp_path / 'gpu0.lock'
    child = subprocess.Popen(
        [sys.executable, '-c', HOLDER_SCRIPT, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == 'claimed\n'
        held_by_child = holder_text(child.pid, 'a training in another process')
        assert stat.S_IMODE(path.stat().st_mode) == 0o666  # trainers of other users may share it

        mine = FileTrainingSlot(path)
        assert mine.taken_by_sibling
        assert mine.holder() == held_by_child
        with pytest.raises(TrainingSlotTaken) as refused:
            mine.claim('my training')
        assert isinstance(refused.value, TrainingRefused)
        assert str(refused.value) == f'the training slot is held by {held_by_child}'
        assert refused.value.holder == held_by_child
        assert not mine.held

        child.kill()  # SIGKILL: no cleanup in the child; the kernel drops its lock
        child.wait(timeout=10)
        assert not mine.taken_by_sibling
        assert path.read_text() == held_by_child + '\n'  # the stale text stays; it is only for people
        mine.claim('my training')
        assert mine.held
        assert path.read_text() == holder_text(os.getpid(), 'my training') + '\n'
        mine.release()
        assert not mine.held
        assert path.read_text() == ''
    finally:
        child.kill()
        child.wait(timeout=10)


def test_a_forked_child_does_not_keep_the_slot(tmp_path: Path) -> None:
    path = tmp_path / 'gpu0.lock'
    slot = FileTrainingSlot(path)
    slot.claim('the parent training')
    report_r, report_w = os.pipe()
    release_r, release_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what it holds, then live on until the parent lets it go
        code = 1
        try:
            os.close(report_r)
            os.close(release_w)
            os.write(report_w, b'held' if slot.held else b'free')
            os.read(release_r, 1)
            code = 0
        finally:
            os._exit(code)
    os.close(report_w)
    os.close(release_r)
    try:
        assert os.read(report_r, 4) == b'free'
        other = FileTrainingSlot(path)
        assert other.taken_by_sibling  # closing the inherited descriptor in the child left the parent's lock alone
        slot.release()
        other.claim('a sibling training')  # the child, still alive, holds nothing
        other.release()
    finally:
        os.close(release_w)  # the child reads EOF and ends
        os.close(report_r)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_wait_for_claims_once_the_holder_releases_and_gives_up_when_stopped(tmp_path: Path) -> None:
    path = tmp_path / 'gpu0.lock'
    first, second = FileTrainingSlot(path), FileTrainingSlot(path)  # two descriptors: siblings even in one process
    first.claim('first training')
    results: list[bool] = []

    def waiting(stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(
            target=lambda: results.append(second.wait_for('second training', stop, poll=0.02)),
            name='test-slot-waiter',
        )
        thread.start()
        return thread

    stop = threading.Event()
    thread = waiting(stop)
    thread.join(0.2)
    assert thread.is_alive() and not second.held
    stop.set()
    thread.join(5)
    assert not thread.is_alive()
    assert results == [False]

    thread = waiting(threading.Event())
    first.release()
    thread.join(5)
    assert not thread.is_alive()
    assert results == [False, True]
    assert second.held
    assert first.taken_by_sibling
    assert not second.taken_by_sibling  # the slot's own claim is no sibling
    second.release()


class ProbedSlot(FileTrainingSlot):
    """A slot whose first look for a holder happens just as a sibling's probe (a shared lock) ends."""

    def __init__(self, path: Path, probe_fd: int) -> None:
        super().__init__(path)
        self.probe_fd = probe_fd
        self.acquires = 0

    def _acquire(self, holder: str) -> bool:
        self.acquires += 1
        return super()._acquire(holder)

    def _sibling_holder(self) -> str | None:
        fcntl.flock(self.probe_fd, fcntl.LOCK_UN)
        return super()._sibling_holder()


def test_a_claim_lost_to_a_siblings_probe_is_tried_again(tmp_path: Path) -> None:
    path = tmp_path / 'gpu0.lock'
    path.touch()
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # what a sibling's status probe holds for an instant
        slot = ProbedSlot(path, fd)
        slot.claim('my training')
        assert slot.held
        assert slot.acquires == 2
        slot.release()
    finally:
        os.close(fd)


def test_a_claim_that_keeps_losing_without_a_holder_gives_up_after_three_attempts(tmp_path: Path) -> None:
    path = tmp_path / 'gpu0.lock'
    path.touch()
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # shared: a probe of ours sees no holder
        acquires = 0

        class Counted(FileTrainingSlot):
            def _acquire(self, holder: str) -> bool:
                nonlocal acquires
                acquires += 1
                return super()._acquire(holder)

        with pytest.raises(TrainingSlotTaken, match='held by unknown'):
            Counted(path).claim('my training')
        assert acquires == CLAIM_ATTEMPTS == 3
    finally:
        os.close(fd)


def test_the_setting_chooses_the_slot_and_a_missing_folder_stops_the_node_at_construction(tmp_path: Path) -> None:
    assert isinstance(training_slot_from_settings(Settings(data_folder=tmp_path)), AlwaysFreeSlot)
    slot = training_slot_from_settings(Settings(data_folder=tmp_path, training_slot_lock=str(tmp_path / 'gpu.lock')))
    assert isinstance(slot, FileTrainingSlot)
    assert slot.path == tmp_path / 'gpu.lock'
    assert not slot.path.exists()  # created at the first claim

    missing = tmp_path / 'not-mounted' / 'gpu.lock'
    settings = Settings.from_env({'TRAINING_SLOT_LOCK': str(missing), 'DATA_FOLDER': str(tmp_path)})
    with pytest.raises(ConfigError, match=r'TRAINING_SLOT_LOCK: .*not-mounted does not exist'):
        TrainerNode('t', ScriptedLogic(), settings=settings)
    with pytest.raises(ConfigError, match='is a folder'):
        training_slot_from_settings(Settings(data_folder=tmp_path, training_slot_lock=str(tmp_path)))
    with pytest.raises(TypeError, match='training_slot must be a TrainingSlot'):
        TrainerNode('t', ScriptedLogic(), settings=Settings(data_folder=tmp_path), training_slot=object())  # type: ignore[arg-type]


def test_a_failure_after_the_claim_gives_the_slot_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / 'gpu0.lock'
    machine = TrainingMachine(
        ScriptedLogic(),
        data_folder=tmp_path / 'data',
        node_uuid=str(uuid.uuid4()),
        node_name='t',
        make_exchange=lambda organization, project: pytest.fail('no exchange is needed'),
        send_metrics=lambda training, state: True,
        slot=FileTrainingSlot(path),
    )

    def no_space(*args: object, **kwargs: object) -> Training:
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(Training, 'create', no_space)
    details = TrainingDetails([], 1, '', {})
    with pytest.raises(OSError, match='No space left'):
        machine.begin(ORGANIZATION, PROJECT, details)
    assert not machine.slot.held
    assert not machine.active
    sibling = FileTrainingSlot(path)
    sibling.claim('a sibling training')
    with pytest.raises(TrainingSlotTaken):  # a refusal by the slot changes nothing either
        machine.begin(ORGANIZATION, PROJECT, details)
    assert not machine.active
    assert not (tmp_path / 'data' / ORGANIZATION).exists()
    sibling.release()


# ---------------------------------------------------------------------- trainer nodes sharing a slot


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob('*'))


def loop_state(loop: LocalLoop, node: TrainerNode) -> str | None:
    reported = loop.store.node(node.uuid) or {}
    return reported.get('status', {}).get('state')


def test_a_second_trainer_on_the_same_slot_refuses_and_is_blocked_until_the_first_is_done(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode], tmp_path: Path
) -> None:
    lock = str(tmp_path / 'gpu0.lock')
    first_logic, second_logic = ScriptedLogic(forever=True), ScriptedLogic(forever=True)
    first = make_trainer(local_loop, first_logic, name='first trainer', settings={'training_slot_lock': lock})
    second_data = tmp_path / 'second'
    second = make_trainer(
        local_loop,
        second_logic,
        name='second trainer',
        settings={'training_slot_lock': lock, 'data_folder': second_data},
    )
    assert first.status().state == second.status().state == 'idle'

    number = begin(local_loop, first)['training_number']
    wait_for(first_logic.training.is_set, what='the first training to run')
    assert wait_state(second, 'blocked') == 'blocked'
    wait_for(lambda: loop_state(local_loop, second) == 'blocked', what='the Loop to see the second trainer blocked')
    assert first.status().state == 'running'

    old = second_data / ORGANIZATION / PROJECT / 'trainings' / 'old-training' / 'weights.bin'
    old.parent.mkdir(parents=True)
    old.write_bytes(b'an earlier training')
    on_disk = files_under(second_data)
    result = local_loop.begin_training(node=second.uuid)
    holder = holder_text(os.getpid(), f'node {first.uuid}, training #{number} of {ORGANIZATION}/{PROJECT}')
    assert result['ack'] == {
        'success': False,
        'error_msg': f'the training slot is held by {holder}',
        'payload': 'refused',
    }
    assert not result['accepted']
    assert files_under(second_data) == on_disk  # nothing was set up, no old training deleted
    assert not second.machine.active
    assert second_logic.calls == []
    assert second.status().state == 'blocked'

    assert first.stop_training()
    wait_idle(first)
    assert stored_uploads(local_loop, number) == {f: 1 for f in FORMATS}
    wait_state(second, 'idle')

    second_number = begin(local_loop, second)['training_number']
    wait_for(second_logic.training.is_set, what='the second training to run')
    assert wait_state(first, 'blocked') == 'blocked'
    assert not old.parent.exists()  # discarded once the slot was won
    assert second.stop_training()
    wait_idle(second)
    assert stored_uploads(local_loop, second_number) == {f: 1 for f in FORMATS}
    assert first.status().state == second.status().state == 'idle'


def checkpoint_training(loop: LocalLoop, node_uuid: str, data_folder: Path) -> Training:
    """A checkpointed training of ``node_uuid`` at its first state, as a crashed node leaves it."""
    categories = [Category.from_dict(c) for c in loop.store.categories(ORGANIZATION, PROJECT)]
    details = TrainingDetails(categories, loop.store.next_training_number(ORGANIZATION, PROJECT), '', {})
    training = Training.create(data_folder, ORGANIZATION, PROJECT, details)
    Checkpoint(data_folder, node_uuid).save(training)
    return training


def test_a_resumed_training_waits_for_the_slot_and_a_node_stop_never_waits_for_it(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode], tmp_path: Path
) -> None:
    lock = tmp_path / 'gpu0.lock'
    sibling = FileTrainingSlot(lock)
    sibling.claim('a sibling training')
    node_uuid = str(uuid.uuid4())
    training = checkpoint_training(local_loop, node_uuid, local_loop.settings().data_folder)
    settings = {'training_slot_lock': str(lock)}

    waiting = ScriptedLogic(epochs=1)
    node = make_trainer(local_loop, waiting, uuid=node_uuid, settings=settings)
    assert node.status().state == 'waiting_for_slot'
    assert node.status().context is not None
    wait_for(lambda: loop_state(local_loop, node) == 'waiting_for_slot', what='the Loop to see the waiting trainer')
    assert [state for state, _ in node.machine.state_history()] == ['initialized']
    assert waiting.calls == []
    started = time.monotonic()
    assert node.stop()
    assert time.monotonic() - started < 3
    assert node.machine.checkpoint.exists()  # kept for the next start

    logic = ScriptedLogic(epochs=1)
    again = make_trainer(local_loop, logic, uuid=node_uuid, settings=settings)
    assert again.status().state == 'waiting_for_slot'
    sibling.release()
    wait_idle(again)
    assert logic.count('train') == 1
    assert stored_uploads(local_loop, training.training_number) == {f: 1 for f in FORMATS}
    assert not again.machine.slot.held
    assert again.status().state == 'idle'


def test_a_training_waiting_for_the_slot_can_be_aborted_and_the_node_is_then_blocked(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode], tmp_path: Path
) -> None:
    lock = tmp_path / 'gpu0.lock'
    sibling = FileTrainingSlot(lock)
    sibling.claim('a sibling training')
    node_uuid = str(uuid.uuid4())
    checkpoint_training(local_loop, node_uuid, local_loop.settings().data_folder)
    logic = ScriptedLogic(epochs=1)
    node = make_trainer(local_loop, logic, uuid=node_uuid, settings={'training_slot_lock': str(lock)})
    assert node.status().state == 'waiting_for_slot'
    assert node.abort_training()
    wait_idle(node)
    assert logic.calls == ['abort', 'clear_training_data']
    assert not node.machine.checkpoint.exists()
    assert node.status().state == TrainerState.BLOCKED.value
    assert sibling.held
    sibling.release()
    assert node.status().state == 'idle'


def test_a_node_stop_during_a_training_gives_the_slot_back(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode], tmp_path: Path
) -> None:
    lock = tmp_path / 'gpu0.lock'
    logic = ScriptedLogic(forever=True)
    node = make_trainer(local_loop, logic, settings={'training_slot_lock': str(lock)})
    begin(local_loop, node)
    wait_for(logic.training.is_set, what='the training to run')
    sibling = FileTrainingSlot(lock)
    assert sibling.taken_by_sibling
    assert node.stop()
    assert node.machine.checkpoint.exists()
    sibling.claim('a sibling training')  # the stopped node's process lives on without the slot
    sibling.release()


def test_the_idle_timeout_counts_blocked_as_idle(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode], tmp_path: Path
) -> None:
    lock = tmp_path / 'gpu0.lock'
    sibling = FileTrainingSlot(lock)
    sibling.claim('a sibling training')
    try:
        node = make_trainer(local_loop, settings={'training_slot_lock': str(lock), 'trainer_idle_timeout_sec': 0.3})
        assert node.status().state == 'blocked'
        wait_for(lambda: node.exit_code == 0, what='the idle timeout while blocked')
    finally:
        sibling.release()
