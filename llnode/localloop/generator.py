"""Projects full of synthetic data: the demo project and the Loop's test-only project generator.

The demo project ``zauberzeug/demo`` mirrors the fixed server data the reference's tests rely on
(reference-behaviour §7.1): model versions 1.0, 1.1 and 1.2 with the uuids ``00000000-0000-0000-0000-0000000000{10,
11,12}`` in format ``mocked`` (``file_1.txt``, ``file_2.txt``, a ``model.json`` with ``"format": "mocked"``),
deployment target 1.1, a point category ``purple point``; plus synthetic images with true annotations (see
:mod:`llnode.localloop.demo`). Images are stored as recipes and drawn on first download, so seeding is fast.
"""

from __future__ import annotations

import logging
import random
from typing import Any

from llnode.localloop import demo
from llnode.localloop.archives import build_model_zip
from llnode.localloop.errors import BadRequest
from llnode.localloop.store import Store, check_slug

logger = logging.getLogger('llnode.localloop.generator')

DEMO_ORGANIZATION = 'zauberzeug'
DEMO_PROJECT = 'demo'
DEMO_MODELS = (
    ('1.0', '00000000-0000-0000-0000-000000000010'),
    ('1.1', '00000000-0000-0000-0000-000000000011'),
    ('1.2', '00000000-0000-0000-0000-000000000012'),
)
MOCKED_FILES = (('file_1.txt', b'content of file one'), ('file_2.txt', b'content of file two'))
PALETTE = ('#E53935', '#1E88E5', '#FDD835', '#43A047', '#FB8C00', '#00ACC1', '#8E24AA', '#6D4C41')


def _image_records(
    organization: str,
    project: str,
    categories: list[dict[str, Any]],
    counts: dict[str, int],
    *,
    seed: int,
    tags: list[str] | None = None,
    boxes: int | None = None,
    box_detections: int = 0,
    model_name: str = '',
) -> list[dict[str, Any]]:
    """Image rows for ``counts`` per state; ``complete`` and ``review`` images carry their true annotations.

    ``boxes``: box shapes in every image (default 1 to 4). ``box_detections``: box detections of ``model_name``
    stored for every image (the first ones on the drawn boxes, the rest elsewhere).
    """
    recipe_categories = [{'id': c['id'], 'name': c['name'], 'type': c['type'], 'color': c['color']} for c in categories]
    box_categories = [c for c in recipe_categories if c['type'] == 'box']
    records = []
    index = 0
    for state in ('complete', 'inbox', 'annotate', 'review'):
        for _ in range(counts.get(state, 0)):
            image_id = demo.stable_uuid('image', organization, project, seed, index)
            record: dict[str, Any] = {
                'id': image_id,
                'width': demo.WIDTH,
                'height': demo.HEIGHT,
                'state': state,
                'tags': list(tags or []),
                'source': 'llnode demo',
                'recipe': {'index': index, 'seed': seed, 'categories': recipe_categories},
            }
            if boxes is not None:
                record['recipe']['boxes'] = boxes
            scene = demo.scene(index, seed, recipe_categories, boxes=boxes)
            if state in ('complete', 'review'):
                record.update(demo.annotations_of(scene))
            if box_detections and box_categories:
                record['detections'] = [_box_detections(scene, box_categories, box_detections, model_name, seed)]
            records.append(record)
            index += 1
    return records


def _box_detections(
    scene: demo.Scene, categories: list[dict[str, Any]], count: int, model_name: str, seed: int
) -> dict[str, Any]:
    """``count`` box detections of one image, as a trainer would upload them (deterministic per image)."""
    rng = random.Random(f'llnode-generator:{seed}:{scene.noise_seed}')
    drawn = [s for s in scene.shapes if s.kind != 'dot']
    found = []
    for i in range(count):
        if i < len(drawn):
            shape = drawn[i]
            category, x, y, w, h = shape.category, shape.x, shape.y, shape.size, shape.size
        else:
            category = categories[i % len(categories)]
            w, h = rng.randrange(10, 80), rng.randrange(10, 80)
            x, y = rng.randrange(0, scene.width - w), rng.randrange(0, scene.height - h)
        found.append(
            {
                'category_name': category['name'],
                'category_id': category['id'],
                'x': x,
                'y': y,
                'width': w,
                'height': h,
                'model_name': model_name,
                'confidence': round(rng.uniform(0.3, 0.99), 2),
            }
        )
    return {
        'box_detections': found,
        'point_detections': [],
        'segmentation_detections': [],
        'classification_detections': [],
    }


