"""``DataExchange(client, organization=..., project=...)``: a trainer talks about the project each training names,
not the one in its settings (which a trainer may leave empty)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from llnode.config import ConfigError
from llnode.localloop import LocalLoop
from llnode.loop.exchange import DataExchange
from llnode.loop.http import LoopClient
from llnode.trainer import TrainerNode
from tests.trainer.trainer_support import (
    FORMATS,
    ORGANIZATION,
    PROJECT,
    ScriptedLogic,
    begin,
    stored_uploads,
    wait_idle,
)


def test_the_exchange_uses_the_project_it_is_given(local_loop: LocalLoop) -> None:
    with LoopClient(local_loop.settings(organization='', project='')) as client:
        with pytest.raises(ConfigError):
            DataExchange(client).image_ids()
        exchange = DataExchange(client, organization=ORGANIZATION, project=PROJECT)
        assert exchange.project_url('/data') == f'/{ORGANIZATION}/projects/{PROJECT}/data'
        assert exchange.image_ids('complete') == local_loop.store.image_ids(ORGANIZATION, PROJECT, 'complete')


@pytest.mark.parametrize(
    ('organization', 'project'), [('zauberzeug', None), (None, 'demo'), ('a/b', 'demo'), ('x', '..')]
)
def test_the_project_must_be_complete_and_a_plain_name(
    local_loop: LocalLoop, organization: str | None, project: str | None
) -> None:
    with LoopClient(local_loop.settings()) as client, pytest.raises(ValueError):
        DataExchange(client, organization=organization, project=project)


def test_a_trainer_without_a_project_in_its_settings_trains_the_project_it_is_told(
    local_loop: LocalLoop, make_trainer: Callable[..., TrainerNode]
) -> None:
    node = make_trainer(local_loop, ScriptedLogic(epochs=1), settings={'organization': '', 'project': ''})
    number = begin(local_loop, node)['training_number']
    wait_idle(node)
    assert node.status().errors == {}
    assert stored_uploads(local_loop, number) == {f: 1 for f in FORMATS}
