"""The options a detection request carries besides its image, checked once for REST, Socket.IO and code alike:
an option of the wrong type is a 422 (Socket.IO: ``{"error": ...}``) that names the option and the type it needs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from llnode.node.errors import Unprocessable

#: ``autoupload`` values (loop-protocol §4.4); ``filtered`` is the default
AUTOUPLOAD_MODES = ('filtered', 'all', 'disabled')


def check_autoupload(value: Any) -> str:
    """``autoupload`` as given, when it is one of :data:`AUTOUPLOAD_MODES`; else a 422 that lists them."""
    if value not in AUTOUPLOAD_MODES:
        raise Unprocessable(f'autoupload must be one of {", ".join(AUTOUPLOAD_MODES)}, got {value!r}')
    return str(value)


def checked_tags(tags: Iterable[str]) -> list[str]:
    """``tags`` as a list; anything but a list (or another iterable) of strings is a 422 naming the option."""
    if isinstance(tags, (str, bytes, Mapping)) or not isinstance(tags, Iterable):
        raise Unprocessable(f'tags must be a list of strings, got {type(tags).__name__}')
    tag_list = list(tags)
    wrong = sorted({type(tag).__name__ for tag in tag_list if not isinstance(tag, str)})
    if wrong:
        raise Unprocessable(f'tags must be a list of strings, got a list with {", ".join(wrong)}')
    return tag_list


def checked_text(name: str, value: Any) -> str | None:
    """An optional text option (``camera_id``, ``source``, ``creation_date``): a string or None, else a 422."""
    if value is not None and not isinstance(value, str):
        raise Unprocessable(f'{name} must be a string, got {type(value).__name__}')
    return value