def add_mocked_model(
    store: Store,
    organization: str,
    project: str,
    *,
    host: str | None,
    training_number: int | None = None,
    model_id: str | None = None,
    version: str | None = None,
) -> dict[str, Any]:
    """A model in format ``mocked`` as the reference's tests expect it."""
    model = store.create_model(
        organization,
        project,
        training_number=training_number,
        host=host,
        model_id=model_id,
        version=version,
        comment='generated',
    )
    zip_bytes = build_model_zip(
        MOCKED_FILES,
        model_id=model['id'],
        version=model['version'],
        organization=organization,
        project=project,
        model_format='mocked',
        host=host,
        categories=store.categories(organization, project),
    )
    store.add_model_format(model['id'], 'mocked', zip_bytes)
    return store.model(organization, project, model['id'])


def seed_demo(
    store: Store,
    *,
    images: int = 120,
    seed: int = 0,
    host: str | None = None,
    organization: str = DEMO_ORGANIZATION,
    project: str = DEMO_PROJECT,
) -> bool:
    """Create the demo project unless it exists (idempotent across restarts); True if it was created.

    ``images`` complete images (about 80/20 train/test) plus a few in ``inbox``, ``annotate`` and ``review``.
    """
    if store.project_exists(organization, project):
        return False
    if images < 0:
        raise BadRequest(f'the demo needs a non-negative number of images, got {images}')
    store.create_project(organization, project)
    for c in demo.DEMO_CATEGORIES:
        store.add_category(
            organization,
            project,
            c['name'],
            c['type'],
            color=c['color'],
            hotkey=c['hotkey'],
            point_size=c['point_size'],
            category_id=c['id'],
        )
    extra = max(1, min(5, images // 20))
    counts = {'complete': images, 'inbox': extra, 'annotate': extra, 'review': extra}
    store.add_images(
        organization,
        project,
        _image_records(organization, project, store.categories(organization, project), counts, seed=seed),
    )
    for number, (version, model_id) in enumerate(DEMO_MODELS, start=1):
        add_mocked_model(
            store, organization, project, host=host, training_number=number, model_id=model_id, version=version
        )
    store.set_deployment_target(organization, project, DEMO_MODELS[1][1])
    logger.info('seeded %s/%s with %d images', organization, project, sum(counts.values()))
    return True


def _count(recipe: dict[str, Any], key: str, default: int = 0) -> int:
    value = recipe.get(key, default)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < 0 or value > 100_000:
        raise BadRequest(f'"{key}" must be an integer between 0 and 100000, got {value!r}')
    return value


def generate_project(store: Store, organization: str, recipe: Any, *, host: str | None) -> str:
    """The Loop's test-only ``POST /api/{org}/projects/generator``; returns the new project id.

    Recipe keys: ``project_name`` (required), ``inbox``, ``annotate``, ``review``, ``complete`` (image counts
    per state), ``box_categories`` (default 1), ``point_categories`` (default 1), ``segmentation_categories``,
    ``classification_categories``, ``trainings`` (models in format ``mocked``, default 1), ``box_annotations``
    (box shapes drawn in every image, annotated on the ``complete`` and ``review`` ones; default 1 to 4 per image),
    ``box_detections`` (box detections stored for every image, by the newest generated model, default 0),
    ``tags``, ``seed``. ``image_style`` and ``thumbs`` of the hosted Loop's recipe are accepted and ignored (the
    images are always the demo's shapes; there are no thumbnails), as are keys this generator does not know.
    """
    if not isinstance(recipe, dict):
        raise BadRequest('the generator expects a JSON object')
    project = check_slug(recipe.get('project_name'), 'project_name')
    counts = {state: _count(recipe, state) for state in ('inbox', 'annotate', 'review', 'complete')}
    tags = recipe.get('tags') or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise BadRequest('"tags" must be a list of strings')
    seed = _count(recipe, 'seed')
    kinds = [
        ('box', _count(recipe, 'box_categories', 1)),
        ('point', _count(recipe, 'point_categories', 1)),
        ('segmentation', _count(recipe, 'segmentation_categories')),
        ('classification', _count(recipe, 'classification_categories')),
    ]
    trainings = _count(recipe, 'trainings', 1)
    boxes = None if recipe.get('box_annotations') is None else _count(recipe, 'box_annotations')
    box_detections = _count(recipe, 'box_detections')
    store.create_project(organization, project)
    position = 0
    for kind, count in kinds:
        for i in range(1, count + 1):
            store.add_category(
                organization, project, f'{kind}_category_{i}', kind, color=PALETTE[position % len(PALETTE)]
            )
            position += 1
    models = [
        add_mocked_model(store, organization, project, host=host, training_number=number)
        for number in range(1, trainings + 1)
    ]
    store.add_images(
        organization,
        project,
        _image_records(
            organization,
            project,
            store.categories(organization, project),
            counts,
            seed=seed,
            tags=tags,
            boxes=boxes,
            box_detections=box_detections,
            model_name=models[-1]['version'] if models else 'generator',
        ),
    )
    return project
