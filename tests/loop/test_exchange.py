"""DataExchange against the local Loop (and a scripted server for broken images and failing chunks)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import urllib3
from PIL import Image

from llnode.config import Settings
from llnode.localloop import demo
from llnode.loop.errors import LoopHTTPError, LoopProtocolError, LoopTimeout, ModelArchiveError
from llnode.loop.exchange import (
    IMAGE_STATES,
    CorruptImageError,
    DataExchange,
    MultipartFiles,
    content_disposition_filename,
)
from llnode.loop.http import LoopClient
from tests.loop.scripted_server import Reply, ScriptedServer, Seen, login_route
from tests.samples import REPO

PROJECT = '/api/zauberzeug/projects/demo'


class RecordingSession(requests.Session):
    """A real session that records, per request, the path and the name of the thread that sent it."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        with self._lock:
            self.sent.append((f'{method!s} {urlsplit(str(url)).path}', threading.current_thread().name))
        return super().request(method, url, *args, **kwargs)

    def paths(self, prefix: str = '') -> list[str]:
        with self._lock:
            return [p for p, _ in self.sent if p.startswith(prefix)]


def exchange_for(settings: Settings, **kwargs: Any) -> tuple[DataExchange, RecordingSession]:
    session = RecordingSession()
    return DataExchange(LoopClient(settings, session=session), **kwargs), session


def scripted_settings(server: ScriptedServer) -> Settings:
    return Settings(host=f'127.0.0.1:{server.port}', username='u', password='p', organization='zauberzeug',
                    project='demo')  # fmt: skip


def jpeg_bytes(index: int = 0) -> bytes:
    return demo.render(index)[0]


def answer(reply: Reply) -> Callable[[Seen], Reply]:
    return lambda seen: reply


def decodes(path: Path) -> bool:
    with Image.open(path) as image:
        image.load()
    return True


# -- image lists and metadata ------------------------------------------------------------------------------


def test_image_ids_by_state(local_loop: Any) -> None:
    exchange, _ = exchange_for(local_loop.settings())
    everything = exchange.image_ids()
    by_state = {state: exchange.image_ids(state) for state in IMAGE_STATES}
    assert len(by_state['complete']) == 12
    assert sorted(everything) == sorted(i for ids in by_state.values() for i in ids)
    with pytest.raises(ValueError, match='state must be one of'):
        exchange.image_ids('done')


def test_metadata_in_chunks_of_100_in_the_given_order(make_local_loop: Any) -> None:
    loop = make_local_loop(demo=True, demo_images=230)
    exchange, session = exchange_for(loop.settings())
    ids = list(reversed(exchange.image_ids('complete')))
    assert len(ids) == 230

    items = exchange.image_metadata(ids + ids[:3])  # duplicates come back where they were asked for

    assert [item['id'] for item in items] == ids + ids[:3]
    assert {item['set'] for item in items} <= {'train', 'test'}
    assert len(session.paths(f'GET {PROJECT}/images')) == 3
    with pytest.raises(LoopProtocolError, match='no metadata for 1 of 2'):
        exchange.image_metadata([ids[0], str(uuid.uuid4())])
    assert exchange.image_metadata([]) == []


def test_a_failed_metadata_chunk_raises() -> None:
    answers = iter([200, 500])

    def images(seen: Seen) -> Reply:
        status = next(answers)
        if status != 200:
            return Reply(status, b'{"detail": "database on fire"}')
        ids = seen.query['ids'][0].split(',')
        return Reply(200, json.dumps({'images': [{'id': i, 'set': 'train'} for i in ids]}).encode())

    routes = {('POST', '/api/login'): login_route(), ('GET', f'{PROJECT}/images'): images}
    with ScriptedServer(routes) as server:
        exchange = DataExchange(LoopClient(scripted_settings(server)))
        with pytest.raises(LoopHTTPError, match='database on fire') as caught:
            exchange.image_metadata([f'img{n}' for n in range(150)])
        assert caught.value.status == 500
        first = server.requests_to('GET', f'{PROJECT}/images')[0]
        assert len(first.query['ids'][0].split(',')) == 100


