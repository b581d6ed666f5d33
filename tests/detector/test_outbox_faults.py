"""The outbox against a Loop that refuses, throttles, fails, hangs or goes away for a while."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from llnode.detector.outbox import MAX_REFUSALS, Outbox
from llnode.localloop import LocalLoop
from llnode.schema import ImageMetadata
from tests.detector.outbox_support import FaultLoop, item_folders, ok, outbox_threads, received_sources, tiny_jpeg
from tests.loop.scripted_server import Reply, Seen
from tests.polling import wait_for


def fill(outbox: Outbox, sources: list[str]) -> None:
    """Save one normal item per source, oldest first (so they upload in reverse order)."""
    for n, source in enumerate(sources):
        outbox.save(tiny_jpeg(n), ImageMetadata(source=source))


def test_422_bisects_and_rejects_only_the_refused_item(tmp_path: Path) -> None:
    def answer(sources: list[str], n: int) -> Reply:
        return Reply(422, b'{"detail": "bad image"}') if 'bad' in sources else ok(sources, n)

    with FaultLoop(answer) as loop:
        outbox = Outbox(loop.settings(tmp_path / 'node'), mode='stopped')
        fill(outbox, ['g', 'f', 'e', 'bad', 'c', 'b', 'a'])  # upload order: a b c bad e f g
        outbox.start()
        assert outbox.set_mode('continuous_upload')
        assert outbox.wait_until_empty(10)
        assert outbox.close()
    # 7 -> 422; [a b c] ok; [bad e f g] -> 422; [bad e] -> 422; [bad] -> 422 (rejected); [e] ok; [f g] ok
    assert [(p.status, p.sources) for p in loop.posts] == [
        (422, ['a', 'b', 'c', 'bad', 'e', 'f', 'g']),
        (200, ['a', 'b', 'c']),
        (422, ['bad', 'e', 'f', 'g']),
        (422, ['bad', 'e']),
        (422, ['bad']),
        (200, ['e']),
        (200, ['f', 'g']),
    ]
    assert sorted(loop.delivered) == sorted(['a', 'b', 'c', 'e', 'f', 'g'])  # each exactly once
    [rejected] = outbox.rejected_ids()
    assert '422' in (outbox.rejection_reason(rejected) or '') and 'bad image' in (
        outbox.rejection_reason(rejected) or ''
    )
    jpg = tmp_path / 'node' / 'outbox' / 'rejected' / rejected / f'image_{rejected}.jpg'
    assert jpg.read_bytes() == tiny_jpeg(3)  # kept, not lost
    stats = outbox.stats()
    assert stats['uploaded'] == 6 and stats['rejected'] == 1 and stats['upload_errors'] == 0


@pytest.mark.parametrize(
    ('retry_after', 'max_backoff', 'low', 'high'), [('1', 60.0, 0.9, 3.0), ('3600', 0.3, 0.2, 2.0)]
)
def test_429_honours_retry_after_within_the_cap(
    tmp_path: Path, retry_after: str, max_backoff: float, low: float, high: float
) -> None:
    def answer(sources: list[str], n: int) -> Reply:
        return Reply(429, b'slow down', {'Retry-After': retry_after}) if n == 0 else ok(sources, n)

    with FaultLoop(answer) as loop:
        outbox = Outbox(loop.settings(tmp_path / 'node'), min_backoff=0.01, max_backoff=max_backoff, mode='stopped')
        fill(outbox, ['b', 'a'])
        outbox.start()
        assert outbox.set_mode('continuous_upload')
        assert outbox.wait_until_empty(10)
        assert outbox.close()
    first, second = loop.posts
    assert (first.status, second.status) == (429, 200)
    assert first.sources == second.sources == ['a', 'b']  # everything kept for the retry
    assert low <= second.at - first.at <= high
    stats = outbox.stats()
    assert stats['upload_errors'] == 1 and '429' in (stats['last_error'] or '') and stats['uploaded'] == 2


def test_server_errors_and_broken_connections_back_off_and_keep_everything(tmp_path: Path) -> None:
    failures = [
        Reply(500, b'internal'),
        Reply(504, b'{"detail": "gateway timeout"}'),
        Reply(502, b'{"detail": "gateway"}', {'Content-Length': '9999'}),  # the connection breaks mid-answer
        Reply(503, b'busy'),
    ]

    def answer(sources: list[str], n: int) -> Reply:
        return failures[n] if n < len(failures) else ok(sources, n)

    with FaultLoop(answer) as loop:
        outbox = Outbox(loop.settings(tmp_path / 'node'), min_backoff=0.05, max_backoff=0.15, mode='stopped')
        fill(outbox, ['c', 'b', 'a'])
        outbox.start()
        assert outbox.set_mode('continuous_upload')
        assert outbox.wait_until_empty(10)
        assert outbox.close()
    assert [p.status for p in loop.posts] == [500, 504, 502, 503, 200]
    assert all(p.sources == ['a', 'b', 'c'] for p in loop.posts)
    gaps = [b.at - a.at for a, b in zip(loop.posts, loop.posts[1:], strict=False)]
    # 0.05, 0.1, capped 0.15, each less up to a quarter of jitter (llnode.backoff)
    assert gaps[0] >= 0.035 and gaps[1] >= 0.07 and gaps[2] >= 0.11 and gaps[3] >= 0.11
    assert Counter(loop.delivered) == Counter(['a', 'b', 'c'])
    stats = outbox.stats()
    assert stats['upload_errors'] == 4 and stats['uploaded'] == 3 and stats['queued_normal'] == 0
    assert '503' in (stats['last_error'] or '') and 'busy' in (stats['last_error'] or '')


@pytest.mark.parametrize('status', [400, 403, 404])
def test_a_4xx_that_waiting_cannot_cure_rejects_the_items_after_max_refusals(tmp_path: Path, status: int) -> None:
    """The outbox used to retry a 404 or 400 forever; now a batch refused so ``max_refusals`` times moves to
    rejected/ (kept on disk, not lost) and the uploader goes on with what follows."""

    def answer(sources: list[str], n: int) -> Reply:
        return Reply(status, b'{"detail": "no such project"}') if 'bad' in sources[0] else ok(sources, n)

    with FaultLoop(answer) as loop:
        outbox = Outbox(
            loop.settings(tmp_path / 'node'), min_backoff=0.01, max_backoff=0.02, batch_size=1, mode='stopped'
        )
        assert outbox.max_refusals == MAX_REFUSALS
        outbox.save(tiny_jpeg(1), ImageMetadata(source='good'), priority=False)
        outbox.save(tiny_jpeg(2), ImageMetadata(source='bad'), priority=False)  # newest: sent first
        outbox.start()
        assert outbox.set_mode('continuous_upload')
        assert outbox.wait_until_empty(10)
        assert outbox.close()
    refused = [p for p in loop.posts if p.status == status]
    assert len(refused) == MAX_REFUSALS  # bounded: no retry after the item moved
    assert loop.delivered == ['good']
    [rejected] = outbox.rejected_ids()
    reason = outbox.rejection_reason(rejected) or ''
    assert f'refused {MAX_REFUSALS} times' in reason and str(status) in reason
    assert outbox.stats()['rejected'] == 1


def test_a_4xx_that_waiting_cannot_cure_rejects_only_the_refused_item_of_a_batch(tmp_path: Path) -> None:
    """A batch with one item the Loop refuses (400) is split as a 422 is: the good items are delivered, only the
    refused one counts its refusals and moves to rejected/ (it used to take the whole batch with it)."""

    def answer(sources: list[str], n: int) -> Reply:
        return Reply(400, b'{"detail": "bad item"}') if 'bad' in sources else ok(sources, n)

    with FaultLoop(answer) as loop:
        outbox = Outbox(loop.settings(tmp_path / 'node'), min_backoff=0.01, max_backoff=0.02, mode='stopped')
        fill(outbox, ['g', 'f', 'e', 'bad', 'c', 'b', 'a'])
        outbox.start()
        assert outbox.set_mode('continuous_upload')
        assert outbox.wait_until_empty(10)
        assert outbox.close()
    assert sorted(loop.delivered) == sorted(['a', 'b', 'c', 'e', 'f', 'g'])  # each exactly once
    [rejected] = outbox.rejected_ids()
    assert f'refused {MAX_REFUSALS} times' in (outbox.rejection_reason(rejected) or '')
    assert (tmp_path / 'node' / 'outbox' / 'rejected' / rejected / f'image_{rejected}.jpg').read_bytes() == tiny_jpeg(3)
    assert [p.sources for p in loop.posts if p.status == 400].count(['bad']) == MAX_REFUSALS


@pytest.mark.parametrize('status', [408, 409, 429])
def test_a_4xx_worth_waiting_for_never_rejects(tmp_path: Path, status: int) -> None:
    def answer(sources: list[str], n: int) -> Reply:
        return Reply(status, b'later') if n < MAX_REFUSALS + 2 else ok(sources, n)

    with FaultLoop(answer) as loop:
        outbox = Outbox(loop.settings(tmp_path / 'node'), min_backoff=0.01, max_backoff=0.02, mode='stopped')
        fill(outbox, ['a'])
        outbox.start()
        assert outbox.set_mode('continuous_upload')
        assert outbox.wait_until_empty(10)
        assert outbox.close()
    assert loop.delivered == ['a'] and outbox.rejected_ids() == []


def test_a_401_logs_in_again_and_the_retry_carries_the_session(tmp_path: Path) -> None:
    sessions: list[str] = []

    def answer(sources: list[str], n: int) -> Reply:
        return Reply(401, b'{"detail": "login first"}') if not sessions else ok(sources, n)

    def login(seen: Seen) -> Reply:
        sessions.append(seen.body.decode())
        return Reply(200, b'{}', {'Set-Cookie': 'session=fresh; Path=/'})

    with FaultLoop(answer) as loop:
        loop.server.routes[('POST', '/api/login')] = login
        settings = dataclasses.replace(loop.settings(tmp_path / 'node'), username='u', password='secret')
        outbox = Outbox(settings, min_backoff=0.01, max_backoff=0.02, mode='stopped')
        fill(outbox, ['a'])
        outbox.start()
        assert outbox.set_mode('continuous_upload')
        assert outbox.wait_until_empty(10)
        assert outbox.close()
    assert [p.status for p in loop.posts] == [401, 200]
    assert len(sessions) == 1 and 'username=u' in sessions[0]
    assert outbox.rejected_ids() == []


def test_the_loop_down_for_a_while_then_back(make_local_loop: object, tmp_path: Path) -> None:
    loop: LocalLoop = make_local_loop(demo=True, demo_images=2)  # type: ignore[operator]
    settings = loop.settings(data_folder=tmp_path / 'node')
    loop.stop()
    outbox = Outbox(settings, min_backoff=0.05, max_backoff=0.2)
    outbox.start()
    try:
        sources = [f's{n}' for n in range(30)]
        fill(outbox, sources)
        wait_for(lambda: outbox.stats()['upload_errors'] >= 3, what='failed uploads while the Loop is down')
        assert outbox.stats()['queued_normal'] == 30
        loop.start()
        assert outbox.wait_until_empty(15)
    finally:
        assert outbox.close()
    delivered = received_sources(loop)
    assert sorted(delivered) == sorted(sources) and len(delivered) == 30  # everything, nothing twice


def test_stop_and_close_are_bounded_and_truthful_while_the_loop_hangs(tmp_path: Path) -> None:
    release = threading.Event()

    def answer(sources: list[str], n: int) -> Reply:
        release.wait(20)
        return ok(sources, n)

    with FaultLoop(answer) as loop:
        outbox = Outbox(loop.settings(tmp_path / 'node'), upload_timeout=20)
        outbox.start()
        try:
            fill(outbox, ['a'])
            wait_for(lambda: loop.server.count('POST', '/api/zauberzeug/projects/demo/images') == 1, what='upload')
            started = time.monotonic()
            assert outbox.set_mode('stopped', timeout=0.3) is False  # a request is still running
            assert time.monotonic() - started < 2
            assert outbox.stats()['mode'] == 'stopped'
            release.set()
            assert outbox.set_mode('stopped', timeout=5) is True
            assert loop.delivered == ['a']  # the request that was running finished

            release.clear()
            fill(outbox, ['b'])
            assert outbox.set_mode('continuous_upload')
            wait_for(lambda: loop.server.count('POST', '/api/zauberzeug/projects/demo/images') == 2, what='upload')
            started = time.monotonic()
            assert outbox.close(timeout=0.5) is False  # the uploader is stuck in the request
            assert time.monotonic() - started < 2
        finally:
            release.set()
        wait_for(lambda: outbox_threads() == [], timeout=10, what='the uploader to end after the Loop answered')
    assert loop.delivered == ['a', 'b']
    assert item_folders(tmp_path / 'node', 'normal') == []
