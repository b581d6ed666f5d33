"""The training slot: several trainer nodes on one host share a GPU by taking turns (reference 0.27, §2.1).

A trainer trains only while it holds the slot. With ``TRAINING_SLOT_LOCK`` set to a file path (on a folder every
trainer sees, bind-mounted into each container), :class:`FileTrainingSlot` holds an exclusive ``flock`` on that
file for the whole training; a sibling offered a training meanwhile refuses it (``payload: 'refused'``) and reports
``blocked``. The kernel frees the lock when its process dies, so a crashed trainer never leaves the slot taken.
Without the variable, :class:`AlwaysFreeSlot` never blocks.

The lock belongs to the file's inode: never replace the file, share its folder. It works between processes of one
kernel only (no NFS). The text in the file names the holder and is for people only; the lock is the truth.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import threading
import time
import weakref
from abc import ABC, abstractmethod
from pathlib import Path

from llnode.config import ConfigError, Settings
from llnode.trainer.machine import TrainingRefused

logger = logging.getLogger('llnode.trainer.slot')

#: Environment variable naming the lock file (unset or empty: no coordination).
ENV_VAR = 'TRAINING_SLOT_LOCK'

#: How often :meth:`TrainingSlot.claim` tries again when it lost only to a sibling's brief probe of the lock.
CLAIM_ATTEMPTS = 3

#: Pause between those attempts: a probe holds the lock for microseconds.
_CLAIM_PAUSE_S = 0.01

#: What a holder is called when the lock is held but the file names nobody (the holder is writing its name).
UNKNOWN_HOLDER = 'unknown'


class TrainingSlotTaken(TrainingRefused):
    """A sibling trainer holds the training slot; ``holder`` is what it wrote into the lock file."""

    def __init__(self, holder: str) -> None:
        super().__init__(f'the training slot is held by {holder}')
        self.holder = holder


class TrainingSlot(ABC):
    """One GPU's turn to train. ``claim`` takes it or refuses at once; ``wait_for`` takes it when it frees.

    Thread-safe: the node's event handlers claim, the training worker waits and releases, the repeat thread probes.
    Adapters implement :meth:`_acquire`, :meth:`_release` and :meth:`_sibling_holder`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # owned by the slot: guards _held and the adapter's state
        self._held = False

    def claim(self, holder_text: str) -> None:
        """Take the slot for a training described by ``holder_text`` without waiting.

        Raises :class:`TrainingSlotTaken` naming the holder if a sibling holds it. Claiming a slot this object
        already holds only renames the holder.
        """
        holder = f'pid {os.getpid()} on {socket.gethostname()}, {holder_text}'
        with self._lock:
            for attempt in range(1, CLAIM_ATTEMPTS + 1):
                if self._acquire(holder):
                    self._held = True
                    logger.info('training slot taken: %s', holder)
                    return
                sibling = self._sibling_holder()
                if sibling is not None:
                    raise TrainingSlotTaken(sibling)
                if attempt < CLAIM_ATTEMPTS:
                    time.sleep(_CLAIM_PAUSE_S)  # lost to a probe; bounded, so no stop event is needed
        raise TrainingSlotTaken(UNKNOWN_HOLDER)

    def wait_for(self, holder_text: str, stop: threading.Event, poll: float = 1.0) -> bool:
        """Claim the slot, trying again every ``poll`` seconds; True once held, False if ``stop`` was set first."""
        announced = False
        while not stop.is_set():
            try:
                self.claim(holder_text)
            except TrainingSlotTaken as e:
                if not announced:
                    logger.info('waiting for the training slot (%s)', e)
                    announced = True
            else:
                return True
            if stop.wait(poll):
                break
        return False

    def release(self) -> None:
        """Give the slot back (nothing happens if it is not held)."""
        with self._lock:
            if not self._held:
                return
            self._held = False
            self._release()
        logger.info('training slot released')

    @property
    def held(self) -> bool:
        """Whether this object holds the slot."""
        with self._lock:
            return self._held

    @property
    def taken_by_sibling(self) -> bool:
        """Whether someone else holds the slot now (a probe: it touches the lock for an instant)."""
        with self._lock:
            return not self._held and self._sibling_holder() is not None

    def holder(self) -> str | None:
        """Who holds the slot, as written in it, or None when it is free (also a probe)."""
        with self._lock:
            return self._sibling_holder()

    @abstractmethod
    def _acquire(self, holder: str) -> bool:
        """Take the slot without waiting and record ``holder``; False if it is taken (caller holds ``_lock``)."""

    @abstractmethod
    def _release(self) -> None:
        """Give the slot back (caller holds ``_lock`` and held it)."""

    @abstractmethod
    def _sibling_holder(self) -> str | None:
        """The holder's text if someone else holds the slot now, else None (caller holds ``_lock``)."""


