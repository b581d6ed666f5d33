"""A raw Engine.IO v4 long-polling client on ``requests``: it sends packets exactly as given, malformed ones
included, which no Socket.IO library would produce."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import requests

#: separates packets in one long-polling body (Engine.IO v4)
RECORD_SEPARATOR = '\x1e'


class RawPolling:
    """One Engine.IO session over long-polling, connected to the Socket.IO namespace ``/``."""

    def __init__(self, url: str, path: str = '/ws/socket.io/') -> None:
        self.endpoint = url.rstrip('/') + path
        self.http = requests.Session()
        handshake = self._get(params={'EIO': '4', 'transport': 'polling'})
        assert handshake.startswith('0'), handshake
        self.sid = json.loads(handshake[1:])['sid']
        self._next_ack = 100
        self.send('40')
        connected = self.receive_until(lambda packet: packet.startswith('40'))
        assert 'sid' in connected, connected

    def _get(self, params: dict[str, str]) -> str:
        response = self.http.get(self.endpoint, params=params, timeout=10)
        assert response.status_code == 200, response.text
        return response.text

    def send(self, *packets: str) -> None:
        """POST the packets (each an Engine.IO packet as text: ``4`` + a Socket.IO packet for a message)."""
        response = self.http.post(
            self.endpoint,
            params={'EIO': '4', 'transport': 'polling', 'sid': self.sid},
            data=RECORD_SEPARATOR.join(packets).encode('utf-8'),
            headers={'Content-Type': 'text/plain;charset=UTF-8'},
            timeout=10,
        )
        assert response.status_code == 200, (response.status_code, response.text)

    def receive_until(self, wanted: Any, polls: int = 5) -> str:
        """Poll until a packet for which ``wanted(packet)`` is true arrives (pings are answered); return it."""
        for _ in range(polls):
            body = self._get(params={'EIO': '4', 'transport': 'polling', 'sid': self.sid})
            for packet in body.split(RECORD_SEPARATOR):
                if packet == '2':
                    self.send('3')
                elif wanted(packet):
                    return packet
        raise AssertionError(f'no wanted packet within {polls} polls')

    def call(self, event: str, *args: Any) -> Any:
        """Emit ``event`` with an ack id and return the ack's first argument."""
        ack = self._next_ack
        self._next_ack += 1
        self.send(f'42{ack}' + json.dumps([event, *args]))
        packet = self.receive_until(lambda p: p.startswith(f'43{ack}'))
        answer = json.loads(packet[len(f'43{ack}') :])
        return answer[0] if answer else None

    def close(self) -> None:
        with contextlib.suppress(AssertionError, requests.RequestException):  # the server may have closed it
            self.send('1')
        self.http.close()
