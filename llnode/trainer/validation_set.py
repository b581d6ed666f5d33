"""The validation split, as the reference 0.27's ``trainer/validation_set.py``: the same image ids give the same split.

The Loop sends each training image with ``set`` ``train`` or ``test`` (a newer Loop may send ``val`` too). When it
sent ``val`` images, they are used unchanged. Otherwise, when the hyperparameter ``compute_validation_set`` is
true, about a tenth of the train images become ``val``: an image's position is the first 8 hex digits of the
SHA-256 of its id (UTF-8) read as a number and divided by 16^8, and every train image below
:data:`VALIDATION_FRACTION` goes to ``val`` (the single lowest one when none falls below it). The split depends
only on the id, so it is stable across continued trainings and as new images arrive, and it is the reference's:
a project's validation images do not change when its trainer moves between the libraries.

The trainer node calls :func:`assign_validation_set` right after the data download, before ``image_data`` is
saved; a training reads the result with ``run.train_images()``, ``run.val_images()`` and ``run.test_images()``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from typing import Any

from llnode.trainer.logic import CriticalError

logger = logging.getLogger('llnode.trainer.validation_set')

#: The hyperparameter that asks for a computed validation set (a JSON boolean; default false).
COMPUTE_VALIDATION_SET = 'compute_validation_set'
#: The share of the train images that becomes the validation set.
VALIDATION_FRACTION = 0.1

_SCALE = 16**8


def compute_validation_set(hyperparameters: Mapping[str, Any]) -> bool:
    """The ``compute_validation_set`` hyperparameter: a real bool, False when absent; else :class:`CriticalError`."""
    value = hyperparameters.get(COMPUTE_VALIDATION_SET, False)
    if not isinstance(value, bool):
        raise CriticalError(
            f'hyperparameter {COMPUTE_VALIDATION_SET} must be true or false (a JSON boolean), got {value!r}'
        )
    return value


def split_position(image_id: str) -> float:
    """Where an image lies in [0, 1): the first 8 hex digits of ``sha256(id)`` divided by 16^8."""
    return int(hashlib.sha256(image_id.encode()).hexdigest()[:8], 16) / _SCALE


def assign_validation_set(image_data: list[dict[str, Any]], hyperparameters: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Mark the validation images in ``image_data`` (items' ``set`` becomes ``val``); returns the same list.

    Items the Loop already marked ``val`` are kept as they are. With the flag set and fewer than 2 train images,
    a :class:`CriticalError` (a training cannot both train and validate on one image).
    """
    wanted = compute_validation_set(hyperparameters)
    if any(item.get('set') == 'val' for item in image_data):
        logger.info('using the validation set the Loop sent')
        return image_data
    if not wanted:
        return image_data
    train = [item for item in image_data if item.get('set') == 'train']
    if len(train) < 2:
        raise CriticalError(
            f'{COMPUTE_VALIDATION_SET} needs at least 2 train images to split off a validation set, got {len(train)}'
        )
    positions = [(split_position(str(item['id'])), n) for n, item in enumerate(train)]
    chosen = [n for position, n in positions if position < VALIDATION_FRACTION] or [min(positions)[1]]
    for n in chosen:
        train[n]['set'] = 'val'
    logger.info('validation set: %d of %d train images', len(chosen), len(train))
    return image_data
