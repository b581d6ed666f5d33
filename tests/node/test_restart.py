"""NodeNeedsRestartError with real node processes: raised by a node hook, a detector's model build, a detector's
logic while it answers a request, or a trainer stage, the node stops cleanly and the process exits with
EXIT_NEEDS_RESTART (75), which restart policies act on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import requests

from llnode import EXIT_NEEDS_RESTART, NodeNeedsRestartError
from llnode.detector.exceptions import NodeNeedsRestartError as DetectorNeedsRestart
from llnode.localloop import LocalLoop
from llnode.trainer.exceptions import NodeNeedsRestartError as TrainerNeedsRestart
from tests.node.restart_script import NODE_UUID
from tests.polling import wait_for

REPO = Path(__file__).parents[2]


def start(mode: str, data_folder: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, '-m', 'tests.node.restart_script', mode, str(data_folder), *extra],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 30) -> tuple[int, str]:
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        raise AssertionError(f'the node did not exit:\n{output}') from None
    return proc.returncode, output


def test_one_exception_under_the_reference_names() -> None:
    assert NodeNeedsRestartError is DetectorNeedsRestart is TrainerNeedsRestart
    assert EXIT_NEEDS_RESTART == 75


def test_a_hook_that_raises_it_ends_run_with_the_restart_code(tmp_path: Path) -> None:
    code, output = finish(start('hook', tmp_path / 'data'))
    assert code == EXIT_NEEDS_RESTART, output
    assert 'needs a restart: the hook cannot go on' in output
    assert 'wedged node: stopped' in output  # a clean stop, not a crash
    assert f'EXIT {EXIT_NEEDS_RESTART}' in output


def test_a_detector_whose_model_build_raises_it_at_start_exits_with_the_restart_code(tmp_path: Path) -> None:
    code, output = finish(start('build', tmp_path / 'data'))
    assert code == EXIT_NEEDS_RESTART, output
    assert 'No CUDA GPUs are available' in output
    assert 'wedged detector: stopped' in output


def test_a_detector_whose_logic_raises_it_answers_503_and_exits_with_the_restart_code(tmp_path: Path) -> None:
    proc = start('evaluate', tmp_path / 'data')
    assert proc.stdout is not None
    url = ''
    for line in proc.stdout:
        if line.startswith('URL '):
            url = line.split()[1]
            break
    assert url, 'the detector never served'
    response = requests.post(f'{url}/detect', files={'file': ('x.png', _png())}, timeout=10)
    assert response.status_code == 503
    assert 'needs a restart' in response.json()['detail']
    code, output = finish(proc)
    assert code == EXIT_NEEDS_RESTART, output
    assert 'wedged detector: stopped' in output


def test_a_trainer_stage_that_raises_it_keeps_the_stage_in_the_checkpoint_and_exits(
    tmp_path: Path, local_loop: LocalLoop
) -> None:
    data = tmp_path / 'data'
    proc = start('train', data, local_loop.host_port)
    try:
        wait_for(
            lambda: any(n.get('id') == NODE_UUID and n.get('connected') for n in local_loop.nodes()),
            timeout=20,
            what='the trainer to connect',
        )
        result = local_loop.begin_training(node=NODE_UUID)
        assert result['accepted'], result
        code, output = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert code == EXIT_NEEDS_RESTART, output
    checkpoint = json.loads((data / f'last_training__{NODE_UUID}.json').read_text())
    assert checkpoint['training_state'] == 'train_model_downloaded'  # the fresh process redoes the training
    assert 'CUDA out of memory' in checkpoint['errors']['run_training']
    assert 'wedged trainer: stopped' in output


def _png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new('RGB', (8, 6)).save(buffer, 'PNG')
    return buffer.getvalue()
