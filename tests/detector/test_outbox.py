"""The outbox against the local Loop and on real files: wire format, order, caps, broken items, modes, threads."""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llnode.config import Settings
from llnode.detector.outbox import Outbox, OutboxClosed, OutboxFull, OutboxLocked, encode_jpeg
from llnode.detector.outbox_disk import ItemIds, id_to_microseconds
from llnode.localloop import LocalLoop
from llnode.schema import BoxDetection, ImageMetadata, OutboxMode
from tests.detector.outbox_support import item_folders, outbox_threads, received, received_sources, tiny_jpeg
from tests.polling import wait_for

#: no Loop listens here; for tests that never upload
NOWHERE = '127.0.0.1:9'


def offline_settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        'host': NOWHERE,
        'organization': 'zauberzeug',
        'project': 'demo',
        'data_folder': tmp_path / 'node',
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def node_folder(tmp_path: Path) -> Path:
    return tmp_path / 'node'


def test_wire_format_batches_and_order(local_loop: LocalLoop, node_folder: Path) -> None:
    outbox = Outbox(local_loop.settings(data_folder=node_folder))
    images = {}
    ids = {}
    for n in range(5):
        images[f'p{n}'] = tiny_jpeg(n)
        ids[f'p{n}'] = outbox.save(images[f'p{n}'], ImageMetadata(source=f'p{n}', tags=['t']), priority=True)
    for n in range(40):
        images[f'n{n}'] = tiny_jpeg(100 + n)
        ids[f'n{n}'] = outbox.save(images[f'n{n}'], ImageMetadata(source=f'n{n}'))
    expected_order = [f'p{n}' for n in range(5)] + [f'n{n}' for n in reversed(range(40))]
    assert outbox.queued_ids() == [ids[s] for s in expected_order]
    assert all(':' not in i and '/' not in i for i in ids.values())

    outbox.start()
    try:
        assert outbox.wait_until_empty(20)
    finally:
        assert outbox.close()

    batches = local_loop.store.upload_batches('zauberzeug', 'demo')
    assert [b['status'] for b in batches] == [200, 200, 200]
    assert [len(b['parts']) for b in batches] == [40, 40, 10]  # at most 20 images, two parts each
    parts = [p for b in batches for p in b['parts']]
    assert {p['name'] for p in parts} == {'files'}
    by_id = {i: s for s, i in ids.items()}
    for json_part, jpg_part in zip(parts[::2], parts[1::2], strict=True):
        item_id = json_part['filename'].removeprefix('image_').removesuffix('.json')
        assert json_part['filename'] == f'image_{item_id}.json'
        assert jpg_part['filename'] == f'image_{item_id}.jpg'
        assert json_part['content_type'] == 'text/plain; charset=utf-8'
        assert jpg_part['content_type'] == 'image/jpeg'
        assert jpg_part['size'] == len(images[by_id[item_id]])
    assert received_sources(local_loop) == expected_order
    for item in received(local_loop):
        assert local_loop.store.image_jpeg('zauberzeug', 'demo', item['id']) == images[item['source']]  # as given
        assert item['tags'] == (['t'] if item['source'].startswith('p') else [])
    assert item_folders(node_folder, 'priority') == item_folders(node_folder, 'normal') == []
    stats = outbox.stats()
    assert stats['uploaded'] == stats['saved'] == 45 and stats['bytes_waiting'] == 0
    json.dumps(stats)


def test_arrays_are_encoded_once_and_bad_input_is_refused(tmp_path: Path) -> None:
    settings = offline_settings(tmp_path)
    outbox = Outbox(settings, mode='stopped')
    rgb = np.zeros((24, 32, 3), np.uint8)
    rgb[:, :16] = (255, 0, 0)
    shapes = {
        'grey': np.full((24, 32), 90, np.uint8),
        'grey1': np.full((24, 32, 1), 90, np.uint8),
        'rgb': rgb,
        'rgba': np.dstack([rgb, np.full((24, 32), 7, np.uint8)]),
    }
    for name, array in shapes.items():
        item_id = outbox.save(array, ImageMetadata(source=name))
        data = (settings.data_folder / 'outbox' / 'normal' / item_id / f'image_{item_id}.jpg').read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == 'JPEG' and image.size == (32, 24)
            assert image.mode == ('L' if name.startswith('grey') else 'RGB')
            if name.startswith('rgb'):
                red = image.getpixel((4, 4))
                assert isinstance(red, tuple) and red[0] > 200 and red[1] < 50  # RGB order kept
    noisy = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    assert len(encode_jpeg(noisy, 95)) > len(encode_jpeg(noisy, 20))

    bad_inputs: list[tuple[object, type[Exception], str]] = [
        (np.zeros((4, 4, 3), np.float32), ValueError, 'uint8'),
        (np.zeros((4, 4, 2), np.uint8), ValueError, 'shape'),
        (np.zeros((0, 4, 3), np.uint8), ValueError, 'empty'),
        (b'', ValueError, 'empty'),
        ('not bytes', TypeError, 'numpy array'),
    ]
    for image, error, message in bad_inputs:
        with pytest.raises(error, match=message):
            outbox.save(image, ImageMetadata())  # type: ignore[arg-type]
        with pytest.raises(error, match=message):
            outbox.enqueue(image, ImageMetadata())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match='ImageMetadata'):
        outbox.save(b'x', {'tags': []})  # type: ignore[arg-type]
    assert outbox.stats()['saved'] == 4 and outbox.stats()['pending_writes'] == 0
    assert outbox.close()


