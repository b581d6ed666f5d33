"""ModelStore on real files, with downloads from the local Loop; RetryBackoff with an injected clock."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from llnode.backoff import Backoff
from llnode.detector.model_store import (
    InvalidModelError,
    InvalidVersionError,
    ModelInUseError,
    ModelNotInstalledError,
    ModelStore,
    RetryBackoff,
    is_version,
)
from llnode.loop.errors import LoopHTTPError
from llnode.loop.exchange import DataExchange
from llnode.loop.http import LoopClient

UUID_1_1 = '00000000-0000-0000-0000-000000000011'
UUID_1_2 = '00000000-0000-0000-0000-000000000012'
UNKNOWN_UUID = '00000000-0000-0000-0000-000000000099'


def write_model(folder: Path, version: str, *, extra: dict[str, str] | None = None) -> None:
    """A hand-made model folder (model.json and the given files)."""
    folder.mkdir(parents=True, exist_ok=True)
    info = {'id': f'id-{version}', 'organization': 'zauberzeug', 'project': 'demo', 'version': version}
    (folder / 'model.json').write_text(json.dumps(info))
    for name, content in (extra or {}).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(content)


def fake_fetch(version: str) -> Callable[[Path], None]:
    return lambda folder: write_model(folder, version, extra={'weights.bin': 'w', 'sub/labels.txt': 'a\nb\n'})


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith('.')) if folder.is_dir() else []


@pytest.fixture
def exchange(local_loop: Any) -> Iterator[DataExchange]:
    client = LoopClient(local_loop.settings())
    yield DataExchange(client)
    client.close()


def test_install_from_the_local_loop(exchange: DataExchange, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / 'data')
    assert store.local_versions() == [] and store.current_version() is None and not store.has('1.1')

    folder = store.install('1.1', lambda f: exchange.download_model(UUID_1_1, 'mocked', f))

    assert folder == tmp_path / 'data' / 'models' / '1.1'
    assert store.has('1.1') and not store.has('1.2')
    assert store.local_versions() == ['1.1']
    info = store.model_info('1.1')
    assert (info.id, info.version, info.organization, info.project) == (UUID_1_1, '1.1', 'zauberzeug', 'demo')
    assert info.model_root_path == str(folder)
    assert hidden(store.models_folder) == []  # no staging or extraction folder left behind
    assert store.current_version() is None  # installing does not activate


def test_install_twice_is_a_no_op(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    calls: list[Path] = []

    def fetch(folder: Path) -> None:
        calls.append(folder)
        fake_fetch('2.0')(folder)

    first = store.install('2.0', fetch)
    (first / 'marker').write_text('kept')
    assert store.install('2.0', fetch) == first
    assert len(calls) == 1 and (first / 'marker').read_text() == 'kept'
    assert calls[0].parent == store.models_folder and calls[0].name.startswith('.staging-2.0-')
    assert (first / 'sub' / 'labels.txt').read_text() == 'a\nb\n'


def test_local_versions_are_sorted_numerically_and_skip_other_entries(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    for version in ['1.10', '1.9', '2', '1.2.3']:
        write_model(store.models_folder / version, version)
    (store.models_folder / 'latest').mkdir()
    (store.models_folder / '.staging-3.0-abcd').mkdir()
    (store.models_folder / '4.0').write_text('a file, not a folder')
    assert store.local_versions() == ['1.2.3', '1.9', '1.10', '2']
    assert is_version('1.1') and is_version('12') and not is_version('') and not is_version('..')
    assert not is_version('.1') and not is_version('\uff11.2')  # a hidden folder; a non-ASCII digit
    assert not is_version('1.a') and not is_version('../1') and not is_version('1/2')


def test_activate_switches_the_relative_link(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.install('1.0', fake_fetch('1.0'))
    store.install('1.1', fake_fetch('1.1'))

    store.activate('1.0')
    assert os.readlink(tmp_path / 'current_model') == 'models/1.0'
    assert store.current_version() == '1.0' and store.current_folder() == tmp_path / 'models' / '1.0'
    store.activate('1.1')
    assert os.readlink(tmp_path / 'current_model') == 'models/1.1'
    assert store.current_version() == '1.1'
    assert (tmp_path / 'current_model' / 'model.json').is_file()  # the relative link resolves
    assert hidden(tmp_path) == []  # no temp link left

    with pytest.raises(ModelNotInstalledError, match=r'1\.5'):
        store.activate('1.5')
    with pytest.raises(InvalidVersionError):
        store.activate('../1.0')
    assert store.current_version() == '1.1'


def test_readers_never_see_the_link_missing_during_switches(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.install('1.0', fake_fetch('1.0'))
    store.install('1.1', fake_fetch('1.1'))
    store.activate('1.0')
    stop = threading.Event()
    seen: set[str] = set()
    problems: list[BaseException] = []

    def read() -> None:
        while not stop.is_set():
            try:
                seen.add(os.readlink(tmp_path / 'current_model'))
            except OSError as e:
                problems.append(e)

    reader = threading.Thread(target=read, name='test-link-reader')
    reader.start()
    try:
        for i in range(300):
            store.activate('1.1' if i % 2 == 0 else '1.0')
    finally:
        stop.set()
        reader.join(10)
    assert not reader.is_alive()
    assert problems == [] and seen <= {'models/1.0', 'models/1.1'} and seen
    assert store.current_version() == '1.0' and hidden(tmp_path) == []


def test_crash_leftovers_do_not_block_and_are_cleaned(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.install('1.0', fake_fetch('1.0'))
    store.activate('1.0')
    # what a crash leaves: the reference's temp link, our temp link, a staging folder with a half model,
    # the archive's extraction folder beside it, a half-deleted folder
    os.symlink('models/1.0', tmp_path / 'current_model.tmp')
    os.symlink('models/1.0', tmp_path / '.current_model.0123456789ab.link')
    half = store.models_folder / '.staging-1.1-deadbeef'
    half.mkdir()
    (half / 'weights.bin').write_text('half')
    (store.models_folder / '..staging-1.1-deadbeef.x1y2.extracting').mkdir()
    write_model(store.models_folder / '.removing-0.9-cafe', '0.9')
    (tmp_path / 'unrelated.txt').write_text('kept')

    store.install('1.1', fake_fetch('1.1'))  # neither blocks an install
    store.activate('1.1')  # nor the switch (reference weak point C10)
    assert store.current_version() == '1.1'
    assert store.local_versions() == ['1.0', '1.1']

    removed = store.clean_leftovers()
    assert sorted(p.name for p in removed) == sorted(
        [
            '..staging-1.1-deadbeef.x1y2.extracting',
            '.current_model.0123456789ab.link',
            '.removing-0.9-cafe',
            '.staging-1.1-deadbeef',
            'current_model.tmp',
        ]
    )
    assert hidden(store.models_folder) == [] and hidden(tmp_path) == []
    assert (tmp_path / 'unrelated.txt').exists() and store.current_version() == '1.1'
    assert store.clean_leftovers() == []
    assert ModelStore(tmp_path / 'missing').clean_leftovers() == []


def test_clean_leftovers_spares_a_running_install(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    inside = threading.Event()
    release = threading.Event()
    removed: list[Path] = []

    def slow_fetch(folder: Path) -> None:
        (folder.parent / f'.{folder.name}.abc.extracting').mkdir()  # as the archive extraction does
        inside.set()
        assert release.wait(10)
        (folder.parent / f'.{folder.name}.abc.extracting').rmdir()
        fake_fetch('1.0')(folder)

    worker = threading.Thread(target=store.install, args=('1.0', slow_fetch), name='test-install')
    worker.start()
    try:
        assert inside.wait(10)
        removed = store.clean_leftovers()
    finally:
        release.set()
        worker.join(10)
    assert not worker.is_alive()
    assert removed == [] and store.has('1.0')


def test_dangling_or_foreign_links_give_no_current_version(tmp_path: Path, caplog: Any) -> None:
    store = ModelStore(tmp_path)
    link = tmp_path / 'current_model'
    os.symlink('models/7.0', link)  # dangling
    with caplog.at_level(logging.WARNING, logger='llnode.detector.models'):
        assert store.current_version() is None
        assert store.current_version() is None
    warnings = [r for r in caplog.records if r.name == 'llnode.detector.models']
    assert len(warnings) == 1 and 'models/7.0' in warnings[0].getMessage()  # logged once, not on every query

    write_model(tmp_path / 'elsewhere' / '7.0', '7.0')
    link.unlink()
    os.symlink(str(tmp_path / 'elsewhere' / '7.0'), link)  # a real model, but not one of ours
    assert store.current_version() is None
    link.unlink()
    write_model(store.models_folder / '7.0', '7.0')
    os.symlink(str(store.models_folder / '7.0'), link)  # absolute, into our folder: accepted
    assert store.current_version() == '7.0'
    link.unlink()
    os.symlink('models/../models/7.0', link)
    assert store.current_version() is None  # not the form we write; nothing guessed
    link.unlink()
    link.mkdir()  # a folder in place of the link
    assert store.current_version() is None
    with pytest.raises(Exception, match='is a folder'):
        store.activate('7.0')


def test_failed_fetch_leaves_nothing_behind(exchange: DataExchange, tmp_path: Path) -> None:
    store = ModelStore(tmp_path)

    def broken(folder: Path) -> None:
        (folder / 'weights.bin').write_text('half')
        raise RuntimeError('network gone')

    with pytest.raises(RuntimeError, match='network gone'):
        store.install('1.1', broken)
    with pytest.raises(LoopHTTPError) as caught:
        store.install('1.1', lambda f: exchange.download_model(UNKNOWN_UUID, 'mocked', f))
    assert caught.value.status == 404
    with pytest.raises(InvalidModelError, match=r'has no model\.json'):
        store.install('1.1', lambda f: (f / 'weights.bin').write_text('no model.json'))
    with pytest.raises(InvalidModelError, match='organization'):
        store.install('1.1', lambda f: (f / 'model.json').write_text('{"id": "x", "version": "1.1"}'))

    assert store.local_versions() == [] and not store.has('1.1')
    assert os.listdir(store.models_folder) == []
    # and a later fetch that works installs it
    store.install('1.1', lambda f: exchange.download_model(UUID_1_1, 'mocked', f))
    assert store.model_info('1.1').id == UUID_1_1


def test_concurrent_installs_of_one_version(exchange: DataExchange, tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    fetches: list[str] = []
    results: list[Path] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def fetch(folder: Path) -> None:
        fetches.append(threading.current_thread().name)
        exchange.download_model(UUID_1_2, 'mocked', folder)

    def install() -> None:
        try:
            start.wait(10)
            results.append(store.install('1.2', fetch))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=install, name=f'test-install-{i}') for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert results == [store.models_folder / '1.2'] * 4
    assert len(fetches) == 1  # the others waited and found it installed
    assert os.listdir(store.models_folder) == ['1.2']
    assert store.model_info('1.2').version == '1.2'


def test_a_folder_without_model_json_is_replaced_on_install(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    (store.models_folder / '1.3').mkdir(parents=True)
    (store.models_folder / '1.3' / 'partial.bin').write_text('left by a failed download')
    assert store.local_versions() == ['1.3'] and not store.has('1.3')
    with pytest.raises(InvalidModelError, match=r'model folder .*1\.3 has no model\.json'):
        store.model_info('1.3')

    store.install('1.3', fake_fetch('1.3'))
    assert sorted(os.listdir(store.models_folder / '1.3')) == ['model.json', 'sub', 'weights.bin']
    assert os.listdir(store.models_folder) == ['1.3']


def test_model_info_errors(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    with pytest.raises(ModelNotInstalledError, match=r'1\.4'):
        store.model_info('1.4')
    (store.models_folder / '1.4').mkdir(parents=True)
    (store.models_folder / '1.4' / 'model.json').write_text('{not json')
    with pytest.raises(InvalidModelError, match='malformed JSON'):
        store.model_info('1.4')
    (store.models_folder / '1.4' / 'model.json').write_text('[]')
    with pytest.raises(InvalidModelError, match='not a valid model description'):
        store.model_info('1.4')
    with pytest.raises(InvalidVersionError, match='digits and dots'):
        store.model_info('latest')
    with pytest.raises(InvalidVersionError):
        store.install('', fake_fetch('1.0'))


def test_remove(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.install('1.0', fake_fetch('1.0'))
    store.install('1.1', fake_fetch('1.1'))
    store.activate('1.1')

    with pytest.raises(ModelInUseError, match='current model'):
        store.remove('1.1')
    store.remove('1.0')
    assert store.local_versions() == ['1.1'] and store.has('1.1')
    assert os.listdir(store.models_folder) == ['1.1']
    with pytest.raises(ModelNotInstalledError):
        store.remove('1.0')
    store.activate('1.1')
    assert store.current_version() == '1.1'


def test_retry_backoff_schedule() -> None:
    now = [100.0]
    backoff = RetryBackoff(policy=Backoff(base=5, cap=30, jitter=0), clock=lambda: now[0])
    assert backoff.ready('1.2') and backoff.remaining('1.2') == 0 and backoff.failures('1.2') == 0

    delays = [backoff.failed('1.2') for _ in range(6)]
    assert delays == [5, 10, 20, 30, 30, 30]
    assert backoff.failures('1.2') == 6 and not backoff.ready('1.2')
    assert backoff.ready('1.3')  # keys are independent
    now[0] += 29.9
    assert not backoff.ready('1.2') and backoff.remaining('1.2') == pytest.approx(0.1)
    now[0] += 0.1
    assert backoff.ready('1.2')

    backoff.failed('1.2')
    assert backoff.remaining('1.2') == 30
    backoff.succeeded('1.2')
    assert backoff.ready('1.2') and backoff.failures('1.2') == 0
    assert backoff.failed('1.2') == 5  # starts over after a success

    backoff.failed(('uuid', 'mocked'))
    backoff.reset()
    assert backoff.ready(('uuid', 'mocked')) and backoff.ready('1.2')
    with pytest.raises(ValueError):
        RetryBackoff(initial=10, maximum=5)


def test_retry_backoff_jitters_within_a_quarter_by_default() -> None:
    backoff = RetryBackoff(initial=8, maximum=8)
    delays = {backoff.failed(key) for key in range(20)}
    assert all(6 <= delay <= 8 for delay in delays)
    assert len(delays) > 1  # without jitter every key would wait exactly 8 s
