"""The one back-off policy of llnode: how long to wait before the next try after failures in a row.

Every retry loop (the Loop socket's reconnect, the outbox's uploads, the detector's model updates, the trainer's
stage retries, the converter's model retries) asks a :class:`Backoff` value for its delay, so they all grow the
same way and all carry jitter: nodes that lose the Loop together do not come back in lockstep. A server's
``Retry-After`` is honoured within the policy's bounds. The value is immutable (like urllib3's ``Retry``); a
variant is made with :meth:`Backoff.replace`.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable

#: Exponent beyond which the delay is the cap anyway (keeps ``factor ** n`` from overflowing).
_MAX_EXPONENT = 64


@dataclasses.dataclass(frozen=True)
class Backoff:
    """Exponential back-off with jitter: after ``n`` failures in a row the next try waits
    ``min(cap, base * factor ** (n - 1))`` seconds, less a random part of up to ``jitter`` of it.

    ``jitter`` is a fraction from 0 (none: every node waits the same) to 1 (anything from 0 to the full delay);
    the default 0.25 draws from ``[0.75, 1] * delay``. A ``Retry-After`` the server sent replaces the computed
    delay, without jitter, but never below ``retry_after_floor`` (``Retry-After: 0`` must not make a loop spin)
    nor above ``cap``.
    """

    base: float = 1.0
    factor: float = 2.0
    cap: float = 60.0
    jitter: float = 0.25
    retry_after_floor: float = 1.0

    def __post_init__(self) -> None:
        for name in ('base', 'factor', 'cap', 'jitter', 'retry_after_floor'):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f'Backoff.{name} must be a finite number, got {value!r}')
        if self.base < 0 or self.cap < self.base:
            raise ValueError(f'Backoff needs 0 <= base <= cap, got base={self.base}, cap={self.cap}')
        if self.factor < 1:
            raise ValueError(f'Backoff.factor must be at least 1, got {self.factor}')
        if not 0 <= self.jitter <= 1:
            raise ValueError(f'Backoff.jitter must be from 0 to 1, got {self.jitter}')
        if self.retry_after_floor < 0:
            raise ValueError(f'Backoff.retry_after_floor must not be negative, got {self.retry_after_floor}')

    def ceiling(self, failures: int) -> float:
        """The delay after ``failures`` failures in a row before jitter (the longest it can be)."""
        exponent = min(max(failures, 1) - 1, _MAX_EXPONENT)
        return float(min(self.cap, self.base * self.factor**exponent))

    def delay(
        self,
        failures: int,
        *,
        retry_after: float | None = None,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> float:
        """Seconds to wait after ``failures`` failures in a row (``retry_after``: the server's ``Retry-After``)."""
        if retry_after is not None and math.isfinite(retry_after):
            return float(min(self.cap, max(self.retry_after_floor, retry_after)))
        ceiling = self.ceiling(failures)
        if self.jitter == 0:
            return ceiling
        return float(uniform((1.0 - self.jitter) * ceiling, ceiling))

    def replace(self, **changes: float) -> Backoff:
        """A copy with some fields changed (``policy.replace(jitter=0)``)."""
        return dataclasses.replace(self, **changes)
