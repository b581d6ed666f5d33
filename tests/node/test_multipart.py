"""The direct multipart path gives exactly what werkzeug's parser gives, and hands every other body to werkzeug."""

from __future__ import annotations

import io
from typing import Any

import pytest
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import FormDataParser

from llnode.node import multipart
from llnode.node.multipart import InMemoryFormDataParser, split_form_data

BOUNDARY = 'xYzBoundary123'


def body(*parts: tuple[str, bytes], boundary: str = BOUNDARY, newline: bytes = b'\r\n', epilogue: bytes = b'') -> bytes:
    """``parts`` are (header block, content); the header block uses ``\\n`` between lines."""
    out = b''
    for headers, content in parts:
        out += b'--' + boundary.encode() + newline + headers.encode().replace(b'\n', newline) + newline * 2
        out += content + newline
    return out + b'--' + boundary.encode() + b'--' + newline + epilogue


def file_part(name: str, filename: str, content: bytes, content_type: str = 'image/jpeg') -> tuple[str, bytes]:
    return (
        f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\nContent-Type: {content_type}',
        content,
    )


def field_part(name: str, value: bytes, content_type: str | None = None) -> tuple[str, bytes]:
    headers = f'Content-Disposition: form-data; name="{name}"'
    return (headers + (f'\nContent-Type: {content_type}' if content_type else '')), value


def described(parsed: tuple[Any, Any, Any]) -> tuple[list[Any], list[Any]]:
    _, form, files = parsed
    return (
        list(form.items(multi=True)),
        [
            (key, f.filename, f.name, f.content_type, f.stream.read(), sorted(f.headers.items()))
            for key, f in files.items(multi=True)
        ],
    )


def parse_both(data: bytes, **limits: Any) -> tuple[Any, Any]:
    options = {'boundary': BOUNDARY}
    ours = InMemoryFormDataParser(**limits).parse(io.BytesIO(data), 'multipart/form-data', len(data), options)
    theirs = FormDataParser(**limits).parse(io.BytesIO(data), 'multipart/form-data', len(data), options)
    return described(ours), described(theirs)


JPEG = bytes(range(256)) * 40 + b'\r\n--xYzBoundary12' + b'\r\r\n\n--'  # a near-boundary inside the content

WELL_FORMED = [
    body(file_part('file', 'image.jpg', JPEG)),
    body(file_part('files', 'a.jpg', JPEG), file_part('files', 'b.jpg', b''), field_part('autoupload', b'all')),
    body(
        field_part('text', 'grüße'.encode()),
        field_part('latin', 'é'.encode('latin-1'), 'text/plain; charset=iso-8859-1'),
    ),
    body(file_part('file', 'weird name ü.jpg', JPEG, 'application/octet-stream')),
    body(file_part('file', 'x.jpg', JPEG), epilogue=b'trailing epilogue\r\n'),
    body(),
]


@pytest.mark.parametrize('data', WELL_FORMED)
def test_well_formed_bodies_take_the_direct_path_and_match_werkzeug(data: bytes) -> None:
    assert split_form_data(data, BOUNDARY.encode()) is not None
    ours, theirs = parse_both(data)
    assert ours == theirs


FALLBACK = [
    body(file_part('file', 'a.jpg', JPEG), newline=b'\n'),  # LF-only line breaks
    b'a preamble\r\n' + body(file_part('file', 'a.jpg', JPEG)),
    body(file_part('file', 'a.jpg', JPEG))[:-30],  # truncated: no close delimiter
    body(('X-No-Disposition: 1', b'data')),
    body(('Content-Disposition: attachment; name="f"', b'data')),
    body(('not a header line', b'data')),
]


@pytest.mark.parametrize('data', FALLBACK)
def test_other_bodies_go_to_werkzeug_unchanged(data: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = FormDataParser.parse

    def spy(self: FormDataParser, *args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(FormDataParser, 'parse', spy)
    ours = InMemoryFormDataParser().parse(io.BytesIO(data), 'multipart/form-data', len(data), {'boundary': BOUNDARY})
    assert len(calls) == 1  # handed over once, with the whole body
    theirs = original(FormDataParser(), io.BytesIO(data), 'multipart/form-data', len(data), {'boundary': BOUNDARY})
    assert described(ours) == described(theirs)


def test_limits_are_werkzeugs() -> None:
    data = body(*[field_part(f'f{i}', b'v') for i in range(5)])
    with pytest.raises(RequestEntityTooLarge):
        InMemoryFormDataParser(max_form_parts=3).parse(
            io.BytesIO(data), 'multipart/form-data', len(data), {'boundary': BOUNDARY}
        )
    big_field = body(field_part('f', b'x' * 2000))
    with pytest.raises(RequestEntityTooLarge):
        InMemoryFormDataParser(max_form_memory_size=1000).parse(
            io.BytesIO(big_field), 'multipart/form-data', len(big_field), {'boundary': BOUNDARY}
        )
    with pytest.raises(RequestEntityTooLarge):
        InMemoryFormDataParser(max_content_length=10).parse(
            io.BytesIO(big_field), 'multipart/form-data', len(big_field), {'boundary': BOUNDARY}
        )
    ours, theirs = parse_both(body(file_part('file', 'a.jpg', b'x' * 200_000)), max_form_memory_size=100_000)
    assert ours == theirs and len(ours[1][0][4]) == 200_000  # the field cap does not apply to files


def test_no_boundary_is_not_split() -> None:
    assert split_form_data(body(), b'') is None
    assert multipart.split_form_data(b'--other\r\n', BOUNDARY.encode()) is None
