"""``llnode.trainer.metrics``: F1 per category and the macro mean, as the reference 0.27 defines them."""

from __future__ import annotations

import random

import pytest

from llnode.trainer.metrics import category_f1, confusion_matrix_from_counts, macro_f1


def test_documented_rules() -> None:
    assert category_f1({'tp': 3, 'fp': 1, 'fn': 2}) == pytest.approx(6 / 9)
    assert category_f1({'tp': 0, 'fp': 0, 'fn': 0}) == 0.0  # undefined -> 0.0
    assert category_f1({'tp': 0, 'fp': 4, 'fn': 0}) == 0.0
    assert macro_f1({}) == 0.0
    matrix = {'cat': {'tp': 3, 'fp': 1, 'fn': 2}, 'dog': {'tp': 0, 'fp': 0, 'fn': 0}}
    assert macro_f1(matrix) == pytest.approx(6 / 9 / 2)  # unweighted: the empty category counts as 0
    assert confusion_matrix_from_counts({'cat': 3}, {'cat': 1, 'dog': 2}, {'bird': 5}) == {
        'cat': {'tp': 3, 'fp': 1, 'fn': 0},
        'dog': {'tp': 0, 'fp': 2, 'fn': 0},
        'bird': {'tp': 0, 'fp': 0, 'fn': 5},
    }


def test_randomised_f1_equals_precision_and_recall() -> None:
    rng = random.Random(6)
    for _ in range(500):
        rows = {f'c{n}': {k: rng.randint(0, 5) for k in ('tp', 'fp', 'fn')} for n in range(rng.randint(1, 5))}
        scores = []
        for row in rows.values():
            p = row['tp'] / (row['tp'] + row['fp']) if row['tp'] + row['fp'] else None
            r = row['tp'] / (row['tp'] + row['fn']) if row['tp'] + row['fn'] else None
            f1 = 2 * p * r / (p + r) if p is not None and r is not None and p + r else 0.0
            assert category_f1(row) == pytest.approx(f1)
            scores.append(f1)
        assert macro_f1(rows) == pytest.approx(sum(scores) / len(scores))
