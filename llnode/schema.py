"""Every payload of the Learning Loop protocol as a dataclass, with its JSON form, in one place.

Parsing follows the reference's (dacite, non-strict) rules so that whatever the reference accepts, llnode accepts:
unknown keys are ignored, a missing field with a default takes the default, a missing optional field becomes
``None``, and types are checked (an ``int`` is accepted where a ``float`` is expected, not the reverse; a ``bool``
is never a number). A missing or mistyped required field raises ``SchemaError`` naming the field's path.
Serialising writes every field, ``None`` as JSON ``null`` (optional fields are never left out).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, TypeVar, Union

T = TypeVar('T', bound='Wire')


class SchemaError(ValueError):
    """A payload does not match its schema; ``path`` names the offending field (e.g. ``box_detections[0].x``)."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f'{message} for field "{path}"' if path else message)


# ---------------------------------------------------------------------------------------------------------------
# Enumerations (string values on the wire, loop-protocol.md §7.6). Each also answers to the reference's member
# names (``CategoryType.Box``, ``TrainerState.TrainingRunning``, ...): enum aliases, so a ported node keeps its
# spellings; iteration, ``.name`` and the error messages use llnode's names.


class NodeState(str, enum.Enum):
    IDLE = 'idle'
    OFFLINE = 'offline'
    ONLINE = 'online'
    PREPARING = 'preparing'
    RUNNING = 'running'
    STOPPING = 'stopping'
    DETECTING = 'detecting'
    UPLOADING = 'uploading'
    # the reference's spellings (aliases of the members above)
    Idle = 'idle'
    Offline = 'offline'
    Online = 'online'
    Preparing = 'preparing'
    Running = 'running'
    Stopping = 'stopping'
    Detecting = 'detecting'
    Uploading = 'uploading'


class OperationMode(str, enum.Enum):
    STARTUP = 'startup'
    IDLE = 'idle'
    DETECTING = 'detecting'
    Startup = 'startup'
    Idle = 'idle'
    Detecting = 'detecting'


class VersionMode(str, enum.Enum):
    FOLLOW_LOOP = 'follow_loop'
    SPECIFIC_VERSION = 'specific_version'
    PAUSE = 'pause'
    FollowLoop = 'follow_loop'
    SpecificVersion = 'specific_version'
    Pause = 'pause'


class OutboxMode(str, enum.Enum):
    CONTINUOUS_UPLOAD = 'continuous_upload'
    STOPPED = 'stopped'


class CategoryType(str, enum.Enum):
    BOX = 'box'
    POINT = 'point'
    SEGMENTATION = 'segmentation'
    CLASSIFICATION = 'classification'
    Box = 'box'
    Point = 'point'
    Segmentation = 'segmentation'
    Classification = 'classification'


class AnnotationEventType(str, enum.Enum):
    LEFT_MOUSE_DOWN = 'left_mouse_down'
    RIGHT_MOUSE_DOWN = 'right_mouse_down'
    MOUSE_MOVE = 'mouse_move'
    LEFT_MOUSE_UP = 'left_mouse_up'
    RIGHT_MOUSE_UP = 'right_mouse_up'
    KEY_UP = 'key_up'
    KEY_DOWN = 'key_down'
    LeftMouseDown = 'left_mouse_down'
    RightMouseDown = 'right_mouse_down'
    MouseMove = 'mouse_move'
    LeftMouseUp = 'left_mouse_up'
    RightMouseUp = 'right_mouse_up'
    KeyUp = 'key_up'
    KeyDown = 'key_down'


