"""Durable state of the local Loop: SQLite for records, a folder tree for image and model files.

Layout of ``data_dir``::

    loop.sqlite3                      users, sessions, projects, categories, images, annotations, detections,
                                      models, deployments, node statuses, trainings, upload log
    images/{org}/{project}/{id}.jpg   image files (demo images are drawn on first download from their recipe)
    models/{model_id}/{format}.zip    one zip per model format, ``model.json`` already filled in

Concurrency: ONE SQLite connection, guarded by one lock owned by the :class:`Store`. The server is small and
SQLite serialises writers anyway; a single connection keeps every multi-statement change atomic without
per-thread connection bookkeeping (waitress and werkzeug threads come and go and would leak connections), and
the lock is held only for SQL, never while image files are read, written or drawn (model zips are written under
the lock, so that two uploads of one format cannot both write).

Durability: WAL mode with ``synchronous=NORMAL``, so a committed change survives a crash or kill of the process
and every restart; only an operating-system crash or power loss can lose the last transactions (fsyncing every
commit made a loop start about twice as slow). Files are written durably (temp file in the same folder, fsync,
``os.replace``, fsync of the folder) before the row that refers to them is committed.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import sqlite3
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from llnode.config import user_path
from llnode.durable import remove_stale_temps, write_bytes
from llnode.localloop import demo
from llnode.localloop.errors import BadRequest, Conflict, NotFound, Unprocessable

logger = logging.getLogger('llnode.localloop.store')

IMAGE_STATES = ('inbox', 'annotate', 'review', 'complete', 'trash')
SLUG = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$')
CATEGORY_TYPES = ('box', 'point', 'segmentation', 'classification')

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY, salt BLOB NOT NULL, hash BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (token_hash TEXT PRIMARY KEY, username TEXT NOT NULL, created TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS projects (
    organization TEXT NOT NULL, project TEXT NOT NULL, created TEXT NOT NULL, PRIMARY KEY (organization, project));
CREATE TABLE IF NOT EXISTS categories (
    id TEXT PRIMARY KEY, organization TEXT NOT NULL, project TEXT NOT NULL, name TEXT NOT NULL, description TEXT,
    hotkey TEXT, color TEXT, point_size INTEGER, type TEXT);
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY, organization TEXT NOT NULL, project TEXT NOT NULL, image_set TEXT NOT NULL,
    width INTEGER NOT NULL, height INTEGER NOT NULL, state TEXT NOT NULL, tags TEXT NOT NULL, source TEXT,
    created TEXT, recipe TEXT, metadata TEXT);
CREATE INDEX IF NOT EXISTS images_by_project ON images (organization, project, state);
CREATE TABLE IF NOT EXISTS annotations (
    id TEXT PRIMARY KEY, image_id TEXT NOT NULL, kind TEXT NOT NULL, category_id TEXT, category_name TEXT,
    data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS annotations_by_image ON annotations (image_id);
CREATE TABLE IF NOT EXISTS detections (
    image_id TEXT NOT NULL, model TEXT NOT NULL, data TEXT NOT NULL, received TEXT NOT NULL,
    PRIMARY KEY (image_id, model));
CREATE TABLE IF NOT EXISTS models (
    id TEXT PRIMARY KEY, organization TEXT NOT NULL, project TEXT NOT NULL, version TEXT NOT NULL,
    training_number INTEGER, created TEXT NOT NULL, comment TEXT, host TEXT,
    UNIQUE (organization, project, version));
CREATE TABLE IF NOT EXISTS model_formats (
    model_id TEXT NOT NULL, format TEXT NOT NULL, created TEXT NOT NULL, PRIMARY KEY (model_id, format));
CREATE TABLE IF NOT EXISTS deployments (
    organization TEXT NOT NULL, project TEXT NOT NULL, model_id TEXT NOT NULL, PRIMARY KEY (organization, project));
CREATE TABLE IF NOT EXISTS nodes (
    node_id TEXT PRIMARY KEY, node_type TEXT, organization TEXT, project TEXT, status TEXT NOT NULL,
    updated TEXT NOT NULL, connected INTEGER NOT NULL DEFAULT 0, sid TEXT);
CREATE TABLE IF NOT EXISTS trainings (
    id INTEGER PRIMARY KEY AUTOINCREMENT, organization TEXT NOT NULL, project TEXT NOT NULL, number INTEGER NOT NULL,
    node_id TEXT, details TEXT NOT NULL, ack TEXT, accepted INTEGER NOT NULL, created TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS training_updates (
    id INTEGER PRIMARY KEY AUTOINCREMENT, organization TEXT NOT NULL, project TEXT NOT NULL, trainer_id TEXT,
    payload TEXT NOT NULL, received TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS model_uploads (
    id INTEGER PRIMARY KEY AUTOINCREMENT, organization TEXT NOT NULL, project TEXT NOT NULL,
    training_number INTEGER, format TEXT NOT NULL, model_id TEXT, status INTEGER NOT NULL, received TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS detection_posts (
    id INTEGER PRIMARY KEY AUTOINCREMENT, organization TEXT NOT NULL, project TEXT NOT NULL, status INTEGER NOT NULL,
    image_ids TEXT NOT NULL, stored INTEGER NOT NULL, received TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS upload_batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT, organization TEXT NOT NULL, project TEXT NOT NULL, received TEXT NOT NULL,
    status INTEGER NOT NULL, detail TEXT, parts TEXT NOT NULL, image_ids TEXT NOT NULL);
"""

