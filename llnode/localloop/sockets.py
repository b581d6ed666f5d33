"""The Loop's Socket.IO side (loop-protocol §3): which nodes are connected, what they report, what we send them.

Nodes identify themselves by handshake headers ``organization``, ``project`` and ``nodeType``. Trainers and
annotators must bring the login cookie (the connection is refused otherwise); other node types may connect
without. Events from nodes are stored and answered with the ack envelope ``{success, error_msg, payload}``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import socketio
from socketio.exceptions import ConnectionRefusedError as SioConnectionRefused
from socketio.exceptions import TimeoutError as SioTimeout
from werkzeug.http import parse_cookie

from llnode.localloop.app import SESSION_COOKIE
from llnode.localloop.errors import Conflict, LoopApiError, NotFound
from llnode.localloop.store import Store
from llnode.logs import socketio_loggers

logger = logging.getLogger('llnode.localloop.sockets')

LOGIN_REQUIRED = ('trainer', 'annotation_node')
MAX_HTTP_BUFFER_SIZE = 64 * 1024 * 1024


def envelope(success: bool = True, error_msg: str | None = None, payload: Any = None) -> dict[str, Any]:
    """The ack every Loop event handler answers with."""
    return {'success': success, 'error_msg': error_msg, 'payload': payload}


class MalformedPayload(ValueError):
    """An event's arguments do not have the protocol's shape; answered with ``success: false``."""


@dataclass
class ConnectedNode:
    sid: str
    node_type: str
    organization: str
    project: str
    user: str | None
    connected_at: float = field(default_factory=time.time)
    node_id: str | None = None
    name: str | None = None

    def describe(self) -> dict[str, Any]:
        return {
            'sid': self.sid,
            'node_type': self.node_type,
            'organization': self.organization,
            'project': self.project,
            'user': self.user,
            'id': self.node_id,
            'name': self.name,
            'connected_at': self.connected_at,
        }


def _dict_arg(args: tuple[Any, ...], count: int, what: str) -> tuple[Any, ...]:
    if len(args) != count:
        raise MalformedPayload(f'{what} expects {count} argument(s), got {len(args)}')
    return args


class NodeHub:
    """Owns the ``socketio.Server`` and the table of connected nodes (guarded by ``_lock``)."""

    def __init__(
        self, store: Store, *, allow_upgrades: bool, ping_interval: float = 25.0, ping_timeout: float = 20.0
    ) -> None:
        self.store = store
        self.sio = socketio.Server(
            async_mode='threading',
            allow_upgrades=allow_upgrades,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            max_http_buffer_size=MAX_HTTP_BUFFER_SIZE,
            cors_allowed_origins='*',
            **socketio_loggers('llnode.localloop'),
        )
        self._lock = threading.Lock()
        self._nodes: dict[str, ConnectedNode] = {}
        self.sio.on('connect', self._on_connect)
        self.sio.on('disconnect', self._on_disconnect)
        self.sio.on('update_trainer', self._guard('update_trainer', self._update_trainer))
        self.sio.on('update_training', self._guard('update_training', self._update_training))
        self.sio.on('update_annotation_node', self._guard('update_annotation_node', self._update_annotation_node))
        self.sio.on('update_converter', self._guard('update_converter', self._update_converter))
        self.sio.on(
            'update_segmentation_annotation',
            self._guard('update_segmentation_annotation', self._update_segmentation_annotation),
        )

    # ------------------------------------------------------------------ connection bookkeeping

    def _on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        node_type = environ.get('HTTP_NODETYPE', '')
        cookies = parse_cookie(environ.get('HTTP_COOKIE', ''))
        user = self.store.session_user(cookies.get(SESSION_COOKIE))
        if node_type in LOGIN_REQUIRED and user is None:
            logger.info('refused %s connection %s: no valid login cookie', node_type, sid)
            raise SioConnectionRefused(f'{node_type} nodes must log in first (POST /api/login, send its cookie)')
        node = ConnectedNode(
            sid, node_type, environ.get('HTTP_ORGANIZATION', ''), environ.get('HTTP_PROJECT', ''), user
        )
        with self._lock:
            self._nodes[sid] = node
        logger.info('%s node connected: sid %s, %s/%s', node_type or 'unknown', sid, node.organization, node.project)

    def _on_disconnect(self, sid: str, reason: Any = None) -> None:
        with self._lock:
            node = self._nodes.pop(sid, None)
        if node is not None:
            logger.info('%s node %s disconnected (%s)', node.node_type, node.node_id or sid, reason)
        self.store.set_node_connected(sid, False)

    def _node(self, sid: str) -> ConnectedNode:
        with self._lock:
            node = self._nodes.get(sid)
        if node is None:
            raise MalformedPayload(f'unknown connection {sid}')
        return node

    def connected(self) -> list[dict[str, Any]]:
        """Connected nodes, oldest connection first."""
        with self._lock:
            return [n.describe() for n in sorted(self._nodes.values(), key=lambda n: n.connected_at)]

    def nodes(self) -> list[dict[str, Any]]:
        """Every node that reported a status (newest report first), then connections that have not reported yet.

        Each: ``{id, node_type, organization, project, name, status, updated, connected, sid}``; ``connected``
        is live (this server's Socket.IO connections; REST-only detectors are never connected)."""
        live = self.connected()
        live_by_id = {n['id']: n for n in live if n['id']}
        listed = []
        for n in self.store.nodes():
            connection = live_by_id.get(n['id'])
            status = n['status']
            listed.append(
                {
                    **n,
                    'connected': connection is not None,
                    'sid': connection['sid'] if connection else n['sid'],
                    'name': status.get('name') if isinstance(status, dict) else None,
                }
            )
        known = {n['id'] for n in listed}
        for n in live:
            if n['id'] is None or n['id'] not in known:
                listed.append(
                    {
                        'id': n['id'],
                        'node_type': n['node_type'],
                        'organization': n['organization'],
                        'project': n['project'],
                        'name': n['name'],
                        'status': None,
                        'updated': None,
                        'connected': True,
                        'sid': n['sid'],
                    }
                )
        return listed

    # ------------------------------------------------------------------ events from nodes

    def _guard(self, event: str, handler: Any) -> Any:
        def handle(sid: str, *args: Any) -> dict[str, Any]:
            try:
                return envelope(payload=handler(sid, *args))
            except (MalformedPayload, LoopApiError) as e:
                logger.warning('%s from %s refused: %s', event, sid, e)
                return envelope(False, str(e))
            except Exception as e:
                logger.exception('%s from %s failed', event, sid)
                return envelope(False, f'{type(e).__name__}: {e}')

        return handle

    def _status(self, sid: str, args: tuple[Any, ...], event: str) -> tuple[ConnectedNode, dict[str, Any]]:
        (status,) = _dict_arg(args, 1, event)
        if not isinstance(status, dict) or not isinstance(status.get('id'), str) or not status['id']:
            raise MalformedPayload(f'{event} expects a status object with a string "id"')
        node = self._node(sid)
        with self._lock:
            node.node_id = status['id']
            node.name = status.get('name') if isinstance(status.get('name'), str) else node.name
        self.store.put_node_status(
            status['id'],
            status,
            node_type=node.node_type or None,
            organization=node.organization,
            project=node.project,
            sid=sid,
            connected=True,
        )
        return node, status

    def _update_trainer(self, sid: str, *args: Any) -> None:
        self._status(sid, args, 'update_trainer')

    def _update_annotation_node(self, sid: str, *args: Any) -> None:
        self._status(sid, args, 'update_annotation_node')

    def _update_converter(self, sid: str, *args: Any) -> None:
        # Converters (nodeType ``converter``, llnode.converter) report a NodeStatus like annotators do.
        self._status(sid, args, 'update_converter')

    def _update_training(self, sid: str, *args: Any) -> None:
        organization, project, training_out = _dict_arg(args, 3, 'update_training')
        if not isinstance(organization, str) or not isinstance(project, str):
            raise MalformedPayload('update_training expects (organization, project, training_out)')
        if not isinstance(training_out, dict) or not isinstance(training_out.get('trainer_id'), str):
            raise MalformedPayload('update_training expects a TrainingOut object with a string "trainer_id"')
        matrix = training_out.get('confusion_matrix')
        if matrix is not None and not isinstance(matrix, dict):
            raise MalformedPayload('"confusion_matrix" must be an object or null')
        self.store.require_project(organization, project)
        self.store.add_training_update(organization, project, training_out)

    def _update_segmentation_annotation(self, sid: str, *args: Any) -> None:
        organization, project, annotation = _dict_arg(args, 3, 'update_segmentation_annotation')
        if not isinstance(organization, str) or not isinstance(project, str) or not isinstance(annotation, dict):
            raise MalformedPayload('update_segmentation_annotation expects (organization, project, annotation)')
        for key in ('id', 'image_id', 'category_id'):
            if not isinstance(annotation.get(key), str) or not annotation[key]:
                raise MalformedPayload(f'a SegmentationAnnotation needs a string "{key}"')
        shape = annotation.get('shape')
        points = shape.get('points') if isinstance(shape, dict) else None
        if not isinstance(points, list) or not all(
            isinstance(p, dict) and isinstance(p.get('x'), (int, float)) and isinstance(p.get('y'), (int, float))
            for p in points
        ):
            raise MalformedPayload('a SegmentationAnnotation needs "shape": {"points": [{"x", "y"}, ...]}')
        self.store.put_segmentation_annotation(organization, project, annotation)

    # ------------------------------------------------------------------ events to nodes

    def resolve(
        self,
        node: str | None = None,
        *,
        node_type: str | None = None,
        organization: str | None = None,
        project: str | None = None,
    ) -> str:
        """The sid of a connected node: by sid, by node id (its newest connection), or the only connected node
        of ``node_type`` for ``organization/project``. :class:`NotFound` / :class:`Conflict` otherwise."""
        with self._lock:
            nodes = sorted(self._nodes.values(), key=lambda n: n.connected_at)
        if node:
            if any(n.sid == node for n in nodes):
                return node
            matches = [n for n in nodes if n.node_id == node]
            if not matches:
                raise NotFound(f'node {node} is not connected')
            return matches[-1].sid
        candidates = [
            n
            for n in nodes
            if (node_type is None or n.node_type == node_type)
            and (organization is None or n.organization == organization)
            and (project is None or n.project == project)
        ]
        what = f'{node_type or "node"} for {organization}/{project}'
        if not candidates:
            raise Conflict(f'no {what} is connected')
        if len(candidates) > 1:
            raise Conflict(
                f'{len(candidates)} of {what} are connected; choose one by id or sid: '
                + ', '.join(n.node_id or n.sid for n in candidates)
            )
        return candidates[0].sid

    def send(self, node: str, event: str, *args: Any, timeout: float = 20.0) -> Any:
        """Call ``event`` on one connected node (id or sid) and return its ack (None when it sends none in time)."""
        sid = self.resolve(node)
        try:
            return self.sio.call(event, args if args else None, to=sid, timeout=timeout)
        except SioTimeout:
            logger.info('%s to %s: no ack within %.1f s', event, node, timeout)
            return None
        except socketio.exceptions.SocketIOError as e:
            raise NotFound(f'node {node} is gone: {e}') from e

    def shutdown(self) -> None:
        """Disconnect every node (this also releases long-polling requests) and stop the background tasks."""
        # Engine.IO's own disconnect() waits until each polling client has fetched its close packet, which can
        # block for good; closing each socket without waiting queues the close packet and releases pending polls.
        for eio_socket in list(self.sio.eio.sockets.values()):
            try:
                eio_socket.close(wait=False)
            except Exception:
                logger.exception('closing Engine.IO socket %s failed', getattr(eio_socket, 'sid', '?'))
        self.sio.eio.sockets.clear()
        with self._lock:
            self._nodes.clear()
        self.sio.shutdown()
