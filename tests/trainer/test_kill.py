"""The kill test: a trainer process (``kill_trainer.py``) SIGKILLed at seeded random moments in every stage and
started again always finishes its training, and the Loop receives each model format and each detections slice
exactly once, except for the one unavoidable repeat: a kill between the Loop's 200 and the node's durable record
of it (then the repeat is the very next request of the next process; a model repeat is answered 409 and stored
once, a detections repeat replaces the same detections)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llnode.localloop import LocalLoop
from tests.polling import wait_for
from tests.trainer.trainer_support import (
    FORMATS,
    ORGANIZATION,
    PROJECT,
    TRAINING_STATES,
    project_image_ids,
    stored_uploads,
)

REPO = Path(__file__).parents[2]
SEED = int(os.environ.get('LLNODE_KILL_SEED', '20240611'))  # another seed explores other kill moments
NODE_UUID = '5a1e0000-0000-4000-8000-00000000c0de'

#: (state seen in the checkpoint, longest extra delay before the kill); None: a kill at a random time after start
PLANS: list[tuple[str | None, float]] = [
    ('data_downloading', 0.4),
    (None, 1.0),
    ('train_model_downloading', 0.02),
    ('running', 0.4),
    ('running', 0.4),
    (None, 0.8),
    ('confusion_matrix_syncing', 0.02),
    ('train_model_uploading', 0.03),
    ('train_model_uploading', 0.03),
    ('detecting', 0.3),
    (None, 0.5),
    ('detecting', 0.3),
    ('detection_uploading', 0.03),
    ('detection_uploading', 0.03),
    ('ready_for_cleanup', 0.01),
]
ORDER = TRAINING_STATES


class TrainerProcess:
    def __init__(self, loop: LocalLoop, data_folder: Path, log: Path) -> None:
        self.log = log.open('ab')
        self.proc = subprocess.Popen(
            [sys.executable, '-m', 'tests.trainer.kill_trainer', loop.host_port, str(data_folder), NODE_UUID],
            cwd=REPO,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.started = time.monotonic()
        self.started_wall = time.time()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.log.close()

    def terminate(self) -> int:
        self.proc.terminate()
        code = self.proc.wait(20)
        self.log.close()
        return code


def checkpoint_state(path: Path) -> str | None:
    try:
        return str(json.loads(path.read_bytes())['training_state'])
    except (FileNotFoundError, ValueError, KeyError):
        return None


@pytest.mark.slow
def test_a_trainer_killed_at_random_moments_always_finishes_and_uploads_everything_once(
    make_local_loop: Callable[..., LocalLoop], tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    loop = make_local_loop(demo=True, demo_images=150)
    data_folder = tmp_path / 'node'
    checkpoint = data_folder / f'last_training__{NODE_UUID}.json'
    log = tmp_path / 'trainer.log'
    boundaries: list[tuple[int, int]] = []  # (model uploads, detection posts) received when each process died
    killed_in: list[str | None] = []

    process = TrainerProcess(loop, data_folder, log)
    try:
        wait_for(lambda: _connected(loop), timeout=20, what='the trainer process to connect')
        result = loop.begin_training(node=NODE_UUID, base_model_version='1.1')
        assert result['accepted'], result
        number = result['training_number']

        for target, longest in PLANS:
            if checkpoint_state(checkpoint) is None:
                break  # the training is done
            if target is not None and not _passed(checkpoint_state(checkpoint), target):
                reached = wait_for(
                    lambda t=target: _reached(checkpoint_state(checkpoint), t),  # type: ignore[misc]
                    timeout=30,
                    what=f'state {target}',
                    interval=0.002,
                )
                assert reached
                time.sleep(rng.uniform(0, longest))
            else:  # a random moment (also when the training is past this plan's stage already)
                time.sleep(max(0.0, process.started + rng.uniform(0.3, 0.3 + longest) - time.monotonic()))
            process.kill()
            killed_in.append(checkpoint_state(checkpoint))
            boundaries.append(_counts(loop))
            process = TrainerProcess(loop, data_folder, log)
            if checkpoint_state(checkpoint) is None:
                break  # killed after the training was cleared: the last process only has to come up idle

        wait_for(lambda: checkpoint_state(checkpoint) is None, timeout=60, what='the training to finish')
        wait_for(lambda: _reported_by(loop, process), timeout=20, what='the last process to report')
        wait_for(lambda: _reported_idle(loop), timeout=20, what='the idle status at the Loop')
        assert process.terminate() == 0
    finally:
        if process.proc.poll() is None:
            process.kill()

    assert len(killed_in) >= 12, f'too few kills happened: {killed_in}'
    stages = [ORDER.index(state) for state in killed_in if state is not None]
    assert min(stages) <= ORDER.index('running') < ORDER.index('train_model_uploading') <= max(stages), killed_in
    assert len(set(stages)) >= 4, killed_in

    # every model format stored once; a 409 only as the first upload after a kill that followed that format's 200
    assert stored_uploads(loop, number) == {f: 1 for f in FORMATS}
    uploads = [(u['format'], u['status']) for u in loop.store.model_uploads(ORGANIZATION, PROJECT)]
    starts = {b[0] for b in boundaries}
    for n, (model_format, status) in enumerate(uploads):
        if status == 409:
            assert n in starts and uploads[n - 1] == (model_format, 200), (n, uploads, boundaries)
        else:
            assert status == 200

    # every detections slice accepted once, in order; a repeat only as the first post after a kill
    ids = project_image_ids(loop)
    slices = [ids[i : i + 100] for i in range(0, len(ids), 100)]
    posts = loop.store.detection_posts(ORGANIZATION, PROJECT)
    assert all(p['status'] == 200 for p in posts)
    post_starts = {b[1] for b in boundaries}
    expected = 0
    for n, post in enumerate(posts):
        if expected < len(slices) and post['image_ids'] == slices[expected]:
            expected += 1
        else:
            assert n in post_starts and expected > 0 and post['image_ids'] == slices[expected - 1], (n, boundaries)
    assert expected == len(slices)
    assert len(loop.store.detections(ORGANIZATION, PROJECT)) == len(ids)


def _connected(loop: LocalLoop) -> bool:
    assert loop.hub is not None
    return any(n['id'] == NODE_UUID for n in loop.hub.connected())


def _reported_by(loop: LocalLoop, process: TrainerProcess) -> bool:
    """Whether ``process`` has connected and sent its first status (the Loop knows the connection by the node id)."""
    assert loop.hub is not None
    return any(n['id'] == NODE_UUID and n['connected_at'] >= process.started_wall for n in loop.hub.connected())


def _reported_idle(loop: LocalLoop) -> bool:
    node: dict[str, Any] | None = loop.store.node(NODE_UUID)
    return node is not None and node['status'].get('state') == 'idle'


def _reached(state: str | None, target: str) -> bool:
    return state is not None and ORDER.index(state) >= ORDER.index(target)


def _passed(state: str | None, target: str) -> bool:
    return state is not None and ORDER.index(state) > ORDER.index(target)


def _counts(loop: LocalLoop) -> tuple[int, int]:
    return len(loop.store.model_uploads(ORGANIZATION, PROJECT)), len(loop.store.detection_posts(ORGANIZATION, PROJECT))
