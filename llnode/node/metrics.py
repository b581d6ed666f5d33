"""A node's Prometheus metrics (``GET /metrics``): one registry per node, filled at scrape time.

Why this shape:

- one :class:`~prometheus_client.CollectorRegistry` per node, never the global one: several nodes run in one
  process (tests, a trainer beside a detector), and each must show only its own figures;
- custom collectors read the counters the node keeps anyway (``Node.stats()``'s sources: the inference observer,
  the outbox, the model manager, the training machine) when Prometheus scrapes, so there is one source of truth
  and nothing to keep in step; only what the node did not count before (HTTP requests by route, batch and wait
  histograms) is counted here, with one lock and a few integer additions per event;
- no ``_created`` series and few buckets, families built once per content and each family's text rendered
  again only when it changed (:mod:`llnode.node.metric_families`), and the process figures from cheap system
  calls (:mod:`llnode.node.process_metrics`): a scrape of a busy detector costs about two thirds of a
  millisecond of server CPU time at the median (``bench/metrics.py``).

Names follow Prometheus' conventions: the ``llnode_`` prefix, base units (seconds, bytes), ``_total`` for counters
(prometheus-client adds it), ``_info`` for info metrics. :class:`~llnode.node.process_metrics.ProcessFigures`
adds the usual ``process_*`` figures. A node type adds its families in
:meth:`Node.metric_families <llnode.node.node.Node.metric_families>`, each section through
:meth:`Node.metrics_section <llnode.node.node.Node.metrics_section>`, so a section that fails is logged once and
left out while the rest still answers.
"""

from __future__ import annotations

import bisect
import itertools
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    StateSetMetricFamily,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from llnode import __version__
from llnode.node.metric_families import (
    Families,
    FamilyTexts,
    counter,
    counters,
    gauge,
    gauges,
    histogram,
    info,
    labelled_counter,
    state_set,
)
from llnode.node.process_metrics import ProcessFigures

if TYPE_CHECKING:
    import socketio

    from llnode.loop.socket import LoopSocket
    from llnode.node.node import Node
    from llnode.node.repeat import RepeatThread

#: the content type of ``GET /metrics`` unless the scraper asks for another (Prometheus text format 0.0.4)
METRICS_CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

#: the route label of requests that matched no route (404s): one series, whatever the path
UNMATCHED_ROUTE = '<unmatched>'

__all__ = [
    'METRICS_CONTENT_TYPE',
    'BucketCounts',
    'CounterMetricFamily',
    'FamilyTexts',
    'GaugeMetricFamily',
    'HistogramMetricFamily',
    'InfoMetricFamily',
    'LabelledCounts',
    'Metric',
    'NodeMetrics',
    'RequestCounts',
    'StateSetMetricFamily',
    'counter',
    'counters',
    'gauge',
    'gauges',
    'histogram',
    'info',
    'labelled_counter',
    'loop_link_families',
    'node_families',
    'socketio_families',
    'state_set',
]


class BucketCounts:
    """A histogram's counts, kept as plain integers under one lock (what :class:`HistogramMetricFamily` renders).

    ``bounds`` are the upper bounds of the buckets (``+Inf`` is added). ``observe`` costs a bisection and two
    additions; a scrape reads a consistent copy.
    """

    def __init__(self, bounds: Sequence[float]) -> None:
        if not bounds or list(bounds) != sorted(set(bounds)):
            raise ValueError(f'bucket bounds must be increasing and unique, got {bounds!r}')
        self.bounds = tuple(float(bound) for bound in bounds)
        self._bound_texts = (*(_bound_text(bound) for bound in self.bounds), '+Inf')  # the ``le`` labels
        self._lock = threading.Lock()
        self._counts = [0] * (len(self.bounds) + 1)
        self._sum = 0.0
        self._observed = 0  # observations so far: the family of the last scrape still holds while it stays
        self._last: tuple[tuple[str, str, str, int], HistogramMetricFamily] | None = None

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self.bounds, value)
        with self._lock:
            self._counts[index] += 1
            self._sum += value
            self._observed += 1

    def observe_many(self, values: Iterable[float]) -> None:
        indices = [(bisect.bisect_left(self.bounds, value), value) for value in values]
        with self._lock:
            for index, value in indices:
                self._counts[index] += 1
                self._sum += value
            self._observed += len(indices)

    @property
    def count(self) -> int:
        with self._lock:
            return sum(self._counts)

    def family(self, name: str, documentation: str, unit: str = '') -> HistogramMetricFamily:
        """The histogram as it is now (the same family as at the last scrape while nothing was observed)."""
        with self._lock:
            key = (name, documentation, unit, self._observed)
            last = self._last
            if last is not None and last[0] == key:
                return last[1]
            counts, total = tuple(itertools.accumulate(self._counts)), self._sum
        family = histogram(name, documentation, unit, tuple(zip(self._bound_texts, counts, strict=True)), total)
        with self._lock:
            self._last = (key, family)
        return family


def _bound_text(bound: float) -> str:
    return repr(bound) if bound != int(bound) else f'{bound:.1f}'


