"""The memoised family helpers and :class:`FamilyTexts`: a family is built once per content, its text rendered
once per content, and the answer is byte for byte what prometheus-client's encoder writes for the same families,
in every format the ``Accept`` header can pick."""

from __future__ import annotations

import pytest
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from llnode.node.metric_families import Families, FamilyTexts, counter, counters, gauge, gauges, info, state_set
from llnode.node.metrics import BucketCounts, LabelledCounts, NodeMetrics

ACCEPTS = (
    '',
    'text/plain; version=1.0.0',
    'application/openmetrics-text; version=1.0.0',
    'application/openmetrics-text',
)


def families(step: int, histogram: BucketCounts, requests: LabelledCounts) -> list[Metric]:
    """What a node could show at its ``step``-th scrape: some families move, one comes and goes."""
    shown: list[Metric] = [
        info('test_node', 'The node', {'name': 'n', 'version': '1'}),
        state_set('test_state', 'The state', ('idle', 'busy'), 'busy' if step % 2 else 'idle'),
        counter('test_cycles', 'Cycles', step),
        gauge('test_constant', 'Never moves', 7),
        gauges('test_sessions', 'Sessions', 'transport', {'polling': step, 'websocket': 1}),
        counters('test_syncs', 'Syncs', 'outcome', {'sent': 3, 'failed': step // 2}),
        histogram.family('test_seconds', 'Seconds', 'seconds'),
        requests.family(),
    ]
    if step % 3 == 1:
        shown.insert(2, gauge('test_sometimes', 'Shown at some scrapes', step, labels={'why': 'odd'}))
    return shown


@pytest.mark.parametrize('accept', ACCEPTS)
def test_the_kept_texts_make_the_encoders_own_answer(accept: str) -> None:
    encode, content_type = choose_encoder(accept)
    texts = FamilyTexts(encode)
    histogram, requests = BucketCounts((0.1, 1.0)), LabelledCounts('test_requests', 'Requests', ('route', 'status'))
    for step in range(8):
        histogram.observe(0.05 * step)
        requests.add('/detect', '200' if step % 4 else '500')
        shown = families(step, histogram, requests)
        answer = texts.render(shown)
        assert answer == encode(Families(shown)), f'step {step}, {content_type}'
    text = answer.decode()
    if 'openmetrics' in content_type:
        assert text.count('# EOF') == 1 and text.endswith('# EOF\n')
        parsed = {family.name for family in openmetrics_families(text)}
    else:
        parsed = {family.name for family in text_string_to_metric_families(text)}
    assert {'test_cycles', 'test_seconds', 'test_requests', 'test_sessions'} <= parsed


def test_verify_checks_against_the_encoder() -> None:
    encode, _ = choose_encoder('')
    shown = [gauge('test_a', 'A', 1), counter('test_b', 'B', 2)]
    assert FamilyTexts(encode).verify(shown)

    def framed_at_both_ends(collector: Collector) -> bytes:  # an encoder whose answer is not blocks + frame
        return b'# BEGIN\n' + encode(collector) + b'# END\n'

    assert not FamilyTexts(framed_at_both_ends).verify(shown)


def test_a_family_changed_since_the_last_scrape_is_rendered_again() -> None:
    encode, _ = choose_encoder('')
    texts = FamilyTexts(encode)
    assert b'test_cycles_total 1.0' in texts.render([counter('test_cycles', 'Cycles', 1)])
    again = texts.render([counter('test_cycles', 'Cycles', 2)])
    assert b'test_cycles_total 2.0' in again and b'test_cycles_total 1.0' not in again


def test_the_helpers_give_the_same_family_while_the_figures_stay() -> None:
    assert gauge('test_g', 'G', 3) is gauge('test_g', 'G', 3)
    assert gauge('test_g', 'G', 4) is not gauge('test_g', 'G', 3)
    assert counter('test_c', 'C', 1) is counter('test_c', 'C', 1)
    assert state_set('test_s', 'S', ['a', 'b'], 'a') is state_set('test_s', 'S', ('a', 'b'), 'a')
    assert state_set('test_s', 'S', ['a', 'b'], 'b') is not state_set('test_s', 'S', ['a', 'b'], 'a')
    histogram = BucketCounts((1.0, 2.0))
    histogram.observe(1.5)
    first = histogram.family('test_h', 'H')
    assert histogram.family('test_h', 'H') is first
    histogram.observe(0.5)
    moved = histogram.family('test_h', 'H')
    assert moved is not first
    assert [(s.labels.get('le'), s.value) for s in moved.samples] == [
        ('1.0', 1),
        ('2.0', 2),
        ('+Inf', 2),
        (None, 2),
        (None, 2.0),
    ]
    assert [s.value for s in first.samples] == [0, 1, 1, 1, 1.5]  # a family handed out earlier never changes
    requests = LabelledCounts('test_r', 'R', ('route',))
    requests.add('/a')
    assert requests.family() is requests.family()


def test_a_node_keeps_the_texts_of_a_few_formats_and_renders_the_others_whole() -> None:
    metrics = NodeMetrics(lambda: [counter('test_cycles', 'Cycles', 1)])
    versions = [f'application/openmetrics-text; version=1.0.{patch}' for patch in range(NodeMetrics.KEPT_FORMATS + 3)]
    for accept in [*versions, *versions]:
        body, content_type = metrics.exposition(accept)
        assert content_type.startswith('application/openmetrics-text; version=1.0.')
        assert body.endswith(b'# EOF\n') and b'test_cycles_total 1.0' in body
    assert len(metrics._texts) == NodeMetrics.KEPT_FORMATS
