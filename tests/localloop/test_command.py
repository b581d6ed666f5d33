"""``llnode loop`` as a real subprocess: it prints what a node needs, serves, and exits 0 on SIGTERM."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import requests

from llnode.localloop.command import loop_main


def read_lines(stream: object, lines: queue.Queue[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        lines.put(line.rstrip('\n'))


def test_llnode_loop_serves_until_sigterm(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            '-m',
            'llnode.cli',
            'loop',
            '--port',
            '0',
            '--data',
            str(tmp_path / 'data'),
            '--demo',
            '--demo-images',
            '4',
            '--user',
            'u:p',
            '--user',
            'admin:pw',
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=read_lines, args=(process.stdout, lines), name='test-loop-stdout', daemon=True)
    reader.start()
    try:
        printed: dict[str, str] = {}
        while 'LOOP_PROJECT' not in printed:
            line = lines.get(timeout=30)
            if line.startswith('web UI: '):
                printed['UI'] = line.split()[2]
            if '=' in line and line.startswith('LOOP_'):
                key, value = line.split('=', 1)
                printed[key] = value
        assert printed['LOOP_USERNAME'] == 'u'
        assert printed['LOOP_PASSWORD'] == 'p'
        assert printed['LOOP_ORGANIZATION'] == 'zauberzeug'
        assert printed['LOOP_PROJECT'] == 'demo'
        url = f'http://{printed["LOOP_HOST"]}'
        assert printed['UI'] == f'{url}/'
        assert requests.get(printed['UI'], timeout=10).url.startswith(f'{url}/login')
        with requests.Session() as session:
            assert session.post(f'{url}/api/login', data={'username': 'admin', 'password': 'pw'}, timeout=10).ok
            data = session.get(f'{url}/api/zauberzeug/projects/demo/data', params={'state': 'complete'}, timeout=10)
            assert data.status_code == 200
            assert len(data.json()['image_ids']) == 4
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert 'stopping' in process.stderr.read()  # type: ignore[union-attr]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    assert (tmp_path / 'data' / 'loop.sqlite3').exists()


def test_llnode_loop_reports_a_busy_port(tmp_path: Path, capsys: object) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(('127.0.0.1', 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert loop_main(['--port', str(port), '--data', str(tmp_path / 'data'), '--log-level', 'WARNING']) == 2
    assert f'port {port} on 127.0.0.1 is in use' in capsys.readouterr().err  # type: ignore[attr-defined]
