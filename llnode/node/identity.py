"""The node's uuid: created once per node name and kept in ``{DATA_FOLDER}/uuids.json``.

The uuid is the ``id`` the Loop knows a node by, so it must survive restarts (protocol §7.7): the file maps the
node name (lower-cased, spaces turned into ``_``) to a uuid string, as the reference keeps it. It is written
durably. A file that is not a JSON object is moved aside (``uuids.json.corrupt-<time>``) and a new one is
written: a corrupt file never stops a node from starting.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid as uuid_module
from pathlib import Path
from typing import Any

from llnode import durable

logger = logging.getLogger('llnode.node.identity')

UUIDS_FILE = 'uuids.json'

#: Temp files of an interrupted write older than this are leftovers of a crash (a live writer takes milliseconds).
STALE_TEMP_AGE_S = 60.0

# Guards read-modify-write of uuids.json by nodes of this process (one lock for all data folders: it is rare
# and brief).
_file_lock = threading.Lock()


def node_key(name: str) -> str:
    """The key of a node name in uuids.json: lower case, spaces turned into ``_``."""
    return name.lower().replace(' ', '_')


def node_uuid(data_folder: str | Path, name: str) -> str:
    """The uuid stored for ``name`` in ``data_folder/uuids.json``; a new uuid4 is created and stored if there is none.

    Other entries of the file are kept as they are.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f'a node name must be a non-empty string, got {name!r}')
    folder = Path(data_folder)
    path = folder / UUIDS_FILE
    key = node_key(name)
    with _file_lock:
        _remove_stale_temps(folder)
        uuids = _read(path)
        value = uuids.get(key)
        if isinstance(value, str) and value:
            return value
        if value is not None:
            logger.warning('%s has an unusable uuid for %r (%r); creating a new one', path, key, value)
        created = str(uuid_module.uuid4())
        uuids[key] = created
        durable.write_json(path, uuids)
        logger.info('created uuid %s for node %r in %s', created, key, path)
        return created


def _read(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_bytes().decode('utf-8'))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        _move_aside(path, f'not valid JSON: {e}')
        return {}
    except IsADirectoryError:
        _move_aside(path, 'a folder, not a file')
        return {}
    if not isinstance(data, dict):
        _move_aside(path, f'a JSON {type(data).__name__}, not an object')
        return {}
    return data


def _move_aside(path: Path, why: str) -> None:
    stamp = time.strftime('%Y%m%dT%H%M%S')
    target = path.with_name(f'{path.name}.corrupt-{stamp}')
    counter = 1
    while target.exists():
        counter += 1
        target = path.with_name(f'{path.name}.corrupt-{stamp}-{counter}')
    path.rename(target)
    durable.fsync_dir(path.parent)
    logger.error('%s is %s; moved it to %s and writing a new one', path, why, target.name)


def _remove_stale_temps(folder: Path) -> None:
    if not folder.is_dir():
        return
    now = time.time()
    for entry in folder.glob(f'.{UUIDS_FILE}.*{durable.TEMP_SUFFIX}'):
        with contextlib.suppress(FileNotFoundError):
            if now - entry.stat().st_mtime > STALE_TEMP_AGE_S:
                entry.unlink()
                logger.info('removed %s, a leftover of an interrupted write', entry)
