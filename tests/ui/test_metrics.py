"""A training's chart points: precision, recall and F1 summed over categories, and which updates belong to it."""

from __future__ import annotations

from llnode.localloop.ui.metrics import point_of, training_points


def test_a_point_sums_the_counts_of_every_category() -> None:
    update = {'confusion_matrix': {'a': {'tp': 6, 'fp': 2, 'fn': 0}, 'b': {'tp': 2, 'fp': 0, 'fn': 4}}, 'best_epoch': 7}
    assert point_of(update, 0) == {
        'epoch': 7,
        'precision': 0.8,
        'recall': 0.6667,
        'f1': 0.7273,
        'tp': 8,
        'fp': 2,
        'fn': 4,
    }
    # no counts, broken counts, no epoch: zeros and the update's position
    assert point_of({'confusion_matrix': {'a': {'tp': -1, 'fp': 'x'}}}, 2) == {
        'epoch': 3,
        'precision': 0.0,
        'recall': 0.0,
        'f1': 0.0,
        'tp': 0,
        'fp': 0,
        'fn': 0,
    }


def test_updates_belong_to_the_training_their_trainer_ran_at_the_time() -> None:
    first = {'number': 4, 'node_id': 't1', 'created': '2026-01-01T10:00:00.000+00:00'}
    other = {'number': 5, 'node_id': 't2', 'created': '2026-01-01T10:01:00.000+00:00'}
    second = {'number': 6, 'node_id': 't1', 'created': '2026-01-01T10:02:00.000+00:00'}
    trainings = [first, other, second]

    def update(trainer: str, epoch: int) -> dict[str, object]:
        return {'trainer_id': trainer, 'best_epoch': epoch, 'confusion_matrix': {'c': {'tp': 1, 'fp': 0, 'fn': 0}}}

    updates = [
        ('2026-01-01T09:59:00.000+00:00', update('t1', 99)),  # before the training began
        ('2026-01-01T10:00:30.000+00:00', update('t1', 1)),
        ('2026-01-01T10:01:30.000+00:00', update('t2', 1)),  # another trainer's training
        ('2026-01-01T10:01:40.000+00:00', update('t1', 2)),
        ('2026-01-01T10:02:30.000+00:00', update('t1', 1)),  # the next training of the same trainer
    ]
    assert [p['epoch'] for p in training_points(first, trainings, updates)] == [1, 2]
    assert [p['epoch'] for p in training_points(other, trainings, updates)] == [1]
    assert [p['epoch'] for p in training_points(second, trainings, updates)] == [1]
