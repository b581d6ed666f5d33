"""Images as clients send them: encoded files (REST, Socket.IO ``jpeg``) and raw ndarray dicts (Socket.IO ``raw``).

One place decides what an acceptable image is, so REST and Socket.IO give the same errors: bytes Pillow cannot
decode are a :class:`ImageDecodeError` (HTTP 400), a picture with more pixels than ``MAX_PIXELS`` is
:class:`ImageTooLargeError` (413), and an ndarray dict with a wrong dtype, shape or byte count is
:class:`ImagePayloadError` (422). Decoding honours the EXIF orientation (reference 0.27) and keeps the file's own
channel layout (HxW for greyscale, HxWx3 RGB, HxWx4 RGBA), as the reference hands images to the logic.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from llnode.node.errors import BadRequest, PayloadTooLarge, Unprocessable

#: Largest picture accepted, in pixels (about 16k x 10k); Pillow's own bomb check would only warn below 2x this.
MAX_PIXELS = 178_956_970 // 2

#: Image memory blocks Pillow keeps for reuse once a detector runs (Pillow's default keeps none). Without them
#: every decode of a 640x480 picture gets fresh pages from the kernel: measured 2.0 ms per decode instead of
#: 0.57 ms. At most this many freed blocks (each at most Pillow's block size, 16 MiB) stay allocated.
PILLOW_BLOCKS_KEPT = 4

#: dtypes a raw ndarray dict may carry (what cameras and numpy pipelines produce; no objects, no complex)
RAW_DTYPES = frozenset(('uint8', 'uint16', 'int8', 'int16', 'int32', 'float16', 'float32', 'float64'))

#: EXIF tag that says how the picture must be rotated
_EXIF_ORIENTATION = 0x0112

#: modes handed over as they decode; every other mode (palette, CMYK, 1-bit, 16-bit...) is converted first
_KEPT_MODES = frozenset(('L', 'RGB', 'RGBA'))


class ImageDecodeError(BadRequest):
    """The bytes are not an image Pillow can decode (HTTP 400)."""


class ImageTooLargeError(PayloadTooLarge):
    """The picture has more pixels than the detector accepts (HTTP 413)."""


class ImagePayloadError(Unprocessable):
    """An ndarray dict whose fields do not describe a usable image (HTTP 422)."""


def keep_pillow_blocks(blocks: int = PILLOW_BLOCKS_KEPT) -> None:
    """Let Pillow reuse freed image memory (``Image.core.set_blocks_max``) unless the user configured it
    (``PILLOW_BLOCKS_MAX`` or an earlier call); the node calls it at start, importing llnode changes nothing."""
    if os.environ.get('PILLOW_BLOCKS_MAX') is None and Image.core.get_blocks_max() == 0:
        Image.core.set_blocks_max(blocks)


def release_pillow_blocks() -> None:
    """Free the image blocks Pillow keeps for reuse (they come back with the next decodes); for idle times."""
    Image.core.clear_cache()


def decode_image(data: bytes | bytearray | memoryview, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """The picture in ``data`` (any format Pillow reads) as an array, EXIF orientation applied."""
    return np.asarray(_load(data, max_pixels))


def check_decodable(data: bytes | bytearray | memoryview, *, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """``(width, height)`` of the picture in ``data`` if Pillow can decode all of it; else the errors above.

    Explicit uploads keep the client's bytes, but only once they are known to be a whole, readable picture.
    """
    width, height = _load(data, max_pixels).size
    return width, height


def _load(data: bytes | bytearray | memoryview, max_pixels: int) -> Image.Image:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageDecodeError(f'image data must be bytes, got {type(data).__name__}')
    if len(data) == 0:
        raise ImageDecodeError('image data is empty')
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('error', Image.DecompressionBombWarning)
            picture: Image.Image = Image.open(io.BytesIO(data))
            width, height = picture.size
            if width * height > max_pixels:
                raise ImageTooLargeError(f'image has {width}x{height} pixels, more than the {max_pixels} accepted')
            if picture.getexif().get(_EXIF_ORIENTATION, 1) != 1:
                from PIL import ImageOps  # imported when first needed: it pulls in ~1 MB of palette modules

                picture = ImageOps.exif_transpose(picture)
            picture.load()
            if picture.mode not in _KEPT_MODES:
                picture = picture.convert('RGBA' if _has_alpha(picture) else 'RGB')
            return picture
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLargeError(f'image is too large to decode: {e}') from None
    except UnidentifiedImageError:
        raise ImageDecodeError('could not decode the image: not a format Pillow reads') from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt data
        raise ImageDecodeError(f'could not decode the image: {e}') from None


def _has_alpha(picture: Image.Image) -> bool:
    return picture.mode in ('LA', 'PA', 'RGBa', 'La') or 'transparency' in picture.info


def image_from_dict(payload: Any, *, max_pixels: int = MAX_PIXELS) -> np.ndarray | bytes:
    """The image of a Socket.IO image dict: an array for ``raw``, the client's encoded bytes for ``jpeg``.

    ``raw`` (the default): ``{"bytes": <ndarray bytes, C order>, "dtype": "uint8", "shape": [H, W, C]}``.
    ``jpeg``: ``{"format": "jpeg", "bytes": <encoded file>}`` (any format Pillow reads, like the reference);
    it is decoded where it is used (:func:`decode_image`), so the bytes can go to the outbox as they came.
    """
    if not isinstance(payload, Mapping):
        raise ImagePayloadError(f'an image must be a dict with "bytes", got {type(payload).__name__}')
    image_format = payload.get('format', 'raw')
    data = payload.get('bytes')
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImagePayloadError(f'image "bytes" must be binary data, got {type(data).__name__}')
    if image_format == 'jpeg':
        if len(data) == 0:
            raise ImageDecodeError('image data is empty')
        return bytes(data)
    if image_format != 'raw':
        raise ImagePayloadError(f'unknown image format {image_format!r}: expected "raw" or "jpeg"')
    return raw_image(data, payload.get('dtype'), payload.get('shape'), max_pixels=max_pixels)


def raw_image(
    data: bytes | bytearray | memoryview, dtype: Any, shape: Any, *, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """``np.frombuffer(data, dtype).reshape(shape)`` with every field checked first."""
    if not isinstance(dtype, str) or dtype not in RAW_DTYPES:
        raise ImagePayloadError(f'image "dtype" must be one of {", ".join(sorted(RAW_DTYPES))}, got {dtype!r}')
    dims = _shape(shape)
    if dims[0] * dims[1] > max_pixels:
        raise ImageTooLargeError(f'image has {dims[1]}x{dims[0]} pixels, more than the {max_pixels} accepted')
    item = np.dtype(dtype)
    expected = math.prod(dims) * item.itemsize
    if len(data) != expected:
        raise ImagePayloadError(
            f'image "bytes" has {len(data)} bytes, but shape {list(dims)} of {dtype} needs {expected}'
        )
    return np.frombuffer(data, dtype=item).reshape(dims)


def _shape(shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, Sequence) or isinstance(shape, (str, bytes)):
        raise ImagePayloadError(f'image "shape" must be a list [H, W] or [H, W, C], got {shape!r}')
    dims = tuple(shape)
    if len(dims) not in (2, 3) or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims):
        raise ImagePayloadError(f'image "shape" must be 2 or 3 positive integers [H, W(, C)], got {shape!r}')
    if len(dims) == 3 and dims[2] not in (1, 3, 4):
        raise ImagePayloadError(f'image "shape" must have 1, 3 or 4 channels, got {list(dims)}')
    return dims
