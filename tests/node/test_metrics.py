"""``GET /metrics`` on every node type, served for real: Prometheus text that prometheus-client's parser reads, the
process collector's figures, the node's own families, and counters that move with real requests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families

from llnode.localloop import LocalLoop
from llnode.node import Node
from tests.metrics_text import names, scrape, value
from tests.node.conftest import Served
from tests.node.every_node import build_node
from tests.polling import wait_for

KINDS = ('node', 'detector', 'trainer', 'annotator', 'converter')
NODE_TYPES = {
    'node': 'node',
    'detector': 'detector',
    'trainer': 'trainer',
    'annotator': 'annotation_node',
    'converter': 'converter',
}


@pytest.mark.parametrize('kind', KINDS)
def test_every_node_serves_metrics_whose_counters_move(
    kind: str, local_loop: LocalLoop, tmp_path: Path, serve: Callable[[Node, str], Served]
) -> None:
    node = build_node(kind, local_loop, tmp_path / 'node')
    served = serve(node, 'werkzeug')
    before = scrape(served.url)
    assert {'process_cpu_seconds_total', 'process_resident_memory_bytes', 'process_open_fds'} <= names(before)
    info = [labels for name, labels in before if name == 'llnode_node_info']
    assert len(info) == 1 and ('node_type', NODE_TYPES[kind]) in info[0] and ('uuid', node.uuid) in info[0]
    assert value(before, 'llnode_node_state', llnode_node_state='running') == 1
    assert value(before, 'llnode_http_requests_in_flight') == 1  # this scrape
    for _ in range(3):
        assert requests.get(f'{served.url}/healthz', timeout=5).status_code == 200
    assert requests.get(f'{served.url}/no/such/route', timeout=5).status_code == 404
    after = scrape(served.url)
    healthz = {'method': 'GET', 'route': '/healthz', 'status': '200'}
    assert (
        value(after, 'llnode_http_requests_total', **healthz)
        == value(before, 'llnode_http_requests_total', **healthz) + 3
    )
    assert value(after, 'llnode_http_requests_total', method='GET', route='<unmatched>', status='404') == 1
    assert value(after, 'llnode_http_requests_total', method='GET', route='/metrics', status='200') >= 1
    if node.needs_loop_socket:
        wait_for(lambda: value(scrape(served.url), 'llnode_loop_connected') == 1, what='the Loop link in /metrics')
    if kind == 'trainer':
        assert value(after, 'llnode_trainer_state', llnode_trainer_state='idle') == 1
        assert value(after, 'llnode_trainer_state', llnode_trainer_state='running') == 0
    if kind == 'detector':
        models = [dict(labels) for name, labels in after if name == 'llnode_model_info']
        assert value(after, 'llnode_model_serving') == 1, models
        assert models and models[0]['format'] == 'mocked', models


def test_each_node_has_its_own_registry(
    local_loop: LocalLoop, tmp_path: Path, serve: Callable[[Node, str], Served]
) -> None:
    one = serve(build_node('node', local_loop, tmp_path / 'one'), 'werkzeug')
    two = serve(build_node('node', local_loop, tmp_path / 'two'), 'werkzeug')
    for _ in range(4):
        requests.get(f'{one.url}/healthz', timeout=5)
    healthz = {'method': 'GET', 'route': '/healthz', 'status': '200'}
    assert value(scrape(one.url), 'llnode_http_requests_total', **healthz) == 4
    assert value(scrape(two.url), 'llnode_http_requests_total', **healthz) == 0


def test_every_format_the_scraper_asks_for_parses_and_moves(
    local_loop: LocalLoop, tmp_path: Path, serve: Callable[[Node, str], Served]
) -> None:
    """Prometheus asks for OpenMetrics first; each format keeps its own family texts, and each answer is whole."""
    served = serve(build_node('node', local_loop, tmp_path / 'node'), 'werkzeug')
    openmetrics = {'Accept': 'application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5'}
    healthz = {'method': 'GET', 'route': '/healthz', 'status': '200'}
    for count in (1, 2):
        assert requests.get(f'{served.url}/healthz', timeout=5).status_code == 200
        answer = requests.get(f'{served.url}/metrics', headers=openmetrics, timeout=5)
        assert answer.headers['Content-Type'].startswith('application/openmetrics-text; version=1.0.0')
        assert answer.text.endswith('# EOF\n') and answer.text.count('# EOF') == 1
        samples = {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in openmetrics_families(answer.text)
            for sample in family.samples
        }
        assert samples[('llnode_http_requests_total', frozenset(healthz.items()))] == count
        assert value(scrape(served.url), 'llnode_http_requests_total', **healthz) == count
