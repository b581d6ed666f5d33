"""SubprocessTrainerLogic.train() with real subprocesses and a small fake run: every outcome (success, stop, abort,
an error in the log, a non-zero exit, a command that cannot start), the choice of command, fresh logs per attempt,
and the polling of get_new_best / progress. The end-to-end test with the real TrainerNode is in
test_mock_trainer.py."""

from __future__ import annotations

import importlib.util
import re
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from llnode.trainer.logic import BestState, CriticalError, TrainingInterrupted
from llnode.trainer.subprocess_logic import Command, SubprocessTrainerLogic, TrainingProcessError
from tests.polling import wait_for
from tests.trainer.fake_run import FakeRun

PY = sys.executable
FOREVER = [PY, '-c', 'import time\nprint("training", flush=True)\nwhile True: time.sleep(0.05)']


class ScriptedLogic(SubprocessTrainerLogic):
    """Runs the given commands; counts its metric polls."""

    sync_interval = 0.1
    stop_grace = 2.0
    abort_grace = 0.5

    def __init__(self, command: Command = FOREVER, *, resume: bool = False) -> None:
        super().__init__('mocked')
        self.command = command
        self.resume = resume
        self.polls = 0

    def start_command(self, run: Any) -> Command:
        return self.command

    def can_resume(self, run: Any) -> bool:
        return self.resume

    def resume_command(self, run: Any) -> Command:
        return [PY, '-c', 'print("resumed")']

    def base_model_command(self, run: Any) -> Command:
        return [PY, '-c', 'print("from base model")']

    def get_new_best(self, run: Any) -> BestState | None:
        self.polls += 1
        return BestState(confusion_matrix={'c1': {'tp': self.polls, 'fp': 0, 'fn': 0}}, epoch=self.polls)

    def progress(self, run: Any) -> float | None:
        return min(1.0, self.polls / 10)


class Training:
    """train(run) in a thread of its own, as the core's worker would call it."""

    def __init__(self, logic: SubprocessTrainerLogic, run: FakeRun) -> None:
        self.logic, self.run = logic, run
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._train, name='test-training', daemon=True)
        self.thread.start()

    def _train(self) -> None:
        try:
            self.logic.train(self.run)
        except BaseException as e:
            self.error = e

    def join(self, timeout: float = 10) -> BaseException | None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), 'train() did not return'
        return self.error

    def wait_until_running(self) -> int:
        wait_for(self.logic.process_running, what='the training process to start')
        wait_for(lambda: 'training' in self.logic.executor.log_text(), what='the process to write')  # type: ignore[union-attr]
        pid = self.logic.executor.pid  # type: ignore[union-attr]
        assert pid is not None
        return pid


@pytest.fixture
def run(tmp_path: Path) -> FakeRun:
    folder = tmp_path / 'trainings' / 't1'
    folder.mkdir(parents=True)
    return FakeRun(folder, model_variant='small')


def reaped(pid: int) -> bool:
    return not Path(f'/proc/{pid}').exists()


def ended(pid: int) -> bool:
    """Gone, or a zombie of an orphan that pid 1 has not reaped (not ours to reap)."""
    try:
        text = Path(f'/proc/{pid}/stat').read_text()
    except FileNotFoundError:
        return True
    return text[text.rfind(')') + 2] in 'ZX'


def test_a_process_that_exits_0_is_a_finished_training(run: FakeRun) -> None:
    logic = ScriptedLogic([PY, '-c', 'print("epoch 1 done")'])
    logic.train(run)
    assert logic.executor is not None and logic.executor.log_text() == 'epoch 1 done\n'
    assert run.reported[-1].epoch == logic.polls >= 1  # the final poll after the end reached the run
    assert run.progress and not logic.process_running()


def test_stop_returns_normally_although_the_exit_code_is_not_0(run: FakeRun) -> None:
    logic = ScriptedLogic()
    training = Training(logic, run)
    pid = training.wait_until_running()
    run.stop_event.set()
    started = time.monotonic()
    logic.stop(run)
    assert time.monotonic() - started < 0.2  # the hook only signals; the training thread waits
    assert training.join() is None
    assert logic.executor is not None and logic.executor.returncode == -15
    assert reaped(pid)