def test_bad_ids_are_refused_before_sending(local_loop: Any) -> None:
    exchange, session = exchange_for(local_loop.settings())
    for bad in (['../etc/passwd'], ['a/b'], [''], [None], 'abc'):
        with pytest.raises(ValueError):
            exchange.image_metadata(bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            exchange.download_images(bad, Path('/nonexistent'))  # type: ignore[arg-type]
    assert session.paths() == []


# -- image files -------------------------------------------------------------------------------------------


def test_parallel_download_then_existing_files_are_skipped(make_local_loop: Any, tmp_path: Path) -> None:
    loop = make_local_loop(demo=True, demo_images=60)
    exchange, session = exchange_for(loop.settings(), max_workers=8)
    ids = exchange.image_ids('complete')
    folder = tmp_path / 'images'
    progress: list[tuple[int, int]] = []

    report = exchange.download_images(ids, folder, progress=lambda done, total: progress.append((done, total)))

    assert (report.downloaded, report.skipped_existing, report.corrupt, report.failed) == (60, 0, [], [])
    assert report.ok
    assert sorted(p.name for p in folder.iterdir()) == sorted(f'{i}.jpg' for i in ids)
    assert all(decodes(folder / f'{i}.jpg') for i in ids)
    assert (folder / f'{ids[0]}.jpg').read_bytes() == loop.store.image_jpeg('zauberzeug', 'demo', ids[0])
    assert progress[0] == (0, 60) and progress[-1] == (60, 60)
    assert [done for done, _ in progress] == list(range(61))
    threads = {thread for path, thread in session.sent if path.endswith('/main')}
    assert all(t.startswith('llnode-image-download') for t in threads)
    assert len(threads) > 1  # really in parallel
    assert session.paths('POST /api/login') == ['POST /api/login']

    sent_before = len(session.paths())
    again = exchange.download_images(ids, folder)
    assert (again.downloaded, again.skipped_existing) == (0, 60)
    assert len(session.paths()) == sent_before  # nothing fetched again


def test_leftovers_and_empty_files_are_replaced(local_loop: Any, tmp_path: Path) -> None:
    exchange, _ = exchange_for(local_loop.settings())
    ids = exchange.image_ids('complete')[:3]
    folder = tmp_path / 'images'
    folder.mkdir()
    (folder / f'.{ids[0]}.abc123.part').write_bytes(b'half an image')
    (folder / f'{ids[1]}.jpg').write_bytes(b'')
    (folder / 'unrelated.txt').write_text('keep me')

    report = exchange.download_images(ids, folder)

    assert (report.downloaded, report.skipped_existing) == (3, 0)
    assert sorted(p.name for p in folder.iterdir()) == sorted([*(f'{i}.jpg' for i in ids), 'unrelated.txt'])


def test_corrupt_and_failed_images_are_counted_and_dropped(tmp_path: Path) -> None:
    good = jpeg_bytes()
    png = io.BytesIO()
    Image.new('RGB', (8, 8)).save(png, 'PNG')
    bodies = {
        'good1': Reply(200, good),
        'truncated': Reply(200, good[: len(good) // 2]),
        'garbage': Reply(200, b'<html>not an image</html>'),
        'empty': Reply(200, b''),
        'missing': Reply(404, b'{"detail": "no such image"}'),
        'cut': Reply(200, good[:1000], {'Content-Length': str(len(good))}),  # the connection drops mid-body
        'png': Reply(200, png.getvalue()),
        'good2': Reply(200, good),
    }
    routes = {('POST', '/api/login'): login_route()}
    for image_id, reply in bodies.items():
        routes['GET', f'{PROJECT}/images/{image_id}/main'] = answer(reply)
    with ScriptedServer(routes) as server:
        exchange = DataExchange(LoopClient(scripted_settings(server)), max_workers=4)
        folder = tmp_path / 'images'
        report = exchange.download_images(list(bodies), folder)

        assert report.downloaded == 3
        assert report.corrupt == ['truncated', 'garbage', 'empty']
        assert report.failed == ['missing', 'cut']
        assert not report.ok
        assert sorted(p.name for p in folder.iterdir()) == ['good1.jpg', 'good2.jpg', 'png.jpg']

        assert exchange.download_image('good1', tmp_path / 'single') == tmp_path / 'single' / 'good1.jpg'
        with pytest.raises(CorruptImageError, match='truncated'):
            exchange.download_image('truncated', tmp_path / 'single')
        with pytest.raises(LoopHTTPError) as caught:
            exchange.download_image('missing', tmp_path / 'single')
        assert caught.value.status == 404
        assert [p.name for p in (tmp_path / 'single').iterdir()] == ['good1.jpg']


def test_download_image_keeps_an_existing_file(local_loop: Any, tmp_path: Path) -> None:
    exchange, session = exchange_for(local_loop.settings())
    image_id = exchange.image_ids('complete')[0]
    path = exchange.download_image(image_id, tmp_path)
    assert decodes(path)
    count = len(session.paths())
    assert exchange.download_image(image_id, tmp_path) == path
    assert len(session.paths()) == count


def test_cancel_stops_starting_downloads(make_local_loop: Any, tmp_path: Path) -> None:
    loop = make_local_loop(demo=True, demo_images=60)
    exchange, session = exchange_for(loop.settings(), max_workers=2)
    ids = exchange.image_ids('complete')
    cancel = threading.Event()
    cancel.set()
    report = exchange.download_images(ids, tmp_path / 'before', cancel=cancel)
    assert report.cancelled and not report.ok and report.downloaded == 0
    assert not any(path.endswith('/main') for path in session.paths())

    cancel.clear()

    def progress(done: int, total: int) -> None:
        if done >= 5:
            cancel.set()

    report = exchange.download_images(ids, tmp_path / 'during', progress=progress, cancel=cancel)

    assert report.cancelled and not report.ok
    assert 5 <= report.downloaded < 60  # what was in flight (or done but not yet counted) still lands
    assert len(list((tmp_path / 'during').glob('*.jpg'))) == report.downloaded


# -- models ------------------------------------------------------------------------------------------------


def test_model_upload_and_download_round_trip(local_loop: Any, tmp_path: Path) -> None:
    exchange, session = exchange_for(local_loop.settings())
    weights = tmp_path / 'upload' / 'weights.bin'
    weights.parent.mkdir()
    weights.write_bytes(bytes(range(256)) * 400)
    (tmp_path / 'upload' / 'config.txt').write_text('layers: 3\n')
    (tmp_path / 'upload' / 'model.json').write_text(json.dumps({'categories': [], 'resolution': 320}))
    files = [weights, tmp_path / 'upload' / 'config.txt', tmp_path / 'upload' / 'model.json']
    training = local_loop.store.next_training_number('zauberzeug', 'demo')

    model_id = exchange.upload_model(training, 'llnode_test', files)
    assert uuid.UUID(model_id)
    assert exchange.upload_model(training, 'llnode_test', files) == model_id  # 409: the Loop names the model

    target = tmp_path / 'models' / 'x'
    info = exchange.download_model(model_id, 'llnode_test', target)
    assert info['id'] == model_id and info['format'] == 'llnode_test' and info['resolution'] == 320
    assert (target / 'weights.bin').read_bytes() == weights.read_bytes()
    assert (target / 'config.txt').read_text() == 'layers: 3\n'
    assert json.loads((target / 'model.json').read_text()) == info
    assert [p.name for p in target.parent.iterdir()] == ['x']  # no temp files left beside it
    downloads = [p for p in session.paths() if p.endswith('/file') and p.startswith('GET')]
    assert len(downloads) == 1


def test_model_download_needs_no_login_and_reports_errors(local_loop: Any, tmp_path: Path) -> None:
    exchange, session = exchange_for(local_loop.settings())
    model = local_loop.store.models('zauberzeug', 'demo')[0]
    info = exchange.download_model(model['id'], 'mocked', tmp_path / 'model')
    assert info['id'] == model['id']
    assert session.paths('POST /api/login') == []

    with pytest.raises(LoopHTTPError, match='has no format') as caught:
        exchange.download_model(model['id'], 'nonexistent', tmp_path / 'other')
    assert caught.value.status == 404
    assert not (tmp_path / 'other').exists()
    with pytest.raises(ValueError):
        exchange.download_model('../../etc', 'mocked', tmp_path / 'other')


def test_model_download_timeout_applies(make_local_loop: Any, tmp_path: Path) -> None:
    loop = make_local_loop(demo=True, demo_images=2, delay_ms=800)
    exchange = DataExchange(LoopClient(loop.settings()))
    model = loop.store.models('zauberzeug', 'demo')[0]
    started = time.monotonic()
    with pytest.raises(LoopTimeout):
        exchange.download_model(model['id'], 'mocked', tmp_path / 'model', timeout=0.2)
    assert time.monotonic() - started < 0.7
    assert not (tmp_path / 'model').exists()


def test_model_download_without_filename_or_with_a_bad_zip(tmp_path: Path) -> None:
    path = f'{PROJECT}/models/m1/fmt/file'
    replies = {
        'no-name': Reply(200, b'PK', {'Content-Disposition': 'attachment'}),
        'bad-zip': Reply(200, b'not a zip', {'Content-Disposition': 'attachment; filename=m.zip'}),
    }
    current = ['no-name']
    with ScriptedServer({('GET', path): lambda seen: replies[current[0]]}) as server:
        exchange = DataExchange(LoopClient(scripted_settings(server)))
        with pytest.raises(LoopProtocolError, match='no filename'):
            exchange.download_model('m1', 'fmt', tmp_path / 'model')
        current[0] = 'bad-zip'
        with pytest.raises(ModelArchiveError):
            exchange.download_model('m1', 'fmt', tmp_path / 'model')
    assert list(tmp_path.iterdir()) == []


def test_content_disposition_filename() -> None:
    assert content_disposition_filename('attachment; filename="a b.zip"') == 'a b.zip'
    assert content_disposition_filename('attachment; filename=model.zip') == 'model.zip'
    assert content_disposition_filename("attachment; filename*=UTF-8''m%C3%BCller.zip") == 'müller.zip'
    assert content_disposition_filename('attachment') == ''
    assert content_disposition_filename('') == ''


def test_model_upload_request_shape_and_errors(tmp_path: Path) -> None:
    files = [tmp_path / 'weights.bin', tmp_path / 'notes.txt', tmp_path / 'model.json']
    for path, content in zip(files, [b'\x00' * 100, b'hello', b'{"categories": []}'], strict=True):
        path.write_bytes(content)
    answers: list[Reply] = []
    route = f'{PROJECT}/trainings/7/models/latest/yolo/file'
    routes = {('POST', '/api/login'): login_route(), ('PUT', route): lambda seen: answers.pop(0)}
    with ScriptedServer(routes) as server:
        exchange = DataExchange(LoopClient(scripted_settings(server)))
        answers.append(Reply(429, b'{}', {'Retry-After': '0.05'}))  # the body is sent again in full after a 429
        answers.append(Reply(200, b'{"id": "new-model", "version": "1.3"}'))
        assert exchange.upload_model(7, 'yolo', files) == 'new-model'
        throttled, sent = server.requests_to('PUT', route)
        assert sent.body.replace(sent.body[2:34], b'B' * 32) == throttled.body.replace(throttled.body[2:34], b'B' * 32)
        assert sent.headers['content-type'] == f'multipart/form-data; boundary={sent.body[2:34].decode()}'
        assert int(sent.headers['content-length']) == len(sent.body)
        assert sent.body.count(b'name="files"') == 3
        for disposition in (b'filename="weights.bin"', b'filename="notes.txt"', b'filename="model.json"'):
            assert disposition in sent.body
        assert b'Content-Type: application/json' in sent.body and b'Content-Type: text/plain' in sent.body

        answers.append(Reply(409, b'{"detail": {"message": "exists"}}'))  # an older Loop names no id
        with pytest.raises(LoopHTTPError) as caught:
            exchange.upload_model(7, 'yolo', files)
        assert caught.value.status == 409
        answers.append(Reply(503, b'{"detail": "busy"}'))
        with pytest.raises(LoopHTTPError) as caught:
            exchange.upload_model(7, 'yolo', files)
        assert caught.value.status == 503
        answers.append(Reply(200, b'{"version": "1.3"}'))
        with pytest.raises(LoopProtocolError, match='"id"'):
            exchange.upload_model(7, 'yolo', files)

        count = server.count('PUT', route)
        (tmp_path / 'empty.bin').write_bytes(b'')
        with pytest.raises(ValueError, match='empty'):
            exchange.upload_model(7, 'yolo', [*files, tmp_path / 'empty.bin'])
        with pytest.raises(ValueError, match='does not exist'):
            exchange.upload_model(7, 'yolo', [tmp_path / 'missing.bin'])
        with pytest.raises(ValueError, match='no files'):
            exchange.upload_model(7, 'yolo', [])
        with pytest.raises(ValueError, match='training_number'):
            exchange.upload_model(-1, 'yolo', files)
        with pytest.raises(ValueError, match='model_format'):
            exchange.upload_model(7, 'a/b', files)
        assert server.count('PUT', route) == count


def test_multipart_body_matches_urllib3_and_streams_from_disk(tmp_path: Path) -> None:
    contents = {'weights.bin': bytes(range(256)) * 300, 'na"me.txt': b'hello', 'model.json': b'{}'}
    paths = []
    for name, content in contents.items():
        (tmp_path / name).write_bytes(content)
        paths.append(tmp_path / name)
    fields = [urllib3.fields.RequestField('files', content, filename=name) for name, content in contents.items()]
    for field, name in zip(fields, contents, strict=True):
        field.make_multipart(content_type='text/plain' if name.endswith('.txt') else
                             'application/json' if name.endswith('.json') else 'application/octet-stream')  # fmt: skip
    expected, content_type = urllib3.encode_multipart_formdata(fields, boundary='b0undary')

    with MultipartFiles('files', paths, boundary='b0undary') as body:
        assert body.content_type == content_type
        assert len(body) == len(expected)
        chunks = []
        while chunk := body.read(1000):  # odd block size: reads cross part borders
            chunks.append(chunk)
        assert b''.join(chunks) == expected
        body.seek(0)
        assert body.read() == expected
        body.seek(-10, 2)
        assert body.read() == expected[-10:]

        body.seek(0)
        (tmp_path / 'weights.bin').write_bytes(b'short')  # the file changes after the length was announced
        with pytest.raises(OSError, match='changed size'):
            body.read()


# -- detections --------------------------------------------------------------------------------------------


def detections(count: int) -> list[dict[str, Any]]:
    return [
        {'image_id': f'img{n}', 'box_detections': [], 'point_detections': [], 'segmentation_detections': [],
         'classification_detections': []}
        for n in range(count)
    ]  # fmt: skip


def test_detections_go_in_slices_of_100_and_resume(tmp_path: Path) -> None:
    statuses = [200, 500, 200, 200]
    route = f'{PROJECT}/detections'
    routes = {('POST', '/api/login'): login_route(), ('POST', route): lambda seen: Reply(statuses.pop(0), b'{}')}
    items = detections(250)
    with ScriptedServer(routes) as server:
        exchange = DataExchange(LoopClient(scripted_settings(server)))
        progress: list[int] = []
        with pytest.raises(LoopHTTPError) as caught:
            exchange.upload_detections(items, on_slice=progress.append)
        assert caught.value.status == 500
        assert progress == [100]

        exchange.upload_detections(items, start=progress[-1], on_slice=progress.append)
        assert progress == [100, 200, 250]
        bodies = [json.loads(s.body) for s in server.requests_to('POST', route)]
        assert [len(b) for b in bodies] == [100, 100, 100, 50]
        assert bodies[0] == items[:100] and bodies[2] == items[100:200] and bodies[3] == items[200:]
        assert server.requests_to('POST', route)[0].headers['content-type'] == 'application/json'

        count = server.count('POST', route)
        bad = detections(150)
        bad[120]['box_detections'] = [{'confidence': float('nan')}]
        with pytest.raises(ValueError, match=r'detections\[100:150\]'):
            exchange.upload_detections(bad)
        with pytest.raises(ValueError, match='start'):
            exchange.upload_detections(items, start=251)
        assert server.count('POST', route) == count  # nothing sent for bad input
        exchange.upload_detections(items, start=250)  # nothing left to send
        assert server.count('POST', route) == count


def test_detections_reach_the_local_loop(local_loop: Any) -> None:
    exchange, _ = exchange_for(local_loop.settings())
    image_id = exchange.image_ids('complete')[0]
    item = {
        'image_id': image_id,
        'box_detections': [{'category_name': 'circle', 'x': 1, 'y': 2, 'width': 30, 'height': 40,
                            'model_name': '1.0', 'confidence': 0.9, 'category_id': 'c1'}],
        'point_detections': [], 'segmentation_detections': [], 'classification_detections': [],
    }  # fmt: skip
    exchange.upload_detections([item])
    stored = local_loop.store.detections('zauberzeug', 'demo', image_id)
    assert stored and stored[0]['box_detections'][0]['confidence'] == 0.9


def test_the_image_check_does_not_depend_on_jpeginfo(tmp_path: Path) -> None:
    """A ``jpeginfo`` on the PATH (here one that rejects every file, as the real one rejects PNGs) changes nothing."""
    bin_folder = tmp_path / 'bin'
    bin_folder.mkdir()
    fake = bin_folder / 'jpeginfo'
    fake.write_text('#!/bin/sh\necho "$2  ERROR: not a jpeg"\nexit 1\n')
    fake.chmod(0o755)
    env = {**os.environ, 'PATH': f'{bin_folder}{os.pathsep}{os.environ.get("PATH", "")}'}
    test = f'{Path(__file__).relative_to(REPO)}::test_corrupt_and_failed_images_are_counted_and_dropped'
    done = subprocess.run(
        [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', test],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
