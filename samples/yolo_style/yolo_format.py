"""The training data as the training script reads it: ``dataset.json`` in the training folder (the sample's
``yolov5_format.create_file_structure``).

A YOLO trainer node turns the Loop's annotations into YOLO labels before it starts ``train.py``: one row
``[class, cx, cy, w, h]`` per object, the centre and size normalised by the image size, the class being the index
of the category in the training's categories (so that the model's class index is the index into
``model_info.categories``). Points become boxes of their category's ``point_size``. The split comes from the run:
``run.train_images()``, ``run.val_images()`` (the validation split: the Loop's ``val`` images, or the one the
``compute_validation_set`` hyperparameter computes, else the test images) and ``run.test_images()``.

Unlike yolov5's label text files next to image symlinks, the sample writes one JSON file; the content is the same.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from llnode.durable import write_json
from llnode.schema import CategoryType
from llnode.trainer import CriticalError, TrainingRun

DATASET_FILE = 'dataset.json'
#: the box side of a point category without a ``point_size`` (pixels)
DEFAULT_POINT_SIZE = 20


def image_size(item: Mapping[str, Any], path: Path) -> tuple[int, int]:
    """``(width, height)`` of an image item: the Loop sends them; where it did not, the JPEG's header says."""
    if item.get('width') and item.get('height'):
        return int(item['width']), int(item['height'])
    from PIL import Image

    with Image.open(path) as image:
        return image.size


def yolo_labels(item: Mapping[str, Any], run: TrainingRun, width: float, height: float) -> list[list[float]]:
    """The YOLO label rows of one image item of the Loop (its box and point annotations)."""
    index = {c.id: i for i, c in enumerate(run.categories)}
    sizes = {c.id: c.point_size or DEFAULT_POINT_SIZE for c in run.categories}
    rows: list[list[float]] = []
    for box in item.get('box_annotations') or []:
        category = index.get(box['category_id'])
        if category is None:
            continue
        cx = (float(box['x']) + float(box['width']) / 2) / width
        cy = (float(box['y']) + float(box['height']) / 2) / height
        rows.append([category, cx, cy, float(box['width']) / width, float(box['height']) / height])
    for point in item.get('point_annotations') or []:
        category = index.get(point['category_id'])
        if category is None:
            continue
        size = float(sizes[point['category_id']])
        rows.append([category, float(point['x']) / width, float(point['y']) / height, size / width, size / height])
    return [[round(v, 6) if i else v for i, v in enumerate(row)] for row in rows]


def _entries(items: Iterable[Mapping[str, Any]], run: TrainingRun) -> list[dict[str, Any]]:
    entries = []
    for item in items:
        path = Path(run.images_folder) / f'{item["id"]}.jpg'
        if not path.is_file():
            run.logger.warning('image %s is missing in %s; it is left out', item['id'], run.images_folder)
            continue
        width, height = image_size(item, path)
        entries.append(
            {
                'id': item['id'],
                'image': str(path),
                'width': width,
                'height': height,
                'labels': yolo_labels(item, run, width, height),
            }
        )
    return entries


def create_file_structure(run: TrainingRun) -> Path:
    """Write ``dataset.json`` for ``run`` into its training folder; its path.

    Raises :class:`CriticalError` (no retry can help) when there is nothing to train on or validate with.
    """
    kinds = {CategoryType.BOX.value, CategoryType.POINT.value}
    if not any(c.type in kinds for c in run.categories):
        raise CriticalError('the training has no box or point category; a YOLO-style model detects only those')
    train = _entries(run.train_images(), run)
    val = _entries(run.val_images(), run)
    test = _entries(run.test_images(), run)
    if not train:
        raise CriticalError('no training images: the training set is empty')
    if not val:
        raise CriticalError('no validation images: give the project test images or set compute_validation_set')
    dataset = {
        'names': [c.name for c in run.categories],
        'category_ids': [c.id for c in run.categories],
        'train': train,
        'val': val,
        'test': test,
    }
    path = Path(run.training_folder) / DATASET_FILE
    write_json(path, dataset)
    run.logger.info('dataset: %d train, %d val, %d test images', len(train), len(val), len(test))
    return path
