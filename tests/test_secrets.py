"""No password value reaches a log line, an exception message, a repr or ``/stats``."""

from __future__ import annotations

import logging

import pytest

from llnode.localloop import LocalLoop
from llnode.loop.errors import LoopAuthError
from llnode.loop.http import LoopClient

SECRET = 'hunter2-secret'


def test_a_refused_login_shows_no_password(local_loop: LocalLoop, caplog: pytest.LogCaptureFixture) -> None:
    settings = local_loop.settings(password=SECRET)
    with caplog.at_level(logging.DEBUG), LoopClient(settings) as client:
        with pytest.raises(LoopAuthError) as raised:
            client.json('GET', f'/api{settings.project_path}/data')
        shown = [str(raised.value), repr(raised.value), repr(client), repr(settings), caplog.text]
    assert "'u'" in repr(client)  # the user is named, so the operator knows which login failed
    assert all(SECRET not in text for text in shown)
