"""Every path a user gives is resolved once, at start, against the working directory (issue 13, item 1).

The README's own commands run here as written, with their relative data folders, from a temporary working
directory: ``llnode loop --demo --user demo:demo`` and the mock detector against it. Nothing may depend on the
working directory later: a logic whose ``build`` calls ``os.chdir`` must not move llnode's files.
"""

from __future__ import annotations

import io
import os
import queue
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from llnode.config import Settings
from llnode.demo.command import EXIT_OK, demo_main
from llnode.detector import DetectorFactory, DetectorNode
from llnode.localloop import LocalLoop
from llnode.schema import ModelInformation
from tests.demo.test_demo_command import FAST, small_args, stand_in_parts
from tests.detector.node_helpers import jpeg_bytes
from tests.polling import wait_for
from tests.samples import REPO, load_sample

IMAGE = np.zeros((24, 32, 3), dtype=np.uint8)


class _Process:
    """A started command whose output lines are collected by a reader thread."""

    def __init__(self, command: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self.process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self._reader = threading.Thread(target=self._read, name='test-process-output', daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip('\n'))

    def wait_for_line(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        def found() -> re.Match[str] | None:
            while not self.lines.empty():
                line = self.lines.get()
                self.output.append(line)
                match = re.search(pattern, line)
                if match:
                    return match
            assert self.process.poll() is None, 'the process ended:\n' + '\n'.join(self.output)
            return None

        return wait_for(found, timeout=timeout, what=f'a line matching {pattern!r}', interval=0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._reader.join(5)


@pytest.fixture
def processes() -> Iterator[list[_Process]]:
    started: list[_Process] = []
    yield started
    for process in reversed(started):
        process.stop()


@pytest.mark.slow
def test_the_readme_loop_and_mock_detector_work_with_relative_paths(tmp_path: Path, processes: list[_Process]) -> None:
    env = {**os.environ, 'PYTHONUNBUFFERED': '1'}
    # README: ``llnode loop --demo --user demo:demo`` (default data folder ./llnode-loop-data); a free port here
    loop = _Process(
        [sys.executable, '-m', 'llnode.cli', 'loop', '--demo', '--user', 'demo:demo', '--port', '0'], tmp_path, env
    )
    processes.append(loop)
    printed = {
        name: loop.wait_for_line(rf'^{name}=(.*)$').group(1)
        for name in ('LOOP_HOST', 'LOOP_USERNAME', 'LOOP_PASSWORD', 'LOOP_ORGANIZATION', 'LOOP_PROJECT')
    }
    assert (tmp_path / 'llnode-loop-data').is_dir()
    # README: ``python samples/mock_detector.py --port 8004`` with the variables the loop printed; DATA_FOLDER relative
    detector = _Process(
        [sys.executable, str(REPO / 'samples' / 'mock_detector.py'), '--host', '127.0.0.1', '--port', '0'],
        tmp_path,
        {**env, **printed, 'DATA_FOLDER': 'detector-data'},
    )
    processes.append(detector)
    url = detector.wait_for_line(r'serving on (http://127\.0\.0\.1:\d+)').group(1)

    def model_version() -> str | None:
        answer = requests.get(f'{url}/about', timeout=5).json()
        return answer.get('model_info', {}).get('version') if answer.get('model_info') else None

    version = wait_for(model_version, timeout=30, what='the detector to serve the deployed model')
    detected = requests.post(f'{url}/detect', files={'file': ('a.jpg', jpeg_bytes())}, timeout=10)
    assert detected.status_code == 200, detected.text
    assert detected.json()['box_detections'][0]['model_name'] == version
    assert (tmp_path / 'detector-data' / 'models' / version / 'model.json').is_file()
    assert not list((REPO / 'llnode' / 'localloop').glob('llnode-loop-data*'))
    loop.stop()
    detector.stop()
    text = '\n'.join(loop.output + detector.output)
    assert 'Traceback' not in text and 'internal error' not in text, text


def test_local_loop_with_a_relative_folder_serves_model_zips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with LocalLoop('loop-data', port=0, demo=True, demo_images=4, users=[('u', 'p')]) as loop:
        assert loop.data_dir == tmp_path / 'loop-data'
        monkeypatch.chdir(tmp_path.parent)  # later changes of the working directory do not matter
        with requests.Session() as session:
            session.post(f'{loop.url}/api/login', data={'username': 'u', 'password': 'p'}, timeout=10)
            models = session.get(f'{loop.url}/api/zauberzeug/projects/demo/models', timeout=10).json()['models']
            model_id = models[0]['id']
            answer = session.get(f'{loop.url}/api/zauberzeug/projects/demo/models/{model_id}/mocked/file', timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.content.startswith(b'PK')


def test_settings_resolve_user_paths_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env(
        {'DATA_FOLDER': 'data', 'TRAINING_SLOT_LOCK': 'locks/gpu0.lock', 'LOOP_SSL_CERT_PATH': 'ca.pem'}
    )
    assert settings.data_folder == tmp_path / 'data'
    assert settings.training_slot_lock == str(tmp_path / 'locks' / 'gpu0.lock')
    assert settings.ssl_cert_path == str(tmp_path / 'ca.pem')
    assert Settings(data_folder=Path('~/x')).data_folder == Path.home() / 'x'
    assert Settings().training_slot_lock == '' and Settings().ssl_cert_path == ''  # unset stays unset


class ChdirFactory(DetectorFactory):
    """A factory whose build moves the working directory, as many real models' loading code does."""

    model_format = 'mocked'

    def __init__(self, elsewhere: Path) -> None:
        self.elsewhere = elsewhere
        self.mock = load_sample('mock_detector.py').MockFactory()

    def build(self, model_info: ModelInformation) -> object:
        os.chdir(self.elsewhere)
        return self.mock.build(model_info)


def test_a_logic_that_changes_the_working_directory_does_not_move_the_nodes_files(
    local_loop: LocalLoop, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    start, elsewhere = tmp_path / 'start', tmp_path / 'elsewhere'
    start.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(start)
    settings = local_loop.settings(data_folder='detector-data')
    node = DetectorNode('chdir detector', ChdirFactory(elsewhere), settings=settings, repeat_interval=0.05)
    with node:
        wait_for(lambda: node.models.current_version is not None, timeout=20, what='the deployed model to serve')
        assert Path.cwd() == elsewhere
        node.detect(IMAGE, autoupload='all')
        wait_for(lambda: node.outbox.stats()['uploaded'] >= 1, timeout=20, what='the image to reach the Loop')
    assert (start / 'detector-data' / 'models').is_dir()
    assert list(elsewhere.iterdir()) == []


def test_the_demo_with_a_relative_data_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = [a if a != str(tmp_path / 'demo') else 'demo-data' for a in small_args(tmp_path)]
    err = io.StringIO()
    code = demo_main(args, parts=stand_in_parts(), timings=FAST, stdout=io.StringIO(), stderr=err)
    assert code == EXIT_OK, err.getvalue()
    assert (tmp_path / 'demo-data' / 'loop' / 'loop.sqlite3').is_file()