# scrypt cost: about 30-70 ms per hash on one core. Verified (hash, password) pairs are remembered for the life of
# the process, keyed by an HMAC with a per-process random key, so repeated logins (every node reconnect, every
# test's fresh loop) cost one hash per password change instead of one per login.
_SCRYPT = {'n': 2**14, 'r': 8, 'p': 1, 'dklen': 32}
_PEPPER = secrets.token_bytes(32)
_verified: set[bytes] = set()
#: (salt, hash) per password already hashed in this process: a fresh store (every test's loop) reuses it
_hashed: dict[bytes, tuple[bytes, bytes]] = {}
_verified_lock = threading.Lock()


def _verified_key(hashed: bytes, password: str) -> bytes:
    return hmac.new(_PEPPER, hashed + b'\0' + password.encode(), 'sha256').digest()


def now() -> str:
    """UTC time as ISO 8601 with milliseconds."""
    return datetime.now(timezone.utc).isoformat(timespec='milliseconds')


def check_slug(value: Any, what: str) -> str:
    """Organisation, project and format ids end up in paths: letters, digits, ``_ . -`` only."""
    if not isinstance(value, str) or not SLUG.match(value) or '..' in value:
        raise BadRequest(f'{what} must be 1-100 letters, digits, "_", "." or "-", got {value!r}')
    return value


def _json(value: Any) -> str:
    return json.dumps(value, separators=(',', ':'))


