"""Background threads at a lower CPU priority: work nobody waits for must not slow down work a client waits for.

On a small machine (two cores, a detector serving a camera) the outbox's disk writes and uploads compete with
``/detect`` for the CPU. Linux schedules threads individually, so a thread can raise its own nice value; the
kernel then prefers the request threads whenever both want a core, and the background still gets every idle
cycle. Elsewhere ``setpriority`` would change the whole process, so nothing is done there.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

logger = logging.getLogger('llnode')

#: how much nicer than the process a background thread makes itself (19 is the most any thread can be)
BACKGROUND_NICENESS = 10


def lower_current_thread_priority(by: int = BACKGROUND_NICENESS) -> bool:
    """Make the calling thread ``by`` steps nicer than it is; True if it did (Linux only)."""
    if not sys.platform.startswith('linux') or by <= 0:
        return False
    thread_id = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, thread_id)
        os.setpriority(os.PRIO_PROCESS, thread_id, min(19, current + by))
    except OSError as e:  # a sandbox without setpriority: the thread simply keeps its priority
        logger.debug('could not lower the priority of %s: %s', threading.current_thread().name, e)
        return False
    return True
