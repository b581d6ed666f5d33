"""FrontendSessions on their own: the bounds on waiting events, a wait that times out gives its place up, idle
frontends are forgotten, closing wakes every waiter."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from llnode.annotator.sessions import FrontendSessions, SessionBusy, SessionsClosed
from tests.polling import wait_for


@contextmanager
def holding(sessions: FrontendSessions, frontend: str) -> Iterator[threading.Event]:
    """Hold ``frontend``'s turn in a thread until the yielded event is set."""
    release, held = threading.Event(), threading.Event()

    def hold() -> None:
        with sessions.turn(frontend):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=hold, name='test-hold-turn')
    thread.start()
    assert held.wait(10)
    try:
        yield release
    finally:
        release.set()
        thread.join(10)


def waiter(sessions: FrontendSessions, frontend: str, outcomes: list[str]) -> threading.Thread:
    def wait() -> None:
        try:
            with sessions.turn(frontend):
                outcomes.append('ran')
        except (SessionBusy, SessionsClosed) as e:
            outcomes.append(type(e).__name__)

    thread = threading.Thread(target=wait, name='test-waiter')
    thread.start()
    return thread


def test_more_waiting_events_than_max_pending_are_refused_at_once() -> None:
    sessions = FrontendSessions(max_pending=2)
    outcomes: list[str] = []
    with holding(sessions, 'a'):
        threads = [waiter(sessions, 'a', outcomes) for _ in range(2)]
        wait_for(lambda: sessions.queued('a') == 3, what='two waiting events')
        with pytest.raises(SessionBusy, match=r"2 events of frontend 'a' are waiting already"), sessions.turn('a'):
            pass
        with sessions.turn('b'):  # another frontend is not affected
            pass
    for thread in threads:
        thread.join(10)
    assert outcomes == ['ran', 'ran']
    assert sessions.queued('a') == 0


def test_a_wait_that_times_out_gives_its_place_up() -> None:
    sessions = FrontendSessions(turn_timeout=0.2)
    with holding(sessions, 'a') as release:
        started = time.monotonic()
        with pytest.raises(SessionBusy, match=r'waited 0\.2 s'), sessions.turn('a'):
            pass
        assert 0.15 < time.monotonic() - started < 5
        assert sessions.queued('a') == 1
        outcomes: list[str] = []
        thread = waiter(sessions, 'a', outcomes)
        wait_for(lambda: sessions.queued('a') == 2, what='the next event to wait')
        release.set()
        thread.join(10)
    assert outcomes == ['ran']


def test_idle_frontends_are_forgotten_but_not_busy_ones() -> None:
    sessions = FrontendSessions(history_timeout=60)
    for frontend in ('idle', 'busy'):
        with sessions.turn(frontend) as session:
            session.history(dict)
    assert sorted(sessions.frontend_ids()) == ['busy', 'idle']
    with holding(sessions, 'busy'):
        assert sessions.forget_idle(time.monotonic() + 30) == []
        assert sessions.forget_idle(time.monotonic() + 61) == ['idle']
    assert sessions.frontend_ids() == ['busy']
    assert FrontendSessions(history_timeout=None).forget_idle(time.monotonic() + 1e9) == []


def test_close_wakes_every_waiter_and_refuses_new_events() -> None:
    sessions = FrontendSessions()
    outcomes: list[str] = []
    with holding(sessions, 'a'):
        threads = [waiter(sessions, 'a', outcomes) for _ in range(3)]
        wait_for(lambda: sessions.queued('a') == 4, what='three waiting events')
        sessions.close()
        for thread in threads:
            thread.join(5)
        assert outcomes == ['SessionsClosed'] * 3
    with pytest.raises(SessionsClosed), sessions.turn('b'):
        pass


def test_a_history_is_created_once_until_reset() -> None:
    sessions = FrontendSessions()
    created: list[int] = []

    def create() -> list[int]:
        created.append(1)
        return []

    with sessions.turn('a') as session:
        first = session.history(create)
    with sessions.turn('a') as session:
        assert session.history(create) is first
        session.reset()
        assert session.history(create) is not first
    assert len(created) == 2


@pytest.mark.parametrize(
    ('options', 'message'),
    [
        ({'max_pending': 0}, 'max_pending'),
        ({'max_pending': True}, 'max_pending'),
        ({'turn_timeout': 0}, 'turn_timeout'),
        ({'history_timeout': -1}, 'history_timeout'),
    ],
)
def test_bad_options_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FrontendSessions(**options)  # type: ignore[arg-type]
