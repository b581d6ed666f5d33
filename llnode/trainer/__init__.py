"""The Trainer node: a state machine that takes a training from ``begin_training`` to cleanup and survives a crash
at any moment, and the user API a training implementation is written against.

``TrainerNode(name, logic)`` runs a :class:`TrainerLogic`; the logic gets a :class:`TrainingRun` in every hook.
Two implementations: :class:`SubprocessTrainerLogic` (a training command, e.g. a ``torchrun`` launch, run by an
:class:`Executor`) and :class:`InProcessTrainerLogic` (a training loop in the node's thread, reporting through
:class:`Callback` objects driven by :class:`TrainingHooks`). Importing this package never imports torch.
"""

from __future__ import annotations

from llnode.trainer.callbacks import Callback, ConfusionCounter, current_rank, f1_score
from llnode.trainer.exceptions import NodeNeedsRestartError
from llnode.trainer.executor import Executor, ExecutorError
from llnode.trainer.inprocess import InProcessTrainerLogic, TrainingHooks
from llnode.trainer.logic import (
    BestState,
    CriticalError,
    TrainerLogic,
    TrainingInterrupted,
    TrainingRun,
    TrainingStateData,
)
from llnode.trainer.machine import TrainingRefused
from llnode.trainer.metrics import macro_f1
from llnode.trainer.node import TrainerNode
from llnode.trainer.slot import (
    AlwaysFreeSlot,
    FileTrainingSlot,
    TrainingSlot,
    TrainingSlotTaken,
    training_slot_from_settings,
)
from llnode.trainer.subprocess_logic import SubprocessTrainerLogic, TrainingProcessError

__all__ = [
    'AlwaysFreeSlot',
    'BestState',
    'Callback',
    'ConfusionCounter',
    'CriticalError',
    'Executor',
    'ExecutorError',
    'FileTrainingSlot',
    'InProcessTrainerLogic',
    'NodeNeedsRestartError',
    'SubprocessTrainerLogic',
    'TrainerLogic',
    'TrainerNode',
    'TrainingHooks',
    'TrainingInterrupted',
    'TrainingProcessError',
    'TrainingRefused',
    'TrainingRun',
    'TrainingSlot',
    'TrainingSlotTaken',
    'TrainingStateData',
    'current_rank',
    'f1_score',
    'macro_f1',
    'training_slot_from_settings',
]