class LabelledCounts:
    """A counter per combination of label values, under one lock (``add`` costs a dict update)."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = tuple(labels)
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, ...], int] = {}

    def add(self, *values: str) -> None:
        with self._lock:
            self._counts[values] = self._counts.get(values, 0) + 1

    def count(self, *values: str) -> int:
        with self._lock:
            return self._counts.get(values, 0)

    def family(self) -> CounterMetricFamily:
        """The counts as they are now (the same family as at the last scrape while none moved)."""
        with self._lock:
            counts = tuple(sorted(self._counts.items()))
        return labelled_counter(self.name, self.documentation, self.labels, counts)


class RequestCounts:
    """HTTP requests answered, by method, route (the URL rule, not the path) and status, and those in flight."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._answered = LabelledCounts(
            'llnode_http_requests',
            'HTTP requests answered by the REST API, by method, route and status (Socket.IO traffic not included)',
            ('method', 'route', 'status'),
        )
        self._in_flight = 0

    def started(self) -> None:
        with self._lock:
            self._in_flight += 1

    def finished(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def answered(self, method: str, route: str, status: int) -> None:
        self._answered.add(method, route, str(status))

    def count(self, method: str, route: str, status: int) -> int:
        return self._answered.count(method, route, str(status))

    def families(self) -> Iterator[Metric]:
        with self._lock:
            in_flight = self._in_flight
        yield self._answered.family()
        yield gauge('llnode_http_requests_in_flight', 'HTTP requests the REST API is handling now', in_flight)


def node_families(node: Node, states: Sequence[str], state: str, repeat: RepeatThread) -> Iterator[Metric]:
    """Every node's own families: what it is, its lifecycle state, the repeat cycle."""
    yield info(
        'llnode_node',
        'The node: its name, uuid, type and llnode version',
        {'name': node.name, 'uuid': node.uuid, 'node_type': node.node_type, 'version': __version__},
    )
    yield state_set('llnode_node_state', "The node's lifecycle state", states, state)
    yield gauge('llnode_node_muted', '1 while the repeat cycle is muted (PUT /socketio off)', int(repeat.muted))
    yield counter('llnode_repeat_cycles', 'Repeat cycles run', repeat.cycles)
    yield counter('llnode_repeat_failures', 'Repeat cycles that raised', repeat.failures)


def socketio_families(sio: socketio.Server) -> Iterator[Metric]:
    """The open Socket.IO sessions of the node's clients, by transport (WebSocket once upgraded)."""
    sessions = {'polling': 0, 'websocket': 0}
    for socket in list(sio.eio.sockets.values()):
        if not socket.closed:
            sessions['websocket' if socket.upgraded else 'polling'] += 1
    yield gauges(
        'llnode_socketio_sessions',
        'Open Socket.IO (engine.io) sessions of clients, by transport',
        'transport',
        sessions,
    )


def loop_link_families(link: LoopSocket | None) -> Iterator[Metric]:
    """The Socket.IO link to the Loop of a trainer, annotator or converter."""
    connected = link is not None and link.connected
    yield gauge('llnode_loop_connected', '1 while the Socket.IO link to the Loop is up', int(connected))


class _NodeCollector(Collector):
    def __init__(self, families: Callable[[], Iterable[Metric]]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return list(self._families())


class NodeMetrics:
    """The registry of one node: the process collector and the node's own families (``node.metric_families()``).

    ``requests`` counts the REST API's requests (the common blueprint's request hooks feed it), ``events`` the
    Socket.IO events clients sent, by event and outcome (``ok`` or ``error``; node types that serve events feed it).
    """

    #: how many formats (content types) keep their families' texts; the ``Accept`` header picks one, and a
    #: client could name endless versions
    KEPT_FORMATS = 4

    def __init__(self, families: Callable[[], Iterable[Metric]]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = RequestCounts()
        self.events = LabelledCounts(
            'llnode_socketio_events', 'Socket.IO events of clients answered, by event and outcome', ('event', 'outcome')
        )
        self.registry.register(ProcessFigures())
        self.registry.register(_NodeCollector(families))
        self._texts_lock = threading.Lock()
        self._texts: dict[str, FamilyTexts | None] = {}  # by content type; None: the check failed, render whole

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """Every metric and its content type, as ``GET /metrics`` answers: Prometheus' text format 0.0.4, or
        the format the ``Accept`` header asks for (OpenMetrics, text 1.0.0), as prometheus-client negotiates it."""
        encode, content_type = choose_encoder(accept or '')
        with self._texts_lock:
            known = content_type in self._texts
            texts = self._texts.get(content_type)
            room = len(self._texts) < self.KEPT_FORMATS
        if known and texts is not None:
            return texts.render(self.registry.collect()), content_type
        if known or not room:  # a format whose texts cannot be kept: rendered whole, as prometheus-client does
            return encode(self.registry), content_type
        families = list(self.registry.collect())
        texts = FamilyTexts(encode)
        usable = texts.verify(families)
        with self._texts_lock:
            if len(self._texts) < self.KEPT_FORMATS:
                self._texts.setdefault(content_type, texts if usable else None)
        return (texts.render(families) if usable else encode(Families(families))), content_type