def test_enqueue_writes_in_the_background_and_keeps_the_metadata_it_was_given(
    local_loop: LocalLoop, node_folder: Path
) -> None:
    with Outbox(local_loop.settings(data_folder=node_folder)) as outbox:
        metadata = ImageMetadata(source='bytes', tags=['a'])
        metadata.box_detections.append(
            BoxDetection(category_name='c', x=1, y=2, width=3, height=4, model_name='1.0', confidence=0.5)
        )
        assert outbox.enqueue(tiny_jpeg(1), metadata)
        metadata.tags.append('changed after the hand-over')
        metadata.source = 'changed'
        assert outbox.enqueue(np.full((24, 32, 3), 128, np.uint8), ImageMetadata(source='array'), priority=True)
        assert outbox.wait_until_empty(10)
        assert outbox_threads() == ['llnode-outbox-uploader', 'llnode-outbox-writer']
    assert outbox_threads() == []
    items = {item['source']: item for item in received(local_loop)}
    assert set(items) == {'bytes', 'array'}
    assert items['bytes']['tags'] == ['a']
    assert local_loop.store.image_jpeg('zauberzeug', 'demo', items['bytes']['id']) == tiny_jpeg(1)
    detections = local_loop.store.detections('zauberzeug', 'demo', items['bytes']['id'])
    assert detections and detections[0]['box_detections'][0]['category_name'] == 'c'
    assert outbox.stats()['saved'] == outbox.stats()['uploaded'] == 2


def test_caps_and_drop_counters(tmp_path: Path) -> None:
    settings = offline_settings(tmp_path, max_outbox_size=3)
    outbox = Outbox(settings, mode='stopped', max_priority=2, writer_queue=2)
    normal = [outbox.save(tiny_jpeg(n), ImageMetadata(source=f'n{n}')) for n in range(5)]
    assert outbox.stats()['queued_normal'] == 3
    assert item_folders(settings.data_folder, 'normal') == normal[2:]  # the oldest went
    priority = [outbox.save(tiny_jpeg(n), ImageMetadata(), priority=True) for n in range(2)]
    with pytest.raises(OutboxFull):
        outbox.save(tiny_jpeg(9), ImageMetadata(), priority=True)
    assert item_folders(settings.data_folder, 'priority') == priority

    # the writer is not started: two images wait for it, the third finds it busy
    assert outbox.enqueue(tiny_jpeg(10), ImageMetadata(source='w1'))
    assert outbox.enqueue(tiny_jpeg(11), ImageMetadata(source='w2'), priority=True)
    assert not outbox.enqueue(tiny_jpeg(12), ImageMetadata(source='w3'))
    assert outbox.stats()['pending_writes'] == 2
    assert outbox.close()  # stores what the writer held: w1 (dropping the oldest normal), w2 hits the cap
    assert not outbox.enqueue(tiny_jpeg(13), ImageMetadata())
    with pytest.raises(OutboxClosed):
        outbox.save(tiny_jpeg(14), ImageMetadata())
    stats = outbox.stats()
    assert stats['dropped'] == {'closed': 1, 'normal_full': 3, 'priority_full': 2, 'writer_busy': 1}
    assert stats['queued_normal'] == 3 and stats['queued_priority'] == 2 and stats['pending_writes'] == 0
    assert stats['bytes_waiting'] == sum(
        f.stat().st_size for f in (settings.data_folder / 'outbox').glob('*/*/*') if 'rejected' not in f.parts
    )


def test_order_survives_a_restart(local_loop: LocalLoop, node_folder: Path) -> None:
    settings = local_loop.settings(data_folder=node_folder)
    outbox = Outbox(settings, mode='stopped')
    sources = []
    for n in range(12):
        priority = n % 3 == 0
        sources.append((f'{"p" if priority else "n"}{n}', priority))
        outbox.save(tiny_jpeg(n), ImageMetadata(source=sources[-1][0]), priority=priority)
    before = outbox.queued_ids()
    assert outbox.close()

    again = Outbox(settings)
    assert again.queued_ids() == before
    again.start()
    assert again.wait_until_empty(10)
    assert again.close()
    expected = [s for s, p in sources if p] + [s for s, p in reversed(sources) if not p]
    assert received_sources(local_loop) == expected


