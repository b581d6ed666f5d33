"""Per-model retry bookkeeping of a converter: when a failed model may be tried again, and when to give up.

A model whose conversion failed is not tried again every cycle: the n-th failure in a row waits
``retry_delay * 2**(n-1)`` seconds (at most ``max_retry_delay``, less up to a quarter of jitter; the policy is
:class:`llnode.backoff.Backoff`) before the next attempt. Failures that only say
the Loop is unavailable (no connection, a timeout, 5xx, 408, 429) back off the same way but do not count toward
``max_attempts``: an outage is waited out, it never makes the node give a model up. After ``max_attempts``
counted failures the model is given up; it stays in the book (and in the status errors) until the Loop stops
listing it or :meth:`RetryBook.clear` forgets it.

With a ``path``, the book is kept on disk (written durably after each change), so a restarted converter does not
try a given-up model again, and counted attempts go on where they stopped; a model that was waiting for its
back-off is due at once after a restart. A file that cannot be read is reported and the book starts empty.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llnode.backoff import Backoff
from llnode.durable import write_json

logger = logging.getLogger('llnode.converter')

#: The first retry of a failed model after 5 s, doubling up to 300 s (the trainer's stage back-off).
RETRY_DELAY = 5.0
MAX_RETRY_DELAY = 300.0
#: Counted failures after which a model is given up.
MAX_ATTEMPTS = 3
#: Attempt times kept per model (the record of a model retried forever must not grow without bound).
KEPT_ATTEMPT_TIMES = 20


@dataclass(frozen=True)
class ModelFailure:
    """What went wrong with one model so far (a snapshot; the book keeps the live record)."""

    model_id: str
    version: str | None
    #: failures that count toward ``max_attempts`` (not those of an unavailable Loop)
    attempts: int
    #: failures in a row of any kind; they set the back-off
    failures: int
    #: the last failure, as ``ExceptionType: message``
    error: str
    #: True once ``max_attempts`` counted failures were reached: never tried again
    given_up: bool
    #: ``time.monotonic()`` when the next attempt is due; None when given up
    next_attempt_at: float | None
    #: ``time.monotonic()`` at the start of each failed attempt (the last ``KEPT_ATTEMPT_TIMES``)
    attempted_at: tuple[float, ...] = field(default_factory=tuple)

    def describe(self, max_attempts: int | None) -> str:
        """One line for the status errors."""
        if self.given_up:
            return f'given up after {self.attempts} failed attempt{"s" if self.attempts != 1 else ""}: {self.error}'
        limit = f' of {max_attempts}' if max_attempts is not None else ''
        if self.attempts == 0:
            return f'the Loop was unavailable ({self.failures} times, not counted): {self.error}'
        return f'attempt {self.attempts}{limit} failed: {self.error}'


class RetryBook:
    """The failure records of one converter, keyed by model id; thread-safe (``_lock`` guards ``_records``).

    ``backoff`` replaces the policy built from ``retry_delay`` and ``max_retry_delay`` (e.g. one without jitter).
    """

    def __init__(
        self,
        *,
        max_attempts: int | None = MAX_ATTEMPTS,
        retry_delay: float = RETRY_DELAY,
        max_retry_delay: float = MAX_RETRY_DELAY,
        clock: Callable[[], float] = time.monotonic,
        path: Path | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        if max_attempts is not None and (
            isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1
        ):
            raise ValueError(f'max_attempts must be an integer >= 1 or None (never give up), got {max_attempts!r}')
        if not (isinstance(retry_delay, (int, float)) and retry_delay > 0):
            raise ValueError(f'retry_delay must be a positive number of seconds, got {retry_delay!r}')
        if not (isinstance(max_retry_delay, (int, float)) and max_retry_delay >= retry_delay):
            raise ValueError(
                f'max_retry_delay must be a number >= retry_delay ({retry_delay}), got {max_retry_delay!r}'
            )
        self.max_attempts = max_attempts
        self.retry_delay = float(retry_delay)
        self.max_retry_delay = float(max_retry_delay)
        self.backoff = backoff or Backoff(base=self.retry_delay, cap=self.max_retry_delay)
        self._clock = clock
        self._lock = threading.Lock()
        self._records: dict[str, ModelFailure] = {}
        self.path = path
        self._save_lock = threading.Lock()  # one write at a time, each of the state when it started
        if path is not None:
            self._records = self._load(path)

    def _load(self, path: Path) -> dict[str, ModelFailure]:
        try:
            data = json.loads(path.read_text(encoding='utf-8'))
            if not isinstance(data, dict):
                raise ValueError(f'expected an object, got {type(data).__name__}')
            return {model_id: self._restored(model_id, entry) for model_id, entry in data.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError, KeyError) as e:
            logger.error('ignoring the saved conversion failures %s: %s', path, e)
            return {}

    def _restored(self, model_id: str, entry: Any) -> ModelFailure:
        if not isinstance(entry, dict):
            raise ValueError(f'bad record for model {model_id!r}')
        attempts, failures, error = int(entry['attempts']), int(entry['failures']), str(entry['error'])
        version = entry.get('version')
        if attempts < 0 or failures < 1 or (version is not None and not isinstance(version, str)):
            raise ValueError(f'bad record for model {model_id!r}')
        given_up = self.max_attempts is not None and attempts >= self.max_attempts  # the limit may have changed
        return ModelFailure(model_id, version, attempts, failures, error, given_up, None if given_up else self._clock())

    def _save(self) -> None:
        if self.path is None:
            return
        with self._save_lock:
            with self._lock:
                data = {
                    model_id: {'version': r.version, 'attempts': r.attempts, 'failures': r.failures, 'error': r.error}
                    for model_id, r in self._records.items()
                }
            try:
                write_json(self.path, data)
            except OSError as e:
                logger.warning('cannot save the conversion failures to %s: %s', self.path, e)

    def due(self, model_id: str) -> bool:
        """Whether ``model_id`` may be tried now: never failed, or its back-off has passed and it is not given up."""
        with self._lock:
            record = self._records.get(model_id)
        if record is None:
            return True
        return record.next_attempt_at is not None and self._clock() >= record.next_attempt_at

    def record_failure(
        self, model_id: str, version: str | None, error: str, *, counted: bool, started_at: float
    ) -> ModelFailure:
        """Note a failed attempt that started at ``started_at`` (``time.monotonic()``); returns the new record."""
        with self._lock:
            old = self._records.get(model_id)
            attempts = (old.attempts if old else 0) + (1 if counted else 0)
            failures = (old.failures if old else 0) + 1
            given_up = self.max_attempts is not None and attempts >= self.max_attempts
            next_at = None if given_up else self._clock() + self.backoff.delay(failures)
            times = ((old.attempted_at if old else ()) + (started_at,))[-KEPT_ATTEMPT_TIMES:]
            record = ModelFailure(model_id, version, attempts, failures, error, given_up, next_at, times)
            self._records[model_id] = record
        self._save()
        return record

    def forget(self, model_id: str) -> None:
        """The model was converted (or needs no conversion any more): drop its record."""
        with self._lock:
            known = self._records.pop(model_id, None) is not None
        if known:
            self._save()

    def prune(self, listed: Iterable[str]) -> list[str]:
        """Drop the records of models that are not ``listed`` any more (deleted, or converted elsewhere)."""
        keep = set(listed)
        with self._lock:
            gone = [model_id for model_id in self._records if model_id not in keep]
            for model_id in gone:
                del self._records[model_id]
        if gone:
            self._save()
        return gone

    def clear(self, *, given_up_only: bool = False) -> list[str]:
        """Forget failures (all, or only the given-up models) so that they are tried again at once."""
        with self._lock:
            chosen = [m for m, r in self._records.items() if r.given_up or not given_up_only]
            for model_id in chosen:
                del self._records[model_id]
        if chosen:
            self._save()
        return chosen

    def next_due(self) -> float | None:
        """The earliest ``time.monotonic()`` at which a model that failed may be tried again, or None."""
        with self._lock:
            times = [r.next_attempt_at for r in self._records.values() if r.next_attempt_at is not None]
        return min(times) if times else None

    def records(self) -> dict[str, ModelFailure]:
        """Every record, by model id (snapshots)."""
        with self._lock:
            return dict(self._records)  # the records are frozen: sharing them is safe

    def describe(self) -> dict[str, str]:
        """The status errors: one line per model that failed."""
        return {model_id: record.describe(self.max_attempts) for model_id, record in self.records().items()}
