"""Training callbacks: code that runs at fixed moments of a user's training loop, ordered and rank-aware.

A :class:`Callback` has one public hook per moment (``on_train_begin``, ``on_epoch_begin``, ``on_batch_end``,
``on_epoch_end``, ``on_train_end``, and ``on_exception`` for a failed or aborted training). The driver of
:mod:`llnode.trainer.inprocess` calls them in the training thread, sorted by ``execution_order`` (lower first,
registration order for ties) and only on the ranks a callback is meant for (``ranks=(0,)``: only the process of
rank 0 under torch.distributed, so that only one process talks to the Loop).

Every hook gets the run first, then the epoch or batch index where there is one, then ``logs``: a read-only view of
what the user's loop reported for this moment, over the driver's context. Keys the library uses:

``model``             the model being trained (the best checkpoint saves it); given to ``hooks.train_begin(model=...)``
``epoch``             the current epoch (also set in ``on_batch_end``)
``epochs``            the number of epochs, when the loop gave it (progress)
``batches``           the number of batches per epoch, when known (progress)
``confusion_matrix``  at epoch end: ``{category_uuid: {'tp': int, 'fp': int, 'fn': int}}`` (metrics, best model)
``stopped``           in ``on_train_end``: True when the training ended because a graceful stop was requested

The library's own callbacks are here too: :class:`StopCheck` (stop and abort reach the loop within one batch),
:class:`ProgressReporter`, :class:`BestModelTracker`, :class:`BestCheckpoint` and :class:`LoopMetricsReporter`.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import operator
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from llnode.durable import atomic_writer, remove_stale_temps, write_json
from llnode.schema import Category
from llnode.trainer.logic import BestState, TrainingRun

logger = logging.getLogger('llnode.trainer.callbacks')

#: execution orders of the library callbacks; a user callback (default order 0) runs before all of them
ORDER_BEST_TRACKER = 100
ORDER_CHECKPOINT = 200
ORDER_LOOP_METRICS = 300
ORDER_PROGRESS = 400
ORDER_STOP_CHECK = 1_000_000  # last: every other callback of the moment has run before a stop is raised

#: the counts of one category in a confusion matrix, in wire order
COUNT_KEYS = ('tp', 'fp', 'fn')

Logs = Mapping[str, Any]
ConfusionMatrix = dict[str, dict[str, int]]


# ---------------------------------------------------------------------------------------------------------------
# Ranks


def current_rank(env: Mapping[str, str] | None = None) -> int:
    """This process's rank: ``torch.distributed.get_rank()`` when a process group is initialised, else env ``RANK``,
    else 0.

    torch is never imported here: a process group can only exist if the training code imported torch already, so
    when torch is not in ``sys.modules`` there is none to ask.
    """
    if 'torch' in sys.modules:
        distributed = importlib.import_module('torch.distributed')
        if distributed.is_available() and distributed.is_initialized():
            return int(distributed.get_rank())
    value = (os.environ if env is None else env).get('RANK', '').strip()
    if not value:
        return 0
    try:
        rank = int(value)
    except ValueError:
        raise ValueError(f'environment variable RANK must be a non-negative integer, got {value!r}') from None
    if rank < 0:
        raise ValueError(f'environment variable RANK must be a non-negative integer, got {value!r}')
    return rank


# ---------------------------------------------------------------------------------------------------------------
# The base class


class _Unset:
    pass


_UNSET: Any = _Unset()


class Callback:
    """Base class of training callbacks: override the hooks you need; the others do nothing.

    ``execution_order``: lower runs first; callbacks with the same order run in the order they were given.
    ``ranks``: the ranks this callback runs on (``(0,)``: only rank 0), or None for every rank. Both can be set as
    class attributes or given to ``__init__``; a subclass need not call ``super().__init__()``.
    """

    execution_order: int = 0
    ranks: tuple[int, ...] | None = None

    def __init__(self, *, execution_order: int | None = None, ranks: Iterable[int] | None = _UNSET) -> None:
        if execution_order is not None:
            self.execution_order = execution_order
        if ranks is not _UNSET:
            self.ranks = None if ranks is None else tuple(ranks)
        check_callback(self)

    def runs_on(self, rank: int) -> bool:
        """Whether this callback runs in the process of ``rank``."""
        return self.ranks is None or rank in self.ranks

    def on_train_begin(self, run: TrainingRun, logs: Logs) -> None:
        """The training loop starts (before the first epoch)."""

    def on_epoch_begin(self, run: TrainingRun, epoch: int, logs: Logs) -> None:
        """Epoch ``epoch`` starts."""

    def on_batch_end(self, run: TrainingRun, batch: int, logs: Logs) -> None:
        """Training batch ``batch`` (counted from 0 in each epoch) is done; ``logs`` holds e.g. its ``loss``."""

    def on_epoch_end(self, run: TrainingRun, epoch: int, logs: Logs) -> None:
        """Epoch ``epoch`` is done; ``logs`` holds what the loop measured, e.g. ``confusion_matrix``."""

    def on_train_end(self, run: TrainingRun, logs: Logs) -> None:
        """The training ended normally or by a graceful stop (``logs['stopped']``); the model will be uploaded.

        Not called on an abort or an error: see :meth:`on_exception`.
        """

    def on_exception(self, run: TrainingRun, error: BaseException) -> None:
        """The training ended with ``error``: an abort (``TrainingInterrupted`` with ``aborted``) or a failure.

        For releasing resources; an exception raised here is logged and does not replace ``error``.
        """

    def __repr__(self) -> str:
        ranks = 'all ranks' if self.ranks is None else f'ranks {list(self.ranks)}'
        return f'<{type(self).__name__} order {self.execution_order}, {ranks}>'


def check_callback(callback: Any) -> None:
    """Raise TypeError/ValueError with a clear message if ``callback`` is not a usable :class:`Callback`."""
    if not isinstance(callback, Callback):
        raise TypeError(f'a training callback must be a llnode Callback, got {type(callback).__name__}')
    order = callback.execution_order
    if isinstance(order, bool) or not isinstance(order, int):
        raise TypeError(f'{type(callback).__name__}.execution_order must be an int, got {order!r}')
    ranks = callback.ranks
    if ranks is not None and (
        not isinstance(ranks, tuple)
        or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 0 for r in ranks)
    ):
        raise ValueError(f'{type(callback).__name__}.ranks must be None or a tuple of non-negative ints, got {ranks!r}')


def ordered(callbacks: Iterable[Callback]) -> list[Callback]:
    """The callbacks sorted by ``execution_order`` (stable: ties keep their given order), each one checked."""
    result = list(callbacks)
    for callback in result:
        check_callback(callback)
    return sorted(result, key=operator.attrgetter('execution_order'))


# ---------------------------------------------------------------------------------------------------------------
# Confusion matrices and scores


def validate_confusion_matrix(matrix: Any) -> ConfusionMatrix:
    """A plain-int copy of ``matrix`` (``{category_uuid: {'tp', 'fp', 'fn'}}``); ValueError naming what is wrong."""
    if not isinstance(matrix, Mapping):
        raise ValueError(
            f'a confusion matrix must be a dict {{category_uuid: {{tp, fp, fn}}}}, got {type(matrix).__name__}'
        )
    result: ConfusionMatrix = {}
    for key, counts in matrix.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f'confusion matrix keys must be category uuids (non-empty strings), got {key!r}')
        if not isinstance(counts, Mapping):
            raise ValueError(f'confusion matrix entry {key!r} must be a dict with tp, fp, fn, got {counts!r}')
        if set(counts) != set(COUNT_KEYS):
            raise ValueError(
                f'confusion matrix entry {key!r} must have exactly the keys tp, fp, fn, got {sorted(counts)}'
            )
        row: dict[str, int] = {}
        for name in COUNT_KEYS:
            value = counts[name]
            try:
                if isinstance(value, bool):
                    raise TypeError
                number = operator.index(value)
            except TypeError:
                raise ValueError(f'confusion matrix {key!r}.{name} must be an integer, got {value!r}') from None
            if number < 0:
                raise ValueError(f'confusion matrix {key!r}.{name} must not be negative, got {number}')
            row[name] = number
        result[key] = row
    return result


def f1_score(matrix: Mapping[str, Mapping[str, int]]) -> float:
    """F1 over all categories pooled (micro F1): ``2·TP / (2·TP + FP + FN)``; 0.0 when there is nothing to count."""
    tp = sum(row['tp'] for row in matrix.values())
    fp = sum(row['fp'] for row in matrix.values())
    fn = sum(row['fn'] for row in matrix.values())
    denominator = 2 * tp + fp + fn
    return 2 * tp / denominator if denominator else 0.0


class ConfusionCounter:
    """Adds up tp/fp/fn per category uuid while a loop evaluates, then gives the Loop's confusion matrix.

    ``categories`` (uuids or :class:`Category`) get a row even when nothing was counted for them.
    """

    def __init__(self, categories: Iterable[str | Category] = ()) -> None:
        self._rows: ConfusionMatrix = {}
        for category in categories:
            self._row(category.id if isinstance(category, Category) else category)

    def _row(self, category_id: str) -> dict[str, int]:
        if not isinstance(category_id, str) or not category_id:
            raise ValueError(f'a category uuid must be a non-empty string, got {category_id!r}')
        return self._rows.setdefault(category_id, dict.fromkeys(COUNT_KEYS, 0))

    def add(self, category_id: str, *, tp: int = 0, fp: int = 0, fn: int = 0) -> None:
        """Count matches of one category (e.g. after matching boxes by IoU)."""
        for name, value in (('tp', tp), ('fp', fp), ('fn', fn)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f'{name} must be a non-negative int, got {value!r}')
        row = self._row(category_id)
        row['tp'] += tp
        row['fp'] += fp
        row['fn'] += fn

    def add_image(self, predicted: Iterable[str], expected: Iterable[str]) -> None:
        """Count one image by category uuids alone (classification, or label presence): per category, as many
        predictions as annotations match (tp); extra predictions are fp, missing ones fn."""
        predicted_counts: dict[str, int] = {}
        expected_counts: dict[str, int] = {}
        for category_id in predicted:
            predicted_counts[category_id] = predicted_counts.get(category_id, 0) + 1
        for category_id in expected:
            expected_counts[category_id] = expected_counts.get(category_id, 0) + 1
        for category_id in {**predicted_counts, **expected_counts}:
            hits = min(predicted_counts.get(category_id, 0), expected_counts.get(category_id, 0))
            self.add(
                category_id,
                tp=hits,
                fp=predicted_counts.get(category_id, 0) - hits,
                fn=expected_counts.get(category_id, 0) - hits,
            )

    def as_dict(self) -> ConfusionMatrix:
        """The confusion matrix so far (a copy)."""
        return {key: dict(row) for key, row in self._rows.items()}


# ---------------------------------------------------------------------------------------------------------------
# The library callbacks


class StopCheck(Callback):
    """Raises ``TrainingInterrupted`` (through ``run.check_stop()``) at every epoch begin, batch end and epoch end
    once a stop or abort was requested, so it reaches the loop within one batch. It runs last at each moment, so
    the other callbacks of that moment (metrics, checkpoint) still see the batch or epoch that just ended."""

    execution_order = ORDER_STOP_CHECK

    def on_epoch_begin(self, run: TrainingRun, epoch: int, logs: Logs) -> None:
        run.check_stop()

    def on_batch_end(self, run: TrainingRun, batch: int, logs: Logs) -> None:
        run.check_stop()

    def on_epoch_end(self, run: TrainingRun, epoch: int, logs: Logs) -> None:
        run.check_stop()


class ProgressReporter(Callback):
    """``run.set_progress`` from the epoch and batch counts, when the loop gave the totals (``epochs``, and
    ``batches`` per epoch for progress within an epoch). Rank 0 only."""

    execution_order = ORDER_PROGRESS
    ranks = (0,)

    @staticmethod
    def _count(logs: Logs, key: str) -> int | None:
        value = logs.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None

    def _report(self, run: TrainingRun, done_epochs: float, logs: Logs) -> None:
        epochs = self._count(logs, 'epochs')
        if epochs is not None:
            run.set_progress(min(max(done_epochs / epochs, 0.0), 1.0))

    def on_batch_end(self, run: TrainingRun, batch: int, logs: Logs) -> None:
        batches = self._count(logs, 'batches')
        epoch = logs.get('epoch')
        if batches is not None and isinstance(epoch, int):
            self._report(run, epoch + min(batch + 1, batches) / batches, logs)

    def on_epoch_end(self, run: TrainingRun, epoch: int, logs: Logs) -> None:
        self._report(run, epoch + 1, logs)


class BestModelTracker(Callback):
    """Decides at each epoch end whether the reported ``confusion_matrix`` is a new best, by ``score`` (higher is
    better; default :func:`f1_score`). Later callbacks read ``improved`` (True only in the epoch that improved).

    It runs on every rank, so each rank decides alike; the first scored epoch is always a new best.
    """

    execution_order = ORDER_BEST_TRACKER

    def __init__(
        self,
        score: Callable[[ConfusionMatrix], float] = f1_score,
        *,
        key: str = 'confusion_matrix',
        execution_order: int | None = None,
    ) -> None:
        super().__init__(execution_order=execution_order)
        self.score = score
        self.key = key
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self.best_matrix: ConfusionMatrix | None = None
        self.improved = False

    def restore(self, score: float, epoch: int | None, matrix: ConfusionMatrix) -> None:
        """Start from a best found earlier (e.g. before a restart), so a worse model does not replace it."""
        self.best_score, self.best_epoch, self.best_matrix = float(score), epoch, validate_confusion_matrix(matrix)

    def on_train_begin(self, run: TrainingRun, logs: Logs) -> None:
        self.improved = False

    def on_epoch_begin(self, run: TrainingRun, epoch: int, logs: Logs) -> None:
        self.improved = False

    def on_epoch_end(self, run: TrainingRun, epoch: int, logs: Logs) -> None:
        self.improved = False
        raw = logs.get(self.key)
        if raw is None:
            return
        matrix = validate_confusion_matrix(raw)
        score = float(self.score(matrix))
        if math.isnan(score):
            raise ValueError(f'the score of epoch {epoch} is NaN (score function {self.score!r})')
        if self.best_score is None or score > self.best_score:
            self.best_score, self.best_epoch, self.best_matrix = score, epoch, matrix
            self.improved = True


def save_state_dict(model: Any, handle: IO[bytes]) -> None:
    """The default checkpoint writer: ``torch.save(model.state_dict(), handle)`` (a DDP/DataParallel wrapper is
    unwrapped, so the keys carry no ``module.`` prefix). torch is imported here, when a checkpoint is written."""
    torch = importlib.import_module('torch')
    parallel = (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)
    if isinstance(model, parallel):
        model = model.module
    if not callable(getattr(model, 'state_dict', None)):
        raise TypeError(
            f'the default checkpoint writer needs a torch module with state_dict(), got {type(model).__name__}'
        )
    torch.save(model.state_dict(), handle)


class BestCheckpoint(Callback):
    """Keeps the best model's weights in ``path`` for upload, written crash-safely (temp file in the same folder,
    fsync, ``os.replace``, folder fsync): the file is the previous best or the new best, never half of one.

    It saves when the tracker saw a new best at epoch end, and at train end if no checkpoint exists yet (a training
    without metrics, or stopped before its first scored epoch, still uploads the model it has). Next to the weights
    ``best.json`` records epoch, score and confusion matrix, and seeds the tracker when the stage runs again.
    ``save(model, handle)`` writes the model into a binary file handle (default :func:`save_state_dict`); the model
    is ``logs['model']``. Rank 0 only.
    """

    execution_order = ORDER_CHECKPOINT
    ranks = (0,)

    def __init__(
        self,
        path: str | os.PathLike[str],
        tracker: BestModelTracker,
        *,
        save: Callable[[Any, IO[bytes]], None] = save_state_dict,
        execution_order: int | None = None,
        ranks: Iterable[int] | None = _UNSET,
    ) -> None:
        super().__init__(execution_order=execution_order, ranks=ranks)
        self.path = Path(path)
        self.tracker = tracker
        self.save = save
        self.saved_epoch: int | None = None  # the epoch of the checkpoint written in this training, if any
        self._warned_no_model = False

    @property
    def info_path(self) -> Path:
        """``best.json`` beside the weights."""
        return self.path.with_name('best.json')

    def on_train_begin(self, run: TrainingRun, logs: Logs) -> None:
        self.saved_epoch = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.path.parent)
        info = self._read_info(run)
        if info is not None:
            self.tracker.restore(info['score'], info['epoch'], info['confusion_matrix'])
            run.logger.info('best checkpoint of an earlier attempt: epoch %s, score %.4f', info['epoch'], info['score'])

    def _read_info(self, run: TrainingRun) -> dict[str, Any] | None:
        if not (self.path.is_file() and self.info_path.is_file()):
            return None
        try:
            info = json.loads(self.info_path.read_text())
            score = float(info['score'])
            epoch = info['epoch']
            if epoch is not None and not isinstance(epoch, int):
                raise ValueError(f'epoch {epoch!r}')
            matrix = validate_confusion_matrix(info['confusion_matrix'])
        except (OSError, ValueError, KeyError, TypeError) as error:
            run.logger.warning('ignoring unreadable %s: %s', self.info_path, error)
            return None
        return {'score': score, 'epoch': epoch, 'confusion_matrix': matrix}

    def on_epoch_end(self, run: TrainingRun, epoch: int, logs: Logs) -> None:
        if self.tracker.improved:
            self._save(run, logs, epoch, with_metrics=True)

    def on_train_end(self, run: TrainingRun, logs: Logs) -> None:
        if self.saved_epoch is None and not self.path.is_file():
            self._save(run, logs, logs.get('epoch'), with_metrics=False)

    def _save(self, run: TrainingRun, logs: Logs, epoch: int | None, *, with_metrics: bool) -> None:
        model = logs.get('model')
        if model is None:
            if not self._warned_no_model:
                run.logger.warning('no model to checkpoint: give it with hooks.train_begin(model=...) or log model=...')
                self._warned_no_model = True
            return
        with atomic_writer(self.path, 'wb') as handle:
            self.save(model, handle)
        if with_metrics and self.tracker.best_score is not None:
            info = {'epoch': epoch, 'score': self.tracker.best_score, 'confusion_matrix': self.tracker.best_matrix}
            write_json(self.info_path, info)
        elif self.info_path.exists():
            self.info_path.unlink()
        self.saved_epoch = epoch if isinstance(epoch, int) else -1
        run.logger.debug('best checkpoint written: %s (epoch %s)', self.path, epoch)


class LoopMetricsReporter(Callback):
    """Publishes each new best (decided by the tracker) to the Loop with ``run.report_best`` — the run rate-limits
    and sends from its own thread, so this never waits on the network. Rank 0 only.

    Keys must be category uuids: a key that is a category's name is refused with the uuid to use; a key the
    training's categories do not know is logged once.
    """

    execution_order = ORDER_LOOP_METRICS
    ranks = (0,)

    def __init__(
        self,
        tracker: BestModelTracker,
        checkpoint: BestCheckpoint | None = None,
        *,
        execution_order: int | None = None,
        ranks: Iterable[int] | None = _UNSET,
    ) -> None:
        super().__init__(execution_order=execution_order, ranks=ranks)
        self.tracker = tracker
        self.checkpoint = checkpoint
        self.reported: list[BestState] = []
        self._unknown_keys: set[str] = set()

    def _check_keys(self, run: TrainingRun, matrix: ConfusionMatrix) -> None:
        ids = {category.id for category in run.categories}
        by_name = {category.name: category.id for category in run.categories}
        for key in matrix:
            if key in ids:
                continue
            if key in by_name:
                raise ValueError(
                    f'confusion matrix keys must be category uuids, {key!r} is a name (use {by_name[key]!r})'
                )
            if key not in self._unknown_keys:
                self._unknown_keys.add(key)
                run.logger.warning('confusion matrix key %r is not a category of this training', key)

    def on_epoch_end(self, run: TrainingRun, epoch: int, logs: Logs) -> None:
        if not self.tracker.improved or self.tracker.best_matrix is None:
            return
        matrix = {key: dict(row) for key, row in self.tracker.best_matrix.items()}
        self._check_keys(run, matrix)
        meta: dict[str, Any] = {'score': self.tracker.best_score}
        if self.checkpoint is not None and self.checkpoint.saved_epoch == epoch:
            meta['checkpoint'] = str(self.checkpoint.path)
        state = BestState(confusion_matrix=matrix, epoch=epoch, meta_information=meta)
        run.report_best(state)
        self.reported.append(state)


def library_callbacks(
    checkpoint_path: str | os.PathLike[str],
    *,
    score: Callable[[ConfusionMatrix], float] = f1_score,
    save: Callable[[Any, IO[bytes]], None] = save_state_dict,
) -> Sequence[Callback]:
    """The callbacks every in-process training gets: tracker, checkpoint, Loop metrics, progress, stop check."""
    tracker = BestModelTracker(score)
    checkpoint = BestCheckpoint(checkpoint_path, tracker, save=save)
    return [tracker, checkpoint, LoopMetricsReporter(tracker, checkpoint), ProgressReporter(), StopCheck()]
