"""Prometheus metric families built once per content, and their text rendered once per content.

A node's families hardly change between two scrapes: its name and state, the outbox, the serving model and the
Loop link stay the same for minutes, and under load only the inference counters, histograms and request counts
move. Building a family object and rendering it are most of a scrape's server time, so:

- the helpers here (:func:`gauge`, :func:`counter`, :func:`gauges`, :func:`counters`, :func:`state_set`,
  :func:`info`, :func:`histogram`) keep the families they built (least recently used first out): a scrape that
  finds the same figures as an earlier one gets the same family object back, for a dictionary look-up. So the
  families they return are shared: never add samples to one;
- :class:`FamilyTexts` keeps each family's text in one format and renders only the families that changed since
  the last scrape (prometheus-client still renders every byte).

Nothing is read ahead of a scrape: each scrape reads every figure from its source, as before.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypeVar

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    StateSetMetricFamily,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

__all__ = [
    'Families',
    'FamilyTexts',
    'counter',
    'counters',
    'gauge',
    'gauges',
    'histogram',
    'info',
    'labelled_counter',
    'state_set',
]

#: how many families each helper keeps (a few hundred bytes each); a scrape of a detector shows about 45, of
#: which about 10 move between two scrapes of a busy one
KEPT_FAMILIES = 256
#: how many histogram families are kept (a few kilobytes each); a detector has 3
KEPT_HISTOGRAMS = 32

Samples = tuple[tuple[tuple[str, ...], float], ...]


@functools.lru_cache(maxsize=KEPT_FAMILIES)
def _gauge(name: str, documentation: str, labels: tuple[str, ...], samples: Samples) -> GaugeMetricFamily:
    return _filled(GaugeMetricFamily(name, documentation, labels=labels), samples)


@functools.lru_cache(maxsize=KEPT_FAMILIES)
def _counter(name: str, documentation: str, labels: tuple[str, ...], samples: Samples) -> CounterMetricFamily:
    return _filled(CounterMetricFamily(name, documentation, labels=labels), samples)


@functools.lru_cache(maxsize=KEPT_FAMILIES)
def _scalar_gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


@functools.lru_cache(maxsize=KEPT_FAMILIES)
def _scalar_counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


Family = TypeVar('Family', GaugeMetricFamily, CounterMetricFamily)


def _filled(family: Family, samples: Samples) -> Family:
    for values, value in samples:
        family.add_metric(values, value)
    return family


@functools.lru_cache(maxsize=KEPT_HISTOGRAMS)
def histogram(
    name: str, documentation: str, unit: str, buckets: tuple[tuple[str, int], ...], total: float
) -> HistogramMetricFamily:
    """A histogram family of cumulative ``buckets`` (``(upper bound text, count)``, ``+Inf`` last) and their
    ``total``; shared, never add samples to it."""
    return HistogramMetricFamily(name, documentation, buckets=list(buckets), sum_value=total, unit=unit)


def gauge(name: str, documentation: str, value: float, labels: dict[str, str] | None = None) -> GaugeMetricFamily:
    """A gauge family of one sample (with ``labels``, if given); shared, never add samples to it."""
    if labels:
        return _gauge(name, documentation, tuple(labels), ((tuple(labels.values()), value),))
    return _scalar_gauge(name, documentation, value)


def gauges(name: str, documentation: str, label: str, values: Mapping[str, float]) -> GaugeMetricFamily:
    """A gauge family of one sample per ``label`` value, in the order of ``values``; shared, never add samples."""
    return _gauge(name, documentation, (label,), tuple(((k,), v) for k, v in values.items()))


def counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    """A counter family of one sample (``name`` without ``_total``; it is added); shared, never add samples to it."""
    return _scalar_counter(name, documentation, value)


def counters(name: str, documentation: str, label: str, values: Mapping[str, float]) -> CounterMetricFamily:
    """A counter family of one sample per ``label`` value, in the order of ``values``; shared, never add samples."""
    return _counter(name, documentation, (label,), tuple(((k,), v) for k, v in values.items()))


def labelled_counter(name: str, documentation: str, labels: tuple[str, ...], samples: Samples) -> CounterMetricFamily:
    """A counter family of one sample per ``(label values, value)`` of ``samples``; shared, never add samples."""
    return _counter(name, documentation, labels, samples)


def state_set(name: str, documentation: str, states: Iterable[str], current: str) -> StateSetMetricFamily:
    """An enum as a state set: one series per state, 1 for ``current``; shared, never add samples to it."""
    return _state_set(name, documentation, tuple(states), current)


@functools.lru_cache(maxsize=KEPT_FAMILIES)
def _state_set(name: str, documentation: str, states: tuple[str, ...], current: str) -> StateSetMetricFamily:
    family = StateSetMetricFamily(name, documentation)
    family.add_metric([], {state: state == current for state in states})
    return family


def info(name: str, documentation: str, labels: dict[str, str]) -> InfoMetricFamily:
    """An info family (``name`` without ``_info``; it is added) of one sample; shared, never add samples to it."""
    return _info(name, documentation, tuple(labels.items()))


@functools.lru_cache(maxsize=KEPT_FAMILIES)
def _info(name: str, documentation: str, labels: tuple[tuple[str, str], ...]) -> InfoMetricFamily:
    family = InfoMetricFamily(name, documentation)
    family.add_metric([], dict(labels))
    return family


class Families(Collector):
    """Given families as a collector, for an encoder."""

    def __init__(self, families: Sequence[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


class FamilyTexts:
    """One format's text of each family as of the last scrape, re-used while the family is unchanged.

    Most families (the node's info and state, the outbox, the model, the Loop link) do not change between two
    scrapes, and rendering is half of a scrape's cost; a family equal to the last one seen under its name (same
    name, help, type, unit and samples: :meth:`Metric.__eq__`) is not rendered again. prometheus-client renders
    every byte: the text of one family is what the encoder writes for it alone, less the encoder's frame (what
    it writes for no family at all: nothing for the text formats, ``# EOF`` for OpenMetrics), and the answer
    is the blocks in order followed by the frame. :meth:`verify` checks that this gives exactly the encoder's own
    answer before it is used. Concurrent scrapes may each render a changed family; the last one's text is kept
    (each entry is replaced whole, so a reader never sees a text with another family's samples).
    """

    def __init__(self, encode: Callable[[Collector], bytes]) -> None:
        self._encode = encode
        self._frame = encode(Families(()))
        self._last: dict[str, tuple[Metric, bytes]] = {}

    def verify(self, families: Sequence[Metric]) -> bool:
        """Whether the blocks of ``families`` and the frame make exactly the encoder's answer for them."""
        try:
            return self.render(families) == self._encode(Families(families))
        except ValueError:
            return False

    def render(self, families: Iterable[Metric]) -> bytes:
        """The encoder's answer for ``families``, from the kept texts of those unchanged since the last scrape."""
        blocks = []
        for family in families:
            known = self._last.get(family.name)
            if known is not None and (known[0] is family or known[0] == family):
                blocks.append(known[1])
                continue
            block = self._block(family)
            self._last[family.name] = (family, block)
            blocks.append(block)
        blocks.append(self._frame)
        return b''.join(blocks)

    def _block(self, family: Metric) -> bytes:
        text = self._encode(Families((family,)))
        if not text.endswith(self._frame):
            raise ValueError(f'the encoder did not end {family.name} with its frame {self._frame!r}')
        return text[: len(text) - len(self._frame)]