class Store:
    """All records and files of one local Loop; thread-safe."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.data_dir = user_path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.data_dir / 'loop.sqlite3', check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute('PRAGMA journal_mode=WAL')
        self._db.execute('PRAGMA synchronous=NORMAL')
        self._db.execute('PRAGMA foreign_keys=OFF')
        self._db.executescript(f'BEGIN;{_SCHEMA}COMMIT;')
        self._closed = False
        for folder in (*self.data_dir.glob('images/*/*'), *self.data_dir.glob('models/*')):
            remove_stale_temps(folder)

    # ------------------------------------------------------------------ plumbing

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One atomic transaction under the store lock."""
        with self._lock:
            self._db.execute('BEGIN IMMEDIATE')
            try:
                yield self._db
            except BaseException:
                self._db.execute('ROLLBACK')
                raise
            self._db.execute('COMMIT')

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def _one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        with self._lock:
            return self._db.execute(sql, params).fetchone()

    def image_path(self, organization: str, project: str, image_id: str) -> Path:
        return self.data_dir / 'images' / organization / project / f'{image_id}.jpg'

    def model_path(self, model_id: str, model_format: str) -> Path:
        return self.data_dir / 'models' / model_id / f'{model_format}.zip'

    # ------------------------------------------------------------------ users and sessions

    def _hash(self, password: str, salt: bytes) -> bytes:
        return hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT)

    def set_user(self, name: str, password: str) -> None:
        """Create the user or change its password."""
        if not isinstance(name, str) or not name or not isinstance(password, str):
            raise BadRequest('a user needs a non-empty name and a password')
        if self.check_password(name, password):
            return
        with _verified_lock:
            known = _hashed.get(_verified_key(name.encode(), password))
        if known is None:
            salt = secrets.token_bytes(16)
            known = salt, self._hash(password, salt)
        salt, hashed = known
        with self._tx() as db:
            db.execute('INSERT OR REPLACE INTO users (name, salt, hash) VALUES (?, ?, ?)', (name, salt, hashed))
        with _verified_lock:
            _verified.add(_verified_key(hashed, password))
            _hashed[_verified_key(name.encode(), password)] = known

    def users(self) -> list[str]:
        return [r['name'] for r in self._query('SELECT name FROM users ORDER BY name')]

    def check_password(self, name: str, password: str) -> bool:
        row = self._one('SELECT salt, hash FROM users WHERE name = ?', (name,))
        if row is None:
            return False
        hashed = bytes(row['hash'])
        key = _verified_key(hashed, password)
        with _verified_lock:
            if key in _verified:
                return True
        if not hmac.compare_digest(self._hash(password, bytes(row['salt'])), hashed):
            return False
        with _verified_lock:
            _verified.add(key)
        return True

    def create_session(self, username: str) -> str:
        token = secrets.token_urlsafe(32)
        with self._tx() as db:
            db.execute(
                'INSERT INTO sessions (token_hash, username, created) VALUES (?, ?, ?)',
                (hashlib.sha256(token.encode()).hexdigest(), username, now()),
            )
        return token

    def session_user(self, token: str | None) -> str | None:
        if not token:
            return None
        row = self._one(
            'SELECT s.username FROM sessions s JOIN users u ON u.name = s.username WHERE token_hash = ?',
            (hashlib.sha256(token.encode()).hexdigest(),),
        )
        return None if row is None else str(row['username'])

    def delete_session(self, token: str | None) -> None:
        if token:
            with self._tx() as db:
                db.execute('DELETE FROM sessions WHERE token_hash = ?', (hashlib.sha256(token.encode()).hexdigest(),))

    # ------------------------------------------------------------------ projects and categories

    def create_project(self, organization: str, project: str, *, exist_ok: bool = False) -> bool:
        """Create a project; returns False when it existed (and ``exist_ok``)."""
        check_slug(organization, 'organization')
        check_slug(project, 'project')
        with self._tx() as db:
            if db.execute(
                'SELECT 1 FROM projects WHERE organization = ? AND project = ?', (organization, project)
            ).fetchone():
                if exist_ok:
                    return False
                raise Conflict(f'project {organization}/{project} exists already')
            db.execute(
                'INSERT INTO projects (organization, project, created) VALUES (?, ?, ?)', (organization, project, now())
            )
        return True

    def project_exists(self, organization: str, project: str) -> bool:
        return (
            self._one('SELECT 1 FROM projects WHERE organization = ? AND project = ?', (organization, project))
            is not None
        )

    def require_project(self, organization: str, project: str) -> None:
        if not self.project_exists(organization, project):
            raise NotFound(f'project {organization}/{project} not found')

    def projects(self) -> list[dict[str, Any]]:
        rows = self._query('SELECT organization, project, created FROM projects ORDER BY organization, project')
        return [dict(r) for r in rows]

    def delete_project(self, organization: str, project: str, *, keep_images: bool = False) -> None:
        """Delete a project and its records; its files go too unless ``keep_images`` (image files stay on disk)."""
        self.require_project(organization, project)
        key = (organization, project)
        with self._tx() as db:
            image_ids = [r[0] for r in db.execute('SELECT id FROM images WHERE organization = ? AND project = ?', key)]
            model_ids = [r[0] for r in db.execute('SELECT id FROM models WHERE organization = ? AND project = ?', key)]
            for chunk in _chunks(image_ids, 500):
                marks = ','.join('?' * len(chunk))
                db.execute(f'DELETE FROM annotations WHERE image_id IN ({marks})', chunk)
                db.execute(f'DELETE FROM detections WHERE image_id IN ({marks})', chunk)
            for chunk in _chunks(model_ids, 500):
                db.execute(f'DELETE FROM model_formats WHERE model_id IN ({",".join("?" * len(chunk))})', chunk)
            for table in (
                'images',
                'categories',
                'models',
                'deployments',
                'trainings',
                'training_updates',
                'model_uploads',
                'detection_posts',
                'upload_batches',
                'projects',
            ):
                db.execute(f'DELETE FROM {table} WHERE organization = ? AND project = ?', key)
        for model_id in model_ids:
            _remove_tree(self.data_dir / 'models' / model_id)
        if not keep_images:
            _remove_tree(self.data_dir / 'images' / organization / project)

    def add_category(
        self,
        organization: str,
        project: str,
        name: str,
        type_: str = 'box',
        *,
        color: str | None = None,
        description: str | None = None,
        hotkey: str | None = None,
        point_size: int | None = None,
        category_id: str | None = None,
    ) -> dict[str, Any]:
        """Add a category to a project (names are unique per project)."""
        self.require_project(organization, project)
        if not isinstance(name, str) or not name.strip():
            raise BadRequest('a category needs a non-empty name')
        if not isinstance(type_, str) or not type_:
            raise BadRequest(f'category type must be one of {", ".join(CATEGORY_TYPES)}, got {type_!r}')
        if point_size is not None and (not isinstance(point_size, int) or isinstance(point_size, bool)):
            raise BadRequest(f'point_size must be an integer, got {point_size!r}')
        category = {
            'id': category_id or str(uuid.uuid4()),
            'name': name,
            'description': description,
            'hotkey': hotkey,
            'color': color,
            'point_size': point_size,
            'type': type_,
        }
        with self._tx() as db:
            if db.execute(
                'SELECT 1 FROM categories WHERE organization = ? AND project = ? AND name = ?',
                (organization, project, name),
            ).fetchone():
                raise Conflict(f'category {name!r} exists already in {organization}/{project}')
            db.execute(
                'INSERT INTO categories (id, organization, project, name, description, hotkey, color, point_size, '
                'type) VALUES (:id, :organization, :project, :name, :description, :hotkey, :color, :point_size, '
                ':type)',
                {**category, 'organization': organization, 'project': project},
            )
        return category

    def categories(self, organization: str, project: str) -> list[dict[str, Any]]:
        rows = self._query(
            'SELECT id, name, description, hotkey, color, point_size, type FROM categories '
            'WHERE organization = ? AND project = ? ORDER BY rowid',
            (organization, project),
        )
        return [dict(r) for r in rows]

    # ------------------------------------------------------------------ images

    def add_images(self, organization: str, project: str, images: Iterable[dict[str, Any]]) -> list[str]:
        """Store images in one transaction. Each dict: ``id?``, ``set``, ``width``, ``height``, ``state``,
        ``tags``, ``source``, ``created``, ``recipe`` (demo drawing recipe) or ``jpeg`` (bytes), ``metadata``
        (the uploaded ImageMetadata), ``box_annotations``, ``point_annotations``, ``segmentation_annotations``,
        ``classification_annotation``, ``detections`` (list of Detections-like dicts).

        Files are written first; if anything fails, the files written so far are removed and nothing is stored.
        """
        self.require_project(organization, project)
        prepared = []
        for image in images:
            image_id = image.get('id') or str(uuid.uuid4())
            state = image.get('state') or 'inbox'
            if state not in IMAGE_STATES:
                raise Unprocessable(f'image state must be one of {", ".join(IMAGE_STATES)}, got {state!r}')
            prepared.append((image_id, state, image))
        written: list[Path] = []
        try:
            for image_id, _state, image in prepared:
                if image.get('jpeg') is not None:
                    path = self.image_path(organization, project, image_id)
                    write_bytes(path, image['jpeg'])
                    written.append(path)
            with self._tx() as db:
                for image_id, state, image in prepared:
                    db.execute(
                        'INSERT INTO images (id, organization, project, image_set, width, height, state, tags, '
                        'source, created, recipe, metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
                        (
                            image_id,
                            organization,
                            project,
                            image.get('set') or _set_of(image_id),
                            int(image['width']),
                            int(image['height']),
                            state,
                            _json(list(image.get('tags') or [])),
                            image.get('source'),
                            image.get('created') or now(),
                            _json(image['recipe']) if image.get('recipe') is not None else None,
                            _json(image['metadata']) if image.get('metadata') is not None else None,
                        ),
                    )
                    self._insert_annotations(db, image_id, image)
                    for detections in image.get('detections') or []:
                        self._put_detections(db, image_id, detections)
        except BaseException:
            for path in written:
                with contextlib.suppress(OSError):
                    path.unlink()
            raise
        return [image_id for image_id, _, _ in prepared]

    def _insert_annotations(self, db: sqlite3.Connection, image_id: str, image: dict[str, Any]) -> None:
        kinds = (
            ('box', image.get('box_annotations')),
            ('point', image.get('point_annotations')),
            ('segmentation', image.get('segmentation_annotations')),
        )
        for kind, items in kinds:
            for item in items or []:
                self._insert_annotation(db, image_id, kind, item)
        if image.get('classification_annotation'):
            self._insert_annotation(db, image_id, 'classification', image['classification_annotation'])

    @staticmethod
    def _insert_annotation(db: sqlite3.Connection, image_id: str, kind: str, item: dict[str, Any]) -> str:
        annotation_id = str(item.get('id') or uuid.uuid4())
        data = {k: v for k, v in item.items() if k not in ('id', 'category_id', 'category_name', 'image_id')}
        db.execute(
            'INSERT OR REPLACE INTO annotations (id, image_id, kind, category_id, category_name, data) '
            'VALUES (?, ?, ?, ?, ?, ?)',
            (annotation_id, image_id, kind, item.get('category_id'), item.get('category_name'), _json(data)),
        )
        return annotation_id

    def image_ids(self, organization: str, project: str, state: str | None = None) -> list[str]:
        if state is None:
            rows = self._query(
                'SELECT id FROM images WHERE organization = ? AND project = ? ORDER BY rowid', (organization, project)
            )
        else:
            rows = self._query(
                'SELECT id FROM images WHERE organization = ? AND project = ? AND state = ? ORDER BY rowid',
                (organization, project, state),
            )
        return [r['id'] for r in rows]

    def images(self, organization: str, project: str, ids: Sequence[str]) -> list[dict[str, Any]]:
        """Image items (loop-protocol §2.2 #5) in the order of ``ids``; unknown ids are skipped."""
        if not ids:
            return []
        marks = ','.join('?' * len(ids))
        with self._lock:
            rows = {
                r['id']: r
                for r in self._db.execute(
                    f'SELECT * FROM images WHERE organization = ? AND project = ? AND id IN ({marks})',
                    (organization, project, *ids),
                )
            }
            annotations: dict[str, list[sqlite3.Row]] = {}
            for a in self._db.execute(f'SELECT * FROM annotations WHERE image_id IN ({marks}) ORDER BY rowid', ids):
                annotations.setdefault(a['image_id'], []).append(a)
            names = {
                r['id']: r['name']
                for r in self._db.execute(
                    'SELECT id, name FROM categories WHERE organization = ? AND project = ?', (organization, project)
                )
            }
        items = []
        seen = set()
        for image_id in ids:
            row = rows.get(image_id)
            if row is None or image_id in seen:
                continue
            seen.add(image_id)
            items.append(_image_item(row, annotations.get(image_id, []), names))
        return items

    def image(self, organization: str, project: str, image_id: str) -> dict[str, Any]:
        items = self.images(organization, project, [image_id])
        if not items:
            raise NotFound(f'image {image_id} not found in {organization}/{project}')
        return items[0]

    def image_jpeg(self, organization: str, project: str, image_id: str) -> bytes | None:
        """The JPEG bytes of an image, drawing a demo image from its recipe on first use; None if unknown."""
        row = self._one(
            'SELECT recipe FROM images WHERE organization = ? AND project = ? AND id = ?',
            (organization, project, image_id),
        )
        if row is None:
            return None
        path = self.image_path(organization, project, image_id)
        with contextlib.suppress(FileNotFoundError):
            return path.read_bytes()
        if row['recipe'] is None:
            logger.warning('image file %s is missing', path)
            return None
        recipe = json.loads(row['recipe'])
        jpeg = demo.draw(
            demo.scene(
                recipe['index'],
                recipe['seed'],
                recipe['categories'],
                width=recipe.get('width', demo.WIDTH),
                height=recipe.get('height', demo.HEIGHT),
                boxes=recipe.get('boxes'),
            )
        )
        write_bytes(path, jpeg)
        return jpeg

    def prerender(self, organization: str, project: str, stop: threading.Event | None = None) -> int:
        """Draw the files of demo images that have none yet (they are otherwise drawn on first download), e.g. so
        that a download benchmark measures serving rather than drawing. Returns how many were drawn."""
        rows = self._query(
            'SELECT id FROM images WHERE organization = ? AND project = ? AND recipe IS NOT NULL ORDER BY rowid',
            (organization, project),
        )
        drawn = 0
        for row in rows:
            if stop is not None and stop.is_set():
                break
            if not self.image_path(organization, project, row['id']).exists():
                self.image_jpeg(organization, project, row['id'])
                drawn += 1
        return drawn

    def update_image(
        self,
        organization: str,
        project: str,
        image_id: str,
        *,
        state: str | None = None,
        image_set: str | None = None,
        tags: list[str] | None = None,
        annotations: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Change an image as a person in the Loop's UI would. ``annotations`` replaces the kinds it names
        (``box_annotations``, ``point_annotations``, ``segmentation_annotations``, ``classification_annotation``)."""
        if state is not None and state not in IMAGE_STATES:
            raise BadRequest(f'state must be one of {", ".join(IMAGE_STATES)}, got {state!r}')
        if image_set is not None and image_set not in ('train', 'test'):
            raise BadRequest(f'set must be "train" or "test", got {image_set!r}')
        with self._tx() as db:
            if not db.execute(
                'SELECT 1 FROM images WHERE organization = ? AND project = ? AND id = ?',
                (organization, project, image_id),
            ).fetchone():
                raise NotFound(f'image {image_id} not found in {organization}/{project}')
            if state is not None:
                db.execute('UPDATE images SET state = ? WHERE id = ?', (state, image_id))
            if image_set is not None:
                db.execute('UPDATE images SET image_set = ? WHERE id = ?', (image_set, image_id))
            if tags is not None:
                db.execute('UPDATE images SET tags = ? WHERE id = ?', (_json(list(tags)), image_id))
            for key, kind in (
                ('box_annotations', 'box'),
                ('point_annotations', 'point'),
                ('segmentation_annotations', 'segmentation'),
                ('classification_annotation', 'classification'),
            ):
                if annotations is None or key not in annotations:
                    continue
                db.execute('DELETE FROM annotations WHERE image_id = ? AND kind = ?', (image_id, kind))
                value = annotations[key]
                items = ([value] if value else []) if kind == 'classification' else list(value or [])
                for item in items:
                    self._insert_annotation(db, image_id, kind, item)
        return self.image(organization, project, image_id)

    def put_segmentation_annotation(self, organization: str, project: str, annotation: dict[str, Any]) -> str:
        """Store (or replace, by id) a SegmentationAnnotation sent by an annotator node."""
        image_id = annotation['image_id']
        with self._tx() as db:
            if not db.execute(
                'SELECT 1 FROM images WHERE organization = ? AND project = ? AND id = ?',
                (organization, project, image_id),
            ).fetchone():
                raise NotFound(f'image {image_id} not found in {organization}/{project}')
            return self._insert_annotation(db, image_id, 'segmentation', annotation)

    # ------------------------------------------------------------------ detections

    @staticmethod
    def _put_detections(db: sqlite3.Connection, image_id: str, detections: dict[str, Any]) -> None:
        model = ''
        for key in ('box_detections', 'point_detections', 'segmentation_detections', 'classification_detections'):
            for item in detections.get(key) or []:
                if isinstance(item, dict) and item.get('model_name'):
                    model = str(item['model_name'])
                    break
            if model:
                break
        db.execute(
            'INSERT OR REPLACE INTO detections (image_id, model, data, received) VALUES (?, ?, ?, ?)',
            (image_id, model, _json(detections), now()),
        )

    def put_detections(self, organization: str, project: str, items: Sequence[dict[str, Any]]) -> int:
        """Store Detections per image, replacing earlier ones of the same image and model (the ``model_name`` of
        the first detection; an item without detections is kept under model ``''``). Returns how many were stored;
        items of unknown images are skipped."""
        stored = 0
        with self._tx() as db:
            for item in items:
                if db.execute(
                    'SELECT 1 FROM images WHERE organization = ? AND project = ? AND id = ?',
                    (organization, project, item['image_id']),
                ).fetchone():
                    self._put_detections(db, item['image_id'], item)
                    stored += 1
        return stored

    def detections(self, organization: str, project: str, image_id: str | None = None) -> list[dict[str, Any]]:
        """Stored Detections (each with ``image_id``), for one image or the whole project."""
        sql = (
            'SELECT d.image_id, d.data FROM detections d JOIN images i ON i.id = d.image_id '
            'WHERE i.organization = ? AND i.project = ?'
        )
        params: list[Any] = [organization, project]
        if image_id is not None:
            sql += ' AND d.image_id = ?'
            params.append(image_id)
        return [
            {**json.loads(r['data']), 'image_id': r['image_id']} for r in self._query(sql + ' ORDER BY d.rowid', params)
        ]

    # ------------------------------------------------------------------ models

    def _next_version(self, db: sqlite3.Connection, organization: str, project: str) -> str:
        minors = [
            int(r[0].split('.', 1)[1])
            for r in db.execute(
                'SELECT version FROM models WHERE organization = ? AND project = ?', (organization, project)
            )
            if re.fullmatch(r'1\.\d+', r[0])
        ]
        return f'1.{max(minors) + 1}' if minors else '1.0'

    def create_model(
        self,
        organization: str,
        project: str,
        *,
        training_number: int | None = None,
        host: str | None = None,
        comment: str | None = None,
        model_id: str | None = None,
        version: str | None = None,
    ) -> dict[str, Any]:
        """A new model with the next version (``1.0``, ``1.1``, ...) unless ``version`` is given."""
        self.require_project(organization, project)
        with self._tx() as db:
            version = version or self._next_version(db, organization, project)
            model_id = model_id or str(uuid.uuid4())
            try:
                db.execute(
                    'INSERT INTO models (id, organization, project, version, training_number, created, '
                    'comment, host) VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
                    (model_id, organization, project, version, training_number, now(), comment, host),
                )
            except sqlite3.IntegrityError as e:
                raise Conflict(f'model {model_id} or version {version} exists already') from e
        return self.model(organization, project, model_id)

    def model_for_training(
        self, organization: str, project: str, training_number: int, *, host: str | None = None
    ) -> dict[str, Any]:
        """The model of a training, created with the next version on the training's first upload."""
        self.require_project(organization, project)
        with self._tx() as db:
            row = db.execute(
                'SELECT id FROM models WHERE organization = ? AND project = ? AND training_number = ?',
                (organization, project, training_number),
            ).fetchone()
            if row is None:
                model_id = str(uuid.uuid4())
                db.execute(
                    'INSERT INTO models (id, organization, project, version, training_number, created, '
                    'comment, host) VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
                    (
                        model_id,
                        organization,
                        project,
                        self._next_version(db, organization, project),
                        training_number,
                        now(),
                        None,
                        host,
                    ),
                )
            else:
                model_id = row['id']
        return self.model(organization, project, model_id)

    def model(self, organization: str, project: str, model_id: str) -> dict[str, Any]:
        row = self._one(
            'SELECT * FROM models WHERE organization = ? AND project = ? AND id = ?', (organization, project, model_id)
        )
        if row is None:
            raise NotFound(f'model {model_id} not found in {organization}/{project}')
        return self._model_item(row)

    def model_by_version(self, organization: str, project: str, version: str) -> dict[str, Any]:
        row = self._one(
            'SELECT * FROM models WHERE organization = ? AND project = ? AND version = ?',
            (organization, project, version),
        )
        if row is None:
            raise NotFound(f'model version {version} not found in {organization}/{project}')
        return self._model_item(row)

    def _model_item(self, row: sqlite3.Row) -> dict[str, Any]:
        formats = [
            r['format']
            for r in self._query('SELECT format FROM model_formats WHERE model_id = ? ORDER BY format', (row['id'],))
        ]
        return {
            'id': row['id'],
            'version': row['version'],
            'formats': formats,
            'created': row['created'],
            'comment': row['comment'],
            'host': row['host'],
            'training_number': row['training_number'],
            'organization': row['organization'],
            'project': row['project'],
        }

    def models(self, organization: str, project: str, model_format: str | None = None) -> list[dict[str, Any]]:
        """Models of a project, oldest first; with ``model_format`` only those having that format."""
        rows = self._query(
            'SELECT * FROM models WHERE organization = ? AND project = ? ORDER BY rowid', (organization, project)
        )
        items = [self._model_item(r) for r in rows]
        return [m for m in items if model_format is None or model_format in m['formats']]

    def add_model_format(self, model_id: str, model_format: str, zip_bytes: bytes) -> None:
        """Store the zip of one format; :class:`Conflict` (detail ``{"id", "message"}``) if it is stored already."""
        check_slug(model_format, 'format')
        with self._lock:
            if self._db.execute(
                'SELECT 1 FROM model_formats WHERE model_id = ? AND format = ?', (model_id, model_format)
            ).fetchone():
                raise Conflict({'id': model_id, 'message': f'model {model_id} already has format {model_format}'})
            # the lock is held while writing so that two uploads of one format cannot both write the file
            write_bytes(self.model_path(model_id, model_format), zip_bytes)
            with self._tx() as db:
                db.execute(
                    'INSERT INTO model_formats (model_id, format, created) VALUES (?, ?, ?)',
                    (model_id, model_format, now()),
                )

    def model_zip(self, organization: str, project: str, model_id: str, model_format: str) -> tuple[dict, Path]:
        """``(model item, zip path)`` of one model format; :class:`NotFound` if either is unknown."""
        model = self.model(organization, project, model_id)
        if model_format not in model['formats']:
            raise NotFound(
                f'model {model_id} (version {model["version"]}) has no format {model_format!r}; '
                f'it has: {", ".join(model["formats"]) or "none"}'
            )
        return model, self.model_path(model_id, model_format)

    def next_training_number(self, organization: str, project: str) -> int:
        """One above the highest number a training used: a training the trainer refused used none (it may have
        started nothing), one it accepted or did not answer did (it may be running)."""
        row = self._one(
            'SELECT MAX(n) AS n FROM (SELECT MAX(number) AS n FROM trainings WHERE organization = ? AND project = ? '
            "AND (accepted = 1 OR ack IS NULL OR ack = 'null') "
            'UNION ALL SELECT MAX(training_number) FROM models WHERE organization = ? AND '
            'project = ?)',
            (organization, project, organization, project),
        )
        return 1 + (row['n'] if row is not None and row['n'] is not None else 0)

    # ------------------------------------------------------------------ deployment

    def set_deployment_target(self, organization: str, project: str, model_id: str | None) -> dict[str, Any] | None:
        self.require_project(organization, project)
        if model_id is None:
            with self._tx() as db:
                db.execute('DELETE FROM deployments WHERE organization = ? AND project = ?', (organization, project))
            return None
        model = self.model(organization, project, model_id)
        with self._tx() as db:
            db.execute(
                'INSERT OR REPLACE INTO deployments (organization, project, model_id) VALUES (?, ?, ?)',
                (organization, project, model_id),
            )
        return {'model_uuid': model['id'], 'version': model['version']}

    def deployment_target(self, organization: str, project: str) -> dict[str, Any] | None:
        row = self._one(
            'SELECT m.id, m.version FROM deployments d JOIN models m ON m.id = d.model_id '
            'WHERE d.organization = ? AND d.project = ?',
            (organization, project),
        )
        return None if row is None else {'model_uuid': row['id'], 'version': row['version']}

    # ------------------------------------------------------------------ nodes

    def put_node_status(
        self,
        node_id: str,
        status: dict[str, Any],
        *,
        node_type: str | None,
        organization: str | None,
        project: str | None,
        sid: str | None = None,
        connected: bool | None = None,
    ) -> None:
        """Keep a node's last status (keyed by its id, ``uuid`` for detectors)."""
        with self._tx() as db:
            row = db.execute('SELECT connected, sid FROM nodes WHERE node_id = ?', (node_id,)).fetchone()
            if connected is None:
                connected = bool(row['connected']) if row is not None else False
            if sid is None and row is not None:
                sid = row['sid']
            db.execute(
                'INSERT OR REPLACE INTO nodes (node_id, node_type, organization, project, status, updated, '
                'connected, sid) VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
                (node_id, node_type, organization, project, _json(status), now(), int(connected), sid),
            )

    def set_node_connected(self, sid: str, connected: bool) -> None:
        with self._tx() as db:
            db.execute('UPDATE nodes SET connected = ? WHERE sid = ?', (int(connected), sid))

    def mark_all_nodes_disconnected(self) -> None:
        with self._tx() as db:
            db.execute('UPDATE nodes SET connected = 0')

    def nodes(self) -> list[dict[str, Any]]:
        rows = self._query('SELECT * FROM nodes ORDER BY updated DESC')
        return [
            {
                'id': r['node_id'],
                'node_type': r['node_type'],
                'organization': r['organization'],
                'project': r['project'],
                'status': json.loads(r['status']),
                'updated': r['updated'],
                'connected': bool(r['connected']),
                'sid': r['sid'],
            }
            for r in rows
        ]

    def node(self, node_id: str) -> dict[str, Any] | None:
        return next((n for n in self.nodes() if n['id'] == node_id), None)

    # ------------------------------------------------------------------ trainings

    def add_training(
        self,
        organization: str,
        project: str,
        number: int,
        *,
        node_id: str | None,
        details: dict[str, Any],
        ack: Any,
        accepted: bool,
    ) -> None:
        with self._tx() as db:
            db.execute(
                'INSERT INTO trainings (organization, project, number, node_id, details, ack, accepted, '
                'created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
                (organization, project, number, node_id, _json(details), _json(ack), int(accepted), now()),
            )

    def trainings(self, organization: str, project: str) -> list[dict[str, Any]]:
        rows = self._query(
            'SELECT * FROM trainings WHERE organization = ? AND project = ? ORDER BY id', (organization, project)
        )
        return [
            {
                'number': r['number'],
                'node_id': r['node_id'],
                'details': json.loads(r['details']),
                'ack': json.loads(r['ack']) if r['ack'] else None,
                'accepted': bool(r['accepted']),
                'created': r['created'],
            }
            for r in rows
        ]

    def add_training_update(self, organization: str, project: str, payload: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute(
                'INSERT INTO training_updates (organization, project, trainer_id, payload, received) '
                'VALUES (?, ?, ?, ?, ?)',
                (organization, project, payload.get('trainer_id'), _json(payload), now()),
            )

    def training_updates(self, organization: str, project: str) -> list[dict[str, Any]]:
        rows = self._query(
            'SELECT payload FROM training_updates WHERE organization = ? AND project = ? ORDER BY id',
            (organization, project),
        )
        return [json.loads(r['payload']) for r in rows]

    # ------------------------------------------------------------------ counters of what trainers sent

    def log_model_upload(
        self,
        organization: str,
        project: str,
        *,
        training_number: int | None,
        model_format: str,
        model_id: str | None,
        status: int,
    ) -> None:
        """Record one trainer model upload (#8): ``status`` 200 = stored, 409 = that format was stored already."""
        with self._tx() as db:
            db.execute(
                'INSERT INTO model_uploads (organization, project, training_number, format, model_id, status, '
                'received) VALUES (?, ?, ?, ?, ?, ?, ?)',
                (organization, project, training_number, model_format, model_id, status, now()),
            )

    def model_uploads(self, organization: str, project: str) -> list[dict[str, Any]]:
        """Every trainer model upload that reached the API, oldest first:
        ``{training_number, format, model_id, status, received}`` (200 = stored, 409 = already stored)."""
        rows = self._query(
            'SELECT * FROM model_uploads WHERE organization = ? AND project = ? ORDER BY id', (organization, project)
        )
        return [
            {
                'training_number': r['training_number'],
                'format': r['format'],
                'model_id': r['model_id'],
                'status': r['status'],
                'received': r['received'],
            }
            for r in rows
        ]

    def log_detection_post(
        self, organization: str, project: str, image_ids: Sequence[str], *, status: int, stored: int = 0
    ) -> None:
        """Record one ``POST …/detections`` (#9) with the image ids of its items, in order."""
        with self._tx() as db:
            db.execute(
                'INSERT INTO detection_posts (organization, project, status, image_ids, stored, received) '
                'VALUES (?, ?, ?, ?, ?, ?)',
                (organization, project, status, _json(list(image_ids)), stored, now()),
            )

    def detection_posts(self, organization: str, project: str) -> list[dict[str, Any]]:
        """Every detections POST that reached the API, oldest first: ``{status, image_ids, stored, received}``."""
        rows = self._query(
            'SELECT * FROM detection_posts WHERE organization = ? AND project = ? ORDER BY id', (organization, project)
        )
        return [
            {
                'status': r['status'],
                'image_ids': json.loads(r['image_ids']),
                'stored': r['stored'],
                'received': r['received'],
            }
            for r in rows
        ]

    # ------------------------------------------------------------------ upload log

    def log_upload_batch(
        self,
        organization: str,
        project: str,
        parts: list[dict[str, Any]],
        *,
        status: int,
        detail: Any = None,
        image_ids: Sequence[str] = (),
    ) -> None:
        with self._tx() as db:
            db.execute(
                'INSERT INTO upload_batches (organization, project, received, status, detail, parts, '
                'image_ids) VALUES (?, ?, ?, ?, ?, ?, ?)',
                (organization, project, now(), status, _json(detail), _json(parts), _json(list(image_ids))),
            )

    def upload_batches(self, organization: str, project: str) -> list[dict[str, Any]]:
        """Every outbox batch received (#10), oldest first: ``{received, status, detail, parts, image_ids}`` with
        ``parts`` the ordered multipart parts ``{name, filename, content_type, size}`` as they came on the wire."""
        rows = self._query(
            'SELECT * FROM upload_batches WHERE organization = ? AND project = ? ORDER BY id', (organization, project)
        )
        return [
            {
                'received': r['received'],
                'status': r['status'],
                'detail': json.loads(r['detail']),
                'parts': json.loads(r['parts']),
                'image_ids': json.loads(r['image_ids']),
            }
            for r in rows
        ]

    # ------------------------------------------------------------------ reads for the web UI (llnode.localloop.ui)

    def session_info(self, token: str | None) -> tuple[str, str] | None:
        """``(username, created)`` of a login session, for the web UI's session lifetime; None if unknown."""
        if not token:
            return None
        row = self._one(
            'SELECT s.username, s.created FROM sessions s JOIN users u ON u.name = s.username WHERE token_hash = ?',
            (hashlib.sha256(token.encode()).hexdigest(),),
        )
        return None if row is None else (str(row['username']), str(row['created']))

    def image_counts(self, organization: str, project: str) -> dict[str, int]:
        """How many images of the project are in each state (every state listed, zero included)."""
        rows = self._query(
            'SELECT state, COUNT(*) AS n FROM images WHERE organization = ? AND project = ? GROUP BY state',
            (organization, project),
        )
        counts = dict.fromkeys(IMAGE_STATES, 0)
        counts.update({r['state']: r['n'] for r in rows})
        return counts

    def image_tags(self, organization: str, project: str) -> list[str]:
        """Every tag used on an image of the project, sorted."""
        rows = self._query(
            'SELECT DISTINCT t.value AS tag FROM images i, json_each(i.tags) t '
            'WHERE i.organization = ? AND i.project = ? ORDER BY t.value',
            (organization, project),
        )
        return [str(r['tag']) for r in rows]

    def detection_models(self, organization: str, project: str) -> set[str]:
        """The model names (versions) that stored detections for images of the project."""
        rows = self._query(
            'SELECT DISTINCT d.model FROM detections d JOIN images i ON i.id = d.image_id '
            'WHERE i.organization = ? AND i.project = ?',
            (organization, project),
        )
        return {str(r['model']) for r in rows}

    def image_page(
        self,
        organization: str,
        project: str,
        *,
        state: str | None = None,
        image_set: str | None = None,
        tag: str | None = None,
        detections_of: str | None = None,
        offset: int = 0,
        limit: int = 60,
    ) -> tuple[int, list[str]]:
        """``(total, ids)``: how many images match the filters, and the ids of one page of them (oldest first).

        ``detections_of``: only images with stored detections of that model name (version)."""
        where = ['organization = ?', 'project = ?']
        params: list[Any] = [organization, project]
        if state:
            where.append('state = ?')
            params.append(state)
        if image_set:
            where.append('image_set = ?')
            params.append(image_set)
        if tag:
            where.append('EXISTS (SELECT 1 FROM json_each(images.tags) t WHERE t.value = ?)')
            params.append(tag)
        if detections_of is not None:
            where.append('EXISTS (SELECT 1 FROM detections d WHERE d.image_id = images.id AND d.model = ?)')
            params.append(detections_of)
        condition = ' AND '.join(where)
        with self._lock:
            total = self._db.execute(f'SELECT COUNT(*) FROM images WHERE {condition}', params).fetchone()[0]
            rows = self._db.execute(
                f'SELECT id FROM images WHERE {condition} ORDER BY rowid LIMIT ? OFFSET ?',
                (*params, max(0, limit), max(0, offset)),
            ).fetchall()
        return int(total), [r['id'] for r in rows]

    def detections_by_image(self, image_ids: Sequence[str], model: str) -> dict[str, dict[str, Any]]:
        """The stored Detections of ``model`` for each of ``image_ids`` that has some."""
        found: dict[str, dict[str, Any]] = {}
        for chunk in _chunks(list(image_ids), 500):
            marks = ','.join('?' * len(chunk))
            for r in self._query(
                f'SELECT image_id, data FROM detections WHERE model = ? AND image_id IN ({marks})', (model, *chunk)
            ):
                found[r['image_id']] = json.loads(r['data'])
        return found

    def training_updates_received(self, organization: str, project: str) -> list[tuple[str, dict[str, Any]]]:
        """Every ``update_training`` of the project as ``(received, payload)``, oldest first."""
        rows = self._query(
            'SELECT received, payload FROM training_updates WHERE organization = ? AND project = ? ORDER BY id',
            (organization, project),
        )
        return [(str(r['received']), json.loads(r['payload'])) for r in rows]


def _set_of(image_id: str) -> str:
    """Deterministic ~80/20 train/test split by id."""
    return 'test' if int(hashlib.sha256(image_id.encode()).hexdigest()[:8], 16) % 5 == 0 else 'train'


def _image_item(row: sqlite3.Row, annotations: list[sqlite3.Row], names: dict[str, str]) -> dict[str, Any]:
    item: dict[str, Any] = {
        'id': row['id'],
        'set': row['image_set'],
        'width': row['width'],
        'height': row['height'],
        'state': row['state'],
        'tags': json.loads(row['tags']),
        'source': row['source'],
        'created': row['created'],
        'box_annotations': [],
        'point_annotations': [],
        'segmentation_annotations': [],
        'classification_annotation': None,
    }
    for a in annotations:
        data = json.loads(a['data'])
        name = names.get(a['category_id'] or '', a['category_name'])
        if a['kind'] == 'box':
            item['box_annotations'].append(
                {
                    'id': a['id'],
                    'category_id': a['category_id'],
                    'category_name': name,
                    'x': data.get('x'),
                    'y': data.get('y'),
                    'width': data.get('width'),
                    'height': data.get('height'),
                }
            )
        elif a['kind'] == 'point':
            item['point_annotations'].append(
                {
                    'id': a['id'],
                    'category_id': a['category_id'],
                    'category_name': name,
                    'x': data.get('x'),
                    'y': data.get('y'),
                }
            )
        elif a['kind'] == 'segmentation':
            item['segmentation_annotations'].append(
                {'id': a['id'], 'category_id': a['category_id'], 'shape': data.get('shape')}
            )
        elif a['kind'] == 'classification':
            item['classification_annotation'] = {'id': a['id'], 'category_id': a['category_id'], 'category_name': name}
    return item


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
