"""The executor with real subprocesses: a fresh log per run, group and tree kill, SIGKILL after the grace period,
stops from other threads, no leaked descriptors, no zombies, and leftovers of a crashed node ended."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llnode.trainer.executor import Executor, ExecutorError
from tests.polling import wait_for

PY = sys.executable


def state_of(pid: int) -> str | None:
    """The process's state letter from /proc (None once it is gone)."""
    try:
        text = Path(f'/proc/{pid}/stat').read_text()
    except FileNotFoundError:
        return None
    return text[text.rfind(')') + 2]


def gone(pid: int) -> bool:
    """Ended: no process, or a zombie waiting for a reaper that is not ours (an orphan's, reparented to pid 1)."""
    return state_of(pid) in (None, 'Z', 'X')


def pids_in_log(executor: Executor, count: int) -> list[int]:
    """Wait for ``count`` lines ``pid N`` in the log and return the pids."""

    def found() -> list[int]:
        pids = [int(line.split()[1]) for line in executor.log_tail(100) if line.startswith('pid ')]
        return pids if len(pids) >= count else []

    return wait_for(found, timeout=10, what=f'{count} pids in the log')


@pytest.fixture
def executor(tmp_path: Path) -> Iterator[Executor]:
    executor = Executor(tmp_path / 'training')
    yield executor
    executor.stop(grace=0)


def test_each_run_gets_a_fresh_log_and_last_training_log_points_at_it(executor: Executor) -> None:
    executor.start([PY, '-c', 'print("first run: CUDA out of memory")'])
    assert executor.wait(10) == 0
    first = executor.log_path
    executor.start([PY, '-c', 'print("second run")'])
    assert executor.wait(10) == 0
    second = executor.log_path
    assert first is not None and second is not None
    assert (first.name, second.name) == ('run-0001.log', 'run-0002.log')
    assert first.read_text() == 'first run: CUDA out of memory\n'
    assert executor.log_text() == 'second run\n'
    assert executor.log_tail() == ['second run']
    last = executor.folder / 'last_training.log'
    assert last.is_symlink() and last.resolve() == second.resolve()
    assert last.read_text() == 'second run\n'


def test_old_logs_are_pruned_to_keep_logs(tmp_path: Path) -> None:
    executor = Executor(tmp_path, keep_logs=2)
    for n in range(4):
        executor.start([PY, '-c', f'print({n})'])
        assert executor.wait(10) == 0
    assert sorted(p.name for p in executor.logs_folder.glob('run-*.log')) == ['run-0003.log', 'run-0004.log']
    assert executor.log_text() == '3\n'


def test_stop_ends_grandchildren_of_the_group(executor: Executor) -> None:
    executor.start(['bash', '-c', 'sleep 100 & echo "pid $!"; wait'])
    [grandchild] = pids_in_log(executor, 1)
    assert not gone(grandchild)
    started = time.monotonic()
    code = executor.stop(grace=5)
    assert time.monotonic() - started < 3  # bash and sleep die on SIGTERM, no need to wait for the grace period
    assert code is not None and code != 0
    wait_for(lambda: gone(grandchild), timeout=5, what='the grandchild to end')
    assert not executor.is_running()


def test_stop_ends_descendants_in_sessions_of_their_own(executor: Executor) -> None:
    """Like torchrun's workers: started in a new session, so a group kill alone would miss them."""
    script = (
        'import subprocess, sys, time\n'
        'workers = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(100)"], start_new_session=True)'
        ' for _ in range(2)]\n'
        'for w in workers: print("pid", w.pid, flush=True)\n'
        'time.sleep(100)\n'
    )
    executor.start([PY, '-c', script])
    workers = pids_in_log(executor, 2)
    assert all(os.getpgid(pid) == pid for pid in workers)  # each leads a group of its own
    executor.stop(grace=5)
    for pid in workers:
        wait_for(lambda pid=pid: gone(pid), timeout=5, what=f'worker {pid} to end')  # type: ignore[misc]


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace_period(executor: Executor) -> None:
    executor.start(
        [PY, '-c', 'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print("ready", flush=True);'
         ' time.sleep(100)']
    )  # fmt: skip
    wait_for(lambda: executor.log_tail() == ['ready'], what='the SIGTERM handler to be set')
    started = time.monotonic()
    code = executor.stop(grace=0.3)
    elapsed = time.monotonic() - started
    assert code == -9
    assert 0.3 <= elapsed < 3
    assert not executor.is_running()