def test_stop_or_abort_before_the_process_started_aborts(run: FakeRun) -> None:
    run.stop_event.set()
    logic = ScriptedLogic()
    logic.stop(run)  # nothing runs yet: nothing to signal
    with pytest.raises(TrainingInterrupted) as info:
        logic.train(run)
    assert info.value.aborted
    assert not (run.training_folder / 'logs').exists()  # never started


def test_abort_raises_and_ends_the_process_after_the_short_grace(run: FakeRun) -> None:
    ignores_term = [PY, '-c', 'import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n'
                    'print("training", flush=True)\nwhile True: time.sleep(0.05)']  # fmt: skip
    logic = ScriptedLogic(ignores_term)
    training = Training(logic, run)
    pid = training.wait_until_running()
    started = time.monotonic()  # before abort(): its SIGTERM starts the grace period
    run.abort_event.set()
    logic.abort(run)
    error = training.join()
    assert isinstance(error, TrainingInterrupted) and error.aborted
    assert logic.abort_grace <= time.monotonic() - started < logic.stop_grace  # SIGKILL after abort_grace
    assert logic.executor is not None and logic.executor.returncode == -9
    assert reaped(pid)


def test_an_error_in_the_log_is_a_retryable_error_naming_it(run: FakeRun) -> None:
    logic = ScriptedLogic(
        [PY, '-c', 'import sys\nprint("RuntimeError: CUDA out of memory. Tried to allocate")\nsys.exit(1)']
    )
    with pytest.raises(TrainingProcessError, match='training process failed: graphics card is out of memory'):
        logic.train(run)


def test_an_error_in_the_log_of_a_running_process_ends_it(run: FakeRun) -> None:
    logic = ScriptedLogic(
        [PY, '-c', 'import time\nprint("training", flush=True)\ntime.sleep(0.3)\n'
         'print("CUDA error: invalid device ordinal", flush=True)\nwhile True: time.sleep(0.05)']
    )  # fmt: skip
    training = Training(logic, run)
    pid = training.wait_until_running()
    error = training.join(timeout=10)
    assert isinstance(error, TrainingProcessError) and str(error) == 'training process failed: graphics card not found'
    assert reaped(pid)


def test_a_non_zero_exit_without_a_stop_is_retryable_with_the_last_lines(run: FakeRun) -> None:
    logic = ScriptedLogic([PY, '-c', 'import sys\nprint("loading data")\nprint("KeyError: width")\nsys.exit(3)'])
    with pytest.raises(
        TrainingProcessError, match=re.escape('exited with code 3: loading data | KeyError: width')
    ) as info:
        logic.train(run)
    assert info.value.tail == ['loading data', 'KeyError: width']
    assert not isinstance(info.value, CriticalError)


def test_the_error_of_an_earlier_attempt_is_not_found_again(run: FakeRun) -> None:
    logic = ScriptedLogic([PY, '-c', 'import sys\nprint("CUDA out of memory")\nsys.exit(1)'])
    with pytest.raises(TrainingProcessError):
        logic.train(run)
    logic.command = [PY, '-c', 'print("smaller batch, fine")']
    logic.train(run)  # the retry reads only its own log
    logs = sorted(p.name for p in (run.training_folder / 'logs').glob('run-*.log'))
    assert logs == ['run-0001.log', 'run-0002.log']
    assert (run.training_folder / 'last_training.log').read_text() == 'smaller batch, fine\n'


def test_a_subclass_adds_log_errors_and_keeps_the_defaults(run: FakeRun) -> None:
    class MyLogic(ScriptedLogic):
        def error_from_log(self, run: Any, tail: list[str]) -> str | None:
            if any('NaN loss' in line for line in tail):
                return 'the loss diverged'
            return super().error_from_log(run, tail)

    logic = MyLogic([PY, '-c', 'print("epoch 3: NaN loss")'])
    with pytest.raises(TrainingProcessError, match='the loss diverged'):
        logic.train(run)
    assert logic.error_from_log(run, ['CUDA out of memory']) == 'graphics card is out of memory'


@pytest.mark.parametrize(
    ('resume', 'base', 'expected'),
    [(True, True, 'resumed'), (False, True, 'from base model'), (False, False, 'from scratch')],
)
def test_the_command_is_chosen_like_the_reference(run: FakeRun, resume: bool, base: bool, expected: str) -> None:
    if base:
        run.base_folder = run.training_folder
        run.base_model_uuid = '12345678-1234-4234-8234-123456789abc'
    logic = ScriptedLogic([PY, '-c', 'print("from scratch")'], resume=resume)
    logic.train(run)
    assert logic.executor is not None and logic.executor.log_text() == f'{expected}\n'


