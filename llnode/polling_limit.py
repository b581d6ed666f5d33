"""How many packets one Engine.IO long-polling payload may carry, for every Socket.IO client and server in llnode.

engineio's default of 16 (``engineio.payload.Payload.max_decode_packets``, a class attribute and the only setting
there is) makes a receiver drop the whole payload after a burst of more: a server sends everything it queued in
one answer, and a client POSTs an event with its binary attachments in one body (``batch_detect`` with 16 raw
images is 17 packets). The limit is raised process-wide, never lowered; what one payload may weigh stays bounded
by the servers' body limit (64 MiB) anyway.
"""

from __future__ import annotations

import engineio

#: Packets one long-polling payload may carry.
POLLING_MAX_PACKETS = 512


def raise_polling_packet_limit() -> None:
    """Let every Engine.IO payload in this process carry up to :data:`POLLING_MAX_PACKETS` packets."""
    payload = engineio.payload.Payload
    payload.max_decode_packets = max(payload.max_decode_packets, POLLING_MAX_PACKETS)
