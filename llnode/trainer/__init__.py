"""The Trainer node: a state machine that takes a training from ``begin_training`` to cleanup and survives a crash
at any moment, and the user API a training implementation is written against.

``TrainerNode(name, logic)`` runs a :class:`TrainerLogic`; the logic gets a :class:`TrainingRun` in every hook.
"""

from __future__ import annotations

from llnode.trainer.logic import BestState, CriticalError, TrainerLogic, TrainingInterrupted, TrainingRun
from llnode.trainer.machine import TrainingRefused
from llnode.trainer.node import TrainerNode

# The subprocess API (SubprocessTrainerLogic, Executor) and the in-process API (callbacks) are exported here by
# the lead once they land (llnode/trainer/subprocess_logic.py, executor.py, inprocess.py, callbacks.py).

__all__ = [
    'BestState',
    'CriticalError',
    'TrainerLogic',
    'TrainerNode',
    'TrainingInterrupted',
    'TrainingRefused',
    'TrainingRun',
]
