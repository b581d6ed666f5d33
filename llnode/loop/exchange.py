"""Moving a project's data between a node and its Loop: image lists, metadata, image files, model zips, detections.

Every call goes through a :class:`~llnode.loop.http.LoopClient`, so logins, 401 and 429 handling and timeouts
work the same everywhere. Unlike the reference, nothing is lost silently: a failed metadata chunk raises (weak
point C18), and failed or corrupt image downloads are reported by id.
"""

from __future__ import annotations

import binascii
import io
import json
import logging
import mimetypes
import os
import re
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, unquote

import requests
from PIL import Image

from llnode.durable import fsync_dir
from llnode.loop.archive import extract_model_zip
from llnode.loop.errors import LoopConnectionError, LoopError, LoopHTTPError, LoopProtocolError
from llnode.loop.http import LoopClient, raise_for_status, write_body

logger = logging.getLogger('llnode.loop.exchange')

IMAGE_STATES = ('inbox', 'annotate', 'review', 'complete')
#: Image ids per metadata request (``GET …/images?ids=``); the Loop accepts at most 100.
METADATA_CHUNK = 100
#: Detections per ``POST …/detections``; the Loop accepts at most 100.
DETECTIONS_SLICE = 100
#: Parallel image downloads. Each download is one request with little CPU work on our side, so the thread count
#: is set by latency, not cores: with 20 ms per request, 16 requests in flight give ~8x one thread's rate while
#: staying well inside the client's connection pool (32) and friendly to the Loop (the reference runs 10).
DEFAULT_MAX_WORKERS = 16
MODEL_DOWNLOAD_TIMEOUT = 600.0

_SAFE_ID = re.compile(r'^[A-Za-z0-9][A-Za-z0-9._-]*$')
_PARTIAL_SUFFIX = '.part'

_OK, _CORRUPT, _FAILED, _CANCELLED = 'ok', 'corrupt', 'failed', 'cancelled'


class CorruptImageError(LoopProtocolError):
    """The Loop sent an image file that does not decode; it was not kept."""


@dataclass
class DownloadReport:
    """What :meth:`DataExchange.download_images` did, image by image."""

    downloaded: int = 0
    skipped_existing: int = 0
    corrupt: list[str] = field(default_factory=list)  #: ids whose file did not decode; deleted
    failed: list[str] = field(default_factory=list)  #: ids the Loop did not deliver (non-200, network error)
    cancelled: bool = False  #: the ``cancel`` event stopped the run before every id was tried

    @property
    def ok(self) -> bool:
        """Every requested image is now on disk."""
        return not (self.corrupt or self.failed or self.cancelled)


