"""NumpyXorMasker unmasks exactly as wsproto does, in one call or in parts of any size."""

from __future__ import annotations

import random

import pytest
from wsproto import frame_protocol

from llnode.node import wsmask
from llnode.node.wsmask import NumpyXorMasker

#: wsproto's own masker, kept before any install() replaces the module attribute
ORIGINAL = frame_protocol.XorMaskerSimple if frame_protocol.XorMaskerSimple is not NumpyXorMasker else None


@pytest.mark.skipif(ORIGINAL is None, reason="wsproto's masker was already replaced in this process")
@pytest.mark.parametrize('seed', range(20))
def test_same_bytes_as_wsproto_for_any_split(seed: int) -> None:
    rng = random.Random(seed)
    key = bytearray(rng.randbytes(4))
    payload = rng.randbytes(rng.choice([0, 1, 3, 4, 5, 1000, 65536, 65539, 200_001]))
    cuts = sorted(rng.randrange(len(payload) + 1) for _ in range(rng.randrange(5)))
    parts = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
    ours, theirs = NumpyXorMasker(key), ORIGINAL(bytearray(key))  # type: ignore[misc]
    mine = b''.join(ours.process(bytearray(p)) for p in parts)
    reference = b''.join(bytes(theirs.process(bytearray(p))) for p in parts)
    assert mine == reference
    assert len(mine) == len(payload)
    assert bytes(NumpyXorMasker(key).process(mine)) == payload  # masking twice is the identity


def test_bad_key_is_refused() -> None:
    with pytest.raises(ValueError, match='4 bytes'):
        NumpyXorMasker(b'abc')


def test_install_replaces_wsprotos_masker_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(frame_protocol, 'XorMaskerSimple', ORIGINAL or NumpyXorMasker)
    assert wsmask.install() and frame_protocol.XorMaskerSimple is NumpyXorMasker
    assert wsmask.install() and frame_protocol.XorMaskerSimple is NumpyXorMasker
    monkeypatch.delattr(frame_protocol, 'XorMaskerSimple')
    assert not wsmask.install()
