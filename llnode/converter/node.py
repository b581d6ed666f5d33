"""The Converter node: converts the project's models from one format into another and uploads the results.

A node type of the reference's older releases (its README's "Converter Node", removed in v0.10.0). What it does:

- every ``check_interval`` seconds its conversion worker (:mod:`llnode.converter.worker`) lists the project's
  models that have the logic's source format but lack its target format, downloads each into the data folder,
  converts it with the :class:`~llnode.converter.logic.ConverterLogic` and uploads the result as the target
  format of the same model (``PUT …/models/{id}/{format}/file``, parts named ``files``);
- a model that fails is retried with exponential back-off of its own (not every cycle) and given up after
  ``max_attempts`` failures, which stay in the status errors (:mod:`llnode.converter.retries`); an unavailable
  Loop (no connection, 5xx, 408, 429) is waited out without counting;
- like every node of those releases it is a Socket.IO client of the Loop (loop-protocol §8: "every node,
  including the detector and a converter, was a Socket.IO client and sent its status"), with the handshake
  header ``nodeType: converter``. The reference's converter left its status unimplemented; this node sends a
  ``NodeStatus`` as ``update_converter`` every repeat cycle, named after ``update_trainer`` and
  ``update_annotation_node``. A Loop without a handler for it acks nothing, which is accepted; only an ack with
  ``success: false`` marks the link broken. Conversions never wait for the link: it only carries the status.

In code: :meth:`ConverterNode.status`, :attr:`converted`, :meth:`failures`, :meth:`convert_now`,
:meth:`retry_failed`; ``GET /readyz`` answers 503 while the worker is dead or the listing fails.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from llnode.config import Settings
from llnode.converter.logic import ConverterLogic
from llnode.converter.retries import MAX_ATTEMPTS, MAX_RETRY_DELAY, RETRY_DELAY, ModelFailure, RetryBook
from llnode.converter.worker import ConversionWorker
from llnode.failure_log import FailureLog
from llnode.loop.errors import LoopError
from llnode.loop.exchange import DataExchange
from llnode.node.errors import Unavailable
from llnode.node.identity import node_key
from llnode.node.metrics import GaugeMetricFamily, Metric, counter, gauge
from llnode.node.node import STOP_TIMEOUT, Node
from llnode.node.repeat import REPEAT_INTERVAL
from llnode.schema import NodeStatus

if TYPE_CHECKING:
    from llnode.loop.http import LoopClient
    from llnode.loop.socket import LoopSocket

logger = logging.getLogger('llnode.converter')

#: ``nodeType`` handshake header and status event of a converter.
CONVERTER_NODE_TYPE = 'converter'
STATUS_EVENT = 'update_converter'
#: Timeout of the status call (the annotator's ``update_annotation_node`` uses 10 s).
STATUS_TIMEOUT = 10.0
#: Seconds between two listings of the project's models (the reference's converter looked every 60 s).
CHECK_INTERVAL = 60.0
#: How long ``stop()`` waits for a conversion in progress to end.
WORKER_STOP_TIMEOUT = 10.0
#: Status states: a model is being converted, or not (the reference's ``State.Running`` / ``State.Idle``).
RUNNING, IDLE = 'running', 'idle'


class ConverterNode(Node):
    """A converter: ``ConverterNode('torchscript converter', MyLogic()).serve(port=8005)``.

    ``logic`` is a :class:`~llnode.converter.logic.ConverterLogic`. The project comes from the settings
    (``LOOP_ORGANIZATION``/``LOOP_PROJECT``, both required). ``repeat_interval`` is the status heartbeat (5 s),
    ``check_interval`` the pause between two listings. A failed model is tried again after ``retry_delay``
    seconds, doubling up to ``max_retry_delay``, and given up after ``max_attempts`` counted failures (None:
    never). ``worker_stop_timeout`` bounds how long ``stop()`` waits for a running conversion.
    """

    node_type = CONVERTER_NODE_TYPE
    needs_loop_socket = True

    def __init__(
        self,
        name: str,
        logic: ConverterLogic,
        *,
        settings: Settings | None = None,
        uuid: str | None = None,
        repeat_interval: float = REPEAT_INTERVAL,
        check_interval: float = CHECK_INTERVAL,
        max_attempts: int | None = MAX_ATTEMPTS,
        retry_delay: float = RETRY_DELAY,
        max_retry_delay: float = MAX_RETRY_DELAY,
        worker_stop_timeout: float = WORKER_STOP_TIMEOUT,
        loop_client_factory: Callable[[Settings], LoopClient] | None = None,
        loop_socket_factory: Callable[[LoopClient, str], LoopSocket] | None = None,
    ) -> None:
        if not isinstance(logic, ConverterLogic):
            raise TypeError(f'logic must be a ConverterLogic, got {type(logic).__name__}')
        for what, value in (('check_interval', check_interval), ('worker_stop_timeout', worker_stop_timeout)):
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not (math.isfinite(value) and value > 0)
            ):
                raise ValueError(f'{what} must be a positive number of seconds, got {value!r}')
        super().__init__(
            name,
            settings=settings,
            uuid=uuid,
            repeat_interval=repeat_interval,
            loop_client_factory=loop_client_factory,
            loop_socket_factory=loop_socket_factory,
        )
        self.settings.project_path  # noqa: B018  (raises ConfigError when organization or project is missing)
        self.logic = logic
        self.worker_stop_timeout = float(worker_stop_timeout)
        conversions = self.settings.data_folder / self.settings.organization / self.settings.project / 'conversions'
        work_root = conversions / f'{logic.source_format}_to_{logic.target_format}'
        self.book = RetryBook(
            max_attempts=max_attempts,
            retry_delay=retry_delay,
            max_retry_delay=max_retry_delay,
            path=work_root.with_name(f'{work_root.name}.failures.json'),  # beside: the worker empties work_root
        )
        self.worker = ConversionWorker(
            logic,
            exchange=self._exchange,
            work_root=work_root,
            book=self.book,
            check_interval=float(check_interval),
            muted=lambda: self.muted,
            name=f'llnode-converter-{node_key(name)}',
            on_restart_needed=self.restart_needed,
        )
        self._exchange_lock = threading.Lock()  # guards _data_exchange
        self._data_exchange: DataExchange | None = None
        self._status_lock = threading.Lock()  # guards _reported_state and _unanswered_status_logged
        self._status_failures = FailureLog(logger, f'{name}: {STATUS_EVENT}')
        self._reported_state: str | None = None
        self._unanswered_status_logged = False

    # ------------------------------------------------------------------ public API

    @property
    def converted(self) -> list[str]:
        """Ids of the models this node converted since it started (a 409 counts), oldest first."""
        return self.worker.converted

    def failures(self) -> dict[str, ModelFailure]:
        """The models that failed and are still listed, by id: attempts, last error, next attempt, given up."""
        return self.book.records()

    def convert_now(self) -> None:
        """List and convert now instead of at the next check."""
        self.worker.wake()

    def retry_failed(self, *, given_up_only: bool = False) -> list[str]:
        """Forget the failures (all, or only the given-up models) and try those models again now; their ids."""
        forgotten = self.book.clear(given_up_only=given_up_only)
        self.worker.wake()
        return forgotten

    def status(self) -> NodeStatus:
        """The ``update_converter`` payload as it is now."""
        errors = self.book.describe()
        list_error = self.worker.list_error
        if list_error is not None:
            errors['list_models'] = list_error
        return NodeStatus(
            id=self.uuid,
            name=self.name,
            state=RUNNING if self.worker.current is not None else IDLE,
            uptime=self.uptime,
            errors=errors,
            capabilities=list(self.logic.capabilities),
        )

    def stats(self) -> dict[str, Any]:
        """``Node.stats()`` plus ``converter``: ``converted`` (models converted since the start, a 409 included),
        ``failures`` (models with a failure on record), ``given_up`` (those of them not tried again) and
        ``converting`` (the id of the model being converted now, or None)."""
        stats = super().stats()
        stats['converter'] = self.stats_section('converter', self._converter_stats)
        return stats

    def metric_families(self) -> Iterator[Metric]:
        """``Node.metric_families()`` plus the converter's: ``llnode_converter_converted_models_total``,
        ``llnode_converter_failed_models`` (``given_up`` label) and ``llnode_converter_converting``."""
        yield from super().metric_families()
        yield from self.metrics_section('converter', self._converter_families)

    def _converter_families(self) -> Iterator[Metric]:
        stats = self._converter_stats()
        yield counter('llnode_converter_converted_models', 'Models converted since the start', stats['converted'])
        failed = GaugeMetricFamily(
            'llnode_converter_failed_models',
            'Models with a failure on record, by whether they were given up',
            labels=['given_up'],
        )
        failed.add_metric(['false'], stats['failures'] - stats['given_up'])
        failed.add_metric(['true'], stats['given_up'])
        yield failed
        yield gauge(
            'llnode_converter_converting', '1 while a model is being converted', int(stats['converting'] is not None)
        )

    def _converter_stats(self) -> dict[str, Any]:
        failures = self.book.records()
        current = self.worker.current
        return {
            'converted': len(self.worker.converted),
            'failures': len(failures),
            'given_up': sum(1 for record in failures.values() if record.given_up),
            'converting': None if current is None else current.id,
        }

    def send_status(self) -> bool:
        """Send ``update_converter`` now; True unless it failed or the Loop answered ``success: false``."""
        link = self.loop_socket
        if link is None or not link.connected:
            logger.debug('%s: not connected; status not sent', self.name)
            return False
        status = self.status()
        try:
            ack = link.call(STATUS_EVENT, status.to_dict(), timeout=STATUS_TIMEOUT)
        except LoopError as e:
            self._status_failures.failed(str(e), exc_info=e)  # logged when it starts, then once a minute
            return False
        self._status_failures.succeeded()
        if isinstance(ack, dict) and ack.get('success') is False:
            link.mark_broken(f'the Loop refused {STATUS_EVENT}: {ack.get("error_msg")}')
            return False
        with self._status_lock:
            changed = status.state != self._reported_state
            self._reported_state = status.state
            first_silent = ack is None and not self._unanswered_status_logged
            self._unanswered_status_logged |= ack is None
        if first_silent:
            logger.info('%s: the Loop sends no ack for %s (it may not know converters); fine', self.name, STATUS_EVENT)
        logger.log(logging.INFO if changed else logging.DEBUG, '%s: status %s', self.name, status.state)
        return True

    def stop(self, timeout: float = STOP_TIMEOUT) -> bool:
        """Stop like every node; the conversion worker is told first, so it winds down while the rest stops."""
        self.worker.request_stop()
        return super().stop(timeout)

    # ------------------------------------------------------------------ Node hooks

    def on_start(self) -> None:
        self.worker.start()

    def on_repeat(self) -> None:
        self.send_status()

    def on_stop(self) -> None:
        self.worker.stop(self.worker_stop_timeout)

    def unmute(self) -> None:
        super().unmute()
        self.worker.wake()

    def is_ready(self) -> bool:
        if not self.worker.alive:
            raise Unavailable('the conversion worker is not running')
        list_error = self.worker.list_error
        if list_error is not None:
            raise Unavailable(f'cannot list the models to convert: {list_error}')
        return True

    # ------------------------------------------------------------------ internals

    def _exchange(self) -> DataExchange | None:
        client = self.loop_client
        if client is None:
            return None
        with self._exchange_lock:
            if self._data_exchange is None or self._data_exchange.client is not client:
                self._data_exchange = DataExchange(client)
            return self._data_exchange