class DataExchange:
    """The data a training or an annotation needs, fetched from (and sent to) the Loop through ``client``.

    ``max_workers`` bounds the parallel image downloads. ``organization`` and ``project`` name the project to
    talk about when it is not the one in the client's settings (a trainer works on the project each training
    names; the reference takes it from the training's context).
    """

    def __init__(
        self,
        client: LoopClient,
        *,
        max_workers: int = DEFAULT_MAX_WORKERS,
        organization: str | None = None,
        project: str | None = None,
    ) -> None:
        if max_workers < 1:
            raise ValueError(f'max_workers must be at least 1, got {max_workers}')
        if (organization is None) != (project is None):
            raise ValueError('give both organization and project, or neither')
        self._project_path: str | None = None
        if organization is not None and project is not None:
            self._project_path = (
                f'/{_path_part(organization, "organization")}/projects/{_path_part(project, "project")}'
            )
        self.client = client
        self.max_workers = max_workers
        if max_workers > client.pool_size:
            logger.warning(
                'max_workers=%d exceeds the client connection pool (%d); extra connections are not reused',
                max_workers,
                client.pool_size,
            )

    def project_url(self, suffix: str = '') -> str:
        """``/{org}/projects/{project}`` + ``suffix`` (below ``/api``) for this exchange's project."""
        if self._project_path is None:
            return self.client.project_url(suffix)
        return self._project_path + suffix

    # -- images ------------------------------------------------------------------------------------------

    def image_ids(self, state: str | None = None) -> list[str]:
        """Ids of the project's images, all of them or those in ``state`` (inbox, annotate, review, complete)."""
        if state is not None and state not in IMAGE_STATES:
            raise ValueError(f'state must be one of {", ".join(IMAGE_STATES)} or None, got {state!r}')
        path = self.project_url('/data' + (f'?state={state}' if state else ''))
        body = self.client.json('GET', path)
        ids = body.get('image_ids') if isinstance(body, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise LoopProtocolError(f'GET {path}: expected {{"image_ids": [str, ...]}}, got {_preview(body)}')
        return ids

    def image_metadata(self, ids: Iterable[str]) -> list[dict[str, Any]]:
        """The Loop's metadata item for each id, in the order given (items are passed on unchanged).

        Fetched in chunks of 100, one after another. A chunk that fails raises (:class:`LoopHTTPError` and
        friends), and an id the Loop leaves out raises :class:`LoopProtocolError`: a training never runs on a
        silently smaller dataset.
        """
        wanted = _checked_ids(ids)
        unique = list(dict.fromkeys(wanted))
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(unique), METADATA_CHUNK):
            chunk = unique[start : start + METADATA_CHUNK]
            path = self.project_url('/images?ids=' + ','.join(chunk))
            body = self.client.json('GET', path)
            items = body.get('images') if isinstance(body, dict) else None
            if not isinstance(items, list):
                raise LoopProtocolError(f'GET {path[:120]}: expected {{"images": [...]}}, got {_preview(body)}')
            for item in items:
                if not isinstance(item, dict) or not isinstance(item.get('id'), str):
                    raise LoopProtocolError(f'image metadata item without a string "id": {_preview(item)}')
                found[item['id']] = item
        missing = [i for i in unique if i not in found]
        if missing:
            raise LoopProtocolError(
                f'the Loop sent no metadata for {len(missing)} of {len(unique)} images, e.g. {missing[:5]}'
            )
        return [found[i] for i in wanted]

    def download_images(
        self,
        ids: Iterable[str],
        folder: Path | str,
        *,
        progress: Callable[[int, int], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> DownloadReport:
        """Download ``{id}.jpg`` for each id into ``folder``, ``max_workers`` at a time.

        Files already there are skipped. Each file is streamed to a temp name, checked to decode (with Pillow
        alone, so the result never depends on what else the machine has installed) and renamed into place; corrupt files are deleted and failed downloads
        counted, not raised. A refused login or a full disk still raises. ``progress(done, total)`` is called
        in the calling thread, with the skipped files counted as done. Setting ``cancel`` stops starting new
        downloads (the running ones end within the client timeout); the report then says ``cancelled``.
        """
        folder = Path(folder)
        unique = list(dict.fromkeys(_checked_ids(ids)))
        folder.mkdir(parents=True, exist_ok=True)
        present = _clean_and_list(folder)
        todo = [i for i in unique if f'{i}.jpg' not in present]
        report = DownloadReport(skipped_existing=len(unique) - len(todo))
        total, done = len(unique), report.skipped_existing
        if progress is not None:
            progress(done, total)
        if not todo:
            return report
        workers = min(self.max_workers, len(todo))
        with ThreadPoolExecutor(workers, thread_name_prefix='llnode-image-download') as pool:
            try:
                futures = {pool.submit(self._download_one, i, folder, cancel): i for i in todo}
                for future in as_completed(futures):
                    outcome = future.result()
                    image_id = futures[future]
                    if outcome == _OK:
                        report.downloaded += 1
                    elif outcome == _CORRUPT:
                        report.corrupt.append(image_id)
                    elif outcome == _FAILED:
                        report.failed.append(image_id)
                    else:
                        report.cancelled = True
                        continue
                    done += 1
                    if progress is not None:
                        progress(done, total)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        fsync_dir(folder)
        order = {image_id: n for n, image_id in enumerate(todo)}
        report.corrupt.sort(key=order.__getitem__)
        report.failed.sort(key=order.__getitem__)
        logger.info(
            'images: %d downloaded, %d already there, %d corrupt, %d failed%s',
            report.downloaded,
            report.skipped_existing,
            len(report.corrupt),
            len(report.failed),
            ' (cancelled)' if report.cancelled else '',
        )
        return report

    def download_image(self, image_id: str, folder: Path | str) -> Path:
        """Download one image to ``{folder}/{image_id}.jpg`` (kept if already there) and return its path.

        Raises :class:`LoopHTTPError` for a non-200 answer and :class:`CorruptImageError` for a broken file.
        """
        (image_id,) = _checked_ids([image_id])
        folder = Path(folder)
        target = folder / f'{image_id}.jpg'
        if target.is_file() and target.stat().st_size > 0:
            return target
        folder.mkdir(parents=True, exist_ok=True)
        _, error = self._fetch_image(image_id, folder)
        if error is not None:
            raise error
        fsync_dir(folder)
        return target

    def _download_one(self, image_id: str, folder: Path, cancel: threading.Event | None) -> str:
        if cancel is not None and cancel.is_set():
            return _CANCELLED
        outcome, error = self._fetch_image(image_id, folder)
        if error is not None:
            logger.warning('image %s %s: %s', image_id, outcome, error)
        return outcome

    def _fetch_image(self, image_id: str, folder: Path) -> tuple[str, LoopError | None]:
        """Fetch one image file; returns the outcome and, unless it worked, the error that describes it.

        Errors that concern the session rather than this image (a refused login) are raised.
        """
        path = self.project_url(f'/images/{image_id}/main')
        try:
            response = self.client.request('GET', path, stream=True)
        except LoopConnectionError as e:
            return _FAILED, e
        with closing(response):
            if response.status_code != 200:
                return _FAILED, _http_error(response)
            handle, temp_name = tempfile.mkstemp(prefix=f'.{image_id}.', suffix=_PARTIAL_SUFFIX, dir=folder)
            try:
                with os.fdopen(handle, 'w+b') as temp:
                    try:
                        size = write_body(response, temp, timeout=self.client.timeout)
                    except (LoopConnectionError, LoopProtocolError) as e:
                        return _FAILED, e
                    temp.seek(0)
                    problem = 'an empty file' if size == 0 else _image_problem(temp)
                    if problem is None:
                        temp.flush()
                        os.fsync(temp.fileno())
                if problem is not None:
                    return _CORRUPT, CorruptImageError(f'image {image_id} from the Loop is {problem}; dropped')
                os.replace(temp_name, folder / f'{image_id}.jpg')
                temp_name = ''
            finally:
                if temp_name:
                    Path(temp_name).unlink(missing_ok=True)
        return _OK, None

    # -- models ------------------------------------------------------------------------------------------

    def download_model(
        self,
        model_uuid: str,
        model_format: str,
        target_folder: Path | str,
        *,
        timeout: float = MODEL_DOWNLOAD_TIMEOUT,
        replace: bool = False,
    ) -> dict[str, Any]:
        """Download a model zip (no login needed) and install it into ``target_folder``; returns its model.json.

        ``timeout`` (default 600 s) really applies, unlike in the reference (quirk Q2). A non-200 raises
        :class:`LoopHTTPError` with the Loop's text; a missing ``Content-Disposition`` filename or an unusable
        zip raises :class:`LoopProtocolError` / :class:`ModelArchiveError`; see
        :func:`~llnode.loop.archive.extract_model_zip` for how the folder is filled and ``replace``.
        """
        path = self.project_url(f'/models/{_path_part(model_uuid, "model_uuid")}/')
        path += f'{_path_part(model_format, "model_format")}/file'
        target = Path(target_folder)
        response = self.client.request('GET', path, requires_login=False, timeout=timeout, stream=True)
        with closing(response):
            if response.status_code != 200:
                raise _http_error(response)
            filename = content_disposition_filename(response.headers.get('Content-Disposition', ''))
            if not filename:
                raise LoopProtocolError(
                    f'GET {response.url} sent no filename in Content-Disposition '
                    f'({response.headers.get("Content-Disposition")!r})'
                )
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=target.parent, prefix='.model-download-') as archive:
                size = write_body(response, archive, timeout=timeout)
                logger.info('downloaded model %s (%s, %s, %d bytes)', model_uuid, model_format, filename, size)
                archive.seek(0)
                return extract_model_zip(archive, target, replace=replace)

    def upload_model(self, training_number: int, model_format: str, files: Sequence[Path | str]) -> str:
        """Upload a trained model's files for one format and return the new model's id.

        ``PUT …/trainings/{n}/models/latest/{format}/file`` with one multipart part named ``files`` per file. A 409
        (the Loop already holds this format) returns the id it names, if it is a UUID. Any other non-2xx raises
        :class:`LoopHTTPError` carrying ``status``, so the caller can tell retryable (5xx, 408, 429) from fatal.
        Missing or empty files raise :class:`ValueError` before anything is sent.
        """
        if isinstance(training_number, bool) or not isinstance(training_number, int) or training_number < 0:
            raise ValueError(f'training_number must be an integer >= 0, got {training_number!r}')
        paths = _checked_upload_files(files)
        path = self.project_url(
            f'/trainings/{training_number}/models/latest/{_path_part(model_format, "model_format")}/file'
        )
        with MultipartFiles('files', paths) as body:
            response = self.client.request('PUT', path, data=body, headers={'Content-Type': body.content_type})
        with closing(response):
            if response.status_code == 409:
                existing = _conflict_model_id(response)
                if existing is None:
                    raise _http_error(response)
                logger.info(
                    'the Loop already holds format %s of training %d: %s', model_format, training_number, existing
                )
                return existing
            raise_for_status(response)
            try:
                body = response.json()
            except ValueError as e:
                raise LoopProtocolError(f'PUT {response.url} answered without JSON: {response.text[:200]!r}') from e
            model_id = body.get('id') if isinstance(body, dict) else None
            if not isinstance(model_id, str) or not model_id:
                raise LoopProtocolError(f'PUT {response.url} answered without a model "id": {_preview(body)}')
            return model_id

    # -- detections ---------------------------------------------------------------------------------------

    def upload_detections(
        self,
        detections: Sequence[Mapping[str, Any]],
        *,
        start: int = 0,
        on_slice: Callable[[int], None] | None = None,
    ) -> None:
        """POST ``detections[start:]`` as JSON arrays of up to 100, one after another.

        After each accepted slice ``on_slice(next_index)`` is called, so a trainer can persist its progress and
        pass that index back as ``start`` after a restart. Every slice is serialised before the first is sent, so
        bad data (not JSON-serialisable, NaN) raises :class:`ValueError` with nothing sent; a non-2xx raises
        :class:`LoopHTTPError` and leaves the progress at the last accepted slice.
        """
        if isinstance(detections, (str, bytes)) or not isinstance(detections, Sequence):
            raise ValueError('detections must be a sequence of mappings')
        if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start <= len(detections):
            raise ValueError(f'start must be an index between 0 and {len(detections)}, got {start!r}')
        bodies: list[tuple[int, bytes]] = []
        for first in range(start, len(detections), DETECTIONS_SLICE):
            chunk = detections[first : first + DETECTIONS_SLICE]
            for offset, item in enumerate(chunk):
                if not isinstance(item, Mapping):
                    raise ValueError(f'detections[{first + offset}] is not a mapping: {type(item).__name__}')
            try:
                payload = json.dumps([dict(item) for item in chunk], allow_nan=False, separators=(',', ':'))
            except (TypeError, ValueError) as e:
                raise ValueError(f'detections[{first}:{first + len(chunk)}] cannot be sent as JSON: {e}') from e
            bodies.append((first + len(chunk), payload.encode()))
        path = self.project_url('/detections')
        for next_index, body in bodies:
            response = self.client.request('POST', path, data=body, headers={'Content-Type': 'application/json'})
            with closing(response):
                raise_for_status(response)
            if on_slice is not None:
                on_slice(next_index)


class MultipartFiles(io.RawIOBase):
    """A ``multipart/form-data`` body of files, read from disk as it is sent instead of built in memory.

    Every file becomes one part named ``field`` with its basename as filename and a content type guessed from the
    extension, byte for byte as requests/urllib3 would encode it. The length is known up front (Content-Length,
    no chunked encoding) and the body is seekable, so a retry can send it again. A file that changes size while it
    is sent raises :class:`OSError` rather than sending a body that does not match its length.
    """

    def __init__(self, field: str, paths: Sequence[Path], *, boundary: str | None = None) -> None:
        super().__init__()
        self.boundary = boundary or binascii.hexlify(os.urandom(16)).decode()
        self.content_type = f'multipart/form-data; boundary={self.boundary}'
        self._segments: list[bytes | tuple[Path, int]] = []
        for path in paths:
            content_type = mimetypes.guess_type(path.name)[0] or 'application/octet-stream'
            head = (
                f'--{self.boundary}\r\n'
                f'Content-Disposition: form-data; name="{_quote_param(field)}"; filename="{_quote_param(path.name)}"'
                f'\r\nContent-Type: {content_type}\r\n\r\n'
            )
            self._segments += [head.encode(), (path, path.stat().st_size), b'\r\n']
        self._segments.append(f'--{self.boundary}--\r\n'.encode())
        self._starts: list[int] = []
        total = 0
        for segment in self._segments:
            self._starts.append(total)
            total += len(segment) if isinstance(segment, bytes) else segment[1]
        self._length = total
        self._position = 0
        self._open: tuple[int, io.BufferedReader] | None = None  # (segment index, handle) of the file being read

    def __len__(self) -> int:
        return self._length

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._length}[whence]
        self._position = min(max(0, base + offset), self._length)
        return self._position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast('B')
        filled = 0
        while filled < len(view) and self._position < self._length:
            index = max(i for i, start in enumerate(self._starts) if start <= self._position)
            offset = self._position - self._starts[index]
            segment = self._segments[index]
            if isinstance(segment, bytes):
                chunk = segment[offset : offset + len(view) - filled]
                view[filled : filled + len(chunk)] = chunk
                count = len(chunk)
            else:
                handle = self._file(index)
                handle.seek(offset)
                count = handle.readinto(view[filled : filled + min(len(view) - filled, segment[1] - offset)]) or 0
                if count == 0:
                    raise OSError(f'{segment[0]} became shorter while it was being uploaded')
            filled += count
            self._position += count
        return filled

    def _file(self, index: int) -> io.BufferedReader:
        if self._open is not None and self._open[0] == index:
            return self._open[1]
        self._close_file()
        segment = self._segments[index]
        assert not isinstance(segment, bytes)
        path, size = segment
        handle = open(path, 'rb')  # noqa: SIM115  (kept open across reads; closed by _close_file)
        if os.fstat(handle.fileno()).st_size != size:
            handle.close()
            raise OSError(f'{path} changed size while it was being uploaded')
        self._open = (index, handle)
        return handle

    def _close_file(self) -> None:
        if self._open is not None:
            self._open[1].close()
            self._open = None

    def close(self) -> None:
        self._close_file()
        super().close()


