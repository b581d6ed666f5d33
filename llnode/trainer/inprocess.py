"""In-process trainers: the user's own training loop (plain torch, say) runs in the node's training thread and
reports through callbacks.

The user subclasses :class:`InProcessTrainerLogic` and implements ``fit(run, hooks)`` (the loop) and ``detect``;
``hooks`` is a :class:`TrainingHooks` driver that runs the callbacks (:mod:`llnode.trainer.callbacks`) at each
moment of the loop. The library's callbacks are always installed besides the user's own (``callbacks(run)``):
stop/abort checks, progress, best-model tracking, a crash-safe best checkpoint (the default ``model_files``) and
publishing each new best confusion matrix to the Loop::

    class MyTrainer(InProcessTrainerLogic):
        model_format = 'my_torch'

        def fit(self, run, hooks):
            model = make_model(len(run.categories))
            hooks.train_begin(model=model)               # the model is what the best checkpoint saves
            for epoch in hooks.epochs(20):               # epoch_begin / epoch_end around each epoch
                for images, targets in hooks.batches(loader):   # batch_end after each batch: stop/abort land here
                    loss = step(model, images, targets)
                    hooks.log(loss=float(loss))          # goes to this batch's on_batch_end
                hooks.log(confusion_matrix=evaluate(model))  # {category_uuid: {tp, fp, fn}} for epoch_end

        def detect(self, run, model_info, model_folder, image_paths): ...

Stop and abort: once the Loop asks for either, the next batch end (or epoch begin/end) raises
``TrainingInterrupted`` out of the user's loop. On a graceful stop the ``on_train_end`` callbacks still run (with
``logs['stopped']`` True; the best checkpoint exists, else the current model is saved) and the model is uploaded.
On an abort ``on_train_end`` does not run, ``on_exception`` does, and nothing is uploaded. A loop may also look at
``hooks.should_stop`` and end early by itself. ``fit`` returning normally ends the training (``on_train_end`` runs
if the loop did not call ``hooks.train_end()`` itself).

Threads: ``fit`` and every callback run in the node's training thread; the stop and abort flags are set from a
Socket.IO thread and only read here (Events inside the run), so callbacks need no locks of their own.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import ChainMap
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any, TypeVar

from llnode.trainer.callbacks import (
    Callback,
    ConfusionMatrix,
    current_rank,
    f1_score,
    library_callbacks,
    ordered,
    save_state_dict,
)
from llnode.trainer.logic import CriticalError, TrainerLogic, TrainingInterrupted, TrainingRun

logger = logging.getLogger('llnode.trainer.inprocess')

T = TypeVar('T')


def _count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f'{name} must be an int >= {minimum}, got {value!r}')
    return value


class TrainingHooks:
    """The driver a training loop calls at each moment; it runs the callbacks in order, on their ranks.

    Explicit calls (``train_begin``, ``epoch_begin(e)``, ``batch_end(i)``, ``epoch_end(e)``, ``train_end()``) and
    the iterator helpers (``epochs(n)``, ``batches(loader)``) can be mixed. ``log(**values)`` collects values for
    the next moment that takes logs (batch end, epoch end, train end); ``logs`` given to a call are added on top.
    The first epoch or batch call begins the training if ``train_begin`` was not called. The rank is read at
    construction and again at ``train_begin``: initialise a torch process group before ``train_begin``.
    """

    def __init__(self, run: TrainingRun, callbacks: Iterable[Callback], *, rank: int | None = None) -> None:
        self.run = run
        self.callbacks: list[Callback] = ordered(callbacks)
        self._given_rank = rank
        self.rank = current_rank() if rank is None else _count('rank', rank, 0)
        self.context: dict[str, Any] = {}  # model, epochs, batches, epoch: seen by every hook under the logs
        self.epoch: int | None = None
        self.started = False
        self.ended = False
        self._pending: dict[str, Any] = {}
        self._active = self._select()

    def _select(self) -> list[Callback]:
        return [callback for callback in self.callbacks if callback.runs_on(self.rank)]

    # -- state the loop may read -------------------------------------------------------------------------------

    @property
    def model(self) -> Any:
        """The model the checkpoint saves (``train_begin(model=...)``; may be replaced later)."""
        return self.context.get('model')

    @model.setter
    def model(self, model: Any) -> None:
        self.context['model'] = model

    @property
    def should_stop(self) -> bool:
        """A stop or abort was requested: a loop that checks this may end early by itself."""
        return self.run.stop_requested or self.run.abort_requested

    def log(self, **values: Any) -> None:
        """Values for the next batch end, epoch end or train end (e.g. ``loss``, ``confusion_matrix``)."""
        self._pending.update(values)

    # -- the moments ---------------------------------------------------------------------------------------------

    def train_begin(
        self, *, model: Any = None, epochs: int | None = None, batches: int | None = None, **context: Any
    ) -> None:
        """The training starts: ``model`` (for the checkpoint), ``epochs`` and ``batches`` per epoch (for the
        progress), anything else into the context every hook sees."""
        if self.started:
            raise RuntimeError('train_begin was already called for this training')
        if epochs is not None:
            context['epochs'] = _count('epochs', epochs, 1)
        if batches is not None:
            context['batches'] = _count('batches', batches, 1)
        if model is not None:
            context['model'] = model
        self.context.update(context)
        if self._given_rank is None:
            self.rank = current_rank()
            self._active = self._select()
        self.started = True
        self._dispatch('on_train_begin', None, {})

    def epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        """Epoch ``epoch`` starts (stop/abort is checked here too)."""
        self._ensure_running()
        self.epoch = self.context['epoch'] = _count('epoch', epoch, 0)
        self._dispatch('on_epoch_begin', epoch, dict(logs or {}))

    def batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        """Training batch ``batch`` (from 0 in each epoch) is done; raises ``TrainingInterrupted`` after a stop or
        an abort request."""
        self._ensure_running()
        self._dispatch('on_batch_end', _count('batch', batch, 0), self._take_logs(logs))

    def epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        """Epoch ``epoch`` is done; ``confusion_matrix`` in the logs is scored, published and checkpointed."""
        self._ensure_running()
        self.epoch = self.context['epoch'] = _count('epoch', epoch, 0)
        self._dispatch('on_epoch_end', epoch, self._take_logs(logs))

    def train_end(self, logs: dict[str, Any] | None = None) -> None:
        """The training is done (called by the logic after ``fit`` if the loop did not call it)."""
        if self.ended:
            raise RuntimeError('train_end was already called for this training')
        if not self.started:
            self.train_begin()
        self.ended = True
        taken = self._take_logs(logs)
        taken.setdefault('stopped', self.run.stop_requested)
        self._dispatch('on_train_end', None, taken)

    def notify_exception(self, error: BaseException) -> None:
        """Run every ``on_exception`` hook for ``error``; their own failures are logged, never raised."""
        for callback in self._active:
            try:
                callback.on_exception(self.run, error)
            except Exception:
                self.run.logger.exception('%r failed in on_exception', callback)

    # -- iterator helpers ----------------------------------------------------------------------------------------

    def epochs(self, count: int, *, start: int = 0) -> Iterator[int]:
        """``for epoch in hooks.epochs(n)``: epochs ``start``..``n-1`` with epoch begin and end around each, and
        ``n`` as the total for the progress. Leaving the loop early (``break``, an exception) skips that epoch's end."""
        self.context['epochs'] = _count('epochs', count, 1)
        _count('start', start, 0)
        if not self.started:
            self.train_begin()
        for epoch in range(start, count):
            self.epoch_begin(epoch)
            yield epoch
            self.epoch_end(epoch)

    def batches(self, loader: Iterable[T]) -> Iterator[T]:
        """``for batch in hooks.batches(loader)``: the loader's items, with a batch end after each one's body
        (``len(loader)``, when it has one, is the total for the progress). For training batches only."""
        with contextlib.suppress(TypeError):
            self.context['batches'] = len(loader)  # type: ignore[arg-type]
        for index, item in enumerate(loader):
            yield item
            self.batch_end(index)

    # -- internals -----------------------------------------------------------------------------------------------

    def _ensure_running(self) -> None:
        if self.ended:
            raise RuntimeError('the training already ended (train_end was called)')
        if not self.started:
            self.train_begin()

    def _take_logs(self, logs: dict[str, Any] | None) -> dict[str, Any]:
        taken = self._pending
        self._pending = {}
        if logs:
            taken.update(logs)
        return taken

    def _dispatch(self, hook: str, index: int | None, logs: dict[str, Any]) -> None:
        view = MappingProxyType(ChainMap(logs, self.context))
        for callback in self._active:
            method = getattr(callback, hook)
            if index is None:
                method(self.run, view)
            else:
                method(self.run, index, view)


