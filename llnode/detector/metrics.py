"""The detector's Prometheus metrics: inference, the serving model, the outbox and the status sync.

Inference is counted by :class:`InferenceMetrics`, the observer every model's inference worker reports its
batches to: its counters last as long as the node (a worker's own ``stats()`` start again at each model swap), and
the histograms need each batch anyway. Everything else is read from the node's parts when Prometheus scrapes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from llnode.node.metrics import BucketCounts, Metric, counter, counters, gauge, gauges, info
from llnode.schema import OperationMode

if TYPE_CHECKING:
    from llnode.detector.deployment import ModelManager
    from llnode.detector.status_sync import StatusReporter

#: the states of ``llnode_detector_operation_mode`` (listed once: iterating an enum at each scrape costs)
OPERATION_MODES = tuple(mode.value for mode in OperationMode)

#: upper bounds of the batch-size histogram (images per logic call)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
#: upper bounds of the queue-time histogram (seconds from a request's arrival at the worker to its batch's start)
QUEUE_SECONDS_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
#: upper bounds of the compute-time histogram (seconds per logic call)
COMPUTE_SECONDS_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class InferenceMetrics:
    """Inference counters and histograms for the node's lifetime, fed by every inference worker (the node hands
    it to each as ``observer``)."""

    def __init__(self) -> None:
        self.batch_size = BucketCounts(BATCH_SIZE_BUCKETS)
        self.queue_seconds = BucketCounts(QUEUE_SECONDS_BUCKETS)
        self.compute_seconds = BucketCounts(COMPUTE_SECONDS_BUCKETS)
        self._lock = threading.Lock()
        self._requests = 0
        self._images = 0
        self._batches = 0
        self._failed = 0

    def batch_done(
        self, *, queue_seconds: Sequence[float], sizes: Sequence[int], seconds: Sequence[float], failed: bool
    ) -> None:
        with self._lock:
            self._requests += len(queue_seconds)
            self._images += sum(sizes)
            self._batches += len(sizes)
            self._failed += int(failed)
        self.batch_size.observe_many(sizes)
        self.queue_seconds.observe_many(queue_seconds)
        self.compute_seconds.observe_many(seconds)

    def families(self) -> Iterator[Metric]:
        with self._lock:
            requests, images, batches, failed = self._requests, self._images, self._batches, self._failed
        yield counter('llnode_inference_requests', 'Inference requests (one per client call) that ran', requests)
        yield counter('llnode_inference_images', 'Images handed to the model', images)
        yield counter('llnode_inference_batches', "Calls of the model's batch_evaluate (or evaluate)", batches)
        yield counter('llnode_inference_failed_batches', 'Calls of the model that raised', failed)
        yield self.batch_size.family('llnode_inference_batch_size', 'Images per call of the model')
        yield self.queue_seconds.family(
            'llnode_inference_queue_seconds', "Seconds a request waited for its batch (the model's queue)"
        )
        yield self.compute_seconds.family('llnode_inference_compute_seconds', 'Seconds per call of the model')


def model_families(models: ModelManager, model_format: str) -> Iterator[Metric]:
    """The serving model (info; none while no model serves), its queue, and the failed model updates."""
    active = models.active()
    if active is not None:
        yield info(
            'llnode_model',
            'The model that serves: its version, model id and format',
            {'version': active.version, 'model_id': active.info.id, 'format': model_format},
        )
    yield gauge(
        'llnode_inference_queued_images',
        'Images waiting for the serving model',
        0 if active is None else active.worker.queued,
    )
    yield gauge('llnode_model_serving', '1 while a model serves', int(active is not None))
    yield counter(
        'llnode_model_update_failures', 'Model updates (download, install or build) that failed', models.update_failures
    )


def outbox_families(stats: Mapping[str, Any]) -> Iterator[Metric]:
    """The outbox's queues and counters (``outbox.stats()``; they start again when ``/reset`` makes a new one)."""
    yield gauges(
        'llnode_outbox_queued_items',
        'Items on disk waiting for upload, by queue',
        'queue',
        {queue: stats.get(f'queued_{queue}', 0) for queue in ('priority', 'normal')},
    )
    yield gauge(
        'llnode_outbox_pending_writes', 'Items handed to the outbox, not yet on disk', stats.get('pending_writes', 0)
    )
    yield gauge('llnode_outbox_pending_bytes', 'Bytes of the items not yet on disk', stats.get('bytes_waiting', 0))
    yield gauge(
        'llnode_outbox_uploading',
        '1 while the outbox uploads (mode continuous_upload)',
        int(stats.get('mode') == 'continuous_upload'),
    )
    yield counter('llnode_outbox_saved_items', 'Items stored on disk', stats.get('saved', 0))
    yield counter('llnode_outbox_uploaded_items', 'Items the Loop accepted', stats.get('uploaded', 0))
    yield counter(
        'llnode_outbox_rejected_items', 'Items the Loop refused for good (kept in rejected/)', stats.get('rejected', 0)
    )
    yield counters(
        'llnode_outbox_dropped_items',
        'Items dropped without upload, by reason',
        'reason',
        {str(reason): count for reason, count in sorted(dict(stats.get('dropped') or {}).items())},
    )
    yield counter(
        'llnode_outbox_upload_errors', 'Upload attempts that failed (retried later)', stats.get('upload_errors', 0)
    )


def loop_families(status: StatusReporter) -> Iterator[Metric]:
    """The detector's link to the Loop: its status syncs (a detector has no Socket.IO link to the Loop)."""
    yield gauge(
        'llnode_loop_connected',
        '1 while the Loop is reachable (detectors: the last status sync succeeded)',
        int(status.last_ok is True),
    )
    yield counters(
        'llnode_loop_status_syncs',
        'Status syncs with the Loop, by outcome',
        'outcome',
        {'sent': status.sent, 'failed': status.failed},
    )