class TrainerState(str, enum.Enum):
    """Trainer states in pipeline order (loop-protocol.md §7.5.3, plus 0.27's ``blocked``/``waiting_for_slot``)."""

    IDLE = 'idle'
    BLOCKED = 'blocked'
    WAITING_FOR_SLOT = 'waiting_for_slot'
    PREPARING = 'preparing'
    INITIALIZED = 'initialized'
    DATA_DOWNLOADING = 'data_downloading'
    DATA_DOWNLOADED = 'data_downloaded'
    TRAIN_MODEL_DOWNLOADING = 'train_model_downloading'
    TRAIN_MODEL_DOWNLOADED = 'train_model_downloaded'
    RUNNING = 'running'
    TRAINING_FINISHED = 'training_finished'
    CONFUSION_MATRIX_SYNCING = 'confusion_matrix_syncing'
    CONFUSION_MATRIX_SYNCED = 'confusion_matrix_synced'
    TRAIN_MODEL_UPLOADING = 'train_model_uploading'
    TRAIN_MODEL_UPLOADED = 'train_model_uploaded'
    DETECTING = 'detecting'
    DETECTED = 'detected'
    DETECTION_UPLOADING = 'detection_uploading'
    READY_FOR_CLEANUP = 'ready_for_cleanup'
    # the reference's spellings (aliases of the members above)
    Idle = 'idle'
    Blocked = 'blocked'
    WaitingForSlot = 'waiting_for_slot'
    Preparing = 'preparing'
    Initialized = 'initialized'
    DataDownloading = 'data_downloading'
    DataDownloaded = 'data_downloaded'
    TrainModelDownloading = 'train_model_downloading'
    TrainModelDownloaded = 'train_model_downloaded'
    TrainingRunning = 'running'
    TrainingFinished = 'training_finished'
    ConfusionMatrixSyncing = 'confusion_matrix_syncing'
    ConfusionMatrixSynced = 'confusion_matrix_synced'
    TrainModelUploading = 'train_model_uploading'
    TrainModelUploaded = 'train_model_uploaded'
    Detecting = 'detecting'
    Detected = 'detected'
    DetectionUploading = 'detection_uploading'
    ReadyForCleanup = 'ready_for_cleanup'


# ---------------------------------------------------------------------------------------------------------------
# Generic conversion


class Wire:
    """Mixin for wire dataclasses: ``to_dict``/``from_dict`` and their JSON text forms."""

    __dataclass_fields__: ClassVar[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form: every field, enums as their values, nested objects as dicts."""
        return {f.name: _dump(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls: type[T], data: Any, *, path: str = '') -> T:
        """Parse a dict as the protocol's parsers do; raises ``SchemaError`` naming the field that is wrong."""
        return _load(cls, data, path)

    @classmethod
    def from_json(cls: type[T], text: str | bytes) -> T:
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as e:
            raise SchemaError('', f'malformed JSON: {e}') from None
        return cls.from_dict(data)


def _dump(value: Any) -> Any:
    if isinstance(value, Wire):
        return value.to_dict()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list | tuple):
        return [_dump(v) for v in value]
    if isinstance(value, dict):
        return {k: _dump(v) for k, v in value.items()}
    return value


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def _load(tp: Any, value: Any, path: str) -> Any:
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise SchemaError(path, f'expected an object, got {type(value).__name__}')
        hints = _hints(tp)
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(tp):
            sub = f'{path}.{f.name}' if path else f.name
            if f.name in value:
                kwargs[f.name] = _load(hints[f.name], value[f.name], sub)
            elif f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
                continue
            elif _is_optional(hints[f.name]):
                kwargs[f.name] = None
            else:
                raise SchemaError(sub, 'missing value')
        return tp(**kwargs)
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            raise SchemaError(path, 'must not be null')
        candidates = [option for option in options if option is not type(None)]
        if len(candidates) == 1:  # X | None: the inner error names the exact field
            return _load(candidates[0], value, path)
        errors = []
        for option in candidates:
            try:
                return _load(option, value, path)
            except SchemaError as e:
                errors.append(e.message)
        raise SchemaError(path, f'wrong value type ({"; ".join(errors)})')
    if origin is list:
        if not isinstance(value, list):
            raise SchemaError(path, f'expected a list, got {type(value).__name__}')
        (item_type,) = typing.get_args(tp) or (Any,)
        return [_load(item_type, v, f'{path}[{i}]') for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise SchemaError(path, f'expected an object, got {type(value).__name__}')
        args = typing.get_args(tp)
        if args and args[1] is not Any:
            return {k: _load(args[1], v, f'{path}.{k}') for k, v in value.items()}
        return dict(value)
    if tp is Any:
        return value
    if value is None:
        raise SchemaError(path, 'must not be null')
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            allowed = ', '.join(repr(m.value) for m in tp)
            raise SchemaError(path, f'{value!r} is not one of {allowed}') from None
    if tp is bool:
        if not isinstance(value, bool):
            raise SchemaError(path, f'expected a boolean, got {type(value).__name__}')
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SchemaError(path, f'expected an integer, got {type(value).__name__}')
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SchemaError(path, f'expected a number, got {type(value).__name__}')
        return value  # an integer stays one: a client's ``"y": 2`` goes on as ``2``, not ``2.0`` (reference)
    if tp is str:
        if not isinstance(value, str):
            raise SchemaError(path, f'expected a string, got {type(value).__name__}')
        return value
    raise TypeError(f'llnode.schema cannot parse type {tp!r}')  # a bug in a dataclass definition, not bad input


def _is_optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType) and type(None) in typing.get_args(tp)