def test_stop_from_another_thread_while_one_waits(executor: Executor) -> None:
    executor.start(['bash', '-c', 'trap "" TERM; echo ready; while true; do sleep 0.05; done'])
    # a SIGTERM before bash ran the trap would end it (-15), not test the SIGKILL after the grace period
    wait_for(lambda: executor.log_tail() == ['ready'], what='the SIGTERM trap to be set')
    results: dict[str, int | None] = {}

    def waiter() -> None:
        results['wait'] = executor.wait(20)

    def stopper(name: str) -> None:
        results[name] = executor.stop(grace=0.2)

    threads = [threading.Thread(target=waiter, name='waiter')]
    threads += [threading.Thread(target=stopper, args=(f'stop-{n}',), name=f'stopper-{n}') for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive()
    assert results == {'wait': -9, 'stop-0': -9, 'stop-1': -9}


def test_an_interrupted_stop_still_kills_and_reaps(executor: Executor) -> None:
    """An exception in the stopping thread (here: a signal handler raising in the main thread) mid-grace."""
    executor.start(
        [PY, '-c', 'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print("ready", flush=True);'
         ' time.sleep(100)']
    )  # fmt: skip
    wait_for(lambda: executor.log_tail() == ['ready'], what='the SIGTERM handler to be set')
    pid = executor.pid
    assert pid is not None

    def interrupt(signum: int, frame: object) -> None:
        raise RuntimeError('interrupted')

    previous = signal.signal(signal.SIGUSR1, interrupt)
    timer = threading.Timer(0.2, signal.pthread_kill, (threading.main_thread().ident, signal.SIGUSR1))
    try:
        timer.start()
        started = time.monotonic()
        with pytest.raises(RuntimeError, match='interrupted'):
            executor.stop(grace=30)
        assert time.monotonic() - started < 5
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR1, previous)
    assert executor.returncode == -9
    assert not Path(f'/proc/{pid}').exists()


def test_terminate_does_not_wait_and_stop_waits_only_for_the_rest_of_the_grace(executor: Executor) -> None:
    executor.start(
        [PY, '-c', 'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print("ready", flush=True);'
         ' time.sleep(100)']
    )  # fmt: skip
    wait_for(lambda: executor.log_tail() == ['ready'], what='the SIGTERM handler to be set')
    started = time.monotonic()
    executor.terminate()
    assert time.monotonic() - started < 0.5
    assert executor.is_running()
    wait_for(lambda: time.monotonic() - started > 0.4, what='time to pass')
    assert executor.stop(grace=0.5) == -9
    assert time.monotonic() - started < 2


def test_kill_is_immediate(executor: Executor) -> None:
    executor.start(['bash', '-c', 'sleep 100 & echo "pid $!"; wait'])
    [grandchild] = pids_in_log(executor, 1)
    started = time.monotonic()
    assert executor.kill() == -9
    assert time.monotonic() - started < 2
    wait_for(lambda: gone(grandchild), timeout=5, what='the grandchild to end')


def test_children_are_reaped_and_no_descriptor_leaks(executor: Executor) -> None:
    fds_before = len(os.listdir('/proc/self/fd'))
    pids: list[int] = []
    for n in range(4):
        executor.start([PY, '-c', 'import time; time.sleep(100)'] if n % 2 else [PY, '-c', 'pass'])
        pid = executor.pid
        assert pid is not None
        pids.append(pid)
        if n % 2:
            executor.stop(grace=2)
        else:
            assert executor.wait(10) == 0
    executor.stop(grace=0)
    assert len(os.listdir('/proc/self/fd')) == fds_before
    for pid in pids:
        assert state_of(pid) is None, f'pid {pid} was not reaped'  # not even a zombie


def test_stop_cleans_up_what_a_finished_run_left_behind(executor: Executor) -> None:
    executor.start(['bash', '-c', 'sleep 100 & echo "pid $!"'])  # bash exits at once, its sleep stays
    [grandchild] = pids_in_log(executor, 1)
    assert executor.wait(10) == 0
    assert not gone(grandchild)
    assert executor.stop(grace=2) == 0
    wait_for(lambda: gone(grandchild), timeout=5, what='the leftover sleep to end')


