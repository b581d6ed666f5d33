"""A training's metrics as the UI charts them: precision, recall and F1 per epoch from its ``update_training``s.

``update_training`` carries per-category ``{tp, fp, fn}`` counts (TrainingOut's ``confusion_matrix``) and the
``best_epoch``; the Loop does not number updates by training, so the updates of a training are those its trainer
sent between the training's start and the start of the next training on the same trainer.
"""

from __future__ import annotations

from typing import Any


def point_of(update: dict[str, Any], index: int) -> dict[str, Any]:
    """``{epoch, precision, recall, f1, tp, fp, fn}`` summed over the categories of one update."""
    matrix = update.get('confusion_matrix') or {}
    tp = fp = fn = 0
    for counts in matrix.values() if isinstance(matrix, dict) else ():
        if isinstance(counts, dict):
            tp += _count(counts.get('tp'))
            fp += _count(counts.get('fp'))
            fn += _count(counts.get('fn'))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    epoch = update.get('best_epoch')
    return {
        'epoch': epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else index + 1,
        'precision': round(precision, 4),
        'recall': round(recall, 4),
        'f1': round(f1, 4),
        'tp': tp,
        'fp': fp,
        'fn': fn,
    }


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def training_points(
    training: dict[str, Any], trainings: list[dict[str, Any]], updates: list[tuple[str, dict[str, Any]]]
) -> list[dict[str, Any]]:
    """The chart points of ``training`` (one of ``trainings``, the project's, oldest first)."""
    later = [
        t['created']
        for t in trainings
        if t['node_id'] == training['node_id'] and t['created'] > training['created'] and t is not training
    ]
    end = min(later) if later else None
    mine = [
        payload
        for received, payload in updates
        if payload.get('trainer_id') == training['node_id']
        and received >= training['created']
        and (end is None or received < end)
    ]
    return [point_of(update, index) for index, update in enumerate(mine)]