def _quote_param(value: str) -> str:
    """A multipart header parameter value as browsers (and urllib3) write it: CR, LF and quotes percent-encoded."""
    return value.translate({10: '%0A', 13: '%0D', 34: '%22'})


def content_disposition_filename(header: str) -> str:
    """The ``filename`` of a Content-Disposition header (quotes stripped), or ``''`` when there is none."""
    plain = re.search(r'(?:^|;)\s*filename\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)', header, re.IGNORECASE)
    if plain:
        return plain.group(1).strip().strip('"').strip()
    extended = re.search(r"(?:^|;)\s*filename\*\s*=\s*([^']*)'[^']*'([^;]*)", header, re.IGNORECASE)
    if extended:
        return unquote(extended.group(2).strip(), encoding=extended.group(1) or 'utf-8', errors='replace')
    return ''


def _checked_ids(ids: Iterable[str]) -> list[str]:
    if isinstance(ids, (str, bytes)):
        raise ValueError('ids must be a collection of image ids, not a single string')
    checked = list(ids)
    for image_id in checked:
        if not isinstance(image_id, str) or not _SAFE_ID.match(image_id):
            raise ValueError(f'not a valid image id: {image_id!r}')
    return checked


def _checked_upload_files(files: Sequence[Path | str]) -> list[Path]:
    if isinstance(files, (str, bytes, Path)):
        raise ValueError('files must be a list of paths, not a single path')
    paths = [Path(f) for f in files]
    if not paths:
        raise ValueError('no files to upload')
    names: set[str] = set()
    for path in paths:
        if not path.is_file():
            raise ValueError(f'model file {path} does not exist or is not a file')
        if path.stat().st_size == 0:
            raise ValueError(f'model file {path} is empty')
        if path.name in names:
            raise ValueError(f'two model files are named {path.name!r}; the Loop would keep only one')
        names.add(path.name)
    return paths


