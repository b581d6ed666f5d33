"""``python -m tests.node.idle_clients URL COUNT``: connects COUNT python-socketio clients (polling first, then
WebSocket where offered, as robots do), prints ``{"connected": n, "refused": m}`` and stays until killed."""

from __future__ import annotations

import json
import sys
import threading

import socketio

from tests.sio_client import SioClient


def main() -> None:
    url, count = sys.argv[1], int(sys.argv[2])
    clients, refused = [], 0
    for _ in range(count):
        client = SioClient()
        try:
            client.connect(url, socketio_path='/ws/socket.io', wait_timeout=5)
        except socketio.exceptions.ConnectionError:
            refused += 1
            continue
        clients.append(client)
    print(json.dumps({'connected': len(clients), 'refused': refused}), flush=True)
    threading.Event().wait()


if __name__ == '__main__':
    main()
