"""The allocator policy of a serving node: reuse image-sized buffers while requests come, give memory back when idle.

A detector allocates a few buffers of about a megabyte per request (a decoded 640x480 image, its array copy).
glibc's malloc serves such sizes with ``mmap`` at first and raises its threshold on the fly, so whether a request
reuses warm memory or faults in fresh pages (about a millisecond for a megabyte) depends on history; and every
waitress thread gets its own arena, each keeping the freed buffers of its last requests (RSS doubles after a
burst of traffic). ``serve()`` therefore fixes the thresholds high (buffers are reused: no page faults on the
request path), uses one arena, and hands free memory back (``malloc_trim``) once the requests pause.

Only glibc is tuned (Linux); elsewhere every function here is a no-op. ``LLNODE_ALLOCATOR=default`` in the
environment leaves the allocator as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

logger = logging.getLogger('llnode.node')

#: mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

#: allocations above this still get their own mapping (returned at free); below it they are reused
MMAP_THRESHOLD = 32 * 1024 * 1024
#: free memory at the top of the heap kept for reuse instead of being returned at each free
TRIM_THRESHOLD = 64 * 1024 * 1024
#: malloc arenas: one, so that ``malloc_trim`` can hand everything back (it leaves the tops of other arenas
#: alone) and no thread keeps its own freed buffers; the GIL serialises most allocations anyway
ARENA_MAX = 1

#: the requests must have paused this long before free memory is handed back
IDLE_S = 1.0
#: ...and at least this much must be free in the heap to be worth a trim (a trim costs well under a millisecond)
MIN_FREE_BYTES = 1024 * 1024


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ('arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks', 'fsmblks', 'uordblks', 'fordblks')
    ] + [('keepcost', ctypes.c_size_t)]


def _load_glibc() -> Any:
    if os.environ.get('LLNODE_ALLOCATOR', '').strip().lower() == 'default':
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        libc.gnu_get_libc_version  # noqa: B018 - raises AttributeError on any C library but glibc
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        if hasattr(libc, 'mallinfo2'):  # glibc 2.33+
            libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        return None
    return libc


_glibc = _load_glibc()
_tuned = threading.Event()  # set once the settings were applied in this process
_tune_lock = threading.Lock()


def tune_allocator() -> bool:
    """Fix glibc's thresholds and arena count for serving (once per process); True if the allocator is tuned."""
    if _glibc is None:
        return False
    with _tune_lock:
        if not _tuned.is_set():
            ok = all(
                _glibc.mallopt(param, value) == 1
                for param, value in (
                    (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                    (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
                    (_M_ARENA_MAX, ARENA_MAX),
                )
            )
            if not ok:
                logger.warning('mallopt refused a setting; the allocator keeps some of its defaults')
            _tuned.set()
    return True


def free_heap_bytes() -> int | None:
    """Bytes malloc holds free in its arenas (glibc 2.33+), or None where that cannot be read."""
    if _glibc is None or not hasattr(_glibc, 'mallinfo2'):
        return None
    return int(_glibc.mallinfo2().fordblks)


def release_free_memory() -> bool:
    """Hand free heap memory back to the system (``malloc_trim(0)``); True if any was released."""
    if _glibc is None:
        return False
    return bool(_glibc.malloc_trim(0))


class RequestActivity:
    """A WSGI wrapper that counts requests, so the serving loop knows when they pause.

    One integer increment per request; the count is only compared, never used as an exact figure.
    """

    def __init__(self, app: Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]) -> None:
        self.app = app
        self.count = 0

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        self.count += 1
        return self.app(environ, start_response)


class IdleTrimmer:
    """Decides, each time it is polled, whether the requests have paused long enough to trim the heap.

    It trims once per pause (after ``idle_s`` without a new request, if traffic came since the last trim and at
    least ``min_free_bytes`` are free), so steady traffic keeps its warm buffers. ``release`` runs first in each
    pause: it frees what libraries keep for reuse (a detector's cached Pillow blocks), so the trim can return it.
    """

    def __init__(
        self,
        activity: RequestActivity,
        *,
        idle_s: float = IDLE_S,
        min_free_bytes: int = MIN_FREE_BYTES,
        clock: Callable[[], float] = time.monotonic,
        release: Callable[[], object] | None = None,
    ) -> None:
        self._activity = activity
        self._release = release
        self._idle_s = idle_s
        self._min_free = min_free_bytes
        self._clock = clock
        self._seen = activity.count
        self._changed_at = clock()
        self._trimmed_at_count: int | None = None
        self.trims = 0

    def poll(self) -> bool:
        """Trim if it is time; True if it trimmed."""
        now = self._clock()
        count = self._activity.count
        if count != self._seen:
            self._seen, self._changed_at = count, now
            return False
        if now - self._changed_at < self._idle_s or self._trimmed_at_count == count:
            return False
        self._trimmed_at_count = count  # one attempt per pause, whatever it finds
        if self._release is not None:
            try:
                self._release()
            except Exception:  # a cache that cannot be emptied costs memory, never the serving loop
                logger.exception('releasing cached memory failed')
        free = free_heap_bytes()
        if free is not None and free < self._min_free:
            return False
        released = release_free_memory()
        if released:
            self.trims += 1
            logger.debug('requests paused: free heap memory handed back (%s bytes were free)', free)
        return released
