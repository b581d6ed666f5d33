"""The model-specific pieces of the demo: a trainer logic, a detector factory, and how to score detections.

Why separate: the demo's steps (:mod:`llnode.demo.active_learning`) do not care which model learns, so tests can
run every step with light stand-ins and the command runs them with the torch shapes model of
:mod:`llnode.demo.torch_trainer` and :mod:`llnode.demo.torch_detector`. torch is imported only by
:func:`torch_parts`'s builders, when the demo builds its nodes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llnode.demo.plan import DemoPlan
    from llnode.detector.logic import DetectorFactory
    from llnode.trainer.logic import TrainerLogic

logger = logging.getLogger('llnode.demo')

#: boxes per image: each a dict with ``category_name``, ``x``, ``y``, ``width``, ``height`` (and more)
Boxes = list[dict[str, Any]]
F1Function = Callable[[Sequence[Boxes], Sequence[Boxes]], float]


@dataclass(frozen=True)
class DemoParts:
    """``trainer_logic(plan)`` and ``detector_factory(plan)`` build the nodes' model code (both for the same
    ``model_format``); ``f1(predictions, truths)`` scores detected boxes against true ones, image by image."""

    model_format: str
    trainer_logic: Callable[[DemoPlan], TrainerLogic]
    detector_factory: Callable[[DemoPlan], DetectorFactory]
    f1: F1Function


def preload_torch() -> threading.Thread:
    """Import torch and the shapes model in a background thread, started before the Loop: the first training
    would otherwise import them itself (0.6-1 s on 2 cores) after everything else is ready. The thread cannot be
    stopped (an import runs to its end); it is a daemon, and its caller joins it with a bound."""

    def load() -> None:
        try:
            import llnode.demo.shapes_net  # noqa: F401  (imports torch)
        except Exception:  # the training's own import says what is wrong
            logger.debug('preloading torch failed', exc_info=True)

    thread = threading.Thread(target=load, name='llnode-demo-preload-torch', daemon=True)
    thread.start()
    return thread


def torch_parts() -> DemoParts:
    """The torch shapes model: ``ShapesTrainer`` (``plan.epochs`` when given) and ``ShapesDetectorFactory``."""

    def trainer_logic(plan: DemoPlan) -> TrainerLogic:
        from llnode.demo.torch_trainer import ShapesTrainer

        options = {name: value for name in ('epochs', 'batch_size') if (value := getattr(plan, name)) is not None}
        return ShapesTrainer(**options)

    def detector_factory(plan: DemoPlan) -> DetectorFactory:
        from llnode.demo.torch_detector import ShapesDetectorFactory

        return ShapesDetectorFactory()

    def f1(predictions: Sequence[Boxes], truths: Sequence[Boxes]) -> float:
        from llnode.demo.shapes_net import evaluate_f1

        return float(evaluate_f1(list(predictions), list(truths), iou=0.5))

    return DemoParts('shapes_torch', trainer_logic, detector_factory, f1)
