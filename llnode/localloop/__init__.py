"""A local Learning Loop server: the Loop's side of the protocol, backed by SQLite and files on disk.

``LocalLoop(data_dir, ...).start()`` serves the REST API (``/api``), Socket.IO (``/ws/socket.io``) and a control
API (``/control``, what a person does in the Loop's web UI) for nodes, tests, demos and benchmarks; ``llnode loop``
runs it from the command line and ``llnode control`` drives its control API.
"""

from llnode.localloop.server import LocalLoop
from llnode.localloop.store import Store

__all__ = ['LocalLoop', 'Store']
