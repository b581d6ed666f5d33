"""Run one training command as a process group that can always be stopped, with a fresh log per run.

The reference's executor appended every run to one log (so an old error was found again on every retry), sent
SIGTERM only to its direct child (data-loader workers and the ``sleep`` inside ``bash -c`` survived) and waited
without a timeout (a child that ignored SIGTERM hung stop and abort for good). This one:

- starts the command in its **own session** (``start_new_session=True``), so the whole process group can be
  signalled, and also tracks the process tree below it (``torchrun`` starts its workers in sessions of their own);
- writes stdout and stderr to a **new numbered log** per run, ``logs/run-0003.log`` in the training folder, and
  points the symlink ``last_training.log`` at it (the last ``keep_logs`` run logs are kept);
- stops with SIGTERM to the group and the tree, SIGKILL after a grace period, then reaps with a timeout, on every
  exit path; the direct child is always waited for, so it never stays a zombie;
- records the running process in ``logs/process.json``, so a node restarted after a crash can end the training
  group its previous incarnation left behind (:meth:`Executor.kill_leftovers`, also done by :meth:`start`).

The parent's handle of the log file is closed right after the child started (the child has its own), so no run
can leak it. The process-tree tracking reads ``/proc`` (Linux); elsewhere only the process group is signalled.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

from llnode.durable import write_json

logger = logging.getLogger('llnode.trainer.executor')

#: the name of the symlink in the training folder that points at the current run's log
LAST_LOG_NAME = 'last_training.log'
LOGS_FOLDER = 'logs'
PROCESS_RECORD = 'process.json'
_RUN_LOG = re.compile(r'^run-(\d+)\.log$')
_PROC = Path('/proc')


class ExecutorError(RuntimeError):
    """The command could not be started (empty, not found, not executable, or a run is still going)."""


class Executor:
    """One training command at a time, in its own process group, logging to a fresh file per run.

    Thread-safe: :meth:`stop`, :meth:`terminate` and :meth:`kill` may come from any thread (e.g. a Socket.IO
    handler) while another thread watches :meth:`is_running`; concurrent stops are serialised.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        keep_logs: int = 20,
        logs_folder: str = LOGS_FOLDER,
        last_log_name: str = LAST_LOG_NAME,
    ) -> None:
        if keep_logs < 1:
            raise ValueError(f'keep_logs must be at least 1, not {keep_logs}')
        self.folder = Path(folder)
        self.logs_folder = self.folder / logs_folder
        self.last_log = self.folder / last_log_name
        self.keep_logs = keep_logs
        self._lock = threading.Lock()  # owns _proc, _log_path, _terminated_at, _tracked
        self._stop_lock = threading.Lock()  # one stop sequence at a time
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None
        self._terminated_at: float | None = None
        self._tracked: dict[int, int] = {}  # pid -> start time of every process seen in the tree

    # ------------------------------------------------------------------ start

    def start(self, command: str | Sequence[str], env: Mapping[str, str] | None = None) -> Path:
        """Start ``command`` (a string split with :mod:`shlex`, or an argv list) in the folder; return its log.

        The environment is ``os.environ`` plus ``env``. Raises :class:`ExecutorError` if a run is still going or
        the command cannot be started (the reason is also written to the run's log).
        """
        argv = shlex.split(command) if isinstance(command, str) else [os.fspath(part) for part in command]
        if not argv:
            raise ExecutorError(f'empty command: {command!r}')
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                raise ExecutorError(f'a training process is still running (pid {self._proc.pid})')
        if self._proc is not None:
            self.stop(grace=0)  # the previous run ended by itself: end what it left behind, reap it
        self.folder.mkdir(parents=True, exist_ok=True)
        self.logs_folder.mkdir(exist_ok=True)
        self.kill_leftovers()
        log_path, log_file = self._new_log()
        full_env = {**os.environ, **{str(k): str(v) for k, v in (env or {}).items()}}
        try:
            try:
                proc = subprocess.Popen(
                    argv,
                    cwd=self.folder,
                    env=full_env,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as e:
                message = f'cannot start {argv[0]!r}: {e.strerror or e}'
                log_file.write(f'llnode executor: {message}\n'.encode())
                with self._lock:
                    self._proc, self._log_path = None, log_path
                raise ExecutorError(message) from e
        finally:
            log_file.close()  # the child holds its own copy of the descriptor
        with self._lock:
            self._proc = proc
            self._log_path = log_path
            self._terminated_at = None
            self._tracked = {}
            start_time = _start_time(proc.pid)
            if start_time is not None:
                self._tracked[proc.pid] = start_time
        self._write_record(proc.pid, start_time, argv)
        shown = shlex.join(argv)
        shown = shown if len(shown) <= 300 else shown[:297] + '...'
        logger.info('started pid %d: %s (log %s)', proc.pid, shown, log_path)
        return log_path

    def _new_log(self) -> tuple[Path, BinaryIO]:
        """Create the next numbered run log exclusively (never reopen an old one) and point the symlink at it."""
        numbers = [int(m.group(1)) for p in self.logs_folder.iterdir() if (m := _RUN_LOG.match(p.name))]
        number = max(numbers, default=0) + 1
        while True:
            path = self.logs_folder / f'run-{number:04d}.log'
            try:
                handle = open(path, 'xb')  # noqa: SIM115 (closed by start)
                break
            except FileExistsError:
                number += 1
        self._point_last_log(path)
        for old in sorted(numbers)[: max(0, len(numbers) + 1 - self.keep_logs)]:
            with contextlib.suppress(FileNotFoundError):
                (self.logs_folder / f'run-{old:04d}.log').unlink()
        return path, handle

    def _point_last_log(self, target: Path) -> None:
        temp = self.last_log.with_name(f'.{self.last_log.name}.{secrets.token_hex(4)}.link')
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        os.symlink(os.path.relpath(target, self.last_log.parent), temp)
        os.replace(temp, self.last_log)

    # ------------------------------------------------------------------ state

    @property
    def pid(self) -> int | None:
        """The process id (= process group id) of the current or last run."""
        with self._lock:
            return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path | None:
        """The log file of the current or last run (``logs/run-NNNN.log``)."""
        with self._lock:
            return self._log_path

    @property
    def returncode(self) -> int | None:
        """The exit code of the last run; None while it runs or before any start (negative: killed by a signal)."""
        with self._lock:
            proc = self._proc
        return proc.poll() if proc is not None else None

    def is_running(self) -> bool:
        """True while the command's main process has not exited."""
        with self._lock:
            proc = self._proc
        return proc is not None and proc.poll() is None

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait up to ``timeout`` s for the main process to end; its exit code, or None if still running."""
        with self._lock:
            proc = self._proc
        if proc is None:
            return None
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    # ------------------------------------------------------------------ stopping

    def terminate(self) -> None:
        """Send SIGTERM to the group and the process tree once, without waiting (safe from any thread)."""
        with self._lock:
            proc = self._proc
            if proc is None or self._terminated_at is not None:
                return
            self._terminated_at = time.monotonic()
        self._signal_all(proc, signal.SIGTERM)

    def stop(self, grace: float = 10.0, wait_timeout: float = 5.0) -> int | None:
        """End the run: SIGTERM to the group and tree, SIGKILL whatever is left after ``grace`` s, then reap.

        Also ends what a run that exited by itself left behind in its group. Returns the exit code (None if no run
        was started, or the main process could not be reaped within ``wait_timeout``). The SIGKILL and the reap
        happen even if the wait is interrupted (e.g. KeyboardInterrupt).
        """
        with self._lock:
            proc = self._proc
        if proc is None:
            return None
        with self._stop_lock:
            try:
                self.terminate()
                with self._lock:
                    deadline = (self._terminated_at or time.monotonic()) + max(0.0, grace)
                self._wait_until_gone(proc, deadline)
            finally:
                if self._alive(proc):
                    logger.warning('pid %d: still running %.1f s after SIGTERM, sending SIGKILL', proc.pid, grace)
                    self._signal_all(proc, signal.SIGKILL)
                self._reap(proc, wait_timeout)
        return proc.returncode

    def kill(self, wait_timeout: float = 5.0) -> int | None:
        """SIGKILL the group and the tree now, then reap the main process (at most ``wait_timeout`` s)."""
        with self._lock:
            proc = self._proc
            if proc is None:
                return None
            if self._terminated_at is None:
                self._terminated_at = time.monotonic()
        self._signal_all(proc, signal.SIGKILL)
        self._reap(proc, wait_timeout)
        return proc.returncode

    def _reap(self, proc: subprocess.Popen[bytes], wait_timeout: float) -> None:
        try:
            proc.wait(wait_timeout)
        except subprocess.TimeoutExpired:
            logger.error('pid %d did not end within %.1f s after SIGKILL', proc.pid, wait_timeout)
            return
        # the main process is reaped; give the rest of the tree the same time to vanish after SIGKILL
        self._wait_until_gone(proc, time.monotonic() + wait_timeout)
        left = self._live_tree(proc)
        if left:
            logger.error('pid %d: processes %s survived SIGKILL', proc.pid, sorted(left))
        else:
            self._remove_record(proc.pid)

    def _wait_until_gone(self, proc: subprocess.Popen[bytes], deadline: float) -> None:
        """Wait until the main process exited and nothing of its tree lives, or until ``deadline``."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(min(remaining, 0.05))  # returns at once when the main process ends
            if not self._alive(proc):
                return
            if proc.returncode is not None:
                # only other members of the tree are left: no wait call wakes on them, poll them (bounded)
                time.sleep(min(0.02, max(0.0, deadline - time.monotonic())))

    def _alive(self, proc: subprocess.Popen[bytes]) -> bool:
        return proc.poll() is None or bool(self._live_tree(proc))

    def _live_tree(self, proc: subprocess.Popen[bytes]) -> dict[int, int]:
        """Every live (non-zombie) process of the run: its group, its session, its descendants, and the ones
        tracked before (workers that sit in sessions of their own and lost their parent are still found)."""
        table = _process_table()
        if table is None:
            return {proc.pid: 0} if proc.poll() is None else {}
        pgid = proc.pid
        live: dict[int, int] = {}
        children: dict[int, list[int]] = {}
        for pid, (ppid, pgrp, sid, start, _state) in table.items():
            children.setdefault(ppid, []).append(pid)
            if pgid in (pgrp, sid) and pid != os.getpid():
                live[pid] = start
        with self._lock:
            tracked = dict(self._tracked)
        roots = [pid for pid, start in tracked.items() if pid in table and table[pid][3] == start]
        roots.extend(live)
        if proc.poll() is None and proc.pid in table:
            roots.append(proc.pid)
        seen: set[int] = set()
        while roots:
            pid = roots.pop()
            if pid in seen or pid == os.getpid():
                continue
            seen.add(pid)
            live[pid] = table[pid][3]
            roots.extend(children.get(pid, ()))
        with self._lock:
            self._tracked.update(live)
        return live

    def _signal_all(self, proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        """Signal the group and every other live process of the tree, each exactly once (a second SIGTERM can
        break a graceful shutdown, e.g. torchrun's)."""
        tree = self._live_tree(proc)
        group_signalled = False
        if proc.returncode is None:
            # the group leader is not reaped yet, so its pid cannot have been reused: signal the group at once
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
                group_signalled = True
        for pid, start in tree.items():
            info = _read_stat(pid)
            if info is None or info[3] != start or (group_signalled and info[1] == proc.pid):
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    # ------------------------------------------------------------------ leftovers of a crashed node

    def _write_record(self, pid: int, start_time: int | None, argv: Sequence[str]) -> None:
        try:
            write_json(self.logs_folder / PROCESS_RECORD, {'pid': pid, 'start_time': start_time, 'argv': list(argv)})
        except OSError as e:
            logger.warning('cannot record pid %d in %s: %s', pid, self.logs_folder, e)

    def _remove_record(self, pid: int) -> None:
        record = self.logs_folder / PROCESS_RECORD
        with contextlib.suppress(OSError, ValueError):
            if json.loads(record.read_text()).get('pid') == pid:
                record.unlink()

    def kill_leftovers(self) -> list[int]:
        """SIGKILL a training group that an earlier, crashed node process left running in this folder.

        The record holds the main process's pid and start time; its group and session are killed while the main
        process still runs, and also after it ended (members it left behind); a pid now used by another process
        is not touched. Returns the pids that were signalled.
        """
        record = self.logs_folder / PROCESS_RECORD
        try:
            data = json.loads(record.read_text())
            pid, start = int(data['pid']), data.get('start_time')
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError) as e:
            logger.warning('ignoring unreadable %s: %s', record, e)
            with contextlib.suppress(OSError):
                record.unlink()
            return []
        with self._lock:
            current = self._proc.pid if self._proc is not None else None
        if pid == current:
            return []
        table = _process_table() or {}
        # the leader still runs (same start time), or it is gone: then a group or session with its id can only be
        # the one it led (Linux does not reuse a pid while a group or session carries it); a pid reused by
        # another process is left alone
        leader_is_ours = start is not None and pid in table and table[pid][3] == start
        killed: list[int] = []
        if leader_is_ours or pid not in table:
            killed = [p for p, (_pp, pgrp, sid, _s, _st) in table.items() if pid in (pgrp, sid)]
        if killed:
            logger.warning('killing training processes %s left behind by an earlier run', killed)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            for member in killed:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(member, signal.SIGKILL)
        with contextlib.suppress(OSError):
            record.unlink()
        return killed

    # ------------------------------------------------------------------ log

    def log_text(self) -> str:
        """The whole log of the current or last run ('' before any start)."""
        path = self.log_path
        if path is None:
            return ''
        try:
            return path.read_bytes().decode(errors='replace')
        except FileNotFoundError:
            return ''

    def log_tail(self, lines: int = 50) -> list[str]:
        """The last ``lines`` lines of the current or last run's log (read from the end, not the whole file)."""
        path = self.log_path
        if path is None or lines <= 0:
            return []
        try:
            with open(path, 'rb') as handle:
                handle.seek(0, os.SEEK_END)
                position = handle.tell()
                data = b''
                while position > 0 and data.count(b'\n') <= lines:
                    step = min(65536, position)
                    position -= step
                    handle.seek(position)
                    data = handle.read(step) + data
        except FileNotFoundError:
            return []
        return data.decode(errors='replace').splitlines()[-lines:]

    def __repr__(self) -> str:
        with self._lock:
            proc = self._proc
        state = 'idle' if proc is None else ('running' if proc.poll() is None else f'exited {proc.returncode}')
        return f'<Executor {self.folder} {state}>'


# ---------------------------------------------------------------------- /proc helpers

_ProcInfo = tuple[int, int, int, int, str]  # ppid, pgrp, session, start time (clock ticks), state


def _read_stat(pid: int) -> _ProcInfo | None:
    try:
        text = (_PROC / str(pid) / 'stat').read_text()
    except (OSError, ValueError):
        return None
    fields = text[text.rfind(')') + 2 :].split()
    try:
        return int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19]), fields[0]
    except (IndexError, ValueError):
        return None


def _start_time(pid: int) -> int | None:
    """The process's start time (a pid reused by another process has another one); None if gone or a zombie."""
    info = _read_stat(pid)
    return None if info is None or info[4] in 'ZX' else info[3]


def _process_table() -> dict[int, _ProcInfo] | None:
    """Every live (non-zombie) process; None where there is no ``/proc``."""
    if not _PROC.is_dir():
        return None
    table: dict[int, _ProcInfo] = {}
    for name in _pids(_PROC.iterdir()):
        info = _read_stat(name)
        if info is not None and info[4] not in 'ZX':
            table[name] = info
    return table


def _pids(entries: Iterable[Path]) -> Iterable[int]:
    for entry in entries:
        if entry.name.isdigit():
            yield int(entry.name)
