"""Start-up errors are one line on stderr that says what is wrong and how to fix it, and exit code 2 (issue 13,
item 3): every ``llnode`` command, every sample, and ``Node.serve()``/``run()``. Real processes, real ports."""

from __future__ import annotations

import errno
import os
import re
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from llnode.config import Settings
from llnode.node.node import Node
from llnode.startup import bind_error, program_name
from tests.samples import REPO

#: a log record as the samples format them (``logging.basicConfig`` in each sample)
LOG_RECORD = re.compile(r'^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO) ')


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port another socket listens on."""
    with socket.socket() as taken:
        taken.bind(('127.0.0.1', 0))
        taken.listen()
        yield taken.getsockname()[1]


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Path:
    """An existing folder this process cannot write into (root writes anywhere, except into sysfs)."""
    if os.geteuid() != 0:
        folder = tmp_path / 'read-only'
        folder.mkdir(mode=0o500)
        return folder
    folder = Path('/sys/fs')
    try:
        handle, probe = tempfile.mkstemp(dir=folder)
    except OSError:
        return folder
    os.close(handle)
    os.unlink(probe)
    pytest.skip('no folder here is read-only for root')


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment without any Loop setting of the machine, with a writable data folder."""
    names = ('HOST', 'USERNAME', 'PASSWORD', 'ORGANIZATION', 'PROJECT')
    dropped = {*names, *(f'LOOP_{n}' for n in names), 'DATA_FOLDER', 'VERSION_CONTROL_DEFAULT', 'SYNC_CYCLES'}
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    return {**env, 'DATA_FOLDER': str(tmp_path / 'node-data'), **extra}


