"""The server side of a Socket.IO WebSocket: simple-websocket's connection, read in large parts, each binary
message handed on whole, and shut down when engine.io closes it.

A robot sends raw camera frames (0.9 MB for 640x480 RGB) as binary WebSocket messages. simple-websocket reads
its socket in a thread of its own, a fixed number of bytes at a time, feeds wsproto, and joins the parts wsproto
returns by appending them to a ``bytearray`` and copying that to ``bytes`` at the end. Here the reads are large
while a message arrives and small between messages (a blocked read holds its whole buffer, for every idle
WebSocket), and a binary message's parts are joined once, when its last part came: two copies of the frame fewer,
both after its last bytes arrived. What the application receives is unchanged: the same ``bytes`` or ``str``.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from typing import Any

import simple_websocket
from wsproto.events import BytesMessage, Event

#: Bytes read at a time between messages; simple-websocket's default of 4 KiB costs ~230 reads (and wsproto
#: rounds) per 640x480x3 raw image, measured at 3 ms of a detect call's 8 ms.
WEBSOCKET_RECEIVE_BYTES = 64 * 1024

#: Bytes read at a time while a message is arriving: a raw image's rest in one to three reads instead of about
#: fifteen, each a wsproto round and an unmasking call (measured: ~0.15 ms less per raw 640x480x3 ``detect``).
WEBSOCKET_MESSAGE_RECEIVE_BYTES = 1024 * 1024


class _WholeBinaryMessages:
    """A wsproto connection whose ``events()`` gives a binary message as one event once its last part came
    (wsproto gives a part per read); every other event, and every other call, goes through unchanged."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection
        self._parts: list[bytes | bytearray] = []

    @property
    def in_message(self) -> bool:
        """Whether part of a binary message came and the rest is still to come."""
        return bool(self._parts)

    def events(self) -> Iterator[Event]:
        for event in self._connection.events():
            if not isinstance(event, BytesMessage) or (event.message_finished and not self._parts):
                yield event
            elif not event.message_finished:
                self._parts.append(event.data)
            else:
                self._parts.append(event.data)
                data, self._parts = b''.join(self._parts), []
                yield BytesMessage(data=data, frame_finished=event.frame_finished, message_finished=True)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


class MessageSizedServer(simple_websocket.Server):
    """simple-websocket's server connection that reads :data:`WEBSOCKET_MESSAGE_RECEIVE_BYTES` at a time while a
    binary message is partly received and its ``receive_bytes`` otherwise (its reader asks before every read), and
    whose binary messages reach it whole (:class:`_WholeBinaryMessages`)."""

    def handshake(self) -> None:
        self.ws: Any = _WholeBinaryMessages(self.ws)
        super().handshake()

    @property
    def receive_bytes(self) -> int:
        ws = getattr(self, 'ws', None)
        if getattr(ws, 'in_message', False) or getattr(self, 'incoming_message', None) is not None:
            return WEBSOCKET_MESSAGE_RECEIVE_BYTES
        return self._idle_receive_bytes

    @receive_bytes.setter
    def receive_bytes(self, value: int) -> None:
        self._idle_receive_bytes = value


def closing_websocket_driver(driver: type) -> type:
    """engine.io's WebSocket driver whose connection is a :class:`MessageSizedServer` and whose ``close()`` also
    shuts the connection down.

    simple-websocket reads a WebSocket in a thread of its own. When engine.io ends a session (a client that
    vanished gives no pong within the ping timeout) it sends the close frame, but the reader stays in ``recv()``
    on the silent connection, and the server thread of the request waits for that reader: both were held until
    the read timeout, or for ever without one. Shutting the socket down makes the ``recv()`` return at once.
    """

    class ClosingWebSocket(driver):
        def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            # engine.io's driver makes its connection with simple_websocket.Server; this one makes ours, then
            # ends the request as the driver does for the server at hand.
            self.ws = MessageSizedServer(environ, **self.server_args)
            answer = self.app(self)
            if self.ws.mode == 'gunicorn':
                raise StopIteration()
            if self.ws.mode == 'werkzeug':
                raise ConnectionError()
            return answer

        def close(self) -> None:
            try:
                super().close()
            finally:
                sock = getattr(getattr(self, 'ws', None), 'sock', None)
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)

    return ClosingWebSocket
