"""Durable writes: old or new content, never half; leftovers of a crash are found and removed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llnode import durable


def test_write_replaces_content_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / 'sub' / 'state.json'
    durable.write_json(target, {'a': 1})
    durable.write_json(target, {'a': 2})
    assert json.loads(target.read_text()) == {'a': 2}
    assert sorted(p.name for p in target.parent.iterdir()) == ['state.json']


def test_failed_write_keeps_the_old_content(tmp_path: Path) -> None:
    target = tmp_path / 'state.bin'
    durable.write_bytes(target, b'old')
    with pytest.raises(RuntimeError), durable.atomic_writer(target) as handle:
        handle.write(b'half of the new')
        raise RuntimeError('crash while writing')
    assert target.read_bytes() == b'old'
    assert [p.name for p in tmp_path.iterdir()] == ['state.bin']


WRITER = """
import sys
from llnode import durable
i = 0
while True:
    i += 1
    durable.write_bytes(sys.argv[1], (str(i) * 50_000).encode())
    if i == 1:
        print('ready', flush=True)
"""


def test_sigkill_mid_writes_leaves_old_or_new_content(tmp_path: Path) -> None:
    target = tmp_path / 'state.bin'
    for round_ in range(5):
        proc = subprocess.Popen([sys.executable, '-c', WRITER, str(target)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == 'ready'
        time.sleep(0.01 * round_)  # vary the moment of the kill
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        content = target.read_bytes()
        digits = set(content.decode())
        assert len(digits) <= 2 and len(content) % 50_000 == 0, 'a torn write became visible'
        durable.remove_stale_temps(tmp_path)
        assert [p.name for p in tmp_path.iterdir()] == ['state.bin']


def test_remove_stale_temps_only_touches_temp_leftovers(tmp_path: Path) -> None:
    (tmp_path / '.state.json.abc123.tmp').write_text('half')
    (tmp_path / 'state.json').write_text('{}')
    (tmp_path / 'notes.tmp').write_text('a user file')
    removed = durable.remove_stale_temps(tmp_path)
    assert [p.name for p in removed] == ['.state.json.abc123.tmp']
    assert sorted(p.name for p in tmp_path.iterdir()) == ['notes.tmp', 'state.json']
    assert durable.remove_stale_temps(tmp_path / 'missing') == []
