"""Where ``train.py`` leaves its weights and how the trainer node picks them up (the sample's ``model_files``).

``train.py`` writes, in ``result/weights/`` of the training folder, ``epoch{N}.pt`` with ``epoch{N}.json`` (the
confusion matrix of epoch N on the validation split) whenever an epoch beats the best one so far, and ``last.pt``
after every epoch (to resume from). The node reports the newest ``epoch{N}`` as a new best state; once the Loop
acknowledged it, the weights move to ``published/latest.pt`` and older epochs are deleted. ``latest.pt`` is what
gets uploaded: the model the Loop has the metrics of.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path

logger = logging.getLogger('yolo_style.model_files')

WEIGHTS_FOLDER = Path('result') / 'weights'
LAST_CHECKPOINT = 'last.pt'
PUBLISHED = Path('published') / 'latest.pt'
_EPOCH_FILE = re.compile(r'^epoch(\d+)\.pt$')


def weights_folder(training_folder: Path) -> Path:
    return Path(training_folder) / WEIGHTS_FOLDER


def epoch_of(weightfile: Path) -> int | None:
    """N of ``epoch{N}.pt``; None for any other name."""
    found = _EPOCH_FILE.match(weightfile.name)
    return int(found.group(1)) if found else None


def epoch_files(training_folder: Path) -> list[Path]:
    """The ``epoch{N}.pt`` files that have their ``.json`` beside them, oldest epoch first."""
    folder = weights_folder(training_folder)
    if not folder.is_dir():
        return []
    files = [p for p in folder.iterdir() if epoch_of(p) is not None and p.with_suffix('.json').is_file()]
    return sorted(files, key=lambda p: epoch_of(p) or 0)


def newest(training_folder: Path) -> Path | None:
    """The best epoch's weights not yet published (the newest ``epoch{N}.pt``), or None."""
    files = epoch_files(training_folder)
    return files[-1] if files else None


def published(training_folder: Path) -> Path:
    """Where the weights of the last state the Loop acknowledged are kept."""
    return weights_folder(training_folder) / PUBLISHED


def publish(training_folder: Path, weightfile: Path) -> Path | None:
    """Move ``weightfile`` to ``published/latest.pt``, delete its json and every older epoch; the new path.

    None (logged) when ``weightfile`` is gone: a newer state was published meanwhile and cleaned it up.
    """
    target = published(training_folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    epoch = epoch_of(weightfile)
    try:
        os.replace(weightfile, target)
    except FileNotFoundError:
        logger.warning('%s is gone; a newer state was published already', weightfile)
        return None
    with contextlib.suppress(FileNotFoundError):
        weightfile.with_suffix('.json').unlink()
    for older in epoch_files(training_folder):
        if epoch is not None and (epoch_of(older) or 0) < epoch:
            for path in (older, older.with_suffix('.json')):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
    return target
