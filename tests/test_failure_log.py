"""FailureLog: a repeating failure is logged when it starts, at most once a minute with a count, when its cause
changes and when it ends; its cause is there to show meanwhile."""

from __future__ import annotations

import logging

import pytest

from llnode.failure_log import FailureLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == 'test.failures']


def test_start_once_a_minute_change_and_end(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    failures = FailureLog(logging.getLogger('test.failures'), 'status sync', clock=clock)
    assert failures.cause is None and failures.failures == 0
    with caplog.at_level(logging.DEBUG, logger='test.failures'):
        failures.succeeded()  # nothing to end
        for _ in range(12):  # every 5 s for a minute: one line
            failures.failed("the Loop refused login for user 'u' (401)")
            clock.now += 5
        assert failures.cause == "the Loop refused login for user 'u' (401)" and failures.failures == 12
        failures.failed("the Loop refused login for user 'u' (401)")  # 60 s after the first line
        clock.now += 5
        failures.failed('the Loop at http://loop cannot be reached:\n connection refused')  # a new cause: at once
        clock.now += 100
        failures.succeeded()
        failures.succeeded()
    assert lines(caplog) == [
        ('WARNING', "status sync failed: the Loop refused login for user 'u' (401)"),
        (
            'WARNING',
            "status sync still fails (13 times in 60 s, 11 not logged): the Loop refused login for user 'u' (401)",
        ),
        ('WARNING', 'status sync still fails, now: the Loop at http://loop cannot be reached: connection refused'),
        ('INFO', 'status sync works again (after 14 failures in 3 min)'),
    ]
    assert failures.cause is None and failures.stats() == {'cause': None, 'failures': 0}


def test_a_traceback_goes_to_debug_only(caplog: pytest.LogCaptureFixture) -> None:
    failures = FailureLog(logging.getLogger('test.failures'), 'upload', clock=Clock())
    with caplog.at_level(logging.DEBUG, logger='test.failures'):
        failures.failed('boom', exc_info=RuntimeError('boom'))
    warning, debug = caplog.records
    assert warning.levelno == logging.WARNING and warning.exc_info is None
    assert debug.levelno == logging.DEBUG and debug.exc_info is not None
