"""The ``process_*`` families of ``GET /metrics`` (CPU, memory, start time, file descriptors), cheaply.

prometheus-client's :class:`~prometheus_client.ProcessCollector` opens and parses ``/proc/self/stat`` and
``/proc/self/limits`` at every scrape; on a busy node that is about half the scrape's server time, since the
kernel sums every thread's times to write ``stat``. :class:`ProcessFigures` gives the same families with the same
names, types and values from cheaper sources: ``os.times()`` for the CPU seconds (the same process-wide counters
``stat`` shows), ``/proc/self/statm`` for the memory (the same sizes, in pages), ``getrlimit`` for the file
descriptor limit (the soft limit that ``limits`` shows), and the start time read once per process id (it never
changes, but a forked worker has its own). Open file descriptors are still counted in ``/proc/self/fd``.
Where there is no ``/proc`` (not Linux) it gives no families, as prometheus-client's collector does.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterable

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from llnode.node.metric_families import counter, gauge

PROC = '/proc'


class ProcessFigures(Collector):
    """``process_virtual_memory_bytes``, ``process_resident_memory_bytes``, ``process_start_time_seconds``,
    ``process_cpu_seconds_total``, ``process_open_fds`` and ``process_max_fds`` of this process."""

    def __init__(self, proc: str = PROC) -> None:
        self._proc = proc
        self._statm = os.path.join(proc, 'self', 'statm')
        self._fds = os.path.join(proc, 'self', 'fd')
        self._available = os.path.exists(self._statm)
        self._page_size = resource.getpagesize()
        self._ticks = os.sysconf('SC_CLK_TCK') if self._available else 100
        self._started: tuple[int, float] | None = None  # (pid, seconds since the epoch)

    def start_time(self) -> float:
        """When this process started, in seconds since the epoch (from ``/proc``, once per process id)."""
        pid = os.getpid()
        if self._started is None or self._started[0] != pid:
            fields = _read(os.path.join(self._proc, 'self', 'stat')).rsplit(b')', 1)[1].split()
            system = _read(os.path.join(self._proc, 'stat')).splitlines()
            boot = next(float(line.split()[1]) for line in system if line.startswith(b'btime '))
            self._started = (pid, boot + float(fields[19]) / self._ticks)  # field 22 of stat: start, in ticks
        return self._started[1]

    def open_fds(self) -> int:
        """How many file descriptors are open: the size Linux (6.2 on) gives ``/proc/self/fd`` (one system call
        that counts the open set), else the entries of that folder, less the one the listing opened itself."""
        size = os.stat(self._fds).st_size
        return size if size > 0 else len(os.listdir(self._fds)) - 1

    def collect(self) -> Iterable[Metric]:
        if not self._available:
            return []
        try:
            pages = _read(self._statm).split()
            open_fds = self.open_fds()
            start_time = self.start_time()
        except OSError:  # /proc went away: no process figures, as prometheus-client's collector does
            return []
        times = os.times()
        soft_fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return [
            gauge('process_virtual_memory_bytes', 'Virtual memory size in bytes.', int(pages[0]) * self._page_size),
            gauge('process_resident_memory_bytes', 'Resident memory size in bytes.', int(pages[1]) * self._page_size),
            gauge('process_start_time_seconds', 'Start time of the process since unix epoch in seconds.', start_time),
            counter(
                'process_cpu_seconds', 'Total user and system CPU time spent in seconds.', times.user + times.system
            ),
            gauge('process_open_fds', 'Number of open file descriptors.', open_fds),
            gauge(
                'process_max_fds',
                'Maximum number of open file descriptors.',
                float('inf') if soft_fd_limit == resource.RLIM_INFINITY else soft_fd_limit,
            ),
        ]


def _read(path: str, size: int = 4096) -> bytes:
    """A small ``/proc`` file at once: ``os.open`` and ``os.read`` cost a fifth of a buffered ``open()``. A
    ``/proc`` file writes what fits into each read, so a read shorter than ``size`` was the last."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = [os.read(fd, size)]
        while len(chunks[-1]) == size:
            chunks.append(os.read(fd, size))
    finally:
        os.close(fd)
    return b''.join(chunks)
