"""The Annotator node: runs an interactive annotation tool for the Loop's UI over the node's Socket.IO link.

Wire behaviour is the reference's (loop-protocol §3.6, reference-behaviour §5): node type ``annotation_node``;
``handle_user_input(user_input)`` answers the tool's SVG in the ack envelope (``success: false`` with the reason
for anything that goes wrong); ``key_up == 'Escape'`` resets the frontend's history and answers ``''``; a tool
result with an annotation is first sent as ``update_segmentation_annotation(organization, project, annotation)``;
``user_logout(frontend_id)`` drops the history and answers the tool's ``logout_user`` as ``success``;
``update_annotation_node`` goes out every repeat cycle. What differs: the status carries the real uptime and the
capabilities the tool declares (the reference sends 0 and a hard-coded list), a history is created once per reset
(not on every event), one frontend's events reach the tool one at a time and in the order the Loop sent them (its
``handle_user_input`` and ``user_logout`` events share a lane of the Loop socket, see
:meth:`~llnode.loop.socket.LoopSocket.on`) while other frontends run side by side, an image is downloaded once
however many events ask for it at the same moment, and an annotation the Loop did not take is reported to the
frontend instead of being dropped silently.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llnode.annotator.images import ImageCache
from llnode.annotator.logic import AnnotatorLogic
from llnode.annotator.sessions import (
    HISTORY_TIMEOUT,
    MAX_PENDING_EVENTS,
    TURN_TIMEOUT,
    FrontendSessions,
    SessionBusy,
    SessionsClosed,
)
from llnode.config import Settings
from llnode.failure_log import FailureLog
from llnode.loop.errors import LoopConnectionError, LoopError
from llnode.loop.exchange import DataExchange
from llnode.node.metrics import Metric, gauge
from llnode.node.node import Node
from llnode.node.repeat import REPEAT_INTERVAL
from llnode.node.restart import NodeNeedsRestartError
from llnode.schema import NodeStatus, SchemaError, SegmentationAnnotation, ToolOutput, UserInput

if TYPE_CHECKING:
    from llnode.loop.http import LoopClient
    from llnode.loop.socket import LoopSocket

logger = logging.getLogger('llnode.annotator')

#: Timeout of ``update_annotation_node`` (reference: 10 s).
STATUS_TIMEOUT = 10.0
#: Timeout of ``update_segmentation_annotation`` (reference: 30 s).
ANNOTATION_TIMEOUT = 30.0

ESCAPE = 'Escape'


class AnnotationNotStored(LoopError):
    """The Loop did not take an annotation the tool made (no ack, a refusal, or no connection)."""


class AnnotatorNode(Node):
    """An annotator: ``AnnotatorNode('segmentation tool', MyTool()).serve(port=8003)``.

    ``logic`` is an :class:`~llnode.annotator.logic.AnnotatorLogic` (one node per logic object). Settings default
    to ``Settings.from_env()``; images are kept below ``settings.data_folder``. ``repeat_interval`` is the time
    between two status reports (5 s as the reference). Events from the Loop wait in their frontend's lane of the
    Loop socket (at most :data:`~llnode.loop.socket.LANE_CAPACITY`, each at most
    :data:`~llnode.loop.socket.LANE_MAX_WAIT` seconds); per frontend, at most ``max_pending_events``
    events (also direct calls of :meth:`handle_user_input`) wait for their turn at the tool, each at most
    ``turn_timeout`` seconds; a frontend without events for ``history_timeout`` seconds loses its history (None:
    only Escape and logout reset it).
    """

    node_type = 'annotation_node'
    needs_loop_socket = True

    def __init__(
        self,
        name: str,
        logic: AnnotatorLogic,
        *,
        settings: Settings | None = None,
        uuid: str | None = None,
        repeat_interval: float = REPEAT_INTERVAL,
        max_pending_events: int = MAX_PENDING_EVENTS,
        turn_timeout: float = TURN_TIMEOUT,
        history_timeout: float | None = HISTORY_TIMEOUT,
        loop_client_factory: Callable[[Settings], LoopClient] | None = None,
        loop_socket_factory: Callable[[LoopClient, str], LoopSocket] | None = None,
    ) -> None:
        if not isinstance(logic, AnnotatorLogic):
            raise TypeError(f'logic must be an AnnotatorLogic, got {type(logic).__name__}')
        if logic.node is not None:
            raise ValueError(f'{type(logic).__name__} object already runs in {logic.node!r}; give each node its own')
        _checked_capabilities(logic)
        super().__init__(
            name,
            settings=settings,
            uuid=uuid,
            repeat_interval=repeat_interval,
            loop_client_factory=loop_client_factory,
            loop_socket_factory=loop_socket_factory,
        )
        self.sessions = FrontendSessions(
            max_pending=max_pending_events, turn_timeout=turn_timeout, history_timeout=history_timeout
        )
        self.images = ImageCache(self.settings.data_folder, self._exchange)
        self.logic = logic
        logic._node = self
        # One call into a tool that is not thread-safe at a time (owned by _tool_call).
        self._tool_lock = threading.Lock()
        self._status_failures = FailureLog(logger, f'{name}: update_annotation_node')
        # One lane per frontend: its input and its logout reach the node in the order the Loop sent them.
        self.handle_loop_event('handle_user_input', self._on_handle_user_input, lane=_user_input_lane)
        self.handle_loop_event('user_logout', self._on_user_logout, lane=_logout_lane)

    # ------------------------------------------------------------------ public API

    def handle_user_input(self, user_input: UserInput | dict[str, Any]) -> str:
        """Handle one UI event (what ``handle_user_input`` from the Loop does); returns the SVG to answer.

        Raises :class:`~llnode.schema.SchemaError` (a ``ValueError``) for a malformed input,
        :class:`~llnode.loop.errors.LoopError` when the link is down, the image cannot be fetched or the Loop did
        not store the tool's annotation, :class:`~llnode.annotator.sessions.SessionBusy` when too many events of
        the frontend wait, and whatever the tool raised (its history is then reset).
        """
        if not isinstance(user_input, UserInput):
            user_input = UserInput.from_dict(user_input)
        data = user_input.data
        self._require_link()
        with self.sessions.turn(user_input.frontend_id, data.event_type.value) as session:
            if data.key_up == ESCAPE:
                session.reset()
                logger.debug('%s: frontend %s pressed Escape; history reset', self.name, user_input.frontend_id)
                return ''
            self.images.ensure(data.context.organization, data.context.project, data.image_uuid)
            history = session.history(self._new_history)
            try:
                with self._tool_call():
                    output = self.logic.handle_user_input(user_input, history)
                if not isinstance(output, ToolOutput):
                    raise TypeError(
                        f'{type(self.logic).__name__}.handle_user_input must return a ToolOutput, '
                        f'got {type(output).__name__}'
                    )
                if not isinstance(output.svg, str):
                    raise TypeError(f'ToolOutput.svg must be a string, got {type(output.svg).__name__}')
                if output.annotation is not None and not isinstance(output.annotation, SegmentationAnnotation):
                    raise TypeError(
                        f'ToolOutput.annotation must be a SegmentationAnnotation or None, '
                        f'got {type(output.annotation).__name__}'
                    )
            except Exception:
                session.reset()
                raise
            if output.annotation is not None:
                self.store_annotation(data.context.organization, data.context.project, output.annotation)
            return output.svg

    def user_logout(self, frontend_id: str) -> bool:
        """Forget ``frontend_id``'s history and tell the tool (what ``user_logout`` from the Loop does)."""
        if not isinstance(frontend_id, str):
            raise ValueError(f'user_logout expects a frontend id string, got {type(frontend_id).__name__}')
        with self.sessions.turn(frontend_id, 'user_logout') as session:
            session.reset()
            with self._tool_call():
                result = self.logic.logout_user(frontend_id)
        if not isinstance(result, bool):
            raise TypeError(f'{type(self.logic).__name__}.logout_user must return a bool, got {type(result).__name__}')
        logger.info('%s: frontend %s logged out', self.name, frontend_id)
        return result

    def store_annotation(self, organization: str, project: str, annotation: SegmentationAnnotation) -> None:
        """Send ``update_segmentation_annotation``; raises :class:`AnnotationNotStored` unless the Loop took it."""
        link = self.loop_socket
        if link is None:
            raise AnnotationNotStored('the annotation was not stored: not connected to the Loop')
        try:
            ack = link.call(
                'update_segmentation_annotation',
                organization,
                project,
                annotation.to_dict(),
                timeout=ANNOTATION_TIMEOUT,
            )
        except LoopError as e:
            raise AnnotationNotStored(f'the annotation was not stored: {e}') from e
        if isinstance(ack, dict) and ack.get('success') is False:
            raise AnnotationNotStored(f'the Loop refused the annotation: {ack.get("error_msg")}')
        logger.info('%s: annotation %s of image %s sent to the Loop', self.name, annotation.id, annotation.image_id)

    def image_path(self, organization: str, project: str, image_uuid: str) -> Path:
        """Where the image is kept: ``{data_folder}/{organization}/{project}/images/{image_uuid}.jpg``."""
        return self.images.path(organization, project, image_uuid)

    def status(self) -> NodeStatus:
        """The ``update_annotation_node`` payload as it is now."""
        return NodeStatus(
            id=self.uuid,
            name=self.name,
            state='online',
            uptime=self.uptime,
            errors={},
            capabilities=_checked_capabilities(self.logic),
        )

    def stats(self) -> dict[str, Any]:
        """``Node.stats()`` plus ``annotator``: ``frontends``, how many frontends have a history now."""
        stats = super().stats()
        stats['annotator'] = self.stats_section('annotator', lambda: {'frontends': len(self.sessions.frontend_ids())})
        return stats

    def metric_families(self) -> Iterator[Metric]:
        """``Node.metric_families()`` plus ``llnode_annotator_frontends``."""
        yield from super().metric_families()
        yield from self.metrics_section(
            'annotator',
            lambda: [
                gauge(
                    'llnode_annotator_frontends',
                    'Frontends with an annotation history',
                    len(self.sessions.frontend_ids()),
                )
            ],
        )

    def send_status(self) -> bool:
        """Send ``update_annotation_node`` now; True if the Loop acknowledged it. Never raises.

        Anything but an envelope with ``success: true`` (an error, no ack, another shape) marks the link broken,
        as in the reference; the next repeat cycle reconnects.
        """
        link = self.loop_socket
        if link is None or not link.connected:
            logger.debug('%s: not connected; status not sent', self.name)
            return False
        try:
            ack = link.call('update_annotation_node', self.status().to_dict(), timeout=STATUS_TIMEOUT)
        except LoopError as e:
            self._status_failures.failed(str(e), exc_info=e)  # logged when it starts, then once a minute
            link.mark_broken(f'update_annotation_node failed: {e}')
            return False
        except Exception:
            logger.exception('%s: update_annotation_node failed', self.name)
            return False
        if not isinstance(ack, dict) or ack.get('success') is not True:
            link.mark_broken(f'the Loop did not acknowledge update_annotation_node: {ack!r}')
            return False
        self._status_failures.succeeded()
        return True

    # ------------------------------------------------------------------ Node hooks

    def on_repeat(self) -> None:
        self.send_status()
        self.sessions.forget_idle()

    def on_stop(self) -> None:
        self.sessions.close()

    # ------------------------------------------------------------------ Loop events

    def _on_handle_user_input(self, *args: Any) -> str | dict[str, Any]:
        if len(args) != 1:
            return _failure(f'handle_user_input expects one argument (user_input), got {len(args)}')
        try:
            return self.handle_user_input(args[0])
        except (SchemaError, LoopError, SessionBusy, SessionsClosed) as e:
            # Expected trouble (bad input, Loop or back-pressure): a warning, not a traceback.
            logger.warning('%s: user input not handled: %s', self.name, e)
            return _failure(str(e))

    def _on_user_logout(self, *args: Any) -> bool | dict[str, Any]:
        if len(args) != 1:
            return _failure(f'user_logout expects one argument (frontend_id), got {len(args)}')
        try:
            return self.user_logout(args[0])
        except (ValueError, SessionBusy, SessionsClosed) as e:
            logger.warning('%s: user_logout not handled: %s', self.name, e)
            return _failure(str(e))

    # ------------------------------------------------------------------ internals

    def _require_link(self) -> None:
        link = self.loop_socket
        if link is None or not link.connected:
            raise LoopConnectionError('not connected to the Loop')

    def _new_history(self) -> Any:
        with self._tool_call():
            return self.logic.create_empty_history()

    @contextmanager
    def _tool_call(self) -> Iterator[None]:
        """A call of the tool: one at a time unless it is thread-safe; a ``NodeNeedsRestartError`` it raises asks
        for a fresh process (and still fails the event)."""
        with self._tool_lock if not self.logic.thread_safe else nullcontext():
            try:
                yield
            except NodeNeedsRestartError as e:
                self.restart_needed(e)
                raise

    def _exchange(self, organization: str, project: str) -> DataExchange:
        client = self.loop_client
        if client is None:
            raise LoopConnectionError('the annotator is not running (no Loop client)')
        return DataExchange(client, max_workers=1, organization=organization, project=project)


def _user_input_lane(*args: Any) -> tuple[str, str] | None:
    """The lane of a ``handle_user_input`` event: its frontend's; None for a malformed one (its handler says why)."""
    if len(args) == 1 and isinstance(args[0], dict):
        frontend_id = args[0].get('frontend_id')
        if isinstance(frontend_id, str):
            return ('frontend', frontend_id)
    return None


def _logout_lane(*args: Any) -> tuple[str, str] | None:
    """The lane of a ``user_logout(frontend_id)`` event: the same as that frontend's input."""
    if len(args) == 1 and isinstance(args[0], str):
        return ('frontend', args[0])
    return None


def _failure(message: str) -> dict[str, Any]:
    return {'success': False, 'error_msg': message, 'payload': None}


def _checked_capabilities(logic: AnnotatorLogic) -> list[str]:
    capabilities: Sequence[str] = logic.capabilities
    if isinstance(capabilities, str) or not all(isinstance(c, str) and c for c in capabilities):
        raise TypeError(
            f'{type(logic).__name__}.capabilities must be a list of non-empty strings, got {capabilities!r}'
        )
    return list(capabilities)