def now_created() -> str:
    """Local time as the reference's default ``created``: ``YYYY-MM-DD_HH:MM:SS.mmm``."""
    return datetime.now().strftime('%Y-%m-%d_%H:%M:%S.%f')[:-3]


# ---------------------------------------------------------------------------------------------------------------
# Categories and models (§7.1)


@dataclass
class Category(Wire):
    id: str
    name: str
    description: str | None = None
    hotkey: str | None = None
    color: str | None = None
    point_size: int | None = None
    type: str | None = None  # box | point | segmentation | classification; other strings are accepted


@dataclass(kw_only=True)
class ModelInformation(Wire):
    """The content of ``model.json``; ``model_root_path`` is set at load time and left out when saved."""

    id: str
    host: str | None = None
    organization: str
    project: str
    version: str
    categories: list[Category] = field(default_factory=list)
    resolution: int | None = None
    model_root_path: str | None = None
    model_size: str | None = None
    conf_threshold: float | None = None

    def to_model_json(self) -> dict[str, Any]:
        """The dict to write into ``model.json`` (without the load-time ``model_root_path``)."""
        data = self.to_dict()
        del data['model_root_path']
        return data


# ---------------------------------------------------------------------------------------------------------------
# Detections, annotations and image metadata (§7.2, §7.3.1)


@dataclass
class Point(Wire):
    x: int
    y: int


@dataclass
class Shape(Wire):
    points: list[Point]


@dataclass
class BoxDetection(Wire):
    category_name: str
    x: int
    y: int
    width: int
    height: int
    model_name: str
    confidence: float
    category_id: str | None = None


@dataclass
class PointDetection(Wire):
    category_name: str
    x: float
    y: float
    model_name: str
    confidence: float
    category_id: str | None = None


@dataclass
class SegmentationDetection(Wire):
    """``shape`` is an object from trainers and annotators, the flat string ``"x1,y1,x2,y2,…"`` from detectors."""

    category_name: str
    shape: Shape | str
    model_name: str
    confidence: float
    category_id: str | None = None

    def flattened(self) -> SegmentationDetection:
        """A copy whose shape is the detector's flat string form."""
        if isinstance(self.shape, str):
            return dataclasses.replace(self)
        flat = ','.join(f'{p.x},{p.y}' for p in self.shape.points)
        return dataclasses.replace(self, shape=flat)


@dataclass
class ClassificationDetection(Wire):
    category_name: str
    model_name: str
    confidence: float
    category_id: str | None = None


@dataclass
class BoxAnnotation(Wire):
    category_name: str
    x: int
    y: int
    width: int
    height: int
    category_id: str | None = None


@dataclass
class PointAnnotation(Wire):
    category_name: str
    x: float
    y: float
    category_id: str | None = None


@dataclass
class ClassificationAnnotation(Wire):
    category_name: str
    category_id: str | None = None


@dataclass
class ImageMetadata(Wire):
    """The answer of ``/detect`` and Socket.IO ``detect``, and the JSON of an outbox item."""

    box_detections: list[BoxDetection] = field(default_factory=list)
    point_detections: list[PointDetection] = field(default_factory=list)
    segmentation_detections: list[SegmentationDetection] = field(default_factory=list)
    classification_detections: list[ClassificationDetection] = field(default_factory=list)
    box_annotations: list[BoxAnnotation] = field(default_factory=list)
    point_annotations: list[PointAnnotation] = field(default_factory=list)
    classification_annotation: ClassificationAnnotation | None = None
    tags: list[str] = field(default_factory=list)
    created: str | None = field(default_factory=now_created)
    source: str | None = None
    state: str | None = None  # 0.27: the state the image should enter the Loop in; None = the Loop's default

    def __len__(self) -> int:
        return (
            len(self.box_detections)
            + len(self.point_detections)
            + len(self.segmentation_detections)
            + len(self.classification_detections)
        )


@dataclass
class ImagesMetadata(Wire):
    items: list[ImageMetadata] = field(default_factory=list)


@dataclass
class Detections(Wire):
    """One image's detections as a trainer uploads them (``POST …/detections``)."""

    box_detections: list[BoxDetection] = field(default_factory=list)
    point_detections: list[PointDetection] = field(default_factory=list)
    segmentation_detections: list[SegmentationDetection] = field(default_factory=list)
    classification_detections: list[ClassificationDetection] = field(default_factory=list)
    image_id: str | None = None


# ---------------------------------------------------------------------------------------------------------------
# Annotator payloads (§7.3.2, §7.3.3)


@dataclass
class Coordinate(Wire):
    x: int
    y: int


