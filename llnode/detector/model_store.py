"""The detector's models on disk: ``{data}/models/{version}/`` folders and the ``{data}/current_model`` link.

The layout is the reference's (reference-behaviour §1.12), so a data folder moves between the two. What differs
is how it changes: a version is fetched into a hidden staging folder beside its final place and renamed in only
when it holds a usable ``model.json``, so a half-downloaded model is never visible; the link is switched by
renaming a uniquely named temp link over it, so a leftover of a crash never blocks a later switch (reference weak
point C10); nothing changes the working directory (C9) or writes to a fixed ``/tmp`` path (C16). A small
:class:`RetryBackoff` spaces out retries of failed downloads and builds (C8).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Hashable
from pathlib import Path, PurePosixPath

from llnode.backoff import Backoff
from llnode.durable import fsync_dir
from llnode.schema import ModelInformation, SchemaError

logger = logging.getLogger('llnode.detector.models')

MODELS_FOLDER = 'models'
CURRENT_MODEL_LINK = 'current_model'
MODEL_JSON = 'model.json'

#: hidden names in ``models/`` that belong to the store: staging folders (and the model-zip extraction folders
#: :mod:`llnode.loop.archive` puts beside them), and folders being deleted
_STAGING_PREFIX = '.staging-'
_REMOVING_PREFIX = '.removing-'
_LEFTOVER_PREFIXES = (_STAGING_PREFIX, '.' + _STAGING_PREFIX, _REMOVING_PREFIX)
#: temp links beside ``current_model``; ``current_model.tmp`` is the name the reference uses
_TEMP_LINK_PREFIX = f'.{CURRENT_MODEL_LINK}.'
_TEMP_LINK_SUFFIX = '.link'
_REFERENCE_TEMP_LINK = f'{CURRENT_MODEL_LINK}.tmp'

_VERSION = re.compile(r'[0-9][0-9.]*')


class ModelStoreError(Exception):
    """Base of the model store's errors."""


class InvalidVersionError(ModelStoreError, ValueError):
    """A version string that is not digits and dots."""


class ModelNotInstalledError(ModelStoreError, LookupError):
    """The version has no usable folder in the store."""


class InvalidModelError(ModelStoreError):
    """A model folder without a readable, valid ``model.json``."""


class ModelInUseError(ModelStoreError):
    """The version is the current one and cannot be removed."""


def is_version(text: str) -> bool:
    """True for a model version: ASCII digits and dots, starting with a digit (the reference also takes ``.1``,
    which would be a hidden folder here)."""
    return bool(_VERSION.fullmatch(text))


def version_key(version: str) -> tuple[tuple[int, ...], str]:
    """Sort key that orders versions numerically (``1.9`` before ``1.10``)."""
    return tuple(int(part) for part in version.split('.') if part), version


def check_version(version: str) -> str:
    """Return ``version`` or raise :class:`InvalidVersionError`."""
    if not isinstance(version, str) or not is_version(version):
        raise InvalidVersionError(f'invalid model version {version!r}: expected digits and dots, e.g. "1.2"')
    return version


