"""Reading ``/metrics`` in tests with prometheus-client's own parser."""

from __future__ import annotations

import requests
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    """Every sample of ``GET {url}/metrics``, keyed by ``(sample name, labels)``; the text must parse."""
    response = requests.get(f'{url}/metrics', timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers['Content-Type'].startswith('text/plain; version=0.0.4'), response.headers
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0.0 when it is absent (a counter not yet counted)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}