def run(command: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def llnode(*args: str) -> list[str]:
    return [sys.executable, '-m', 'llnode.cli', *args]


def sample(script: str, *args: str) -> list[str]:
    return [sys.executable, str(REPO / 'samples' / script), '--host', '127.0.0.1', *args]


def one_line(done: subprocess.CompletedProcess[str], *, log_records: bool = False) -> str:
    """The one line on stderr, after checking the exit code 2 and that there is no traceback. With
    ``log_records``, INFO records a sample logged before the error (its log level is INFO) are allowed."""
    assert done.returncode == 2, f'exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}'
    assert 'Traceback' not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    if log_records:
        lines = [line for line in lines if not LOG_RECORD.match(line)]
    assert len(lines) == 1, done.stderr
    return lines[0]


# ---------------------------------------------------------------------- llnode commands


def test_llnode_loop_names_the_port_in_use(busy_port: int, tmp_path: Path) -> None:
    done = run(llnode('loop', '--port', str(busy_port), '--data', 'loop-data'), clean_env(tmp_path), tmp_path)
    assert one_line(done) == (
        f'llnode loop: port {busy_port} on 127.0.0.1 is in use: stop the other process or pick another port with --port'
    )


def test_llnode_loop_blames_a_read_only_data_folder_not_the_port(read_only_folder: Path, tmp_path: Path) -> None:
    done = run(llnode('loop', '--port', '0', '--data', str(read_only_folder)), clean_env(tmp_path), tmp_path)
    line = one_line(done)
    assert line.startswith(f'llnode loop: --data={read_only_folder} is not writable')
    assert 'choose another folder with --data' in line and 'port' not in line


def test_llnode_loop_shows_the_traceback_at_debug_level_only(busy_port: int, tmp_path: Path) -> None:
    done = run(
        llnode('loop', '--port', str(busy_port), '--data', 'loop-data', '--log-level', 'DEBUG'),
        clean_env(tmp_path),
        tmp_path,
    )
    assert done.returncode == 2 and 'Traceback' in done.stderr
    assert done.stderr.splitlines()[-1].startswith(f'llnode loop: port {busy_port} on 127.0.0.1 is in use')


def test_llnode_demo_names_the_port_in_use_before_anything_starts(busy_port: int, tmp_path: Path) -> None:
    done = run(llnode('demo', '--port', str(busy_port)), clean_env(tmp_path), tmp_path)
    assert one_line(done).startswith(f'llnode demo: port {busy_port} on 127.0.0.1 is in use')
    assert done.stdout == ''


def test_llnode_demo_blames_a_read_only_data_folder(read_only_folder: Path, tmp_path: Path) -> None:
    done = run(llnode('demo', '--data', str(read_only_folder / 'demo')), clean_env(tmp_path), tmp_path)
    assert one_line(done).startswith(f'llnode demo: --data={read_only_folder / "demo"} cannot be created')


# ---------------------------------------------------------------------- samples


@pytest.mark.parametrize(
    ('env', 'expected'),
    [
        ({}, 'mock_detector.py: a detector needs LOOP_ORGANIZATION and LOOP_PROJECT: set them'),
        ({'SYNC_CYCLES': 'six'}, "mock_detector.py: SYNC_CYCLES='six' is not an integer: set a whole number"),
        (
            {'VERSION_CONTROL_DEFAULT': 'frozen'},
            "mock_detector.py: VERSION_CONTROL_DEFAULT='frozen' is not a version control mode: use one of pause, "
            'follow_loop',
        ),
        ({'DATA_FOLDER': '{read_only}/data'}, 'mock_detector.py: DATA_FOLDER={read_only}/data cannot be created'),
    ],
    ids=['no-project', 'bad-integer', 'bad-version-control', 'unwritable-data-folder'],
)
def test_a_sample_says_what_is_wrong_in_one_line(
    env: dict[str, str], expected: str, read_only_folder: Path, tmp_path: Path
) -> None:
    project = {} if not env else {'LOOP_ORGANIZATION': 'zauberzeug', 'LOOP_PROJECT': 'demo'}
    values = {k: v.format(read_only=read_only_folder) for k, v in {**project, **env}.items()}
    done = run(sample('mock_detector.py', '--port', '0'), clean_env(tmp_path, **values), tmp_path)
    assert one_line(done, log_records=True).startswith(expected.format(read_only=read_only_folder))


def test_a_sample_names_the_port_in_use(busy_port: int, tmp_path: Path) -> None:
    env = clean_env(tmp_path, LOOP_ORGANIZATION='zauberzeug', LOOP_PROJECT='demo', LOOP_HOST='127.0.0.1:1')
    done = run(sample('mock_detector.py', '--port', str(busy_port)), env, tmp_path)
    assert one_line(done, log_records=True) == (
        f'mock_detector.py: port {busy_port} on 127.0.0.1 is in use: stop the other process or pick another port '
        'with --port'
    )


def test_a_trainer_sample_names_a_missing_lock_folder(tmp_path: Path) -> None:
    env = clean_env(
        tmp_path,
        LOOP_ORGANIZATION='zauberzeug',
        LOOP_PROJECT='demo',
        LOOP_HOST='127.0.0.1:1',
        TRAINING_SLOT_LOCK='locks/gpu0.lock',
    )
    done = run(sample('mock_trainer.py', '--port', '0'), env, tmp_path)
    line = one_line(done, log_records=True)
    assert line.startswith('mock_trainer.py: TRAINING_SLOT_LOCK:') and str(tmp_path / 'locks') in line


# ---------------------------------------------------------------------- Node.serve() and run() in code


class LoopNode(Node):
    needs_loop_client = True


def test_serve_and_run_turn_a_start_up_error_into_one_line(
    busy_port: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / 'missing-ca.pem'
    settings = Settings(host='127.0.0.1:1', data_folder=tmp_path / 'node', ssl_cert_path=str(missing))
    node = LoopNode('no CA bundle', settings=settings)  # its Loop client is built in start()
    assert node.run() == 2
    assert capsys.readouterr().err.splitlines() == [
        f'{program_name()}: LOOP_SSL_CERT_PATH={missing} is not a readable file: point it at the CA bundle (PEM) '
        "that signed the Loop's certificate, or unset it"
    ]
    assert not node.running
    busy = Node('busy', settings=settings)
    assert busy.serve('127.0.0.1', busy_port) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and f'port {busy_port} on 127.0.0.1 is in use' in err
    assert not busy.running


@pytest.mark.parametrize(
    ('error', 'expected'),
    [
        (OSError(errno.EADDRINUSE, 'x'), 'port 8004 on 0.0.0.0 is in use: stop the other process or pick another'),
        (OSError(errno.EACCES, 'x'), 'port 8004 on 0.0.0.0 needs privileges: pick a port above 1023 with --port'),
        (OSError(errno.EADDRNOTAVAIL, 'x'), 'cannot listen on 0.0.0.0: not an address of this machine'),
        (socket.gaierror(socket.EAI_NONAME, 'x'), 'cannot listen on 0.0.0.0: not an address of this machine'),
        (OSError(errno.EINVAL, 'Invalid argument'), 'cannot listen on 0.0.0.0:8004: Invalid argument: pick another'),
    ],
)
def test_bind_errors_name_the_address_and_the_fix(error: OSError, expected: str) -> None:
    assert str(bind_error('0.0.0.0', 8004, error)).startswith(expected)


@pytest.mark.parametrize('server', ['waitress', 'werkzeug'])
def test_serve_on_a_host_that_does_not_resolve_is_one_line(
    server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = Node('unresolved', settings=Settings(data_folder=tmp_path / 'node'))
    assert node.serve('nonexistent.invalid', 0, server=server) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'cannot listen on nonexistent.invalid: not an address of this machine' in err
