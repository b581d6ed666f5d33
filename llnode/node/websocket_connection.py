"""The server side of a Socket.IO WebSocket: simple-websocket's connection, read in large parts by the thread
that waits for the next message, each binary message handed on whole, and shut down when engine.io closes it.

A robot sends raw camera frames (0.9 MB for 640x480 RGB) as binary WebSocket messages. simple-websocket reads
its socket in a thread of its own, a fixed number of bytes at a time, feeds wsproto, and joins the parts wsproto
returns by appending them to a ``bytearray`` and copying that to ``bytes`` at the end. Here the reads are large
while a message arrives and small between messages (a blocked read holds its whole buffer, for every idle
WebSocket), and a binary message's parts are joined once, when its last part came: two copies of the frame fewer,
both after its last bytes arrived. What the application receives is unchanged: the same ``bytes`` or ``str``.

simple-websocket also starts a reader thread per connection, which hands each message to the thread that waits
for it (engine.io's, the server's request thread) through an event. That thread does nothing else while it
waits, so here it reads the socket itself: a thread fewer per WebSocket (a robot fleet's hundreds of idle
clients), and a thread hand-off fewer per message.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import simple_websocket
from wsproto.events import BytesMessage, Event
from wsproto.utilities import LocalProtocolError

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


class _ReadByReceive:
    """Stands in for simple-websocket's reader thread, which :class:`MessageSizedServer` does not start: its
    ``receive()`` reads the socket instead."""

    def __init__(self, target: Callable[..., Any] | None = None, **kwargs: Any) -> None:
        self.name = 'llnode-websocket-read-by-receive'

    def start(self) -> None:
        pass

    def join(self, timeout: float | None = None) -> None:
        pass

    def is_alive(self) -> bool:
        return False


class MessageSizedServer(simple_websocket.Server):
    """simple-websocket's server connection that is read by the thread calling ``receive()`` (no reader thread
    of its own), :data:`WEBSOCKET_MESSAGE_RECEIVE_BYTES` at a time while a binary message is partly received and
    its ``receive_bytes`` otherwise, and whose binary messages reach it whole (:class:`_WholeBinaryMessages`).
    One thread receives at a time (engine.io's); ``send()`` and ``close()`` may come from any other."""

    connected: bool

    def __init__(self, environ: dict[str, Any], **kwargs: Any) -> None:
        if kwargs.get('ping_interval'):
            raise ValueError("this WebSocket sends no pings of its own (engine.io's ping keeps it alive)")
        super().__init__(environ, thread_class=_ReadByReceive, **kwargs)

    def receive(self, timeout: float | None = None) -> Any:
        """The next message (``bytes`` or ``str``), read from the socket as it arrives; None when ``timeout``
        seconds passed without one. Raises ``ConnectionClosed`` once the connection is closed (by the client, by
        ``close()`` from another thread, by a read timeout or a broken connection), as simple-websocket does."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.connected and not self.input_buffer:
            if deadline is not None and not readable(self.sock, deadline - time.monotonic()):
                return None
            try:
                data = self.sock.recv(self.receive_bytes)
            except OSError:  # a read timeout, a reset, or the shutdown that close() makes
                data = b''
            if not data:
                self.connected = False
                break
            try:
                self.ws.receive_data(data)
                self.connected = self._handle_events()
            except LocalProtocolError:
                self.connected = False
        if self.input_buffer:
            return self.input_buffer.pop(0)
        raise simple_websocket.ConnectionClosed(self.close_reason, self.close_message)

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


def readable(sock: socket.socket, timeout: float) -> bool:
    """Whether ``sock`` has bytes (or an end) to read within ``timeout`` seconds."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(max(0.0, timeout) * 1000))


def closing_websocket_driver(driver: type) -> type:
    """engine.io's WebSocket driver whose connection is a :class:`MessageSizedServer` and whose ``close()`` also
    shuts the connection down.

    When engine.io ends a session (a client that vanished gives no pong within the ping timeout) it sends the
    close frame from its writer thread, but the request's thread stays in ``recv()`` on the silent connection
    (simple-websocket's own reader thread did too): it was held until the read timeout, or for ever without one.
    Shutting the socket down makes the ``recv()`` return at once.
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
