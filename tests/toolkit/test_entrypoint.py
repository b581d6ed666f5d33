"""``llnode.helpers.entrypoint``: every option is an environment variable too (command line first, then the
environment, then the default), bad values are one line naming the variable; the samples use it and listen on
loopback unless told otherwise."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from llnode.helpers import node_parser
from llnode.localloop import LocalLoop
from llnode.node.serving import SERVERS
from tests.samples import REPO, sample_env, sample_process


@pytest.fixture(autouse=True)
def environment_restored() -> Iterator[None]:
    """node_parser copies values into os.environ itself, as the reference does; monkeypatch restores only what it
    changed, and a CONF_THRESHOLD left behind changed the YOLO-style detector's threshold in later tests."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def parser_with_options():  # type: ignore[no-untyped-def]
    parser = node_parser(description='test node', vram_limit=True)
    parser.add_argument('--conf-threshold', type=float, default=0.2, help='confidence threshold')
    parser.add_argument('--name', env_var='NODE_NAME', default='n')
    parser.add_argument('--backdoor', action='store_true')
    return parser


def test_defaults_environment_and_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ('NODE_HOST', 'NODE_PORT', 'NODE_SERVER', 'VRAM_LIMIT_GB', 'CONF_THRESHOLD', 'NODE_NAME', 'BACKDOOR'):
        monkeypatch.delenv(name, raising=False)
    parser = parser_with_options()
    args = parser.parse_args([])
    assert (args.host, args.port, args.server, args.vram_limit_gb, args.conf_threshold) == ('0.0.0.0', 80, None, 0, 0.2)
    monkeypatch.setenv('NODE_HOST', '127.0.0.1')
    monkeypatch.setenv('NODE_PORT', '8004')
    monkeypatch.setenv('VRAM_LIMIT_GB', '3.5')
    monkeypatch.setenv('CONF_THRESHOLD', '0.4')
    monkeypatch.setenv('NODE_NAME', 'robot 7')
    monkeypatch.setenv('BACKDOOR', 'yes')
    monkeypatch.setenv('NODE_SERVER', SERVERS[-1])
    args = parser.parse_args([])
    assert (args.host, args.port, args.vram_limit_gb, args.conf_threshold) == ('127.0.0.1', 8004, 3.5, 0.4)
    assert (args.name, args.backdoor, args.server) == ('robot 7', True, SERVERS[-1])
    args = parser.parse_args(['--port', '9000', '--conf-threshold', '0.9'])
    assert (args.port, args.conf_threshold, args.host) == (9000, 0.9, '127.0.0.1')
    assert 'HOST' not in [parser.env_var(d) for d in ('host', 'port', 'server')]
    help_text = ' '.join(parser.format_help().split())
    for name in ('NODE_HOST', 'NODE_PORT', 'NODE_SERVER', 'VRAM_LIMIT_GB', 'CONF_THRESHOLD'):
        assert f'[env {name}]' in help_text


@pytest.mark.parametrize(
    ('name', 'value', 'message'),
    [
        ('NODE_PORT', 'eighty', "environment variable NODE_PORT='eighty' (--port) is not a valid int"),
        ('NODE_SERVER', 'nginx', "environment variable NODE_SERVER='nginx' (--server) must be one of"),
        ('BACKDOOR', 'maybe', "environment variable BACKDOOR='maybe' (--backdoor) is not a boolean"),
    ],
)
def test_a_bad_environment_value_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_info:
        parser_with_options().parse_args([])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and message in err


def test_legacy_prefixed_variables_are_adopted(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ('NODE_HOST', 'CONF_THRESHOLD'):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv('MY_DETECTOR_HOST', '10.0.0.5')  # PREFIX + dest
    monkeypatch.setenv('MY_DETECTOR_CONF_THRESHOLD', '0.7')  # PREFIX + variable
    parser = node_parser(description='d', legacy_env_prefix='MY_DETECTOR_')
    parser.add_argument('--conf-threshold', type=float, default=0.2)
    args = parser.parse_args([])
    assert (args.host, args.conf_threshold) == ('10.0.0.5', 0.7)
    assert os.environ['NODE_HOST'] == '10.0.0.5'  # copied into the environment, as the reference does
    assert 'MY_DETECTOR_HOST is deprecated' in caplog.text


def _listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp writes them) of sockets listening on ``port``."""
    found = set()
    for table in ('/proc/net/tcp', '/proc/net/tcp6'):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(':')
            if state == '0A' and int(hex_port, 16) == port:
                found.add(address)
    return found


@pytest.mark.skipif(not Path('/proc/net/tcp').exists(), reason='reads the listening sockets from /proc/net/tcp')
def test_a_sample_listens_on_loopback_only_by_default(local_loop: LocalLoop, tmp_path: Path) -> None:
    with sample_process('mock_detector.py', local_loop, tmp_path / 'data', host=None) as sample:
        port = int(sample.url.rsplit(':', 1)[1])
        assert sample.url.startswith('http://127.0.0.1:')
        assert _listening_addresses(port) == {'0100007F'}  # 127.0.0.1, not 0.0.0.0 (00000000)
    help_text = subprocess.run(
        [sys.executable, str(REPO / 'samples' / 'mock_detector.py'), '--help'],
        capture_output=True, text=True, timeout=60, check=True, env=sample_env(local_loop, tmp_path / 'data'),
    ).stdout  # fmt: skip
    help_text = ' '.join(help_text.split())
    assert 'default: 127.0.0.1, this machine only; 0.0.0.0 listens on every interface' in help_text
    assert '[env NODE_HOST]' in help_text


def test_a_sample_reports_a_taken_port_in_one_line(local_loop: LocalLoop, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(('127.0.0.1', 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**sample_env(local_loop, tmp_path / 'data'), 'NODE_PORT': str(port)}
        result = subprocess.run(
            [sys.executable, str(REPO / 'samples' / 'mock_detector.py')],
            check=False, capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip
    assert result.returncode == 2
    assert f'port {port} on 127.0.0.1 is in use' in result.stderr.splitlines()[-1]  # llnode.startup's line
    assert 'Traceback' not in result.stderr
