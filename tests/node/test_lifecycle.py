"""Node lifecycle: start/stop bounded and leak-free, run() and its exit codes, signals (in process and in a real
subprocess), warm and forced shutdown."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from llnode.config import Settings
from llnode.node import Node
from tests.node.conftest import new_threads_gone, wait_for

SCRIPT = Path(__file__).with_name('node_script.py')
REPO = Path(__file__).parents[2]


class CountingNode(Node):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.events: list[str] = []
        self.repeats = 0

    def on_start(self) -> None:
        self.events.append('start')

    def on_repeat(self) -> None:
        self.repeats += 1

    def on_stop(self) -> None:
        self.events.append(f'stop(repeat thread alive={self._repeat._thread.is_alive()})')


def test_start_returns_at_once_and_stop_leaves_no_thread(settings: Settings) -> None:
    before = set(threading.enumerate())
    node = CountingNode('lifecycle', settings=settings, repeat_interval=0.02)
    started = time.monotonic()
    assert node.start() is node
    assert time.monotonic() - started < 1.0
    assert node.running
    wait_for(lambda: node.repeats >= 3, what='three repeat cycles')
    new = [t for t in threading.enumerate() if t not in before]
    assert new and all(t.name.startswith('llnode-') for t in new), [t.name for t in new]
    stopping = time.monotonic()
    assert node.stop(timeout=5) is True
    assert time.monotonic() - stopping < 2.0
    assert not node.running
    assert node.events == ['start', 'stop(repeat thread alive=False)']
    new_threads_gone(before, timeout=0.5)
    assert node.stop() is True  # idempotent


def test_context_manager_starts_and_stops(settings: Settings) -> None:
    before = set(threading.enumerate())
    with CountingNode('ctx', settings=settings, repeat_interval=0.02) as node:
        assert node.running
        wait_for(lambda: node.repeats >= 1, what='a repeat cycle')
    assert not node.running
    assert node.events[-1].startswith('stop')
    new_threads_gone(before, timeout=0.5)


def test_a_node_starts_once(settings: Settings) -> None:
    node = Node('once', settings=settings)
    node.start()
    with pytest.raises(RuntimeError, match='starts once'):
        node.start()
    node.stop()
    with pytest.raises(RuntimeError, match='starts once'):
        node.start()
    never = Node('never started', settings=settings)
    assert never.stop() is True  # stopping a node that never ran is fine


def test_failing_on_start_aborts_the_start_cleanly(settings: Settings) -> None:
    class Broken(Node):
        def on_start(self) -> None:
            raise OSError('camera missing')

    before = set(threading.enumerate())
    node = Broken('broken', settings=settings)
    with pytest.raises(OSError, match='camera missing'):
        node.start()
    assert not node.running
    new_threads_gone(before, timeout=0.5)
    assert node.stop() is True


def test_failing_on_stop_is_logged_and_stop_still_completes(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    class BadStop(Node):
        def on_stop(self) -> None:
            raise RuntimeError('flush failed')

    node = BadStop('bad stop', settings=settings, repeat_interval=0.02).start()
    assert node.stop() is False
    assert not node.running
    assert 'on_stop() failed' in caplog.text and 'flush failed' in caplog.text


def test_run_in_main_thread_installs_and_restores_signal_handlers(settings: Settings) -> None:
    assert threading.current_thread() is threading.main_thread()
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    node = CountingNode('main run', settings=settings, repeat_interval=0.02)
    seen: dict[int, Any] = {}

    def stop_later() -> None:
        wait_for(lambda: node.repeats >= 1, what='the node to run')
        seen.update({s: signal.getsignal(s) for s in previous})
        node.stop()

    helper = threading.Thread(target=stop_later, name='test-stopper')
    helper.start()
    assert node.run() == 0
    helper.join(5)
    assert all(seen[s] is not previous[s] for s in previous), 'run() did not install its handlers'
    assert {s: signal.getsignal(s) for s in previous} == previous


def test_run_outside_main_thread_leaves_signals_alone_and_returns_the_restart_code(settings: Settings) -> None:
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    node = CountingNode('thread run', settings=settings, repeat_interval=0.02)
    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(node.run()), name='test-runner')
    runner.start()
    wait_for(lambda: node.repeats >= 1, what='the node to run')
    assert {s: signal.getsignal(s) for s in previous} == previous
    node.request_restart(3)
    node.request_restart(5)  # the first request wins
    runner.join(5)
    assert result == [3]
    assert node.exit_code == 3
    assert not node.running


def test_request_restart_refuses_bad_codes(settings: Settings) -> None:
    node = Node('codes', settings=settings)
    for bad in (-1, 256, True, 1.5):
        with pytest.raises(ValueError, match='exit_code'):
            node.request_restart(bad)  # type: ignore[arg-type]


class Script:
    """``node_script.py`` in a real subprocess; its stdout lines are collected by a reader thread."""

    def __init__(self, mode: str, data_folder: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), mode, str(data_folder)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, name='test-script-reader', daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip('\n'))

    def wait_line(self, text: str, timeout: float = 20.0) -> None:
        wait_for(lambda: any(text in line for line in self.lines) or self.proc.poll() is not None, timeout, text)
        assert any(text in line for line in self.lines), self.output

    def wait_exit(self, timeout: float = 20.0) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    @property
    def output(self) -> str:
        return '\n'.join(self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def script(tmp_path: Path) -> Any:
    started: list[Script] = []

    def start(mode: str) -> Script:
        s = Script(mode, tmp_path / f'data-{len(started)}')
        started.append(s)
        return s

    yield start
    for s in started:
        s.kill()


@pytest.mark.parametrize('mode', ['run', 'serve', 'gunicorn'])
@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_the_process_with_code_0(script: Any, mode: str, signum: int) -> None:
    proc = script(mode)
    proc.wait_line('READY')
    proc.proc.send_signal(signum)
    assert proc.wait_exit() == 0, proc.output
    assert 'warm shutdown' in proc.output
    assert 'STOPPING' in proc.output  # on_stop ran
    assert 'RESTORED True' in proc.output
    assert 'own handler called' not in proc.output


def test_stop_in_gunicorns_master_stops_the_worker_warmly(script: Any) -> None:
    proc = script('gunicorn-stop')
    assert proc.wait_exit() == 0, proc.output
    assert 'STOPPING' in proc.output and 'RESTORED True' in proc.output


@pytest.mark.parametrize('mode', ['restart', 'gunicorn-restart'])
def test_restart_request_ends_the_process_with_its_code(script: Any, mode: str) -> None:
    proc = script(mode)
    assert proc.wait_exit() == 3, proc.output
    assert 'restart requested (exit code 3)' in proc.output
    assert 'STOPPING' in proc.output and 'RESTORED True' in proc.output


@pytest.mark.parametrize('mode', ['slow-stop', 'gunicorn-slow-stop'])
def test_second_sigterm_forces_exit_with_code_1(script: Any, mode: str) -> None:
    proc = script(mode)
    proc.wait_line('READY')
    proc.proc.send_signal(signal.SIGTERM)
    proc.wait_line('STOPPING')  # warm shutdown now hangs in on_stop
    forced_at = time.monotonic()
    proc.proc.send_signal(signal.SIGINT)
    assert proc.wait_exit(timeout=10) == 1, proc.output
    assert time.monotonic() - forced_at < 5
    assert 'forcing shutdown' in proc.output
    assert 'RESTORED True' in proc.output
