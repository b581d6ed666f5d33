"""``llnode.trainer.validation_set``: the reference's hash rule, its fallbacks and errors."""

from __future__ import annotations

import hashlib
import random
import uuid

import pytest

from llnode.trainer.logic import CriticalError
from llnode.trainer.validation_set import (
    COMPUTE_VALIDATION_SET,
    VALIDATION_FRACTION,
    assign_validation_set,
    compute_validation_set,
)


def items(ids: list[str], kind: str = 'train') -> list[dict[str, object]]:
    return [{'id': i, 'set': kind, 'box_annotations': []} for i in ids]


def position(image_id: str) -> float:
    """The rule as changes-0.27 §2.4 words it: the first 8 hex digits of sha256(id), divided by 16^8."""
    return int(hashlib.sha256(image_id.encode('utf-8')).hexdigest()[:8], 16) / 16**8


def test_the_flag_must_be_a_real_bool() -> None:
    assert (COMPUTE_VALIDATION_SET, VALIDATION_FRACTION) == ('compute_validation_set', 0.1)
    assert compute_validation_set({}) is False
    assert compute_validation_set({'compute_validation_set': True}) is True
    for bad in ('yes', 'true', 1, 0, None):
        with pytest.raises(CriticalError, match='compute_validation_set'):
            compute_validation_set({'compute_validation_set': bad})


def test_randomised_ids_split_by_their_hash_and_stay_split_as_images_arrive() -> None:
    rng = random.Random(13)
    ids = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(400)]
    data = items(ids[:300]) + items([f'test-{n}' for n in range(30)], 'test')
    assign_validation_set(data, {'compute_validation_set': True})
    val = {d['id'] for d in data if d['set'] == 'val'}
    assert val == {i for i in ids[:300] if position(i) < 0.1}
    assert 10 < len(val) < 60
    assert all(d['set'] == 'test' for d in data if str(d['id']).startswith('test-'))
    # a continued training with 100 more images: the old images keep their sets
    more = items(ids)
    assign_validation_set(more, {'compute_validation_set': True})
    assert {d['id'] for d in more if d['set'] == 'val'} & set(ids[:300]) == val


def test_fallbacks_and_errors() -> None:
    # without the flag, no val images; with val images from the Loop, they are used unchanged
    data = items(['a', 'b', 'c'])
    assert assign_validation_set(data, {}) is data
    assert [d['set'] for d in data] == ['train'] * 3
    sent = [*items(['a', 'b']), *items(['c'], 'val')]
    assign_validation_set(sent, {'compute_validation_set': True})
    assert [d['set'] for d in sent] == ['train', 'train', 'val']
    # no image below 0.1: the single lowest one
    few = [i for i in (f'img-{n}' for n in range(40)) if position(i) >= 0.1][:4]
    data = items(few)
    assign_validation_set(data, {'compute_validation_set': True})
    assert [d['id'] for d in data if d['set'] == 'val'] == [min(few, key=position)]
    with pytest.raises(CriticalError, match='at least 2 train images'):
        assign_validation_set(items(['only']), {'compute_validation_set': True})
    with pytest.raises(CriticalError):
        assign_validation_set(items(['a', 'b']), {'compute_validation_set': 'yes'})
