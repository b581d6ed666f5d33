"""The two Loop calls a converter needs beyond :class:`~llnode.loop.exchange.DataExchange`.

- ``GET …/models?format={source}``: the project's models, each with its ``formats`` (loop-protocol §2.2, the
  reference's converter docs). The converter keeps those that have the source format, lack the target format
  and have a version (the reference's converter skipped models without one).
- ``PUT …/models/{id}/{format}/file``: one more format for an existing model, a multipart body with one part
  named ``files`` per file (the reference's converter, removed in its v0.10.0; loop-protocol §8). A 409 means
  the Loop holds that format already: the conversion is done, whoever uploaded it.

Downloads go through :meth:`DataExchange.download_model`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from llnode.loop.errors import LoopProtocolError
from llnode.loop.exchange import DataExchange, MultipartFiles
from llnode.loop.http import raise_for_status

logger = logging.getLogger('llnode.converter')

#: Model ids become folder names and URL path parts: only plain names are accepted from the listing.
_SAFE_ID = re.compile(r'^[A-Za-z0-9][A-Za-z0-9._-]*$')


@dataclass(frozen=True)
class ListedModel:
    """One model of the Loop's listing that needs converting."""

    id: str
    version: str
    formats: tuple[str, ...]


def convertible_models(exchange: DataExchange, source_format: str, target_format: str) -> list[ListedModel]:
    """The project's models that have ``source_format`` but lack ``target_format``, in the Loop's order.

    The listing is filtered again by ``formats`` here, so a Loop that ignores ``?format=`` still works. Raises
    :class:`LoopHTTPError` and friends for a failed request and :class:`LoopProtocolError` when the answer is
    not ``{"models": [...]}``; single items without a usable ``id`` or ``formats`` are skipped with a warning.
    """
    path = exchange.project_url(f'/models?format={quote(source_format, safe="")}')
    body = exchange.client.json('GET', path)
    items = body.get('models') if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise LoopProtocolError(f'GET {path}: expected {{"models": [...]}}, got {_preview(body)}')
    found = []
    for item in items:
        model = _listed_model(item)
        if model is None:
            logger.warning('GET %s: skipping a model entry without a usable id or formats: %s', path, _preview(item))
            continue
        if source_format in model.formats and target_format not in model.formats and model.version:
            found.append(model)
    return found


def _listed_model(item: Any) -> ListedModel | None:
    if not isinstance(item, dict):
        return None
    model_id, version, formats = item.get('id'), item.get('version'), item.get('formats')
    if not isinstance(model_id, str) or not _SAFE_ID.match(model_id):
        return None
    if not isinstance(formats, list) or not all(isinstance(f, str) for f in formats):
        return None
    return ListedModel(model_id, version if isinstance(version, str) else '', tuple(formats))


def upload_model_format(exchange: DataExchange, model_id: str, model_format: str, files: Sequence[Path]) -> bool:
    """Upload ``files`` as format ``model_format`` of the existing model ``model_id``.

    True when the Loop took them, False when it answered 409 (it holds that format already). Any other non-2xx
    raises :class:`LoopHTTPError` (its ``status`` tells a Loop that is unavailable from a refusal).
    """
    path = exchange.project_url(f'/models/{quote(model_id, safe="")}/{quote(model_format, safe="")}/file')
    with MultipartFiles('files', list(files)) as body:
        response = exchange.client.request('PUT', path, data=body, headers={'Content-Type': body.content_type})
    with closing(response):
        if response.status_code == 409:
            logger.info('the Loop already holds format %s of model %s', model_format, model_id)
            return False
        raise_for_status(response)
    return True


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + '...'
