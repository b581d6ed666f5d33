"""``/openapi.json`` and ``/docs`` on every node type: the document is valid OpenAPI 3.1 and names exactly the routes
the node serves (Flask's url_map) and the Socket.IO events it handles; ``/docs`` loads nothing from elsewhere
and renders the document in a real (headless) Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from flask import Blueprint
from openapi_spec_validator import validate

from llnode.localloop import LocalLoop
from llnode.node import Node
from llnode.node.app import json_response
from tests.node.conftest import Served
from tests.node.every_node import NODE_KINDS, build_node

#: methods Flask adds to every route by itself
IMPLICIT_METHODS = {'HEAD', 'OPTIONS'}


def served_routes(node: Node) -> set[tuple[str, str]]:
    """``(path, METHOD)`` of every route the node's app serves, paths in OpenAPI's ``{name}`` form."""
    routes = set()
    for rule in node.flask_app.url_map.iter_rules():
        path = re.sub(r'<(?:[^:<>]+:)?([^<>]+)>', r'{\1}', rule.rule)
        for method in (rule.methods or set()) - IMPLICIT_METHODS:
            routes.add((path, method))
    return routes


def described_routes(document: dict) -> set[tuple[str, str]]:  # type: ignore[type-arg]
    return {(path, method.upper()) for path, methods in document['paths'].items() for method in methods}


def route_mismatch(node: Node) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(served but not described, described but not served)."""
    served, described = served_routes(node), described_routes(node.openapi())
    return served - described, described - served


@pytest.mark.parametrize('kind', NODE_KINDS)
def test_the_document_is_valid_and_names_exactly_the_served_routes(
    kind: str, local_loop: LocalLoop, tmp_path: Path
) -> None:
    node = build_node(kind, local_loop, tmp_path / 'node')
    document = node.openapi()
    validate(document)  # raises with the path of the first problem
    assert document['openapi'].startswith('3.1')
    missing, extra = route_mismatch(node)
    assert missing == set(), f'served but not in /openapi.json: {sorted(missing)}'
    assert extra == set(), f'in /openapi.json but not served: {sorted(extra)}'
    for path, methods in document['paths'].items():
        for method, operation in methods.items():
            assert operation['summary'], (method, path)
            assert '500' in operation['responses'], (method, path)
            for status, answer in operation['responses'].items():
                if int(status) >= 400:
                    schema = answer['content']['application/json']['schema']
                    assert schema == {'$ref': '#/components/schemas/Error'}, (method, path, status)


def test_a_route_without_a_description_is_found(local_loop: LocalLoop, tmp_path: Path) -> None:
    """The check above can fail: a node that serves one route more than it describes."""

    class ExtraRouteNode(Node):
        def blueprints(self) -> list[Blueprint]:
            extra = Blueprint('extra', __name__)
            extra.add_url_rule('/items/<int:item>', 'item', json_response, methods=['DELETE'])
            return [*super().blueprints(), extra]

    node = ExtraRouteNode('extra', settings=local_loop.settings(data_folder=tmp_path / 'extra'))
    assert route_mismatch(node) == ({('/items/{item}', 'DELETE')}, set())


@pytest.mark.parametrize('kind', NODE_KINDS)
def test_the_socketio_events_described_are_those_handled(kind: str, local_loop: LocalLoop, tmp_path: Path) -> None:
    node = build_node(kind, local_loop, tmp_path / 'node')
    # '*' is the catch-all that answers an unknown event with an error acknowledgement, not an event of the API
    handled = set(node.sio.handlers.get('/', {})) - {'connect', 'disconnect', '*'}
    described = set(node.openapi().get('x-socketio', {}).get('events', {}))
    assert described == handled
    if kind == 'detector':
        assert {'detect', 'batch_detect', 'upload', 'info', 'about'} <= described
        assert '## Socket.IO' in node.openapi()['info']['description']


def test_openapi_json_and_docs_are_served_and_docs_loads_nothing_from_elsewhere(
    local_loop: LocalLoop, tmp_path: Path, serve: Callable[[Node, str], Served]
) -> None:
    node = build_node('detector', local_loop, tmp_path / 'node')
    served = serve(node, 'waitress')
    answer = requests.get(f'{served.url}/openapi.json', timeout=10)
    assert answer.status_code == 200 and answer.headers['Content-Type'] == 'application/json'
    assert answer.json() == node.openapi()
    page = requests.get(f'{served.url}/docs', timeout=10)
    assert page.status_code == 200 and page.headers['Content-Type'].startswith('text/html')
    markup = re.sub(r'<script id="openapi" type="application/json">.*?</script>', '', page.text, flags=re.S)
    assert 'openapi.json' in markup
    assert not re.search(r'https?:|src=|<link|@import|url\(', markup), 'the page must not load anything'


@pytest.mark.skipif(shutil.which('chromium') is None, reason="needs Debian's chromium")
def test_docs_renders_every_route_and_event_in_chromium(
    local_loop: LocalLoop, tmp_path: Path, serve: Callable[[Node, str], Served]
) -> None:
    node = build_node('detector', local_loop, tmp_path / 'node')
    served = serve(node, 'waitress')
    done = subprocess.run(
        [
            'chromium',
            '--headless',
            '--no-sandbox',
            '--disable-gpu',
            '--disable-dev-shm-usage',
            f'--user-data-dir={tmp_path / "chromium"}',
            '--dump-dom',
            f'{served.url}/docs',
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    dom = done.stdout
    assert 'data-rendered="yes"' in dom, done.stderr[-2000:]
    document = node.openapi()
    for methods in document['paths'].values():
        for operation in methods.values():
            assert f'id="{operation["operationId"]}"' in dom
    for event in document['x-socketio']['events']:
        assert f'id="event-{event}"' in dom
    assert 'id="schema-ImageMetadata"' in dom
