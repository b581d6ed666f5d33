"""Model zips: install one safely into a folder, and build one from a folder.

A model zip comes from the network, so every entry is checked before a single byte is written: nothing may land
outside the target (``../x``, absolute paths, drive letters, symlinks, devices), and ``model.json`` must sit at
the root. Subfolders are fine (the reference cannot install them, quirk Q3). The zip is extracted into a temp
folder beside the target and only then moved into place, so a failure never leaves a half-installed model and
nothing is written to a shared, fixed ``/tmp`` path (reference weak point C16).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import IO, Any

from llnode.durable import atomic_writer, fsync_dir
from llnode.loop.errors import ModelArchiveError

logger = logging.getLogger('llnode.loop.archive')

MODEL_JSON = 'model.json'
_DRIVE = re.compile(r'^[A-Za-z]:')
_COPY_BUFFER = 1024 * 1024


def extract_model_zip(source: Path | str | IO[bytes], target: Path | str, *, replace: bool = False) -> dict[str, Any]:
    """Install the model zip ``source`` into the folder ``target`` and return its parsed ``model.json``.

    Where ``target`` does not exist (or is an empty folder) it is created in one rename. Where it already holds
    files, the zip's top-level entries are moved into it one by one, replacing entries of the same name (the
    trainer installs a base model into its training folder this way); with ``replace=True`` the old folder is
    swapped out as a whole instead. Raises :class:`ModelArchiveError` for anything unusable, having written
    nothing into ``target``.
    """
    target = Path(target)
    try:
        with zipfile.ZipFile(source) as archive:
            entries = checked_entries(archive)
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f'.{target.name}.', suffix='.extracting', dir=target.parent))
            try:
                _extract(archive, entries, staging)
                model_info = _read_model_json(staging / MODEL_JSON)
                _install(staging, target, replace=replace)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except zipfile.BadZipFile as e:
        raise ModelArchiveError(f'not a usable zip file: {e}') from e
    except (RuntimeError, NotImplementedError) as e:  # encrypted entries, unsupported compression
        raise ModelArchiveError(f'cannot extract the model zip: {e}') from e
    logger.info('installed model %s into %s', model_info.get('id', '?'), target)
    return model_info


def checked_entries(archive: zipfile.ZipFile) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """Every file entry of ``archive`` with its safe relative path; raises :class:`ModelArchiveError` otherwise.

    Folder entries are checked too but not returned (folders are created as files need them).
    """
    files: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
    file_paths: set[PurePosixPath] = set()
    folder_paths: set[PurePosixPath] = set()
    for info in archive.infolist():
        relative = safe_entry_path(info.filename)
        kind = stat.S_IFMT(info.external_attr >> 16)
        if kind == stat.S_IFLNK:
            raise ModelArchiveError(f'zip entry {info.filename!r} is a symbolic link; links are not allowed')
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise ModelArchiveError(f'zip entry {info.filename!r} is not a regular file or folder')
        if relative is None:  # the root folder itself ('./')
            continue
        parents = set(relative.parents) - {PurePosixPath('.')}
        if info.is_dir() or kind == stat.S_IFDIR:
            folder_paths.add(relative)
            folder_paths.update(parents)
            continue
        if relative in file_paths:
            raise ModelArchiveError(f'zip entry {info.filename!r} appears twice')
        file_paths.add(relative)
        folder_paths.update(parents)
        files.append((info, relative))
    clashes = file_paths & folder_paths
    if clashes:
        raise ModelArchiveError(f'zip entry {sorted(map(str, clashes))[0]!r} is both a file and a folder')
    if PurePosixPath(MODEL_JSON) not in file_paths:
        raise ModelArchiveError(f'the model zip has no {MODEL_JSON} at its root')
    return files


def safe_entry_path(name: str) -> PurePosixPath | None:
    """The relative path a zip entry name stands for, or :class:`ModelArchiveError` if it could escape.

    Backslashes count as separators (zips made on Windows). Returns ``None`` for the root folder itself.
    """
    raw = name.replace('\\', '/')
    if '\x00' in raw:
        raise ModelArchiveError(f'zip entry {name!r} contains a NUL character')
    if raw.startswith('/') or _DRIVE.match(raw):
        raise ModelArchiveError(f'zip entry {name!r} is an absolute path')
    parts = [part for part in raw.split('/') if part not in ('', '.')]
    if '..' in parts:
        raise ModelArchiveError(f'zip entry {name!r} would land outside the target folder')
    return PurePosixPath(*parts) if parts else None


def make_zip(folder: Path | str, zip_path: Path | str) -> Path:
    """Zip the contents of ``folder`` (recursively, names relative to it) into ``zip_path``, written durably."""
    folder, zip_path = Path(folder), Path(zip_path)
    if not folder.is_dir():
        raise ValueError(f'{folder} is not a folder')
    with atomic_writer(zip_path) as raw, zipfile.ZipFile(raw, 'w', zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob('*')):
            if path.is_file() and not path.is_symlink():
                archive.write(path, path.relative_to(folder).as_posix())
    return zip_path


def _extract(archive: zipfile.ZipFile, entries: list[tuple[zipfile.ZipInfo, PurePosixPath]], staging: Path) -> None:
    folders = {staging}
    for info, relative in entries:
        destination = staging.joinpath(*relative.parts)
        destination.parent.mkdir(parents=True, exist_ok=True)
        folders.add(destination.parent)
        with archive.open(info) as source, open(destination, 'xb') as sink:
            shutil.copyfileobj(source, sink, _COPY_BUFFER)
            sink.flush()
            os.fsync(sink.fileno())
    for folder in folders:
        fsync_dir(folder)


def _read_model_json(path: Path) -> dict[str, Any]:
    try:
        content = json.loads(path.read_text(encoding='utf-8'))
    except (UnicodeDecodeError, ValueError) as e:
        raise ModelArchiveError(f'{MODEL_JSON} in the model zip is not valid JSON: {e}') from e
    if not isinstance(content, dict):
        raise ModelArchiveError(f'{MODEL_JSON} in the model zip is not a JSON object')
    return content


def _install(staging: Path, target: Path, *, replace: bool) -> None:
    """Move the extracted tree into ``target`` (see :func:`extract_model_zip` for the three cases)."""
    if target.is_dir() and not any(target.iterdir()):
        target.rmdir()
    if not target.exists():
        os.replace(staging, target)
        fsync_dir(target.parent)
        return
    if not target.is_dir():
        raise ModelArchiveError(f'{target} exists and is not a folder')
    if replace:
        retired = Path(tempfile.mkdtemp(prefix=f'.{target.name}.', suffix='.old', dir=target.parent))
        os.replace(target, retired / target.name)
        os.replace(staging, target)
        fsync_dir(target.parent)
        shutil.rmtree(retired, ignore_errors=True)
        return
    for entry in sorted(staging.iterdir()):
        destination = target / entry.name
        if destination.is_dir() and not destination.is_symlink():
            shutil.rmtree(destination)
        elif entry.is_dir() and (destination.is_symlink() or destination.exists()):
            destination.unlink()
        os.replace(entry, destination)
    fsync_dir(target)