def test_ids_are_unique_and_sorted_even_when_the_clock_steps_back() -> None:
    future = id_to_microseconds('2999-01-01_00-00-00.000000')
    assert future is not None
    ids = ItemIds(future)
    made = [ids.next() for _ in range(1000)]
    assert made == sorted(made) and len(set(made)) == 1000
    assert made[0] == '2999-01-01_00-00-00.000001'
    assert id_to_microseconds('2025-03-05_14:22:31.123456') is None  # a reference id: ordered by name only


def test_stopped_keeps_the_files_and_continuous_upload_resumes(local_loop: LocalLoop, node_folder: Path) -> None:
    outbox = Outbox(local_loop.settings(data_folder=node_folder))
    outbox.start()
    try:
        assert outbox.set_mode('stopped') is True
        assert outbox.mode == OutboxMode.STOPPED and outbox.stats()['mode'] == 'stopped'
        with pytest.raises(ValueError, match=r"^'paused' is not a valid OutboxMode$"):
            outbox.set_mode('paused')
        assert outbox.mode == OutboxMode.STOPPED
        ids = [outbox.save(tiny_jpeg(n), ImageMetadata(source=f's{n}')) for n in range(3)]
        assert not outbox.wait_until_empty(0.5)  # a running uploader would have sent them within milliseconds
        assert local_loop.store.upload_batches('zauberzeug', 'demo') == []
        assert item_folders(node_folder, 'normal') == ids
        assert outbox.set_mode(OutboxMode.CONTINUOUS_UPLOAD) is True
        assert outbox.wait_until_empty(10)
    finally:
        assert outbox.close()
    assert sorted(received_sources(local_loop)) == ['s0', 's1', 's2']
    assert item_folders(node_folder, 'normal') == []


def _item(folder: Path, queue: str, item_id: str) -> Path:
    return folder / 'outbox' / queue / item_id


def test_broken_items_move_to_rejected_and_do_not_block(local_loop: LocalLoop, node_folder: Path) -> None:
    settings = local_loop.settings(data_folder=node_folder)
    # leftovers of a crash and of the reference's old layout, found at open
    legacy = node_folder / 'outbox' / 'priority' / '2024-01-01_00:00:00.000000'
    legacy.mkdir(parents=True)
    (legacy / 'image.jpg').write_bytes(tiny_jpeg(0))
    (legacy / 'image.json').write_text('{}')
    staging = node_folder / 'tmp' / 'outbox-2024-01-01_00-00-00.000001'
    staging.mkdir(parents=True)
    (staging / 'image_2024-01-01_00-00-00.000001.jpg').write_bytes(b'half')
    foreign = node_folder / 'tmp' / 'someone-else'
    foreign.write_text('not ours')

    outbox = Outbox(settings, mode='stopped')
    assert not staging.exists() and foreign.exists()
    assert outbox.rejected_ids() == ['2024-01-01_00:00:00.000000']
    assert 'incomplete' in (outbox.rejection_reason('2024-01-01_00:00:00.000000') or '')

    p = [outbox.save(tiny_jpeg(n), ImageMetadata(source=f'p{n}'), priority=True) for n in range(3)]
    n = [outbox.save(tiny_jpeg(10 + i), ImageMetadata(source=f'n{i}')) for i in range(3)]
    (_item(node_folder, 'priority', p[0]) / f'image_{p[0]}.jpg').unlink()  # first in line, file missing
    (_item(node_folder, 'priority', p[1]) / f'image_{p[1]}.json').write_bytes(b'{"tags": [')  # corrupt
    jpg = _item(node_folder, 'normal', n[2]) / f'image_{n[2]}.jpg'
    jpg.unlink()
    jpg.mkdir()  # unreadable as a file
    shutil.rmtree(_item(node_folder, 'normal', n[1]))  # gone altogether

    outbox.start()
    assert outbox.set_mode('continuous_upload')
    try:
        assert outbox.wait_until_empty(10)
    finally:
        assert outbox.close()
    assert received_sources(local_loop) == ['p2', 'n0']
    assert sorted(outbox.rejected_ids()) == sorted(['2024-01-01_00:00:00.000000', p[0], p[1], n[2]])
    assert 'image_' in (outbox.rejection_reason(p[0]) or '')
    assert 'JSON' in (outbox.rejection_reason(p[1]) or '')
    stats = outbox.stats()
    assert stats['rejected'] == 4 and stats['rejected_kept'] == 4 and stats['dropped'] == {'missing': 1}
    assert all(b['status'] == 200 for b in local_loop.store.upload_batches('zauberzeug', 'demo'))