@dataclass
class Context(Wire):
    organization: str
    project: str


@dataclass
class AnnotationData(Wire):
    coordinate: Coordinate
    event_type: AnnotationEventType
    context: Context
    image_uuid: str
    category: Category
    key_up: str | None = None
    key_down: str | None = None
    epsilon: float | None = None
    is_shift_key_pressed: bool | None = None


@dataclass
class UserInput(Wire):
    frontend_id: str
    data: AnnotationData


@dataclass
class SegmentationAnnotation(Wire):
    id: str
    shape: Shape
    image_id: str
    category_id: str


@dataclass
class ToolOutput(Wire):
    svg: str
    annotation: SegmentationAnnotation | None = None


# ---------------------------------------------------------------------------------------------------------------
# Status and info payloads (§7.4)


@dataclass(kw_only=True)
class DetectorStatus(Wire):
    """The body of ``POST …/detectors``; the node id is under ``uuid``. Keys in the reference's order."""

    uuid: str
    name: str
    state: str = 'online'
    uptime: int = 0
    model_format: str
    current_model: str | None = None
    target_model: str | None = None
    errors: dict[str, Any] = field(default_factory=dict)
    operation_mode: OperationMode
    node_version: str | None = None


@dataclass
class PretrainedModel(Wire):
    name: str
    label: str
    description: str


@dataclass
class TrainingStatus(Wire):
    """The argument of ``update_trainer``. Idle: ``uptime``, ``progress`` and ``context`` are null."""

    id: str
    name: str
    state: str
    uptime: float | None = None
    errors: dict[str, Any] = field(default_factory=dict)
    progress: float | None = None
    pretrained_models: list[PretrainedModel] = field(default_factory=list)
    architecture: str | None = None
    context: Context | None = None


@dataclass
class NodeStatus(Wire):
    """Base node status; as ``AnnotationNodeStatus`` it is the argument of ``update_annotation_node``."""

    id: str
    name: str
    state: str = 'online'
    uptime: int = 0
    errors: dict[str, Any] = field(default_factory=dict)
    capabilities: list[str] = field(default_factory=list)


AnnotationNodeStatus = NodeStatus


@dataclass
class AboutResponse(Wire):
    operation_mode: str
    state: str | None
    model_info: ModelInformation | None
    target_model: str | None
    version_control: str


@dataclass
class ModelVersionResponse(Wire):
    """Absent versions are the string ``"None"`` on the wire (reference quirk Q11), never null."""

    current_version: str
    target_version: str
    loop_version: str
    local_versions: list[str]
    version_control: str


@dataclass
class DeploymentTarget(Wire):
    """The answer of ``GET …/deployment/target``."""

    model_uuid: str
    version: str


@dataclass
class SocketResponse(Wire):
    """The ack envelope of Socket.IO events between node and Loop (§3.3)."""

    success: bool
    error_msg: str | None = None
    payload: Any = None


# ---------------------------------------------------------------------------------------------------------------
# Training (§7.5)


@dataclass
class TrainingDetails(Wire):
    """The ``details`` of ``begin_training`` (since reference v0.12.0)."""

    categories: list[Category]
    training_number: int
    model_variant: str
    hyperparameters: dict[str, Any]
    base_model_uuid: str | None = None

    @classmethod
    def from_dict(cls, data: Any, *, path: str = '') -> TrainingDetails:
        """Parse and validate with the reference's messages (``hyperparameters missing or not a dict``, …)."""
        if not isinstance(data, dict):
            raise SchemaError(path, 'training details must be an object')
        checks = (
            ('categories', lambda v: isinstance(v, list), 'categories missing or not a list'),
            (
                'training_number',
                lambda v: isinstance(v, int) and not isinstance(v, bool),
                'training_number missing or not an int',
            ),
            ('model_variant', lambda v: isinstance(v, str), 'model_variant missing or not a str'),
            ('hyperparameters', lambda v: isinstance(v, dict), 'hyperparameters missing or not a dict'),
        )
        for key, ok, message in checks:
            if key not in data or not ok(data[key]):
                error = SchemaError('', message)  # the reference's exact message is what the Loop shows
                error.path = key
                raise error
        return _load(cls, data, path)


@dataclass
class TrainingOut(Wire):
    """The third argument of ``update_training``; ``confusion_matrix`` maps category uuid -> {tp, fp, fn}."""

    trainer_id: str
    trainer_name: str | None = None
    confusion_matrix: dict[str, Any] | None = None
    train_image_count: int | None = None
    test_image_count: int | None = None
    hyperparameters: dict[str, Any] | None = None
    best_epoch: int | None = None
