"""The validation split wired into a training as the reference 0.27 does it: assigned right after the data
download, read through ``run.train_images()``/``val_images()``/``test_images()``, counted as train images."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llnode.localloop import LocalLoop
from llnode.trainer import TrainerNode, TrainingRun
from llnode.trainer.validation_set import split_position
from tests.trainer.trainer_support import ORGANIZATION, PROJECT, ScriptedLogic, begin, wait_idle


class SplitRecorder(ScriptedLogic):
    def __init__(self) -> None:
        super().__init__(epochs=1)
        self.sets: dict[str, list[str]] = {}

    def train(self, run: TrainingRun) -> None:
        self.sets = {
            'train': [i['id'] for i in run.train_images()],
            'val': [i['id'] for i in run.val_images()],
            'test': [i['id'] for i in run.test_images()],
        }
        super().train(run)


def loop_sets(loop: LocalLoop) -> dict[str, set[str]]:
    ids = loop.store.image_ids(ORGANIZATION, PROJECT, 'complete')
    images: list[dict[str, Any]] = loop.store.images(ORGANIZATION, PROJECT, ids)
    return {kind: {i['id'] for i in images if i['set'] == kind} for kind in ('train', 'test')}


def test_a_computed_validation_set_reaches_the_training(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]
) -> None:
    logic = SplitRecorder()
    node = make_trainer(local_loop, logic)
    begin(local_loop, node, hyperparameters={'compute_validation_set': True})
    wait_idle(node)
    assert node.status().errors == {}
    sets = loop_sets(local_loop)
    expected_val = {i for i in sets['train'] if split_position(i) < 0.1} or {min(sets['train'], key=split_position)}
    assert set(logic.sets['val']) == expected_val
    assert set(logic.sets['train']) == sets['train'] - expected_val
    assert set(logic.sets['test']) == sets['test']
    update = local_loop.store.training_updates(ORGANIZATION, PROJECT)[-1]
    assert (update['train_image_count'], update['test_image_count']) == (len(sets['train']), len(sets['test']))


def test_without_the_flag_validation_uses_the_test_images(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]
) -> None:
    logic = SplitRecorder()
    node = make_trainer(local_loop, logic)
    begin(local_loop, node)
    wait_idle(node)
    sets = loop_sets(local_loop)
    assert set(logic.sets['train']) == sets['train']
    assert set(logic.sets['val']) == set(logic.sets['test']) == sets['test']


def test_a_flag_that_is_not_a_bool_gives_the_training_up(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]
) -> None:
    logic = SplitRecorder()
    node = make_trainer(local_loop, logic)
    begin(local_loop, node, hyperparameters={'compute_validation_set': 'yes'})
    wait_idle(node)
    assert logic.count('train') == 0
    (message,) = node.status().errors.values()
    assert 'compute_validation_set must be true or false' in message