def test_rejected_items_are_bounded(tmp_path: Path) -> None:
    settings = offline_settings(tmp_path)
    for n in range(4):
        folder = settings.data_folder / 'outbox' / 'normal' / f'2024-01-01_00-00-00.00000{n}'
        folder.mkdir(parents=True)
        (folder / 'image.jpg').write_bytes(b'legacy')
    outbox = Outbox(settings, mode='stopped', max_rejected=2)
    assert outbox.rejected_ids() == ['2024-01-01_00-00-00.000002', '2024-01-01_00-00-00.000003']
    assert sorted(os.listdir(settings.data_folder / 'outbox' / 'rejected')) == outbox.rejected_ids()
    assert outbox.stats()['rejected'] == 4 and outbox.stats()['dropped'] == {'rejected_full': 2}
    # new ids sort after everything found on disk
    assert outbox.save(tiny_jpeg(0), ImageMetadata()) > '2024-01-01_00-00-00.000003'
    assert outbox.close()


def test_one_outbox_per_folder(tmp_path: Path) -> None:
    settings = offline_settings(tmp_path)
    first = Outbox(settings, mode='stopped')
    with pytest.raises(OutboxLocked, match='in use'):
        Outbox(settings)
    assert first.close()
    second = Outbox(settings, mode='stopped')
    assert second.close()


def test_items_trickling_in_are_gathered_into_full_batches(local_loop: LocalLoop, node_folder: Path) -> None:
    outbox = Outbox(local_loop.settings(data_folder=node_folder), batch_size=5, gather_s=2.0)
    outbox.start()
    try:
        for n in range(5):  # one by one, as autoupload hands them over; each is on disk before the next comes
            outbox.save(tiny_jpeg(n), ImageMetadata(source=f's{n}'))
        assert outbox.wait_until_empty(10)
        outbox.save(tiny_jpeg(9), ImageMetadata(source='alone'))
        assert outbox.wait_until_empty(10)  # a batch that stays short goes once gather_s is over
    finally:
        assert outbox.close()
    batches = local_loop.store.upload_batches('zauberzeug', 'demo')
    assert [len(batch['image_ids']) for batch in batches] == [5, 1]
    with pytest.raises(ValueError, match='gather_s'):
        Outbox(local_loop.settings(data_folder=node_folder), gather_s=-1)


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='per-thread nice values are Linux only')
def test_outbox_threads_run_at_a_lower_cpu_priority(tmp_path: Path) -> None:
    outbox = Outbox(offline_settings(tmp_path), max_backoff=0.05, min_backoff=0.05)
    outbox.start()
    try:
        outbox.save(tiny_jpeg(0), ImageMetadata())  # the uploader starts trying
        wait_for(lambda: outbox.stats()['upload_errors'] >= 1, what='a failed upload to a port nobody listens on')
        mine = os.getpriority(os.PRIO_PROCESS, 0)
        for thread in threading.enumerate():
            if thread.name.startswith('llnode-outbox-'):
                assert thread.native_id is not None
                assert os.getpriority(os.PRIO_PROCESS, thread.native_id) == min(19, mine + 10), thread.name
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine  # the caller is untouched
    finally:
        assert outbox.close()


def test_threads_are_named_and_gone_after_close(tmp_path: Path) -> None:
    outbox = Outbox(offline_settings(tmp_path), max_backoff=0.05, min_backoff=0.05)
    outbox.start()
    assert outbox_threads() == ['llnode-outbox-uploader', 'llnode-outbox-writer']
    outbox.save(tiny_jpeg(0), ImageMetadata())
    wait_for(lambda: outbox.stats()['upload_errors'] >= 2, what='failed uploads to a port nobody listens on')
    assert 'failed' in (outbox.stats()['last_error'] or '')
    assert outbox.close(timeout=5)
    assert outbox_threads() == []
    assert item_folders(tmp_path / 'node', 'normal') != []  # kept for the next start
    with pytest.raises(OutboxClosed):
        outbox.start()
    assert outbox.close()  # a second close is harmless


def test_invalid_arguments(tmp_path: Path) -> None:
    settings = offline_settings(tmp_path)
    for kwargs, message in [
        ({'batch_size': 0}, 'batch_size'),
        ({'max_priority': -1}, 'max_priority'),
        ({'jpeg_quality': 0}, 'jpeg_quality'),
        ({'upload_timeout': 0}, 'upload_timeout'),
        ({'mode': 'sometimes'}, 'not a valid OutboxMode'),
    ]:
        with pytest.raises(ValueError, match=message):
            Outbox(settings, **kwargs)  # type: ignore[arg-type]
    no_project = Outbox(offline_settings(tmp_path, project=''))
    with pytest.raises(ValueError, match='PROJECT'):
        no_project.start()
    assert no_project.close()
