"""Multipart bodies exactly as they came on the wire, and the detector outbox's image batches (endpoint #10).

The outbox sends, per image, a part ``image_<id>.json`` (ImageMetadata, sent as ``text/plain``) and a part
``image_<id>.jpg``, all named ``files`` (loop-protocol §4.5); aiohttp percent-encodes ``:`` in file names as
``%3A``. Parts are decoded here in wire order (Flask's ``request.files`` groups them by name) so that the upload
log can show exactly what a client sent.
"""

from __future__ import annotations

import io
import json
import posixpath
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from PIL import Image, UnidentifiedImageError
from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData

from llnode.localloop.errors import BadRequest, Unprocessable
from llnode.localloop.store import IMAGE_STATES

DETECTION_LISTS = ('box_detections', 'point_detections', 'segmentation_detections', 'classification_detections')
ANNOTATION_LISTS = ('box_annotations', 'point_annotations')


@dataclass
class Part:
    """One multipart part: ``filename`` is the raw value of the header (still percent-encoded if it was)."""

    name: str
    filename: str | None
    content_type: str | None
    data: bytes

    def describe(self) -> dict[str, Any]:
        return {'name': self.name, 'filename': self.filename, 'content_type': self.content_type, 'size': len(self.data)}


def read_parts(content_type: str | None, body: bytes) -> list[Part]:
    """All parts of a ``multipart/form-data`` body in wire order; :class:`BadRequest` if it is not one."""
    mimetype, options = parse_options_header(content_type or '')
    if mimetype != 'multipart/form-data' or not options.get('boundary'):
        raise BadRequest(f'expected a multipart/form-data body, got {content_type or "no content type"!r}')
    decoder = MultipartDecoder(options['boundary'].encode('latin-1'))
    decoder.receive_data(body)
    decoder.receive_data(None)
    parts: list[Part] = []
    chunks: list[bytes] = []
    current: Part | None = None
    try:
        while True:
            event = decoder.next_event()
            if isinstance(event, (Field, File)):
                current = Part(
                    event.name,
                    event.filename if isinstance(event, File) else None,
                    event.headers.get('Content-Type'),
                    b'',
                )
                chunks = []
            elif isinstance(event, Data):
                chunks.append(event.data)
                if not event.more_data and current is not None:
                    current.data = b''.join(chunks)
                    parts.append(current)
                    current = None
            elif isinstance(event, (Epilogue, NeedData)):
                break
    except ValueError as e:
        raise BadRequest(f'malformed multipart body: {e}') from e
    return parts


def _check_list_of_dicts(meta: dict[str, Any], key: str, filename: str) -> list[dict[str, Any]]:
    value = meta.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise Unprocessable(f'{filename}: "{key}" must be a list of objects')
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def validate_image_metadata(meta: Any, filename: str) -> dict[str, Any]:
    """Check an ImageMetadata object (loop-protocol §7.2.5); :class:`Unprocessable` names what is wrong."""
    if not isinstance(meta, dict):
        raise Unprocessable(f'{filename}: ImageMetadata must be a JSON object')
    for key in DETECTION_LISTS + ANNOTATION_LISTS:
        for item in _check_list_of_dicts(meta, key, filename):
            if not isinstance(item.get('category_name'), str):
                raise Unprocessable(f'{filename}: every item of "{key}" needs a string "category_name"')
            coordinates = (
                ('x', 'y', 'width', 'height')
                if key.startswith('box')
                else (('x', 'y') if key.startswith('point') else ())
            )
            for c in coordinates:
                if not _is_number(item.get(c)):
                    raise Unprocessable(f'{filename}: "{key}" item has no numeric "{c}"')
            if key in DETECTION_LISTS and not _is_number(item.get('confidence')):
                raise Unprocessable(f'{filename}: "{key}" item has no numeric "confidence"')
    tags = meta.get('tags')
    if tags is not None and (not isinstance(tags, list) or not all(isinstance(t, str) for t in tags)):
        raise Unprocessable(f'{filename}: "tags" must be a list of strings')
    for key in ('created', 'source', 'state'):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise Unprocessable(f'{filename}: "{key}" must be a string or null')
    if meta.get('state') is not None and meta['state'] not in IMAGE_STATES:
        raise Unprocessable(f'{filename}: "state" must be one of {", ".join(IMAGE_STATES)}, got {meta["state"]!r}')
    annotation = meta.get('classification_annotation')
    if annotation is not None and not isinstance(annotation, dict):
        raise Unprocessable(f'{filename}: "classification_annotation" must be an object or null')
    return meta


def _decode_jpeg(data: bytes, filename: str) -> tuple[int, int]:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
        with Image.open(io.BytesIO(data)) as image:
            if image.format != 'JPEG':
                raise Unprocessable(f'{filename}: not a JPEG image but {image.format}')
            image.load()
            return image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise Unprocessable(f'{filename}: not a decodable JPEG image ({e})') from e


def outbox_images(parts: list[Part]) -> list[dict[str, Any]]:
    """The images of an outbox batch, ready for :meth:`Store.add_images`; any bad item fails the whole batch."""
    if not parts:
        raise BadRequest('no parts: the outbox sends parts named "files"')
    pairs: dict[str, dict[str, Part]] = {}
    for part in parts:
        if part.name != 'files':
            raise Unprocessable(f'unexpected part {part.name!r}: the outbox sends parts named "files"')
        name = posixpath.basename(unquote(part.filename or ''))
        stem, extension = posixpath.splitext(name)
        kind = {'.json': 'json', '.jpg': 'jpg', '.jpeg': 'jpg'}.get(extension.lower())
        if not stem or kind is None:
            raise Unprocessable(f'file {part.filename!r}: expected image_<id>.json or image_<id>.jpg')
        if kind in pairs.setdefault(stem, {}):
            raise Unprocessable(f'file {name!r} appears twice in the batch')
        pairs[stem][kind] = part
    images = []
    for stem, pair in pairs.items():
        missing = [f'{stem}.{k}' for k in ('json', 'jpg') if k not in pair]
        if missing:
            raise Unprocessable(f'{", ".join(missing)} missing: each image needs its .json and its .jpg')
        json_name = unquote(pair['json'].filename or '')
        try:
            meta = json.loads(pair['json'].data.decode('utf-8'))
        except (UnicodeDecodeError, ValueError) as e:
            raise Unprocessable(f'{json_name}: not valid JSON ({e})') from e
        meta = validate_image_metadata(meta, json_name)
        width, height = _decode_jpeg(pair['jpg'].data, unquote(pair['jpg'].filename or ''))
        detections = {key: list(meta.get(key) or []) for key in DETECTION_LISTS}
        images.append(
            {
                'jpeg': pair['jpg'].data,
                'width': width,
                'height': height,
                'state': meta.get('state') or 'inbox',
                'tags': meta.get('tags') or [],
                'source': meta.get('source'),
                'created': meta.get('created'),
                'metadata': meta,
                'box_annotations': meta.get('box_annotations') or [],
                'point_annotations': meta.get('point_annotations') or [],
                'classification_annotation': meta.get('classification_annotation'),
                'detections': [detections] if any(detections.values()) else [],
            }
        )
    return images
