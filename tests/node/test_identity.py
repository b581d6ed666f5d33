"""The node uuid in uuids.json: created once, stable, keyed by the normalised name, corrupt files moved aside."""

from __future__ import annotations

import json
import os
import time
import uuid as uuid_module
from pathlib import Path

import pytest

from llnode.config import Settings
from llnode.node import Node
from llnode.node.identity import UUIDS_FILE, node_key, node_uuid


def test_uuid_is_created_stored_and_stable_across_nodes(settings: Settings) -> None:
    first = Node('My Detector', settings=settings)
    uuid_module.UUID(first.uuid)  # a real uuid
    stored = json.loads((settings.data_folder / UUIDS_FILE).read_text())
    assert stored == {'my_detector': first.uuid}
    again = Node('My Detector', settings=settings)  # a "restart": a new node object, same data folder
    assert again.uuid == first.uuid
    assert Node('my detector', settings=settings).uuid == first.uuid  # same key after normalisation


def test_names_are_normalised_and_other_entries_kept(tmp_path: Path) -> None:
    assert node_key('Big Trainer 2') == 'big_trainer_2'
    path = tmp_path / UUIDS_FILE
    path.write_text(json.dumps({'someone_else': 'keep-me'}))
    created = node_uuid(tmp_path, 'Big Trainer 2')
    assert json.loads(path.read_text()) == {'someone_else': 'keep-me', 'big_trainer_2': created}
    assert node_uuid(tmp_path, 'Big Trainer 2') == created
    assert sorted(p.name for p in tmp_path.iterdir()) == [UUIDS_FILE]  # no temp file left


def test_explicit_uuid_wins_and_leaves_the_file_alone(settings: Settings) -> None:
    node = Node('n', settings=settings, uuid='given-uuid')
    assert node.uuid == 'given-uuid'
    assert not (settings.data_folder / UUIDS_FILE).exists()
    assert Node('n', settings=settings, uuid='').uuid != ''  # empty counts as not given (reference)


@pytest.mark.parametrize('content', [b'{"half": ', b'', b'["a list"]', b'\xff\xfe not utf-8'])
def test_corrupt_file_is_moved_aside_and_replaced(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / UUIDS_FILE
    path.write_bytes(content)
    created = node_uuid(tmp_path, 'node')
    assert json.loads(path.read_text()) == {'node': created}
    aside = [p for p in tmp_path.iterdir() if p.name.startswith(f'{UUIDS_FILE}.corrupt-')]
    assert len(aside) == 1 and aside[0].read_bytes() == content
    assert 'moved it to' in caplog.text


def test_unusable_entry_is_replaced(tmp_path: Path) -> None:
    (tmp_path / UUIDS_FILE).write_text(json.dumps({'node': 42, 'other': 'x'}))
    created = node_uuid(tmp_path, 'node')
    assert json.loads((tmp_path / UUIDS_FILE).read_text()) == {'node': created, 'other': 'x'}


def test_stale_temp_of_an_interrupted_write_is_removed(tmp_path: Path) -> None:
    stale = tmp_path / f'.{UUIDS_FILE}.abc123.tmp'
    stale.write_text('{"half')
    old = time.time() - 3600
    os.utime(stale, (old, old))
    fresh = tmp_path / f'.{UUIDS_FILE}.def456.tmp'  # could be a live writer of another process: kept
    fresh.write_text('{')
    node_uuid(tmp_path, 'node')
    assert not stale.exists()
    assert fresh.exists()


def test_bad_names_are_refused(settings: Settings) -> None:
    with pytest.raises(ValueError, match='non-empty'):
        Node('', settings=settings)
    with pytest.raises(ValueError, match='non-empty'):
        node_uuid(settings.data_folder, '')
    with pytest.raises(TypeError, match='uuid must be a string'):
        Node('n', settings=settings, uuid=123)  # type: ignore[arg-type]
