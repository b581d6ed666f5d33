"""Scores from the Loop's confusion matrix, as the reference 0.27's ``trainer/metrics.py``.

A confusion matrix maps a category (uuid) to ``{'tp': int, 'fp': int, 'fn': int}``, the form ``update_training``
sends. These are meant for choosing the best checkpoint (``get_new_best``): :func:`macro_f1` weighs every category
the same, so a rare category counts as much as a frequent one.
"""

from __future__ import annotations

from collections.abc import Mapping

ConfusionMatrix = dict[str, dict[str, int]]


def category_f1(counts: Mapping[str, int]) -> float:
    """F1 of one category from its ``tp``, ``fp``, ``fn``: ``2·tp / (2·tp + fp + fn)``; 0.0 where undefined."""
    tp, fp, fn = counts.get('tp', 0), counts.get('fp', 0), counts.get('fn', 0)
    denominator = 2 * tp + fp + fn
    return 2 * tp / denominator if tp and denominator else 0.0


def macro_f1(confusion_matrix: Mapping[str, Mapping[str, int]]) -> float:
    """The unweighted mean of :func:`category_f1` over every category of the matrix; 0.0 for an empty matrix.

    A category without any counts scores 0.0 and still counts in the mean (the reference's rule).
    """
    if not confusion_matrix:
        return 0.0
    return sum(category_f1(row) for row in confusion_matrix.values()) / len(confusion_matrix)


def confusion_matrix_from_counts(
    tp: Mapping[str, int], fp: Mapping[str, int], fn: Mapping[str, int]
) -> ConfusionMatrix:
    """The Loop's ``{category: {'tp', 'fp', 'fn'}}`` from three mappings category -> count (missing: 0)."""
    categories = dict.fromkeys([*tp, *fp, *fn])
    return {
        category: {'tp': int(tp.get(category, 0)), 'fp': int(fp.get(category, 0)), 'fn': int(fn.get(category, 0))}
        for category in categories
    }
