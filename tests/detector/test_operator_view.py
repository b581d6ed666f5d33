"""What an operator sees when a detector cannot work: ``/readyz``, ``/stats`` and ``/about`` name the real cause
(a refused password, an unreachable Loop, an unknown project, a model folder without ``model.json``), and the log
says it once when it starts, at most once a minute while it lasts, and once when it ends. Against the local Loop."""

from __future__ import annotations

import io
import logging
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from llnode.localloop import LocalLoop
from tests.detector.conftest import Detector, offline_settings
from tests.polling import wait_for

MakeDetector = Callable[..., Detector]

PASSWORD = 'not-the-password-0815'


def readyz(detector: Detector) -> tuple[int, str]:
    response = requests.get(f'{detector.url}/readyz', timeout=10)
    return response.status_code, response.json().get('detail', '')


def stats(detector: Detector) -> dict[str, Any]:
    return requests.get(f'{detector.url}/stats', timeout=10).json()


def about(detector: Detector) -> dict[str, Any]:
    return requests.get(f'{detector.url}/about', timeout=10).json()


def until_readyz_names(detector: Detector, cause: str) -> None:
    wait_for(lambda: readyz(detector) == (503, f'detector not yet initialized: {cause}'), what=f'/readyz: {cause}')


def warnings_about(records: list[logging.LogRecord], text: str) -> list[str]:
    return [r.getMessage() for r in records if r.levelno >= logging.WARNING and text in r.getMessage()]


def test_a_refused_password_is_named_and_logged_once_not_every_cycle(
    local_loop: LocalLoop, make_detector: MakeDetector, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cause = "the Loop refused login for user 'u' (401)"
    with caplog.at_level(logging.DEBUG, logger='llnode'):
        settings = local_loop.settings(data_folder=tmp_path / 'node', password=PASSWORD)
        detector = make_detector('waitress', model=False, settings=settings, repeat_interval=0.05)
        until_readyz_names(detector, cause)
        loop = stats(detector)['loop']
        assert loop['problem'] == cause
        wait_for(lambda: stats(detector)['loop']['deployment_target']['failures'] >= 10, what='ten failed polls')
        assert about(detector)['state'] == 'offline'
        for _ in range(5):
            assert readyz(detector)[0] == 503
    polls = warnings_about(caplog.records, 'getting the deployment target')
    assert polls == [f'test detector: getting the deployment target failed: {cause}']  # once, not every 0.05 s
    assert warnings_about(caplog.records, 'readyz') == []  # a probe answered 503 is no warning
    assert all(PASSWORD not in r.getMessage() for r in caplog.records)
    assert PASSWORD not in str(stats(detector)) and PASSWORD not in readyz(detector)[1]


def test_an_unreachable_loop_is_named(make_detector: MakeDetector) -> None:
    detector = make_detector('werkzeug', model=False)  # its Loop is 127.0.0.1:1, where nothing listens
    until_readyz_names(detector, 'the Loop at http://127.0.0.1:1 cannot be reached: connection refused')
    assert about(detector)['state'] == 'offline'
    assert stats(detector)['loop']['problem'] == 'the Loop at http://127.0.0.1:1 cannot be reached: connection refused'


@pytest.mark.parametrize(('organization', 'project'), [('zauberzeug', 'nope'), ('nobody', 'demo')])
def test_an_unknown_organization_or_project_is_named(
    local_loop: LocalLoop, make_detector: MakeDetector, tmp_path: Path, organization: str, project: str
) -> None:
    settings = local_loop.settings(data_folder=tmp_path / 'node', organization=organization, project=project)
    detector = make_detector('werkzeug', model=False, settings=settings)
    cause = (
        f'the Loop does not know organization {organization!r} or its project {project!r} '
        f'(404: project {organization}/{project} not found)'
    )
    until_readyz_names(detector, cause)
    assert stats(detector)['loop']['status_sync']['cause'] == cause


def test_a_model_folder_without_model_json_is_named(make_detector: MakeDetector, tmp_path: Path) -> None:
    settings = offline_settings(tmp_path / 'node')
    folder = settings.data_folder / 'models' / '1.0'
    folder.mkdir(parents=True)
    (folder / 'weights.bin').write_bytes(b'\0')
    os.symlink('models/1.0', settings.data_folder / 'current_model')
    detector = make_detector('werkzeug', model=False, settings=settings)
    cause = f'Could not load the current model: model folder {folder.absolute()} has no model.json'
    assert readyz(detector) == (503, f'detector not yet initialized: {cause}')  # before any Loop cause
    assert stats(detector)['model']['update_error'] == cause


def test_the_end_of_a_failure_is_logged_once(
    make_local_loop: Callable[..., LocalLoop],
    make_detector: MakeDetector,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = make_local_loop(demo=True, demo_images=2)
    settings = loop.settings(data_folder=tmp_path / 'node')
    detector = make_detector('werkzeug', model=False, settings=settings, repeat_interval=0.05)
    wait_for(lambda: about(detector)['state'] == 'online' and detector.node.models.target, what='the Loop in use')
    with caplog.at_level(logging.INFO, logger='llnode'):
        loop.stop()
        wait_for(lambda: about(detector)['state'] == 'offline', what='the outage noticed')
        wait_for(lambda: stats(detector)['loop']['deployment_target']['failures'] >= 5, what='five failed polls')
        loop.start()
        wait_for(lambda: about(detector)['state'] == 'online', what='the Loop back')
    messages = [r.getMessage() for r in caplog.records if 'getting the deployment target' in r.getMessage()]
    assert len(messages) == 2, messages
    assert 'cannot be reached' in messages[0]
    assert messages[1].startswith('test detector: getting the deployment target works again (after ')


def test_a_downloaded_model_without_model_json_is_named(
    local_loop: LocalLoop, make_detector: MakeDetector, tmp_path: Path
) -> None:
    model = local_loop.store.create_model('zauberzeug', 'demo', version='1.5')
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, 'w') as zipped:
        zipped.writestr('weights.bin', b'\0' * 16)
    local_loop.store.add_model_format(model['id'], 'mocked', archive.getvalue())
    local_loop.store.set_deployment_target('zauberzeug', 'demo', model['id'])
    detector = make_detector('werkzeug', model=False, settings=local_loop.settings(data_folder=tmp_path / 'node'))
    until_readyz_names(detector, 'Could not update model: the model zip has no model.json at its root')
