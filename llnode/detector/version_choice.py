"""The operator's version control (``PUT /model_version``), kept across restarts in ``version_control.json``.

Why: pinning a version or pausing updates is an operator's decision, often made to keep a known-good model on a
machine. The reference forgets it at a restart and follows the Loop's deployment again, so a power cut silently
replaces the pinned model. llnode writes each accepted choice durably to ``{DATA_FOLDER}/version_control.json``
and a restarted detector takes it up again; ``VERSION_CONTROL_DEFAULT`` applies only where no choice was saved.
A file that cannot be read is reported and ignored (the default applies); the backdoor ``/reset`` deletes it
with the rest of the data folder.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llnode.detector.deployment import ModelTarget
from llnode.detector.model_store import is_version
from llnode.durable import write_json
from llnode.schema import VersionMode

logger = logging.getLogger('llnode.detector')

FILE_NAME = 'version_control.json'


@dataclass(frozen=True)
class VersionChoice:
    """A version-control mode; ``target`` is the pinned model for ``specific_version`` (else None)."""

    mode: VersionMode
    target: ModelTarget | None = None

    def __post_init__(self) -> None:
        if (self.mode == VersionMode.SPECIFIC_VERSION) != (self.target is not None):
            raise ValueError('a target goes with specific_version, and only with it')

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {'mode': self.mode.value}
        if self.target is not None:
            data.update(version=self.target.version, model_id=self.target.id)
        return data

    @classmethod
    def from_json(cls, data: Any) -> VersionChoice:
        """The choice in ``data``; ``ValueError`` naming what is wrong."""
        if not isinstance(data, dict):
            raise ValueError(f'expected an object, got {type(data).__name__}')
        mode = VersionMode(data.get('mode'))  # ValueError names a bad mode
        if mode != VersionMode.SPECIFIC_VERSION:
            return cls(mode)
        version, model_id = data.get('version'), data.get('model_id')
        if not isinstance(version, str) or not is_version(version):
            raise ValueError(f'bad version {version!r}')
        if not isinstance(model_id, str) or not model_id:
            raise ValueError(f'bad model_id {model_id!r}')
        return cls(mode, ModelTarget(id=model_id, version=version))


def choice_path(data_folder: str | Path) -> Path:
    return Path(data_folder) / FILE_NAME


def load_choice(data_folder: str | Path) -> VersionChoice | None:
    """The saved choice, or None when there is none or it cannot be read (logged)."""
    path = choice_path(data_folder)
    try:
        text = path.read_text(encoding='utf-8')
    except FileNotFoundError:
        return None
    except OSError as e:
        logger.error('cannot read the saved version control %s (%s); using the default', path, e)
        return None
    try:
        return VersionChoice.from_json(json.loads(text))
    except ValueError as e:  # json.JSONDecodeError is a ValueError
        logger.error('ignoring the saved version control %s: %s; using the default', path, e)
        return None


def save_choice(data_folder: str | Path, choice: VersionChoice) -> None:
    """Write ``choice`` durably (temp file, fsync, rename, fsync of the folder); ``OSError`` if the disk refuses."""
    write_json(choice_path(data_folder), choice.to_json())