class ModelStore:
    """The models of one data folder; every method is thread-safe.

    One lock, owned by the store, guards every change of the folder layout; it is never held during a download.
    Installs of the same version are serialised by a per-version lock (also owned by the store), so concurrent
    requests for one version fetch it once.
    """

    def __init__(self, data_folder: Path | str) -> None:
        self.data_folder = Path(data_folder).absolute()
        self.models_folder = self.data_folder / MODELS_FOLDER
        self.link_path = self.data_folder / CURRENT_MODEL_LINK
        self._lock = threading.Lock()
        self._install_locks: dict[str, threading.Lock] = {}
        self._active_staging: set[str] = set()
        self._last_link_warning: str | None = None

    def __repr__(self) -> str:
        return f'ModelStore({str(self.data_folder)!r})'

    # -- reading ---------------------------------------------------------------------------------------------

    def folder(self, version: str) -> Path:
        """The folder of ``version`` (whether or not it exists)."""
        return self.models_folder / check_version(version)

    def has(self, version: str) -> bool:
        """True where ``version`` has a folder holding ``model.json``."""
        return (self.folder(version) / MODEL_JSON).is_file()

    def local_versions(self) -> list[str]:
        """The versions with a folder in ``models/``, sorted numerically (hidden staging folders never count)."""
        try:
            entries = list(os.scandir(self.models_folder))
        except (FileNotFoundError, NotADirectoryError):
            return []
        versions = [e.name for e in entries if is_version(e.name) and e.is_dir()]
        return sorted(versions, key=version_key)

    def model_info(self, version: str) -> ModelInformation:
        """The parsed ``model.json`` of ``version`` with ``model_root_path`` set to its folder."""
        folder = self.folder(version)
        if not folder.is_dir():
            raise ModelNotInstalledError(f'model version {version} is not installed (no folder {folder})')
        return read_model_info(folder)

    def current_version(self) -> str | None:
        """The version ``current_model`` points to, or None (no link, a dangling link or one pointing elsewhere)."""
        with self._lock:
            return self._current_version()

    def current_problem(self) -> str | None:
        """Why ``current_model`` exists but names no usable model (for status pages), or None."""
        with self._lock:
            link = self.link_path
            if not link.is_symlink():
                return None
            try:
                pointed = os.readlink(link)
            except OSError as e:
                return f'cannot read the link {link}: {e}'
            version = self._version_of_link(pointed)
            if version is None:
                return f'{link} points to {pointed!r}, not to a model folder in {self.models_folder}'
            if self.has(version):
                return None
            folder = self.folder(version)
            if folder.is_dir():
                return f'model folder {folder.absolute()} has no {MODEL_JSON}'
            return f'{link} points to {pointed!r}, which does not exist'

    def current_folder(self) -> Path | None:
        """The folder of the current version, or None."""
        version = self.current_version()
        return None if version is None else self.folder(version)

    # -- changing --------------------------------------------------------------------------------------------

    def install(self, version: str, fetch: Callable[[Path], object]) -> Path:
        """Install ``version`` with ``fetch(folder)``, which fills the empty ``folder`` with the model; return the
        version's folder.

        ``fetch`` writes into a staging folder inside ``models/``; only when it returns and the folder holds a
        valid ``model.json`` is it renamed into place, so a failed fetch leaves nothing behind (its exception is
        raised unchanged). Installing a version that is already present does nothing. A folder of that version
        without ``model.json`` (left by the reference after a failed download) is replaced.
        """
        check_version(version)
        target = self.folder(version)
        with self._install_lock(version):
            if self.has(version):
                logger.debug('model version %s is already installed', version)
                return target
            staging = self._new_staging(version)
            try:
                fetch(staging)
                if not (staging / MODEL_JSON).is_file():  # name what the operator knows, not the staging folder
                    raise InvalidModelError(f'the downloaded model {version} has no {MODEL_JSON}')
                info = read_model_info(staging)
                _fsync_tree(staging)
                if info.version != version:
                    logger.warning('model.json of version %s names version %r', version, info.version)
                with self._lock:
                    self._put_in_place(staging, target)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            finally:
                with self._lock:
                    self._active_staging.discard(staging.name)
        logger.info('installed model version %s (%s)', version, info.id)
        return target

    def activate(self, version: str) -> None:
        """Point ``current_model`` at ``version`` in one rename (a temp link with a unique name replaces it)."""
        check_version(version)
        with self._lock:
            if not self.has(version):
                raise ModelNotInstalledError(f'cannot activate model version {version}: it is not installed')
            if self.link_path.is_dir() and not self.link_path.is_symlink():
                raise ModelStoreError(f'cannot activate model version {version}: {self.link_path} is a folder')
            temp_link = self._new_temp_link(f'{MODELS_FOLDER}/{version}')
            try:
                os.replace(temp_link, self.link_path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    temp_link.unlink()
                raise
            fsync_dir(self.data_folder)
            self._last_link_warning = None
        logger.info('current model is now version %s', version)

    def remove(self, version: str) -> None:
        """Delete the folder of ``version``; the current version cannot be removed."""
        check_version(version)
        target = self.folder(version)
        with self._lock:
            if self._current_version() == version:
                raise ModelInUseError(f'model version {version} is the current model and cannot be removed')
            if not target.is_dir():
                raise ModelNotInstalledError(f'model version {version} is not installed (no folder {target})')
            doomed = self.models_folder / f'{_REMOVING_PREFIX}{version}-{secrets.token_hex(4)}'
            os.replace(target, doomed)
            fsync_dir(self.models_folder)
        _delete(doomed)
        logger.info('removed model version %s', version)

    def clean_leftovers(self) -> list[Path]:
        """Remove what an earlier crash left: staging and half-deleted folders, temp links; returns what went."""
        removed: list[Path] = []
        with self._lock:
            for entry in _entries(self.models_folder):
                if not entry.name.startswith(_LEFTOVER_PREFIXES) or self._is_active(entry.name):
                    continue
                _delete(entry)
                removed.append(entry)
            for entry in _entries(self.data_folder):
                is_temp_link = entry.name.startswith(_TEMP_LINK_PREFIX) and entry.name.endswith(_TEMP_LINK_SUFFIX)
                is_folder = entry.is_dir() and not entry.is_symlink()
                if (is_temp_link or entry.name == _REFERENCE_TEMP_LINK) and not is_folder:
                    _delete(entry)
                    removed.append(entry)
            if removed:
                for folder in (self.models_folder, self.data_folder):
                    if folder.is_dir():
                        fsync_dir(folder)
        for path in removed:
            logger.info('removed leftover %s', path)
        return removed

    # -- internals (the callers hold self._lock where noted) -------------------------------------------------

    def _install_lock(self, version: str) -> threading.Lock:
        with self._lock:
            return self._install_locks.setdefault(version, threading.Lock())

    def _new_staging(self, version: str) -> Path:
        with self._lock:
            self.models_folder.mkdir(parents=True, exist_ok=True)
            while True:
                staging = self.models_folder / f'{_STAGING_PREFIX}{version}-{secrets.token_hex(4)}'
                try:
                    staging.mkdir()
                except FileExistsError:
                    continue
                self._active_staging.add(staging.name)
                return staging

    def _is_active(self, name: str) -> bool:
        """True for a staging folder of a running install, or the extraction folder beside one (lock held)."""
        return any(name == s or name.startswith(f'.{s}.') for s in self._active_staging)

    def _put_in_place(self, staging: Path, target: Path) -> None:
        """Rename ``staging`` to ``target``; a folder without model.json already there is replaced (lock held)."""
        doomed: Path | None = None
        if target.is_symlink() or target.exists():
            doomed = self.models_folder / f'{_REMOVING_PREFIX}{target.name}-{secrets.token_hex(4)}'
            logger.warning('replacing %s: it holds no %s', target, MODEL_JSON)
            os.replace(target, doomed)
        os.replace(staging, target)
        fsync_dir(self.models_folder)
        if doomed is not None:
            _delete(doomed)

    def _new_temp_link(self, link_target: str) -> Path:
        while True:
            temp_link = self.data_folder / f'{_TEMP_LINK_PREFIX}{secrets.token_hex(6)}{_TEMP_LINK_SUFFIX}'
            try:
                os.symlink(link_target, temp_link)
            except FileExistsError:
                continue
            return temp_link

    def _current_version(self) -> str | None:
        """See :meth:`current_version` (lock held)."""
        link = self.link_path
        if not link.is_symlink():
            if link.exists():
                self._warn_link(f'{link} is not a symlink; ignoring it')
            return None
        try:
            pointed = os.readlink(link)
        except OSError as e:
            self._warn_link(f'cannot read the link {link}: {e}')
            return None
        version = self._version_of_link(pointed)
        if version is None:
            self._warn_link(f'{link} points to {pointed!r}, not to a model folder in {self.models_folder}')
            return None
        if not self.has(version):
            self._warn_link(f'{link} points to {pointed!r}, which holds no installed model')
            return None
        self._last_link_warning = None
        return version

    def _version_of_link(self, pointed: str) -> str | None:
        path = PurePosixPath(pointed)
        if path.is_absolute():
            if Path(path.parent) != self.models_folder and Path(path.parent).resolve() != self.models_folder.resolve():
                return None
            name = path.name
        elif len(path.parts) == 2 and path.parts[0] == MODELS_FOLDER:
            name = path.parts[1]
        else:
            return None
        return name if is_version(name) else None

    def _warn_link(self, message: str) -> None:
        """Log a problem with the link once, not on every status query."""
        if message != self._last_link_warning:
            logger.warning(message)
            self._last_link_warning = message


def read_model_info(folder: Path | str) -> ModelInformation:
    """Load ``folder/model.json`` with ``model_root_path`` set to the absolute ``folder``."""
    folder = Path(folder).absolute()
    path = folder / MODEL_JSON
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise InvalidModelError(f'model folder {folder} has no {MODEL_JSON}') from None
    except OSError as e:
        raise InvalidModelError(f'cannot read {path}: {e}') from e
    try:
        info = ModelInformation.from_json(text)
    except SchemaError as e:
        raise InvalidModelError(f'{path} is not a valid model description: {e}') from e
    info.model_root_path = str(folder)
    return info


def _fsync_tree(root: Path) -> None:
    """Flush every file and folder under ``root`` to disk, so the rename that publishes it publishes content."""
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(folder)


def _entries(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def _delete(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


class RetryBackoff:
    """Back-off per key (e.g. a model version): after ``n`` failures in a row the key is not ready again for
    ``policy.delay(n)`` seconds (:class:`llnode.backoff.Backoff`: ``min(maximum, initial * factor ** (n - 1))``,
    less up to a quarter of jitter); a success forgets the key.

    Used so a failed download or build is retried, but not in a tight loop (reference weak point C8).
    ``policy`` replaces the one built from ``initial``, ``maximum`` and ``factor``; ``clock`` (seconds,
    monotonic) can be injected for tests.
    """

    def __init__(
        self,
        initial: float = 5.0,
        maximum: float = 300.0,
        *,
        factor: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        policy: Backoff | None = None,
    ) -> None:
        if policy is None:
            try:
                policy = Backoff(base=initial, cap=maximum, factor=factor)
            except ValueError as e:
                raise ValueError(f'bad back-off: initial={initial}, maximum={maximum}, factor={factor} ({e})') from None
        self.policy = policy
        self.initial = policy.base
        self.maximum = policy.cap
        self.factor = policy.factor
        self._clock = clock
        self._lock = threading.Lock()
        self._state: dict[Hashable, tuple[int, float]] = {}  # key -> (failures in a row, ready at)

    def failed(self, key: Hashable) -> float:
        """Record a failure of ``key``; returns the delay before it is ready again."""
        with self._lock:
            failures = self._state.get(key, (0, 0.0))[0] + 1
            delay = self.policy.delay(failures)
            self._state[key] = (failures, self._clock() + delay)
            return delay

    def succeeded(self, key: Hashable) -> None:
        """Forget the failures of ``key``."""
        with self._lock:
            self._state.pop(key, None)

    def ready(self, key: Hashable) -> bool:
        """True where ``key`` may be tried now."""
        return self.remaining(key) <= 0

    def remaining(self, key: Hashable) -> float:
        """Seconds until ``key`` may be tried again (0 where it may be tried now)."""
        with self._lock:
            state = self._state.get(key)
            return 0.0 if state is None else max(0.0, state[1] - self._clock())

    def failures(self, key: Hashable) -> int:
        """Failures of ``key`` in a row."""
        with self._lock:
            return self._state.get(key, (0, 0.0))[0]

    def reset(self) -> None:
        """Forget every key."""
        with self._lock:
            self._state.clear()