def _path_part(value: str, what: str) -> str:
    if not isinstance(value, str) or not value or value in ('.', '..') or '/' in value:
        raise ValueError(f'{what} must be a non-empty name without "/", got {value!r}')
    return quote(value, safe='')


def _conflict_model_id(response: requests.Response) -> str | None:
    try:
        detail = response.json().get('detail')
        candidate = detail.get('id') if isinstance(detail, dict) else None
        return str(uuid.UUID(candidate)) if isinstance(candidate, str) else None
    except (ValueError, AttributeError):
        return None


def _http_error(response: requests.Response) -> LoopHTTPError:
    try:
        raise_for_status(response)
    except LoopHTTPError as e:
        return e
    return LoopHTTPError(response.request.method or '?', response.url, response.status_code, response.text[:10_000])


def _image_problem(handle: IO[bytes]) -> str | None:
    """Why the image in ``handle`` is unusable, or ``None`` if it decodes.

    ``verify()`` checks the structure without decoding, so it cannot see a JPEG cut short. A JPEG that ends with
    its end-of-image marker is complete; one that does not (cut short, or with trailing bytes after the marker) is
    decoded at 1/8 scale, which reads every scan to the end and fails for a truncated file.
    """
    try:
        with Image.open(handle) as image:
            image_format = image.format
            image.verify()
        if image_format == 'JPEG':
            handle.seek(-2, os.SEEK_END)
            if handle.read(2) != b'\xff\xd9':
                handle.seek(0)
                with Image.open(handle) as image:
                    image.draft('L', (max(1, image.width // 8), max(1, image.height // 8)))
                    image.load()
    except Exception as e:  # Pillow raises many kinds (OSError, SyntaxError, ValueError...) for broken data
        return f'not a readable image ({type(e).__name__}: {e})'
    return None


def _clean_and_list(folder: Path) -> set[str]:
    """Names of the non-empty files in ``folder``; leftovers of interrupted downloads are deleted."""
    present = set()
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith('.') and entry.name.endswith(_PARTIAL_SUFFIX):
                Path(entry.path).unlink(missing_ok=True)
            elif entry.name.endswith('.jpg') and entry.is_file() and entry.stat().st_size > 0:
                present.add(entry.name)
    return present


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + '...'
