"""The Detector node: serves a model over REST and Socket.IO, follows the Loop's deployment, feeds the outbox.

Wire behaviour is the reference's (loop-protocol §4, reference-behaviour §1): the same routes, events, payloads
and on-disk layout. What differs is how it holds up:

- every inference goes through the model's :class:`~llnode.detector.batching.InferenceWorker` (concurrent REST
  and Socket.IO requests share batches; a logic never runs concurrently with itself unless it says it may);
- model updates run in their own thread (:mod:`llnode.detector.deployment`): the old model serves until the
  swap, failures keep it serving and are retried with back-off;
- status syncs run in their own thread (:mod:`llnode.detector.status_sync`), so no request waits for the Loop;
- the detect path hands images to the outbox's writer thread: it never waits for disk or network;
- bad input is a JSON error with a fitting status, never a bare 500;
- a :class:`~llnode.node.restart.NodeNeedsRestartError` from the factory's ``build`` or the logic's
  ``evaluate``/``batch_evaluate`` stops the node for a fresh process (``EXIT_NEEDS_RESTART``); the request that
  met it is answered 503.

Use it in code as well as over the network: :meth:`DetectorNode.detect`, :meth:`batch_detect` and
:meth:`upload` are what the routes call.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
from flask import Blueprint

from llnode.config import ConfigError, Settings
from llnode.detector.batching import InferenceStopped
from llnode.detector.deployment import UPDATE_ERROR_KEY, ActiveModel, ModelManager, ModelTarget, NotServing
from llnode.detector.images import check_decodable, decode_image, keep_pillow_blocks, release_pillow_blocks
from llnode.detector.logic import DetectorFactory
from llnode.detector.metrics import (
    OPERATION_MODES,
    InferenceMetrics,
    loop_families,
    model_families,
    outbox_families,
)
from llnode.detector.model_store import ModelStore, RetryBackoff, is_version
from llnode.detector.openapi import describe_detector
from llnode.detector.options import check_autoupload, checked_tags
from llnode.detector.outbox import Outbox, OutboxClosed, OutboxFull
from llnode.detector.relevance import RelevanceFilter
from llnode.detector.rest import detector_blueprints
from llnode.detector.socket_events import register_socket_events
from llnode.detector.status_sync import StatusReporter
from llnode.detector.version_choice import VersionChoice, load_choice, save_choice
from llnode.failure_log import FailureLog
from llnode.loop.causes import http_cause, loop_cause
from llnode.loop.errors import LoopError, LoopHTTPError
from llnode.node.errors import BadRequest, InsufficientStorage, Unavailable, Unprocessable
from llnode.node.identity import node_key
from llnode.node.metrics import Metric, state_set
from llnode.node.node import Node
from llnode.node.openapi import ApiDescription
from llnode.node.repeat import REPEAT_INTERVAL
from llnode.node.restart import NodeNeedsRestartError
from llnode.schema import (
    AboutResponse,
    DetectorStatus,
    ImageMetadata,
    ModelInformation,
    ModelVersionResponse,
    OperationMode,
    OutboxMode,
    VersionMode,
)

if TYPE_CHECKING:
    from llnode.loop.http import LoopClient

logger = logging.getLogger('llnode.detector')

#: the tag explicit uploads carry (reference)
PICKED_BY_SYSTEM = 'picked_by_system'

#: timeout of the node's own calls to the Loop (status, deployment target, model list); the model download has its own
LOOP_CALL_TIMEOUT = 10.0

#: longest wait of one inference request before it fails with 503 (a stuck model must not pile up threads)
INFERENCE_TIMEOUT = 60.0

#: how long ``PUT /outbox_mode stopped`` waits for the uploader to stop
OUTBOX_STOP_TIMEOUT = 30.0


class VersionControlError(BadRequest):
    """A version-control request that cannot be followed (HTTP 400, Socket.IO ``{"error": ...}``)."""


class OutboxLike(Protocol):
    """What the node needs of its outbox (:class:`llnode.detector.outbox.Outbox`)."""

    def start(self) -> None: ...
    def close(self, timeout: float = ...) -> bool: ...
    def save(self, image: bytes | np.ndarray, metadata: ImageMetadata, *, priority: bool = ...) -> str: ...
    def enqueue(self, image: bytes | np.ndarray, metadata: ImageMetadata, *, priority: bool = ...) -> bool: ...
    @property
    def mode(self) -> OutboxMode: ...
    def set_mode(self, mode: OutboxMode | str, timeout: float = ...) -> bool: ...
    def stats(self) -> dict[str, Any]: ...


class RelevanceFilterLike(Protocol):
    """What the node needs of its relevance filter (:class:`llnode.detector.relevance.RelevanceFilter`)."""

    def causes(self, metadata: ImageMetadata, camera_id: str | None = ...) -> list[str]: ...
    def reset(self) -> None: ...


def _default_outbox(settings: Settings) -> OutboxLike:
    return Outbox(settings)


def _default_filter(settings: Settings) -> RelevanceFilterLike:
    return RelevanceFilter.from_settings(settings)


class DetectorNode(Node):
    """A detector: ``DetectorNode('my detector', MyFactory()).serve(port=8004)``.

    ``factory`` builds a :class:`~llnode.detector.logic.DetectorLogic` per model version. Settings default to
    ``Settings.from_env()``; ``LOOP_ORGANIZATION`` and ``LOOP_PROJECT`` are required. ``use_backdoor_controls``
    adds ``POST /reset`` (default: ``USE_BACKDOOR_CONTROLS``). ``max_batch_size`` and ``max_batch_wait_ms`` tune
    the dynamic batching, ``max_queue`` the images that may wait for inference (503 beyond), ``max_request_bytes``
    the largest request body (413 beyond; default 64 MiB). ``outbox_factory``
    and ``relevance_filter`` replace the default parts (tests, custom storage).
    """

    node_type: ClassVar[str] = 'detector'
    needs_loop_client: ClassVar[bool] = True
    #: the reference's README tells clients to send these with underscores (quirk Q4); both spellings work here
    underscore_headers: ClassVar[tuple[str, ...]] = ('camera_id', 'creation_date')

    def __init__(
        self,
        name: str,
        factory: DetectorFactory,
        *,
        settings: Settings | None = None,
        uuid: str | None = None,
        use_backdoor_controls: bool | None = None,
        max_batch_size: int = 8,
        max_batch_wait_ms: float = 2.0,
        max_queue: int = 256,
        inference_timeout: float = INFERENCE_TIMEOUT,
        max_request_bytes: int | None = None,
        outbox_factory: Callable[[Settings], OutboxLike] | None = None,
        relevance_filter: RelevanceFilterLike | None = None,
        update_backoff: RetryBackoff | None = None,
        repeat_interval: float = REPEAT_INTERVAL,
        loop_client_factory: Callable[[Settings], LoopClient] | None = None,
    ) -> None:
        if not isinstance(factory, DetectorFactory):
            raise TypeError(f'factory must be a DetectorFactory, got {type(factory).__name__}')
        settings = settings if settings is not None else Settings.from_env()
        if not settings.organization or not settings.project:
            raise ConfigError(
                'a detector needs LOOP_ORGANIZATION and LOOP_PROJECT: set them to the organization and project '
                'it serves (llnode loop prints them)'
            )
        super().__init__(
            name,
            settings=settings,
            uuid=uuid,
            repeat_interval=repeat_interval,
            loop_client_factory=loop_client_factory,
        )
        self.factory = factory
        self.backdoor_enabled = (
            settings.use_backdoor_controls if use_backdoor_controls is None else use_backdoor_controls
        )
        self.inference_timeout = inference_timeout
        if max_request_bytes is not None:
            if max_request_bytes < 1:
                raise ValueError(f'max_request_bytes must be positive, got {max_request_bytes}')
            self.max_request_bytes = max_request_bytes
        self._outbox_factory = outbox_factory or _default_outbox
        self.relevance_filter = relevance_filter if relevance_filter is not None else _default_filter(settings)
        self.outbox: OutboxLike = self._outbox_factory(settings)

        self.inference_metrics = InferenceMetrics()  # every model's worker reports its batches here (/metrics)
        self._mode_lock = threading.Lock()  # guards _operation_mode and _sync_countdown
        self._operation_mode = OperationMode.STARTUP
        self._sync_countdown = 0  # the first cycle syncs (reference)
        self.store = ModelStore(settings.data_folder)
        self.models = ModelManager(
            self.store,
            factory,
            self._download_model,
            exclusive=settings.exclusive_model_build,
            version_mode=self._default_version_mode(),
            may_update=self._may_update,
            on_change=self.request_status_sync,
            worker_options={
                'max_batch_size': max_batch_size,
                'max_wait_ms': max_batch_wait_ms,
                'max_queue': max_queue,
                'observer': self.inference_metrics,
            },
            backoff=update_backoff,
            name=self.key,
            on_restart_needed=self.restart_needed,
        )
        self._version_lock = threading.Lock()  # one version-control choice saved and applied at a time
        saved = load_choice(settings.data_folder)
        if saved is not None:  # the operator's last choice wins over VERSION_CONTROL_DEFAULT
            self._apply_version_choice(saved)
            logger.info('%s: version control %s (saved choice)', self.name, self.models.version_mode.value)
        #: the periodic Loop calls and their ongoing failures (logged once a minute, named by /readyz and /stats)
        self.loop_failures = {
            'status_sync': FailureLog(logger, f'{self.name}: status sync'),
            'deployment_target': FailureLog(logger, f'{self.name}: getting the deployment target'),
        }
        self._status = StatusReporter(
            self._send_status,
            name=f'llnode-status-{self.key}',
            failures=self.loop_failures['status_sync'],
            describe=lambda error: loop_cause(error, self.settings),
        )
        register_socket_events(self)

    @property
    def key(self) -> str:
        """The node name as used in thread names and ``uuids.json`` (lower case, ``_`` for spaces)."""
        return node_key(self.name)

    def _default_version_mode(self) -> VersionMode:
        return VersionMode.PAUSE if self.settings.version_control_default == 'pause' else VersionMode.FOLLOW_LOOP

    # ------------------------------------------------------------------ hooks

    def on_start(self) -> None:
        keep_pillow_blocks()
        self.outbox.start()  # leftovers upload even before a model is loaded (reference)
        self.models.load_current()  # before any Loop contact
        self._status.start()
        self.models.start()
        with self._mode_lock:
            self._operation_mode = OperationMode.IDLE

    def on_repeat(self) -> None:
        with self._mode_lock:
            self._sync_countdown -= 1
            sync = self._sync_countdown < 0
            if sync:
                self._sync_countdown = max(1, self.settings.sync_cycles) - 1
        if sync:
            self.request_status_sync()
        if self.operation_mode == OperationMode.IDLE:
            self._poll_deployment_target()
            self.models.request_update()

    def on_stop(self) -> None:
        clean = self.models.stop()
        clean &= self._status.stop(LOOP_CALL_TIMEOUT + 1)
        clean &= self.outbox.close()
        if not clean:
            logger.warning('%s: some detector threads did not end in time', self.name)

    def is_ready(self) -> bool:
        try:
            self.models.serving()
        except NotServing as e:  # the reference's message, and what keeps the model away where it is known
            cause = self.models.errors().get(UPDATE_ERROR_KEY) or self.loop_problem()
            if cause is None:
                raise
            raise NotServing(f'{e.detail}: {cause}', headers=e.headers) from None
        return True

    def loop_problem(self) -> str | None:
        """Why talking to the Loop fails now (the first ongoing failure of the periodic calls), or None."""
        for failures in self.loop_failures.values():
            cause = failures.cause
            if cause is not None:
                return cause
        return None

    def blueprints(self) -> list[Blueprint]:
        return [*super().blueprints(), *detector_blueprints(self)]

    def _release_cached_memory(self) -> None:
        release_pillow_blocks()  # about 5 MB after concurrent 640x480 decodes (bench/detect.py idle RSS)

    # ------------------------------------------------------------------ inference

    def detect(
        self,
        image: np.ndarray | bytes,
        *,
        camera_id: str | None = None,
        tags: Iterable[str] = (),
        source: str | None = None,
        autoupload: str = 'filtered',
        creation_date: str | None = None,
    ) -> ImageMetadata:
        """The detections for one image (an array, or encoded bytes Pillow reads), uploaded per ``autoupload``."""
        return self.batch_detect(
            [image], camera_id=camera_id, tags=tags, source=source, autoupload=autoupload, creation_date=creation_date
        )[0]

    def batch_detect(
        self,
        images: Sequence[np.ndarray | bytes],
        *,
        camera_id: str | None = None,
        tags: Iterable[str] = (),
        source: str | None = None,
        autoupload: str = 'filtered',
        creation_date: str | None = None,
    ) -> list[ImageMetadata]:
        """The detections for several images, in their order; tags, source, date and camera apply to each."""
        check_autoupload(autoupload)
        tag_list = checked_tags(tags)
        self.models.serving()  # "no model" comes before any decoding (reference 0.27)
        arrays = [
            decode_image(image) if isinstance(image, (bytes, bytearray, memoryview)) else image for image in images
        ]
        results = self._infer(arrays)
        answers = []
        for original, result in zip(images, results, strict=True):
            metadata = _finished(result, tag_list, source, creation_date)
            self._autoupload(original, metadata, camera_id, autoupload)
            answers.append(metadata)
        return answers

    def _infer(self, images: list[np.ndarray]) -> list[ImageMetadata]:
        for attempt in (1, 2):
            model = self.models.serving()
            capacity = model.worker.max_queue
            if len(images) > capacity:  # it could never be queued: the client's error, not a busy detector
                raise Unprocessable(
                    f'a batch of {len(images)} images is more than the inference queue holds ({capacity}); '
                    f'send at most {capacity}'
                )
            try:
                return model.worker.evaluate_many(images, timeout=self.inference_timeout)
            except NodeNeedsRestartError as e:
                self.restart_needed(e)
                raise Unavailable(f'the detector needs a restart: {e}', retry_after=5) from None
            except InferenceStopped:
                if attempt == 2:
                    raise
                # the model was swapped out between lookup and submit: the new one takes the request
        raise AssertionError('unreachable')

    def _autoupload(
        self, image: np.ndarray | bytes, metadata: ImageMetadata, camera_id: str | None, autoupload: str
    ) -> None:
        if autoupload == 'disabled':
            return
        # Nothing mutates an answer once it is built (the outbox serialises at hand-over), so no copies here.
        if autoupload == 'all':
            self._enqueue(image, metadata)
            return
        try:
            causes = self.relevance_filter.causes(metadata, camera_id or None)
        except TypeError:  # detections the filter cannot read (a logic bug); the answer itself still goes out
            logger.exception('%s: the relevance filter could not read the detections', self.name)
            return
        if causes:
            self._enqueue(image, dataclasses.replace(metadata, tags=[*metadata.tags, *causes]))

    def _enqueue(self, image: np.ndarray | bytes, metadata: ImageMetadata) -> None:
        """Hand an image to the outbox's writer; a failure there never fails the detection it came with."""
        try:
            self.outbox.enqueue(_image_for_outbox(image), metadata)
        except Exception:
            logger.exception('%s: could not queue an image for upload', self.name)

    # ------------------------------------------------------------------ explicit uploads

    def upload(
        self, image: np.ndarray | bytes, metadata: ImageMetadata | None = None, *, priority: bool = False
    ) -> str:
        """Put one image into the outbox durably (it is on disk when this returns); returns the item id.

        Encoded bytes must decode (they are stored as sent); with a model loaded, the detections' category ids
        are set from the model's categories by name (reference). The tag ``picked_by_system`` is added.
        """
        if isinstance(image, (bytes, bytearray, memoryview)):
            image = bytes(image)
            check_decodable(image)
        elif not isinstance(image, np.ndarray):
            raise BadRequest(f'an image must be encoded bytes or a numpy array, got {type(image).__name__}')
        item = ImageMetadata() if metadata is None else _copy(metadata)
        model = self.models.active()
        if model is not None:
            _set_category_ids(item, model.info)
        item.tags = [*item.tags, PICKED_BY_SYSTEM]
        return self._save(_image_for_outbox(image), item, priority)

    def upload_files(
        self,
        files: Sequence[bytes],
        *,
        source: str | None = None,
        creation_date: str | None = None,
        priority: bool = False,
    ) -> list[str]:
        """``POST /upload``: every file is checked first, so a bad one queues nothing; then each is saved."""
        for index, data in enumerate(files):
            try:
                check_decodable(data)
            except BadRequest as e:
                raise type(e)(f'file {index}: {e.detail}') from None
        ids = []
        for data in files:
            metadata = ImageMetadata(tags=[PICKED_BY_SYSTEM], source=source, created=creation_date)
            ids.append(self._save(data, metadata, priority))
        return ids

    def _save(self, image: np.ndarray | bytes, metadata: ImageMetadata, priority: bool) -> str:
        """Store one item durably; the outbox's refusals become HTTP errors (503 full or closed, 507 disk)."""
        try:
            return self.outbox.save(image, metadata, priority=priority)
        except (OutboxFull, OutboxClosed) as e:
            raise Unavailable(f'the outbox takes no more images now: {e}', retry_after=10) from None
        except (ValueError, TypeError) as e:
            raise Unprocessable(f'cannot store the image: {e}') from None
        except OSError as e:
            logger.exception('%s: storing an upload failed', self.name)
            raise InsufficientStorage(f'cannot store the image: {e.strerror or e}') from None

    # ------------------------------------------------------------------ modes

    @property
    def operation_mode(self) -> OperationMode:
        with self._mode_lock:
            return self._operation_mode

    def set_operation_mode(self, mode: OperationMode | str) -> None:
        """``startup``, ``idle`` or ``detecting`` (only ``idle`` lets the model change); a change syncs status."""
        try:
            mode = OperationMode(mode)
        except ValueError:
            raise Unprocessable(f'{mode!r} is not a valid OperationMode') from None
        with self._mode_lock:
            changed = mode != self._operation_mode
            self._operation_mode = mode
        if changed:
            logger.info('%s: operation mode %s', self.name, mode.value)
            self.request_status_sync()
            if mode == OperationMode.IDLE:
                self.models.request_update()

    def set_version_mode(self, text: str) -> None:
        """``follow_loop``, ``pause`` or a version such as ``1.2`` (``PUT /model_version``).

        A request that cannot be followed raises :class:`VersionControlError` with the reference's message and
        changes nothing (the reference switches to ``specific_version`` or ``pause`` on some of them, quirk Q5).
        An accepted choice is saved before it applies (:mod:`llnode.detector.version_choice`), so a restart keeps
        it; if it cannot be saved the request fails with 507 and changes nothing.
        """
        if not isinstance(text, str):
            raise VersionControlError('Invalid version number')
        text = text.strip()
        if text == VersionMode.FOLLOW_LOOP.value:
            choice = VersionChoice(VersionMode.FOLLOW_LOOP)
        elif text == VersionMode.PAUSE.value:
            choice = VersionChoice(VersionMode.PAUSE)
        else:
            if not is_version(text):
                raise VersionControlError('Invalid version number')
            target = self.models.target
            if target is None or target.version != text:
                target = self._find_model(text)
            choice = VersionChoice(VersionMode.SPECIFIC_VERSION, target)
        with self._version_lock:
            try:
                save_choice(self.settings.data_folder, choice)
            except OSError as e:
                raise InsufficientStorage(f'cannot save the version control: {e.strerror or e}') from None
            self._apply_version_choice(choice)
        logger.info('%s: version control %s', self.name, self.models.version_mode.value)

    def _apply_version_choice(self, choice: VersionChoice) -> None:
        if choice.mode == VersionMode.FOLLOW_LOOP:
            self.models.follow_loop()
        elif choice.mode == VersionMode.PAUSE:
            self.models.pause()
        elif choice.target is not None:
            self.models.use_version(choice.target)

    def _find_model(self, version: str) -> ModelTarget:
        """The Loop's model with ``version`` (``GET …/models``); offline, a locally installed copy is used."""
        try:
            answer = self._loop().json('GET', self._project('/models'), **self._loop_kwargs())
        except LoopHTTPError as e:
            logger.warning('%s: listing the models failed: %s', self.name, e)
            raise VersionControlError('Failed to load models from learning loop') from None
        except LoopError as e:
            if self.store.has(version):
                info = self.store.model_info(version)
                logger.warning('%s: the Loop is unreachable (%s); using the installed model %s', self.name, e, version)
                return ModelTarget(id=info.id, version=version)
            raise VersionControlError(str(e)) from None
        models = answer.get('models') if isinstance(answer, dict) else None
        if not isinstance(models, list):
            raise VersionControlError('Failed to load models from learning loop')
        matches = [m for m in models if isinstance(m, dict) and m.get('version') == version]
        if not matches:
            raise VersionControlError(f'No Model with version {version}')
        if len(matches) > 1:
            raise VersionControlError(f'Multiple models with version {version}')
        return ModelTarget(id=str(matches[0].get('id')), version=version)

    def set_outbox_mode(self, mode: OutboxMode | str, timeout: float = OUTBOX_STOP_TIMEOUT) -> bool:
        """``continuous_upload`` or ``stopped``; True once the outbox is in that mode (a stop waits ``timeout``)."""
        try:
            mode = OutboxMode(mode)
        except ValueError:
            raise Unprocessable(f'{mode!r} is not a valid OutboxMode') from None
        return self.outbox.set_mode(mode, timeout)

    # ------------------------------------------------------------------ reports

    def status(self) -> DetectorStatus:
        """What the node tells the Loop (``POST …/detectors``)."""
        target = self.models.target
        return DetectorStatus(
            uuid=self.uuid,
            name=self.name,
            uptime=self.uptime,
            model_format=self.factory.model_format,
            current_model=self.models.current_version,
            target_model=None if target is None else target.version,
            errors=self.models.errors(),
            operation_mode=self.operation_mode,
            node_version=self.settings.node_version,
        )

    def about(self) -> AboutResponse:
        model = self.models.active()
        target = self.models.target
        return AboutResponse(
            operation_mode=self.operation_mode.value,
            state='online' if self.loop_problem() is None else 'offline',  # NodeState: the Loop cannot be used
            model_info=None if model is None else model.info,
            target_model=None if target is None else target.version,
            version_control=self.models.version_mode.value,
        )

    def stats(self) -> dict[str, Any]:
        """``Node.stats()`` plus the detector's sections (``GET /stats``):

        - ``operation_mode``;
        - ``model``: ``current_version``, ``target_version``, ``version_control``, ``model_format`` and
          ``update_error`` (why the last update failed, or None);
        - ``inference``: the serving model's ``model_version`` and its worker's counters and settings
          (:meth:`InferenceWorker.stats <llnode.detector.batching.InferenceWorker.stats>`); None while no model
          serves. The counters belong to that model's worker: after a swap they start again from 0 (the
          swapped-out worker's counts are not carried over);
        - ``outbox``: the outbox's counters and queue sizes (``outbox.stats()``);
        - ``relevance_filter``: ``cameras``, how many camera ids it keeps a history for (the unknown camera not
          counted); only when the filter has ``cameras()``.
        """
        stats = super().stats()
        stats['operation_mode'] = self.operation_mode.value
        active = self.models.active()  # one read: the model section and the inference section agree
        stats['model'] = self.stats_section('model', lambda: self._model_stats(active))
        stats['inference'] = self.stats_section('inference', lambda: _inference_stats(active))
        stats['outbox'] = self.stats_section('outbox', self.outbox.stats)
        stats['loop'] = self.stats_section('loop', self._loop_stats)
        cameras = getattr(self.relevance_filter, 'cameras', None)
        if callable(cameras):
            stats['relevance_filter'] = self.stats_section('relevance_filter', lambda: {'cameras': len(cameras())})
        return stats

    def api_description(self) -> ApiDescription:
        api = super().api_description()
        describe_detector(api, self)
        return api

    def metric_families(self) -> Iterator[Metric]:
        """``Node.metric_families()`` plus the detector's (:mod:`llnode.detector.metrics`): inference counters
        and histograms, the serving model, the outbox, the status sync and ``llnode_detector_operation_mode``."""
        yield from super().metric_families()
        yield from self.metrics_section('inference', self.inference_metrics.families)
        yield from self.metrics_section('model', lambda: model_families(self.models, self.factory.model_format))
        yield from self.metrics_section('outbox', lambda: outbox_families(self.outbox.stats()))
        yield from self.metrics_section('loop', lambda: loop_families(self._status))
        yield from self.metrics_section(
            'operation_mode',
            lambda: [
                state_set(
                    'llnode_detector_operation_mode',
                    'The operation mode (only idle lets the model change)',
                    OPERATION_MODES,
                    self.operation_mode.value,
                )
            ],
        )

    def _loop_stats(self) -> dict[str, Any]:
        return {
            'problem': self.loop_problem(),
            **{name: failures.stats() for name, failures in self.loop_failures.items()},
        }

    def _model_stats(self, active: ActiveModel | None) -> dict[str, Any]:
        target = self.models.target
        return {
            'current_version': None if active is None else active.version,
            'target_version': None if target is None else target.version,
            'version_control': self.models.version_mode.value,
            'model_format': self.factory.model_format,
            'update_error': self.models.errors().get(UPDATE_ERROR_KEY),
        }

    def model_versions(self) -> ModelVersionResponse:
        target, loop = self.models.target, self.models.loop_target
        return ModelVersionResponse(
            current_version=str(self.models.current_version),
            target_version=str(None if target is None else target.version),
            loop_version=str(None if loop is None else loop.version),
            local_versions=self.store.local_versions(),
            version_control=self.models.version_mode.value,
        )

    def request_status_sync(self) -> None:
        """Send the status to the Loop soon (in the status thread; returns at once)."""
        self._status.request()

    # ------------------------------------------------------------------ backdoor

    def reset(self) -> bool:
        """Start over as a fresh node (backdoor ``POST /reset``): empty data folder, no model, default modes."""
        logger.warning('%s: reset: deleting everything in %s', self.name, self.settings.data_folder)
        self.mute()
        try:
            with self._mode_lock:
                self._operation_mode = OperationMode.STARTUP
            self.outbox.close()
            self.models.reset(self._default_version_mode())
            self.relevance_filter.reset()
            _empty_folder(self.settings.data_folder)
            self.outbox = self._outbox_factory(self.settings)
            self.outbox.start()
            self.models.load_current()
            with self._mode_lock:
                self._operation_mode = OperationMode.IDLE
                self._sync_countdown = 0
        except Exception:
            logger.exception('%s: reset failed', self.name)
            return False
        finally:
            self.unmute()
        return True

    # ------------------------------------------------------------------ the Loop

    def _may_update(self) -> bool:
        return self.running and not self.muted and self.operation_mode == OperationMode.IDLE

    def _loop(self) -> LoopClient:
        client = self.loop_client
        if client is None:
            raise LoopError('the node is not running (no Loop client)')
        return client

    def _project(self, suffix: str) -> str:
        return self.settings.project_path + suffix

    def _loop_kwargs(self) -> dict[str, Any]:
        # The reference attempts a login for these calls; without credentials there is nothing to log in with.
        return {'requires_login': bool(self.settings.username), 'timeout': LOOP_CALL_TIMEOUT}

    def _send_status(self) -> None:
        if not self.running:
            return
        status = self.status()
        response = self._loop().post(self._project('/detectors'), json=status.to_dict(), **self._loop_kwargs())
        response.close()
        if response.status_code != 200:  # the status reporter records it (an unknown project answers 404)
            raise LoopHTTPError('POST', response.url, response.status_code, response.text)

    def _poll_deployment_target(self) -> None:
        failures = self.loop_failures['deployment_target']
        try:
            response = self._loop().get(self._project('/deployment/target'), **self._loop_kwargs())
        except LoopError as e:
            failures.failed(loop_cause(e, self.settings), exc_info=e)
            return
        with response:
            if response.status_code == 404:
                logger.debug('%s: the Loop has no deployment target (%s)', self.name, response.text[:200])
                failures.succeeded()
                return
            if response.status_code != 200:
                failures.failed(http_cause(response.status_code, response.text, self.settings, 'the deployment target'))
                return
            try:
                body = response.json()
                target = ModelTarget(id=str(body['model_uuid']), version=str(body['version']))
            except (ValueError, KeyError, TypeError):
                failures.failed(f'the Loop sent an unusable deployment target {response.text[:200]!r}')
                return
        if not is_version(target.version):
            failures.failed(f'the Loop deploys an invalid version {target.version!r}')
            return
        failures.succeeded()
        self.models.set_loop_target(target)

    def _download_model(self, target: ModelTarget, folder: Path) -> None:
        from llnode.loop.exchange import DataExchange

        DataExchange(self._loop()).download_model(target.id, self.factory.model_format, folder, replace=True)


