"""The serving allocator policy: glibc tuned once, free memory handed back once per pause in the requests."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from llnode.node import memory


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def trims(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record trims instead of trimming; 10 MB free unless a test says otherwise."""
    done: list[int] = []
    monkeypatch.setattr(memory, 'free_heap_bytes', lambda: 10_000_000)
    monkeypatch.setattr(memory, 'release_free_memory', lambda: done.append(1) is None)
    return done


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response('200 OK', [])
    return [b'ok']


def request(activity: memory.RequestActivity) -> None:
    assert activity({}, lambda *a: None) == [b'ok']


def test_trims_once_per_pause_after_the_idle_time(trims: list[int]) -> None:
    clock = Clock()
    activity = memory.RequestActivity(app)
    trimmer = memory.IdleTrimmer(activity, idle_s=1.0, clock=clock)
    request(activity)
    assert not trimmer.poll()  # traffic just came
    clock.now += 0.5
    assert not trimmer.poll()  # paused, but not long enough
    clock.now += 0.6
    assert trimmer.poll() and trims == [1] and trimmer.trims == 1
    clock.now += 5
    assert not trimmer.poll() and trims == [1]  # the same pause: no second trim
    request(activity)
    assert not trimmer.poll()
    clock.now += 1.1
    assert trimmer.poll() and trims == [1, 1]  # the next pause trims again


def test_steady_traffic_is_never_trimmed(trims: list[int]) -> None:
    clock = Clock()
    activity = memory.RequestActivity(app)
    trimmer = memory.IdleTrimmer(activity, idle_s=1.0, clock=clock)
    for _ in range(50):
        request(activity)
        clock.now += 0.3
        assert not trimmer.poll()
    assert trims == []


def test_little_free_memory_is_not_worth_a_trim(trims: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, 'free_heap_bytes', lambda: 1000)
    clock = Clock()
    trimmer = memory.IdleTrimmer(memory.RequestActivity(app), idle_s=1.0, min_free_bytes=4096, clock=clock)
    clock.now += 2
    assert not trimmer.poll() and trims == []


def test_release_runs_before_each_trim_and_its_failure_does_not_stop_the_trim(
    trims: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    activity = memory.RequestActivity(app)
    released: list[int] = []

    def release() -> None:
        released.append(len(trims))  # how many trims had happened when the caches were emptied
        if len(released) == 2:
            raise RuntimeError('cache is gone')

    trimmer = memory.IdleTrimmer(activity, idle_s=1.0, clock=clock, release=release)
    request(activity)
    assert not trimmer.poll()
    clock.now += 1.1
    assert trimmer.poll() and released == [0] and trims == [1]
    clock.now += 5
    assert not trimmer.poll() and released == [0]  # once per pause
    request(activity)
    assert not trimmer.poll()
    clock.now += 1.1
    assert trimmer.poll() and released == [0, 1] and trims == [1, 1]
    assert 'releasing cached memory failed' in caplog.text


def test_pillow_blocks_kept_for_reuse_are_released() -> None:
    probe = (
        'import io; from PIL import Image; from llnode.detector import images; '
        'images.keep_pillow_blocks(4); buf = io.BytesIO(); Image.new("RGB", (640, 480)).save(buf, "JPEG"); '
        '[images.decode_image(buf.getvalue()) for _ in range(3)]; '
        'kept = Image.core.get_stats()["blocks_cached"]; images.release_pillow_blocks(); '
        'print(kept, Image.core.get_stats()["blocks_cached"])'
    )
    # a fresh interpreter: the block settings are process-wide
    env = {'PATH': '', 'LLNODE_ALLOCATOR': 'default'}
    done = subprocess.run(
        [sys.executable, '-c', probe], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    kept, left = map(int, done.stdout.split())
    assert kept >= 1 and left == 0


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc only')
def test_tuning_on_glibc_and_the_opt_out() -> None:
    probe = (
        'from llnode.node import memory; '
        'print(memory.tune_allocator(), memory.release_free_memory() in (True, False), '
        'memory.free_heap_bytes() is None)'
    )
    tuned = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True, timeout=60, check=True)
    assert tuned.stdout.split() == ['True', 'True', 'False']
    opted_out = subprocess.run(
        [sys.executable, '-c', probe],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={'LLNODE_ALLOCATOR': 'default', 'PATH': ''},
    )
    assert opted_out.stdout.split() == ['False', 'True', 'True']
