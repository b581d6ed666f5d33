"""gunicorn hooks that run an llnode node inside gunicorn's worker process; also a gunicorn config module.

Under your own gunicorn command line, name this module as the config and the node's WSGI app as the app
(gunicorn names a module attribute, so the module says ``app = node.wsgi_app``)::

    gunicorn -c python:llnode.node.gunicorn_hooks --bind 0.0.0.0:8004 my_detector:app

or import the hooks into your own config file (``from llnode.node.gunicorn_hooks import *``) and set the rest
there. What the hooks do:

- ``post_fork`` (in the worker, right after the fork): tunes the allocator and the WebSocket unmasking for
  serving. Nothing of the node has run yet: its threads, model, outbox and Loop link start only in the worker.
- ``post_worker_init`` (in the worker, once the app is loaded): starts the node and a watcher thread. When the
  node asks to end (``request_restart``, ``stop()``, a Loop ``restart``) the watcher stops the node and the
  worker; when gunicorn stops the worker (SIGTERM) the watcher stops the node first, closing its Socket.IO
  clients, so the worker does not wait its graceful timeout for WebSockets that would never end.
- ``worker_exit``: makes sure the node stopped and exits the worker with the node's exit code. Under a plain
  gunicorn master a worker that exits is replaced by a fresh one, which is what a restart wish asks for
  (exit codes 3 and 4 stop gunicorn itself: they are its "worker failed to boot" and "app failed to load").

Do not use ``--preload`` with a CUDA model built at import: the CUDA context must be created after the fork.
Keep ``max_requests`` at 0: a recycled worker reloads the model.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from llnode.config import ConfigError
from llnode.node.memory import IdleTrimmer, RequestActivity, tune_allocator
from llnode.node.restart import EXIT_NEEDS_RESTART, NodeNeedsRestartError
from llnode.node.wsmask import install as install_numpy_unmasking
from llnode.startup import report

logger = logging.getLogger('llnode.node.http')

#: The exit code of a worker whose node failed to start (the traceback is in the worker's log).
START_FAILED_EXIT_CODE = 1

#: How often the watcher looks at the worker's and the node's state.
WATCH_INTERVAL_S = 0.1

# gunicorn settings this module sets when named as the config (``-c python:llnode.node.gunicorn_hooks``).
workers = 1
worker_class = 'llnode.node.gunicorn_serving.NodeThreadWorker'
threads = 256
graceful_timeout = 20
max_requests = 0


def node_of(app: Any) -> Any:
    """The node behind a WSGI app gunicorn loaded (``node.wsgi_app`` or what ``serve()`` wraps around it)."""
    seen = 0
    while app is not None and seen < 8:
        node = getattr(app, 'llnode_node', None)
        if node is not None:
            return node
        app, seen = getattr(app, 'app', None), seen + 1
    raise RuntimeError(
        'the gunicorn app is not an llnode node: serve its wsgi_app (`app = node.wsgi_app`, then `gunicorn my_module:app`)'
    )


def post_fork(server: Any, worker: Any) -> None:
    tune_allocator()  # before the worker's threads exist: the arena cap applies to threads created after it
    install_numpy_unmasking()


def post_worker_init(worker: Any) -> None:
    node = node_of(worker.wsgi)
    node.websocket_enabled = True
    try:
        node.start()
    except ConfigError as e:  # a start-up error: one line on stderr and exit code 2, as under the other servers
        raise SystemExit(report(e)) from None
    except NodeNeedsRestartError as e:
        logger.error('%s: needs a restart: %s', node.name, e)
        raise SystemExit(EXIT_NEEDS_RESTART) from None
    except Exception:
        logger.exception('%s: the node did not start; the worker exits', node.name)
        raise SystemExit(START_FAILED_EXIT_CODE) from None
    activity = _find(worker.wsgi, RequestActivity)
    trimmer = None
    if activity is not None:
        trimmer = IdleTrimmer(activity, release=getattr(node, '_release_cached_memory', None))
    watcher = threading.Thread(target=_watch, args=(node, worker, trimmer), name='llnode-gunicorn-watch', daemon=True)
    worker.llnode_watcher = watcher
    watcher.start()


def worker_exit(server: Any, worker: Any) -> None:
    try:
        node = node_of(getattr(worker, 'wsgi', None))
    except RuntimeError:
        return  # the app never loaded
    watcher = getattr(worker, 'llnode_watcher', None)
    if watcher is not None:
        worker.alive = False
        watcher.join(30.0)
    node.stop()
    code = node.exit_code or 0
    if code:
        raise SystemExit(code)


def _watch(node: Any, worker: Any, trimmer: IdleTrimmer | None) -> None:
    while worker.alive and not node.wait_for_exit_request(WATCH_INTERVAL_S):
        if trimmer is not None:
            trimmer.poll()
    node.stop()  # closes Socket.IO clients: their connections would hold the worker's graceful stop
    if worker.alive:
        worker.alive = False
        wake = getattr(getattr(worker, 'method_queue', None), 'defer', None)
        if wake is not None:
            wake(lambda: None)  # gthread's loop waits up to a second otherwise


def _find(app: Any, kind: type) -> Any:
    seen = 0
    while app is not None and seen < 8:
        if isinstance(app, kind):
            return app
        app, seen = getattr(app, 'app', None), seen + 1
    return None
