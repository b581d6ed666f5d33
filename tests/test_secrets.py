"""No password value reaches a log line, an exception message, a repr or ``/stats``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from llnode.detector import DetectorNode
from llnode.localloop import LocalLoop
from llnode.loop.errors import LoopAuthError
from llnode.loop.http import LoopClient
from tests.polling import wait_for
from tests.samples import load_sample

SECRET = 'hunter2-secret'


def test_a_refused_login_shows_no_password(local_loop: LocalLoop, caplog: pytest.LogCaptureFixture) -> None:
    settings = local_loop.settings(password=SECRET)
    with caplog.at_level(logging.DEBUG), LoopClient(settings) as client:
        with pytest.raises(LoopAuthError) as raised:
            client.json('GET', f'/api{settings.project_path}/data')
        shown = [str(raised.value), repr(raised.value), repr(client), repr(settings), caplog.text]
    assert "'u'" in repr(client)  # the user is named, so the operator knows which login failed
    assert all(SECRET not in text for text in shown)


def test_stats_show_no_password(local_loop: LocalLoop, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A detector whose login the Loop refuses: its log, ``/stats`` and ``repr`` name the user, never the password."""
    settings = local_loop.settings(password=SECRET, data_folder=tmp_path / 'detector')
    factory = load_sample('mock_detector.py').MockFactory()
    node = DetectorNode('secret detector', factory, settings=settings, repeat_interval=0.05)
    with caplog.at_level(logging.DEBUG), node:
        wait_for(lambda: '401' in caplog.text, timeout=20, what='the refused login to be logged')
        served = node.flask_app.test_client().get('/stats').get_data(as_text=True)
        shown = [json.dumps(node.stats()), served, repr(node), caplog.text]
    assert all(SECRET not in text for text in shown)
