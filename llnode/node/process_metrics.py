"""The ``process_*`` families of ``GET /metrics`` (CPU, memory, start time, file descriptors), cheaply.

prometheus-client's :class:`~prometheus_client.ProcessCollector` opens and parses ``/proc/self/stat`` and
``/proc/self/limits`` with buffered files and lists ``/proc/self/fd`` at every scrape; on a busy node that was about
a fifth of the scrape's server time. :class:`ProcessFigures` gives the same families with the same names, types and
values from cheaper sources: ``os.times()`` for the CPU seconds (the process-wide counters ``stat`` shows),
``statm`` for the memory (the same sizes, in pages), ``getrlimit`` for the file descriptor limit (the soft limit
that ``limits`` shows), the size Linux (6.2 on) gives the ``fd`` folder for the open descriptors (the count of
the open set; older kernels: its entries are counted), and the start time read once per process.

``statm`` and the ``fd`` folder are opened once per process (:class:`ProcHandles`) and read again at each scrape:
on a busy node, reading an open ``/proc`` file costs a third of opening, reading and closing it. These two
descriptors count among the open ones (prometheus-client's figure counted the one its listing opened). Where
there is no ``/proc`` (not Linux) there are no process families, as with prometheus-client's collector.
"""

from __future__ import annotations

import os
import resource
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from llnode.node.metric_families import counter, gauge

PROC = '/proc'


@dataclass(frozen=True)
class _Opened:
    pid: int
    statm: int
    statm_id: tuple[int, int]  # (device, inode): the descriptor still is this file
    folder: int
    folder_id: tuple[int, int]
    started: float  # seconds since the epoch


class ProcHandles:
    """This process' ``statm`` and ``fd`` folder in ``/proc``, open while the process lives.

    Opened at the first read in each process: a child forked after that opens its own (and closes the copies of
    its parent's). Each read checks that the descriptors still are those files (code that closes descriptors it
    does not own could have closed them, and the numbers may be in use again); if not, they are opened anew.
    """

    def __init__(self, proc: str = PROC) -> None:
        self._proc = proc
        self._lock = threading.Lock()  # only taken to open
        self._opened: _Opened | None = None
        self.ticks = os.sysconf('SC_CLK_TCK')

    def read(self) -> tuple[bytes, int, float]:
        """``statm``'s text, the open descriptors and the start time of this process."""
        opened = self._current()
        try:
            return self._read(opened)
        except (OSError, ValueError):
            return self._read(self._current(stale=opened))

    def _read(self, opened: _Opened) -> tuple[bytes, int, float]:
        folder = os.fstat(opened.folder)
        if (folder.st_dev, folder.st_ino) != opened.folder_id or _identity(opened.statm) != opened.statm_id:
            raise ValueError('the descriptors of /proc are not those files any more')
        open_fds = folder.st_size or len(os.listdir(os.path.join(self._proc, str(opened.pid), 'fd'))) - 1
        return os.pread(opened.statm, 4096, 0), open_fds, opened.started

    def _current(self, stale: _Opened | None = None) -> _Opened:
        opened, pid = self._opened, os.getpid()
        if opened is not None and opened.pid == pid and opened is not stale:
            return opened
        with self._lock:
            opened = self._opened
            if opened is None or opened.pid != pid or opened is stale:
                if opened is not None:  # stale, or a forked child's copies of its parent's
                    _close(opened)
                opened = self._opened = self._open(pid)
            return opened

    def _open(self, pid: int) -> _Opened:
        base = os.path.join(self._proc, str(pid))
        statm = os.open(os.path.join(base, 'statm'), os.O_RDONLY)
        try:
            folder = os.open(os.path.join(base, 'fd'), os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            os.close(statm)
            raise
        fields = _read(os.path.join(base, 'stat')).rsplit(b')', 1)[1].split()
        system = _read(os.path.join(self._proc, 'stat')).splitlines()
        boot = next(float(line.split()[1]) for line in system if line.startswith(b'btime '))
        started = boot + float(fields[19]) / self.ticks  # field 22 of stat: the start, in ticks after boot
        return _Opened(pid, statm, _identity(statm), folder, _identity(folder), started)


class ProcessFigures(Collector):
    """``process_virtual_memory_bytes``, ``process_resident_memory_bytes``, ``process_start_time_seconds``,
    ``process_cpu_seconds_total``, ``process_open_fds`` and ``process_max_fds`` of this process."""

    def __init__(self, proc: str = PROC) -> None:
        self._available = os.path.exists(os.path.join(proc, 'self', 'statm'))
        self._handles = _handles(proc) if self._available else None
        self._page_size = resource.getpagesize()

    def open_fds(self) -> int:
        """How many file descriptors this process has open."""
        return self._handles.read()[1] if self._handles is not None else 0

    def collect(self) -> Iterable[Metric]:
        if self._handles is None:
            return []
        try:
            statm, open_fds, start_time = self._handles.read()
        except (OSError, ValueError):  # /proc went away: no process figures, as prometheus-client's collector does
            return []
        pages = statm.split()
        times = os.times()
        soft_fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return [
            gauge(
                'process_virtual_memory_bytes',
                'Virtual memory of this process, in bytes',
                int(pages[0]) * self._page_size,
            ),
            gauge(
                'process_resident_memory_bytes',
                'Memory of this process resident in RAM, in bytes',
                int(pages[1]) * self._page_size,
            ),
            gauge(
                'process_start_time_seconds', 'When this process started, in seconds since the Unix epoch', start_time
            ),
            counter(
                'process_cpu_seconds',
                'CPU time this process spent, user and system, in seconds',
                times.user + times.system,
            ),
            gauge('process_open_fds', 'File descriptors this process has open', open_fds),
            gauge(
                'process_max_fds',
                'Most file descriptors this process may open (its soft limit)',
                float('inf') if soft_fd_limit == resource.RLIM_INFINITY else soft_fd_limit,
            ),
        ]


_HANDLES: dict[str, ProcHandles] = {}
_HANDLES_LOCK = threading.Lock()


def _handles(proc: str) -> ProcHandles:
    """One :class:`ProcHandles` per ``/proc`` for the whole process: every node's registry shares them."""
    with _HANDLES_LOCK:
        if proc not in _HANDLES:
            _HANDLES[proc] = ProcHandles(proc)
        return _HANDLES[proc]


def _identity(fd: int) -> tuple[int, int]:
    status = os.fstat(fd)
    return status.st_dev, status.st_ino


def _close(opened: _Opened) -> None:
    for fd, identity in ((opened.statm, opened.statm_id), (opened.folder, opened.folder_id)):
        try:
            if _identity(fd) == identity:  # never close a descriptor that is another file's now
                os.close(fd)
        except OSError:
            pass


def _read(path: str, size: int = 4096) -> bytes:
    """A small ``/proc`` file at once (``os.open`` and ``os.read`` cost a fifth of a buffered ``open()``). A
    ``/proc`` file writes what fits into each read, so a read shorter than ``size`` was the last."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = [os.read(fd, size)]
        while len(chunks[-1]) == size:
            chunks.append(os.read(fd, size))
    finally:
        os.close(fd)
    return b''.join(chunks)