class InProcessTrainerLogic(TrainerLogic):
    """A trainer whose training loop runs in the node's training thread: implement ``fit(run, hooks)`` and
    ``detect``; optionally ``callbacks(run)`` for your own callbacks.

    ``model_files`` defaults to the best checkpoint (``checkpoint_path(run)``), which the library writes from
    ``hooks.model`` with ``save_checkpoint(model, handle)`` (default: ``torch.save`` of the ``state_dict``) each
    time the epoch's confusion matrix scores better by ``score`` (default: F1 over all categories). To resume
    after a restart, load ``checkpoint_path(run)`` in ``fit`` when it exists.
    """

    checkpoint_folder: str = 'best_checkpoint'
    checkpoint_name: str = 'model.pt'

    def __init__(
        self,
        model_format: str | None = None,
        *,
        score: Callable[[ConfusionMatrix], float] = f1_score,
        save_checkpoint: Callable[[Any, IO[bytes]], None] = save_state_dict,
    ) -> None:
        super().__init__(model_format)
        if not callable(score) or not callable(save_checkpoint):
            raise TypeError('score and save_checkpoint must be callables')
        self.score = score
        self.save_checkpoint = save_checkpoint

    # -- what the user implements ----------------------------------------------------------------------------

    def fit(self, run: TrainingRun, hooks: TrainingHooks) -> None:
        """The training loop. Call ``hooks`` at each moment; return when the model is trained."""
        raise NotImplementedError(f'{type(self).__name__} must implement fit(run, hooks)')

    def callbacks(self, run: TrainingRun) -> Sequence[Callback]:
        """The user's own callbacks for this run, besides the library's (default: none)."""
        return ()

    # -- the library side ----------------------------------------------------------------------------------------

    def checkpoint_path(self, run: TrainingRun) -> Path:
        """Where the best checkpoint of ``run`` lives (its own folder in the training folder)."""
        return Path(run.training_folder) / self.checkpoint_folder / self.checkpoint_name

    def library_callbacks(self, run: TrainingRun) -> Sequence[Callback]:
        """The callbacks installed for every run (see :func:`llnode.trainer.callbacks.library_callbacks`)."""
        return library_callbacks(self.checkpoint_path(run), score=self.score, save=self.save_checkpoint)

    def make_hooks(self, run: TrainingRun) -> TrainingHooks:
        """The driver for one run: library callbacks and the user's, sorted by execution order."""
        return TrainingHooks(run, [*self.library_callbacks(run), *self.callbacks(run)])

    def train(self, run: TrainingRun) -> None:
        """Run ``fit`` with a fresh driver, and turn its end into the node's outcome (see the module doc)."""
        hooks = self.make_hooks(run)
        try:
            self.fit(run, hooks)
        except TrainingInterrupted as interrupted:
            if interrupted.aborted or run.abort_requested:
                error = interrupted if interrupted.aborted else TrainingInterrupted(aborted=True)
                hooks.notify_exception(error)
                if error is interrupted:
                    raise
                raise error from interrupted
            run.logger.info('training stopped at epoch %s; it ends with the model it has', hooks.epoch)
            if not hooks.ended:
                hooks.train_end({'stopped': True})
            raise
        except BaseException as error:
            hooks.notify_exception(error)
            raise
        if run.abort_requested:
            aborted = TrainingInterrupted(aborted=True)
            hooks.notify_exception(aborted)
            raise aborted
        if not hooks.ended:
            hooks.train_end()

    def model_files(self, run: TrainingRun) -> list[Path]:
        """The best checkpoint; CriticalError when the training wrote none."""
        path = self.checkpoint_path(run)
        if not path.is_file():
            raise CriticalError(
                f'no model to upload: the training wrote no checkpoint {os.fspath(path)!r} '
                '(give the model to hooks.train_begin(model=...), or override model_files)'
            )
        return [path]
