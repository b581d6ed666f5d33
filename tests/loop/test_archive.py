"""Model zips: subfolders install, escaping entries and zips without model.json are refused with nothing written."""

from __future__ import annotations

import io
import json
import stat
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from llnode.loop.archive import extract_model_zip, make_zip, safe_entry_path
from llnode.loop.errors import ModelArchiveError

MODEL_JSON = json.dumps({'id': 'm1', 'version': '1.2', 'categories': []}).encode()


def zip_bytes(entries: Sequence[tuple[str | zipfile.ZipInfo, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, 'w') as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buffer.getvalue()


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob('*')) if p.is_file()}


def test_zip_with_subfolders_round_trips(tmp_path: Path) -> None:
    source = tmp_path / 'source'
    (source / 'weights' / 'deep').mkdir(parents=True)
    (source / 'model.json').write_bytes(MODEL_JSON)
    (source / 'weights' / 'a.bin').write_bytes(b'\x00\x01' * 1000)
    (source / 'weights' / 'deep' / 'b.txt').write_text('hello')
    archive = make_zip(source, tmp_path / 'out' / 'model.zip')

    info = extract_model_zip(archive, tmp_path / 'models' / '1.2')

    assert info == json.loads(MODEL_JSON)
    assert tree(tmp_path / 'models' / '1.2') == tree(source)
    assert [p.name for p in (tmp_path / 'models').iterdir()] == ['1.2']  # no staging leftovers
    assert [p.name for p in (tmp_path / 'out').iterdir()] == ['model.zip']  # no temp file from make_zip


@pytest.mark.parametrize(
    'evil',
    ['../evil', 'sub/../../evil', '/abs/evil', '..\\evil', 'C:/evil', 'C:evil'],
)
def test_escaping_entry_is_refused_before_anything_is_written(tmp_path: Path, evil: str) -> None:
    data = zip_bytes([('model.json', MODEL_JSON), ('fine.bin', b'x'), (evil, b'payload')])
    workdir = tmp_path / 'work'
    workdir.mkdir()

    with pytest.raises(ModelArchiveError, match=r'outside|absolute'):
        extract_model_zip(io.BytesIO(data), workdir / 'models' / 'target')

    assert list(tmp_path.rglob('*evil*')) == []
    assert not (workdir / 'models').exists()  # not even the parent folder was created


def test_symlink_entry_is_refused(tmp_path: Path) -> None:
    link = zipfile.ZipInfo('link')
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    data = zip_bytes([('model.json', MODEL_JSON), (link, b'/etc/passwd')])

    with pytest.raises(ModelArchiveError, match='symbolic link'):
        extract_model_zip(io.BytesIO(data), tmp_path / 'target')
    assert list(tmp_path.iterdir()) == []


def test_zip_without_model_json_at_the_root_is_refused(tmp_path: Path) -> None:
    for entries in ([('weights.bin', b'x')], [('sub/model.json', MODEL_JSON), ('weights.bin', b'x')]):
        with pytest.raises(ModelArchiveError, match=r'no model\.json at its root'):
            extract_model_zip(io.BytesIO(zip_bytes(entries)), tmp_path / 'target')
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize('content', [b'not json', b'[1, 2]', b'\xff\xfe'])
def test_unusable_model_json_leaves_nothing_behind(tmp_path: Path, content: bytes) -> None:
    data = zip_bytes([('model.json', content), ('weights.bin', b'x')])
    with pytest.raises(ModelArchiveError, match=r'model\.json'):
        extract_model_zip(io.BytesIO(data), tmp_path / 'target')
    assert list(tmp_path.iterdir()) == []


def test_not_a_zip_and_corrupt_data_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelArchiveError, match='not a usable zip'):
        extract_model_zip(io.BytesIO(b'PK\x03\x04 this is no zip'), tmp_path / 'target')

    payload = b'A' * 5000
    data = bytearray(zip_bytes([('model.json', MODEL_JSON), ('weights.bin', payload)]))
    start = bytes(data).index(payload)
    data[start + 100] ^= 0xFF  # breaks the CRC of weights.bin only after extraction has begun
    with pytest.raises(ModelArchiveError):
        extract_model_zip(io.BytesIO(bytes(data)), tmp_path / 'target')
    assert list(tmp_path.iterdir()) == []  # the half-extracted staging folder is gone


def test_duplicate_and_clashing_entries_are_refused(tmp_path: Path) -> None:
    with pytest.warns(UserWarning):  # zipfile itself warns about the duplicate name
        duplicate = zip_bytes([('model.json', MODEL_JSON), ('a', b'1'), ('a', b'2')])
    with pytest.raises(ModelArchiveError, match='twice'):
        extract_model_zip(io.BytesIO(duplicate), tmp_path / 'target')
    clash = zip_bytes([('model.json', MODEL_JSON), ('a', b'1'), ('a/b', b'2')])
    with pytest.raises(ModelArchiveError, match='both a file and a folder'):
        extract_model_zip(io.BytesIO(clash), tmp_path / 'target')


def test_existing_folder_is_merged_or_replaced(tmp_path: Path) -> None:
    target = tmp_path / 'training'
    (target / 'weights').mkdir(parents=True)
    (target / 'checkpoint.json').write_text('{}')
    (target / 'weights' / 'old.bin').write_bytes(b'old')
    data = zip_bytes([('model.json', MODEL_JSON), ('weights/new.bin', b'new')])

    extract_model_zip(io.BytesIO(data), target)
    assert tree(target) == {'checkpoint.json': b'{}', 'model.json': MODEL_JSON, 'weights/new.bin': b'new'}

    extract_model_zip(io.BytesIO(data), target, replace=True)
    assert tree(target) == {'model.json': MODEL_JSON, 'weights/new.bin': b'new'}
    assert [p.name for p in tmp_path.iterdir()] == ['training']


def test_empty_target_folder_is_filled(tmp_path: Path) -> None:
    (tmp_path / 'target').mkdir()
    data = zip_bytes([('./', b''), ('model.json', MODEL_JSON), ('dir/', b''), ('dir/x', b'1')])
    extract_model_zip(io.BytesIO(data), tmp_path / 'target')
    assert tree(tmp_path / 'target') == {'model.json': MODEL_JSON, 'dir/x': b'1'}


def test_safe_entry_path_normalises_harmless_names() -> None:
    assert str(safe_entry_path('a//b/./c')) == 'a/b/c'
    assert str(safe_entry_path('win\\sub\\file')) == 'win/sub/file'
    assert safe_entry_path('./') is None
