"""Model zips as the Loop stores and serves them: flat, with a ``model.json`` the Loop fills in.

On upload the Loop adds or corrects ``id``, ``host``, ``organization``, ``project``, ``version`` and ``format`` in
``model.json`` and creates the file when it is missing (loop-protocol §7.1); everything else the uploader wrote
(``categories``, ``resolution``, ...) is kept. Without uploaded categories the project's categories are used.
"""

from __future__ import annotations

import io
import json
import posixpath
import zipfile
from collections.abc import Sequence
from typing import Any

from llnode.localloop.errors import BadRequest, Unprocessable


def clean_filename(filename: str | None) -> str:
    """The base name of an uploaded file; a zip stays flat, and no name escapes the archive."""
    name = posixpath.basename((filename or '').replace('\\', '/'))
    if not name or name in ('.', '..'):
        raise BadRequest(f'an uploaded file needs a file name, got {filename!r}')
    return name


def build_model_zip(
    files: Sequence[tuple[str, bytes]],
    *,
    model_id: str,
    version: str,
    organization: str,
    project: str,
    model_format: str,
    host: str | None,
    categories: list[dict[str, Any]],
) -> bytes:
    """A flat zip of ``files`` (name, content) whose ``model.json`` carries the Loop's fields."""
    info: dict[str, Any] = {}
    names = set()
    for name, content in files:
        if name in names:
            raise BadRequest(f'file {name!r} was uploaded twice')
        names.add(name)
        if name == 'model.json':
            try:
                loaded = json.loads(content.decode('utf-8'))
            except (UnicodeDecodeError, ValueError) as e:
                raise Unprocessable(f'model.json is not valid JSON: {e}') from e
            if not isinstance(loaded, dict):
                raise Unprocessable('model.json must hold a JSON object')
            info = loaded
    if 'categories' in info and not isinstance(info['categories'], list):
        raise Unprocessable('model.json "categories" must be a list')
    info = {
        **info,
        'id': model_id,
        'host': host,
        'organization': organization,
        'project': project,
        'version': version,
        'format': model_format,
    }
    info.setdefault('categories', categories)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, 'w', zipfile.ZIP_DEFLATED) as archive:
        for name, content in files:
            if name != 'model.json':
                archive.writestr(name, content)
        archive.writestr('model.json', json.dumps(info, indent=2))
    return buffer.getvalue()


def read_model_json(zip_bytes: bytes) -> dict[str, Any]:
    """The ``model.json`` of a stored zip (for tests and listings)."""
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as archive:
        result: dict[str, Any] = json.loads(archive.read('model.json'))
        return result
