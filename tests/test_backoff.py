"""The one back-off policy (llnode.backoff) and that each retry loop of llnode uses it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from llnode.backoff import Backoff
from llnode.config import Settings
from llnode.converter.retries import RetryBook
from llnode.detector.model_store import RetryBackoff
from llnode.detector.outbox import Outbox


def test_delays_grow_by_factor_up_to_the_cap_with_jitter_below_the_ceiling() -> None:
    policy = Backoff(base=1.0, factor=2.0, cap=10.0, jitter=0.25)
    assert [policy.ceiling(n) for n in (0, 1, 2, 3, 4, 5, 1000)] == [1, 1, 2, 4, 8, 10, 10]
    for failures in range(1, 8):
        delays = [policy.delay(failures) for _ in range(50)]
        ceiling = policy.ceiling(failures)
        assert all(0.75 * ceiling <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jittered


def test_no_jitter_gives_the_ceiling_and_full_jitter_may_give_anything_below() -> None:
    assert Backoff(base=3, cap=30, jitter=0).delay(2) == 6
    assert Backoff(base=3, cap=30, jitter=1).delay(2, uniform=lambda low, high: low) == 0


def test_retry_after_is_honoured_within_floor_and_cap_without_jitter() -> None:
    policy = Backoff(base=0.5, cap=60, retry_after_floor=1.0)
    assert policy.delay(1, retry_after=7) == 7
    assert policy.delay(9, retry_after=7) == 7  # the server's word, not the failure count
    assert policy.delay(1, retry_after=0) == 1.0  # Retry-After: 0 must not make a loop spin
    assert policy.delay(1, retry_after=3600) == 60


def test_the_policy_is_an_immutable_value() -> None:
    policy = Backoff()
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.base = 3  # type: ignore[misc]
    assert policy.replace(jitter=0) == Backoff(jitter=0) and policy.jitter == 0.25
    assert Backoff(base=2) == Backoff(base=2) and hash(Backoff(base=2)) == hash(Backoff(base=2))


@pytest.mark.parametrize(
    'options',
    [{'base': -1}, {'base': 5, 'cap': 1}, {'factor': 0.5}, {'jitter': 1.5}, {'cap': float('inf')}, {'base': True}],
)
def test_bad_policies_are_refused(options: dict[str, float]) -> None:
    with pytest.raises(ValueError, match='Backoff'):
        Backoff(**options)


def test_every_retry_loop_uses_a_jittered_policy(tmp_path: Path) -> None:
    """The outbox, the converter and the model updates (the socket and the trainer: their own tests) back off
    with jitter, so detectors that lose the Loop together do not retry in lockstep."""
    settings = Settings(host='127.0.0.1:1', organization='o', project='p', data_folder=tmp_path)
    outbox = Outbox(settings, min_backoff=2, max_backoff=30)
    try:
        assert outbox.backoff == Backoff(base=2, cap=30, retry_after_floor=outbox.backoff.retry_after_floor)
    finally:
        outbox.close()
    assert RetryBook(retry_delay=5, max_retry_delay=300).backoff == Backoff(base=5, cap=300)
    assert RetryBackoff().policy == Backoff(base=5, cap=300)
    for policy in (outbox.backoff, RetryBook().backoff, RetryBackoff().policy):
        assert policy.jitter > 0