def test_a_new_executor_kills_the_group_a_crashed_node_left_running(tmp_path: Path) -> None:
    crashed = Executor(tmp_path)  # its owner "crashes": nobody calls stop
    crashed.start(['bash', '-c', 'sleep 100 & echo "pid $!"; wait'])
    [grandchild] = pids_in_log(crashed, 1)
    leader = crashed.pid
    assert leader is not None
    restarted = Executor(tmp_path)
    try:
        restarted.start([PY, '-c', 'print("new run")'])
        wait_for(lambda: crashed.returncode == -9, timeout=5, what='the old leader to be killed')
        wait_for(lambda: gone(grandchild), timeout=5, what='the old grandchild to be killed')
        assert restarted.wait(10) == 0
        assert restarted.log_text() == 'new run\n'
    finally:
        restarted.stop(grace=0)
        crashed.stop(grace=0)


def test_a_new_executor_kills_what_the_crashed_node_left_after_its_leader_ended(tmp_path: Path) -> None:
    crashed = Executor(tmp_path)
    crashed.start(['bash', '-c', 'sleep 100 & echo "pid $!"'])  # bash ends at once; its sleep stays in the group
    [grandchild] = pids_in_log(crashed, 1)
    assert crashed.wait(10) == 0
    restarted = Executor(tmp_path)
    try:
        assert restarted.kill_leftovers() == [grandchild]
        wait_for(lambda: gone(grandchild), timeout=5, what='the leftover sleep to be killed')
    finally:
        crashed.stop(grace=0)


def test_a_stale_record_never_kills_a_stranger(tmp_path: Path) -> None:
    logs = tmp_path / 'logs'
    logs.mkdir()
    # our own pid with a wrong start time: it must not be touched
    (logs / 'process.json').write_text(f'{{"pid": {os.getpid()}, "start_time": 1, "argv": ["x"]}}')
    executor = Executor(tmp_path)
    assert executor.kill_leftovers() == []
    assert not (logs / 'process.json').exists()
    (logs / 'process.json').write_text('{broken')
    assert executor.kill_leftovers() == []


def test_bad_commands_are_clear_errors(executor: Executor) -> None:
    with pytest.raises(ExecutorError, match='empty command'):
        executor.start('   ')
    with pytest.raises(ExecutorError, match="cannot start 'no-such-trainer-binary'"):
        executor.start('no-such-trainer-binary --epochs 3')
    assert 'cannot start' in executor.log_text()  # the reason is in that run's log too
    executor.start([PY, '-c', 'import time; time.sleep(100)'])
    with pytest.raises(ExecutorError, match='still running'):
        executor.start([PY, '-c', 'pass'])


def test_string_commands_are_split_like_a_shell_and_get_cwd_and_env(executor: Executor) -> None:
    executor.start(
        f"{PY} -c \"import os; print(os.getcwd()); print(os.environ['EXTRA'], os.environ['PATH'] != '')\"",
        env={'EXTRA': 'it works'},
    )
    assert executor.wait(10) == 0
    assert executor.log_tail() == [str(executor.folder), 'it works True']


def test_log_tail_reads_the_end_of_a_long_log(executor: Executor) -> None:
    executor.start([PY, '-c', 'import sys\nfor i in range(20000): print("line", i)\nsys.stdout.write("a\\rb\\n")'])
    assert executor.wait(10) == 0
    assert executor.log_tail(3) == ['line 19999', 'a', 'b']
    assert executor.log_tail(0) == []
    assert len(executor.log_text().splitlines()) == 20002


def test_before_any_start(tmp_path: Path) -> None:
    executor = Executor(tmp_path)
    assert (executor.is_running(), executor.returncode, executor.pid, executor.log_path) == (False, None, None, None)
    assert (executor.stop(), executor.kill(), executor.wait(0)) == (None, None, None)
    assert (executor.log_text(), executor.log_tail()) == ('', [])
    with pytest.raises(ValueError, match='keep_logs'):
        Executor(tmp_path, keep_logs=0)
