"""Crash safety: a process writing outbox items is SIGKILLed at random moments, again and again; afterwards a
fresh outbox on the same folder delivers every acknowledged item, exactly once, and nothing half-written."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from llnode.detector.outbox import Outbox
from llnode.localloop import LocalLoop
from tests.detector.outbox_support import item_folders, received, tiny_jpeg
from tests.detector.outbox_writer import CAP

ROOT = Path(__file__).resolve().parents[2]
KILLS = 20


def run_and_kill(data_folder: Path, run: int, rng: random.Random, jpeg_file: Path) -> list[str]:
    """Start a writer, SIGKILL it at a random moment (half of the runs possibly while it opens the outbox);
    returns the tokens it acknowledged."""
    process = subprocess.Popen(
        [sys.executable, '-m', 'tests.detector.outbox_writer', str(data_folder), str(run), str(jpeg_file)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, 'PYTHONPATH': str(ROOT)},
    )
    assert process.stdout is not None
    if run % 2 == 0:
        assert process.stdout.readline() == 'ready\n'
        delay = rng.uniform(0.0, 0.08)
    else:
        delay = rng.uniform(0.2, 0.6)  # around the time the interpreter needs to import and open the outbox
    with contextlib.suppress(subprocess.TimeoutExpired):  # the kill comes at a random moment; nothing is awaited
        process.wait(delay)
    process.send_signal(signal.SIGKILL)
    output = process.stdout.read()
    process.wait(10)
    assert process.returncode == -signal.SIGKILL, 'the writer ended by itself: it must run until it is killed'
    return [line.split()[0] for line in output.splitlines(keepends=True) if line.endswith('\n') and ' ' in line]


@pytest.mark.slow
def test_every_acknowledged_item_survives_random_kills(local_loop: LocalLoop, tmp_path: Path) -> None:
    data_folder = tmp_path / 'node'
    rng = random.Random(4)
    jpeg_file = tmp_path / 'image.jpg'
    jpeg_file.write_bytes(tiny_jpeg(0))
    acknowledged: list[str] = []
    for run in range(KILLS):
        acknowledged += run_and_kill(data_folder, run, rng, jpeg_file)
    assert len(acknowledged) > KILLS  # the kills did not all land before the first save

    settings = local_loop.settings(data_folder=data_folder, max_outbox_size=CAP)
    outbox = Outbox(settings, max_priority=CAP)
    assert not [p for p in (data_folder / 'tmp').iterdir() if p.name.startswith('outbox-')]  # leftovers cleaned
    outbox.start()
    try:
        assert outbox.wait_until_empty(30), outbox.stats()
    finally:
        assert outbox.close()

    batches = local_loop.store.upload_batches('zauberzeug', 'demo')
    assert batches and all(b['status'] == 200 for b in batches)  # no corrupt or half item reached the Loop
    images = received(local_loop)
    sources = Counter(item['source'] for item in images)
    assert sources.most_common(1)[0][1] == 1  # nothing twice
    missing = [token for token in acknowledged if token not in sources]
    assert missing == []
    expected = tiny_jpeg(0)
    assert all(local_loop.store.image_jpeg('zauberzeug', 'demo', item['id']) == expected for item in images)
    assert outbox.rejected_ids() == [] and outbox.stats()['dropped'] == {}
    assert item_folders(data_folder, 'priority') == item_folders(data_folder, 'normal') == []
