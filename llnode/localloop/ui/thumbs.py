"""Thumbnails of the image grid: drawn once from the stored image, kept under ``{data}/thumbs``, then served as files.

Why a cache on disk: the grid of a 10,000-image project pages through many thumbnails, and decoding and scaling
a 640x480 JPEG takes several milliseconds; a thumbnail is a few kilobytes and never changes (an image's pixels
never change under its id). File names are a hash of the image id, so no id can name a path outside the folder.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from PIL import Image

from llnode.durable import write_bytes
from llnode.localloop.store import Store

#: largest thumbnail side in pixels (the grid shows them at about 200 px wide)
THUMB_SIZE = (240, 180)
THUMB_QUALITY = 80


def thumbnail_path(store: Store, organization: str, project: str, image_id: str) -> Path:
    digest = hashlib.sha256(image_id.encode()).hexdigest()[:40]
    return store.data_dir / 'thumbs' / organization / project / f'{digest}.jpg'


def thumbnail(store: Store, organization: str, project: str, image_id: str) -> Path | None:
    """The thumbnail file of an image, drawn on first use; None when the image is unknown or has no file."""
    path = thumbnail_path(store, organization, project, image_id)
    if path.is_file():
        return path
    jpeg = store.image_jpeg(organization, project, image_id)
    if jpeg is None:
        return None
    with Image.open(io.BytesIO(jpeg)) as opened:
        image = opened.convert('RGB')
    image.thumbnail(THUMB_SIZE)
    buffer = io.BytesIO()
    image.save(buffer, 'JPEG', quality=THUMB_QUALITY)
    write_bytes(path, buffer.getvalue())
    return path
