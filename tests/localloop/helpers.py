"""Helpers for the local Loop tests: a logged-in session, a real Socket.IO node client, polling with a deadline."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import requests
import socketio

from llnode.localloop import LocalLoop

PROJECT = '/api/zauberzeug/projects/demo'
CONTROL = '/control/projects/zauberzeug/demo'


def login(loop: LocalLoop, username: str = 'u', password: str = 'p') -> requests.Session:
    session = requests.Session()
    response = session.post(f'{loop.url}/api/login', data={'username': username, 'password': password}, timeout=10)
    assert response.status_code == 200, response.text
    return session


def connect_node(
    loop: LocalLoop,
    node_type: str = 'trainer',
    *,
    cookie: str | None = None,
    handlers: dict[str, Callable[..., Any]] | None = None,
    transports: list[str] | None = None,
) -> socketio.Client:
    """A python-socketio client connected like a node: handshake headers, the login cookie if given."""
    client = socketio.Client(reconnection=False)
    for event, handler in (handlers or {}).items():
        client.on(event, handler)
    headers = {'organization': 'zauberzeug', 'project': 'demo', 'nodeType': node_type}
    if cookie is not None:
        headers['Cookie'] = f'session={cookie}'
    client.connect(loop.url, socketio_path='/ws/socket.io', headers=headers, transports=transports, wait_timeout=10)
    return client