def _inference_stats(active: ActiveModel | None) -> dict[str, Any] | None:
    if active is None:
        return None
    return {'model_version': active.version, **active.worker.stats()}


def _finished(result: ImageMetadata, tags: list[str], source: str | None, created: str | None) -> ImageMetadata:
    """The answer for one image: a new object (the logic's result may be shared), tags appended, source and date
    set, segmentation shapes flattened to the detector's string form."""
    return dataclasses.replace(
        result,
        tags=[*result.tags, *tags],
        source=source,
        created=created,
        segmentation_detections=[s.flattened() for s in result.segmentation_detections],
    )


def _copy(metadata: ImageMetadata) -> ImageMetadata:
    """A copy deep enough that later changes of either side do not reach the other."""
    return ImageMetadata.from_dict(metadata.to_dict())


def _image_for_outbox(image: np.ndarray | bytes) -> np.ndarray | bytes:
    """The client's own bytes where it sent encoded ones (no re-encode, EXIF kept), else the array as 8 bits
    (what JPEG holds; a raw Socket.IO image may be uint16 or float)."""
    if isinstance(image, np.ndarray):
        return image if image.dtype == np.uint8 else np.clip(image, 0, 255).astype(np.uint8)
    return bytes(image) if isinstance(image, (bytearray, memoryview)) else image


def _set_category_ids(metadata: ImageMetadata, model: ModelInformation) -> None:
    """Every detection's ``category_id`` from the model's category of the same name, ``""`` where none (reference).

    The names the model does not know are listed in one warning (0.27), not one line per detection.
    """
    ids: dict[str, str] = {}
    for category in model.categories:
        ids.setdefault(category.name, category.id)
    unknown: dict[str, None] = {}
    for detections in (
        metadata.box_detections,
        metadata.point_detections,
        metadata.segmentation_detections,
        metadata.classification_detections,
    ):
        for detection in detections:
            detection.category_id = ids.get(detection.category_name, '')
            if detection.category_name not in ids:
                unknown[detection.category_name] = None
    if unknown:
        logger.warning(
            'uploaded detections name categories that model %s does not have (their category_id is empty): %s',
            model.version,
            ', '.join(repr(name) for name in unknown),
        )


def _empty_folder(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for entry in folder.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