def test_new_best_states_and_progress_reach_the_run_while_it_trains(run: FakeRun) -> None:
    logic = ScriptedLogic()
    training = Training(logic, run)
    training.wait_until_running()
    # each poll reports the best state, then the progress: wait for both of the third poll
    wait_for(lambda: len(run.reported) >= 3 and len(run.progress) >= 3, what='three polls while training')
    assert [s.epoch for s in run.reported] == list(range(1, len(run.reported) + 1))
    assert run.progress[:3] == [0.1, 0.2, 0.3]
    run.stop_event.set()
    logic.stop(run)
    assert training.join() is None


def test_a_failing_metrics_hook_does_not_end_the_training(run: FakeRun, caplog: pytest.LogCaptureFixture) -> None:
    class Flaky(ScriptedLogic):
        def get_new_best(self, run: Any) -> BestState | None:
            self.polls += 1
            raise ValueError('no metrics file yet')

    logic = Flaky()
    training = Training(logic, run)
    training.wait_until_running()
    wait_for(lambda: logic.polls >= 2, what='two polls')
    assert logic.process_running()
    assert 'no metrics file yet' in caplog.text
    run.stop_event.set()
    logic.stop(run)
    assert training.join() is None


def test_the_backdoor_kill_counts_as_finished(run: FakeRun) -> None:
    logic = ScriptedLogic()
    training = Training(logic, run)
    pid = training.wait_until_running()
    logic.kill_process()
    assert not logic.process_running()
    assert training.join() is None
    assert reaped(pid)
    logic.kill_process()  # nothing runs: a no-op


def test_a_command_that_cannot_start_is_critical(run: FakeRun) -> None:
    logic = ScriptedLogic('no-such-trainer-binary --epochs 3')
    with pytest.raises(CriticalError, match="cannot start the training: cannot start 'no-such-trainer-binary'"):
        logic.train(run)


def test_an_exception_in_a_user_hook_leaves_no_process(run: FakeRun) -> None:
    class Broken(ScriptedLogic):
        def progress(self, run: Any) -> float | None:
            raise KeyboardInterrupt  # not an Exception: escapes the poll, as an interrupt of the thread would

    logic = Broken()
    training = Training(logic, run)
    pid = training.wait_until_running()
    error = training.join()
    assert isinstance(error, KeyboardInterrupt)
    assert reaped(pid)


def test_a_missing_start_command_is_a_clear_error(run: FakeRun) -> None:
    with pytest.raises(NotImplementedError, match='must implement start_command'):
        SubprocessTrainerLogic('mocked').train(run)


TORCHRUN_WORKER = """
import os, time
import torch.distributed as dist
dist.init_process_group('gloo')
os.write(1, f'pid {os.getpid()} rank {dist.get_rank()}\\n'.encode())  # one write: workers share the log
while True:
    time.sleep(0.05)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_a_torchrun_launch_is_stopped_with_all_its_workers(run: FakeRun) -> None:
    if importlib.util.find_spec('torch') is None:
        pytest.skip('torch is not installed')
    (run.training_folder / 'worker.py').write_text(TORCHRUN_WORKER)
    command = [PY, '-m', 'torch.distributed.run', '--nnodes', '1', '--nproc_per_node', '2',
               '--master_addr', '127.0.0.1', '--master_port', str(free_port()), 'worker.py']  # fmt: skip
    logic = ScriptedLogic(command)
    logic.environment = lambda run: {'OMP_NUM_THREADS': '1', 'GLOO_SOCKET_IFNAME': 'lo'}  # type: ignore[method-assign]
    training = Training(logic, run)

    def workers() -> list[int]:
        assert logic.executor is not None
        pids = [int(line.split()[1]) for line in logic.executor.log_tail(200) if line.startswith('pid ')]
        return pids if len(pids) == 2 else []

    pids = wait_for(workers, timeout=60, what='both torchrun workers to join the process group')
    run.stop_event.set()
    logic.stop(run)
    assert training.join(timeout=30) is None
    for pid in pids:
        wait_for(lambda pid=pid: ended(pid), timeout=10, what=f'worker {pid} to end')  # type: ignore[misc]