class AlwaysFreeSlot(TrainingSlot):
    """No coordination (``TRAINING_SLOT_LOCK`` unset): every claim succeeds and no sibling ever blocks."""

    def _acquire(self, holder: str) -> bool:
        return True

    def _release(self) -> None:
        pass

    def _sibling_holder(self) -> str | None:
        return None

    def __repr__(self) -> str:
        return 'AlwaysFreeSlot()'


class FileTrainingSlot(TrainingSlot):
    """The slot as an exclusive ``flock`` on ``path`` (created with mode 0o666 so trainers of other users can share it).

    The lock file's folder must exist (it is the folder the trainers share). A forked child closes the inherited
    lock descriptor at once (``os.register_at_fork``), so a training process never keeps the slot after its node.
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise FileNotFoundError(
                f'the training slot lock {self.path}: its folder {self.path.parent} does not exist '
                '(create it, or bind-mount the folder the trainers share)'
            )
        if self.path.is_dir():
            raise IsADirectoryError(f'the training slot lock {self.path} is a folder; name a file in it')
        self._fd: int | None = None
        self._probe_failed = False  # warn once when the file cannot be probed, not at every status
        _open_slots.add(self)

    def _acquire(self, holder: str) -> bool:
        if self._fd is not None:  # held already: only the holder's text changes
            _write_holder(self._fd, holder)
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            with contextlib.suppress(OSError):  # not the owner (another user created it): its mode stays
                os.fchmod(fd, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            _write_holder(fd, holder)
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)  # closing the descriptor drops the lock too
            raise
        self._fd = fd
        return True

    def _release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _sibling_holder(self) -> str | None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None  # nobody ever claimed it
        except OSError as e:  # e.g. no read permission: the status must go on, the claim will say what is wrong
            if not self._probe_failed:
                logger.warning('cannot probe the training slot lock %s: %s', self.path, e)
                self._probe_failed = True
            return None
        try:
            try:
                # shared: two siblings probing at once do not see each other as holders
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                text = os.read(fd, 4096).decode('utf-8', 'replace').strip()
                return text or UNKNOWN_HOLDER
            return None  # closing the descriptor below drops the probe's lock
        finally:
            os.close(fd)

    def _forget_in_child(self) -> None:
        """In a forked child: close the inherited descriptor without unlocking (the parent keeps the slot)."""
        fd, self._fd = self._fd, None
        self._held = False
        self._lock = threading.Lock()  # another thread may have held it at the fork
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __del__(self) -> None:
        fd = getattr(self, '_fd', None)
        if fd is not None:  # dropped while held: closing the descriptor frees the slot
            with contextlib.suppress(Exception):
                os.close(fd)

    def __repr__(self) -> str:
        return f'FileTrainingSlot({str(self.path)!r})'


def _write_holder(fd: int, holder: str) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, holder.encode() + b'\n', 0)


#: Every FileTrainingSlot of this process, for the fork handler (weak: a dropped slot closes its own descriptor).
_open_slots: weakref.WeakSet[FileTrainingSlot] = weakref.WeakSet()


def _close_inherited_slots() -> None:
    for slot in list(_open_slots):
        slot._forget_in_child()


os.register_at_fork(after_in_child=_close_inherited_slots)


def training_slot_from_settings(settings: Settings) -> TrainingSlot:
    """The slot ``TRAINING_SLOT_LOCK`` asks for: :class:`FileTrainingSlot` on that path, :class:`AlwaysFreeSlot`
    when it is empty. A lock path whose folder is missing is a :class:`~llnode.config.ConfigError` (fail fast)."""
    path = settings.training_slot_lock.strip()
    if not path:
        return AlwaysFreeSlot()
    variable = settings.sources.get('training_slot_lock', ENV_VAR)
    try:
        return FileTrainingSlot(path)
    except OSError as e:
        raise ConfigError(f'{variable}: {e}') from e
