"""Settings of every llnode node, read from the environment or passed in code.

The environment is only the default source: ``Settings(host=..., ...)`` works without any variable set, and
``Settings.from_env(**overrides)`` reads the variables of the Learning Loop protocol and lets code override them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger('llnode.config')

DEFAULT_HOST = 'learning-loop.ai'

#: Alias pairs: the ``LOOP_`` name wins where both are set to different values (as the reference 0.27 does).
ALIASES: dict[str, tuple[str, str]] = {
    'host': ('LOOP_HOST', 'HOST'),
    'username': ('LOOP_USERNAME', 'USERNAME'),
    'password': ('LOOP_PASSWORD', 'PASSWORD'),
    'organization': ('LOOP_ORGANIZATION', 'ORGANIZATION'),
    'project': ('LOOP_PROJECT', 'PROJECT'),
}

#: Plain variables: settings field -> environment variable.
PLAIN: dict[str, str] = {
    'ssl_cert_path': 'LOOP_SSL_CERT_PATH',
    'data_folder': 'DATA_FOLDER',
    'skip_repeat_on_start': 'SKIP_REPEAT_ON_START',
    'use_backdoor_controls': 'USE_BACKDOOR_CONTROLS',
    'sync_cycles': 'SYNC_CYCLES',
    'version_control_default': 'VERSION_CONTROL_DEFAULT',
    'exclusive_model_build': 'EXCLUSIVE_MODEL_BUILD',
    'min_uncertain_threshold': 'MIN_UNCERTAIN_THRESHOLD',
    'max_uncertain_threshold': 'MAX_UNCERTAIN_THRESHOLD',
    'inference_batch_size': 'INFERENCE_BATCH_SIZE',
    'restart_after_training': 'RESTART_AFTER_TRAINING',
    'keep_old_trainings': 'KEEP_OLD_TRAININGS',
    'trainer_idle_timeout_sec': 'TRAINER_IDLE_TIMEOUT_SEC',
    'max_outbox_size': 'MAX_OUTBOX_SIZE',
    'node_version': 'NODE_VERSION',
    'training_slot_lock': 'TRAINING_SLOT_LOCK',
}

#: What ``VERSION_CONTROL_DEFAULT`` accepts (case-insensitive), as the reference does.
VERSION_CONTROL_MODES = ('pause', 'follow_loop')

#: Settings whose values are secrets: a message names the variable, never the value.
SECRETS = frozenset({'password'})

_TRUE = {'1', 'true', 'yes', 'on'}
_FALSE = {'0', 'false', 'no', 'off', ''}


class ConfigError(ValueError):
    """A setting has a value llnode cannot use; the message names the variable and how to fix it."""


def user_path(path: str | os.PathLike[str]) -> Path:
    """A path a user gave (argument, variable, constructor), made absolute against the working directory now.

    Called once where the path enters llnode, so nothing later depends on the working directory: a logic that
    calls ``os.chdir`` (as many real models' build code does) cannot move llnode's files. ``~`` is expanded.
    """
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


@dataclass(frozen=True)
class Settings:
    """Everything a node needs to know about its Loop and its local state.

    Field names follow the environment variables of the protocol (``LOOP_HOST`` -> ``host``).
    """

    host: str = DEFAULT_HOST
    username: str = ''
    #: Never shown: left out of ``repr`` and of every log line and message llnode writes.
    password: str = field(default='', repr=False)
    organization: str = ''
    project: str = ''
    ssl_cert_path: str = ''
    data_folder: Path = Path('/data')
    skip_repeat_on_start: bool = False
    use_backdoor_controls: bool = False
    sync_cycles: int = 6
    version_control_default: str = 'follow_loop'
    exclusive_model_build: bool = False
    min_uncertain_threshold: float = 0.3
    max_uncertain_threshold: float = 0.6
    inference_batch_size: int = 10
    restart_after_training: bool = False
    keep_old_trainings: bool = False
    trainer_idle_timeout_sec: float = 0.0
    max_outbox_size: int = 1000
    node_version: str | None = None
    training_slot_lock: str = ''
    #: Where a value came from, for error messages: field -> environment variable name.
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, 'data_folder', user_path(self.data_folder))
        for name in ('ssl_cert_path', 'training_slot_lock'):  # '' means unset
            value = getattr(self, name)
            if value.strip():
                object.__setattr__(self, name, str(user_path(value.strip())))
        mode = str(self.version_control_default).strip().lower()
        if mode not in VERSION_CONTROL_MODES:
            raise ConfigError(
                f'{self._name("version_control_default")}={self.version_control_default!r} is not a version '
                f'control mode: use one of {", ".join(VERSION_CONTROL_MODES)}'
            )
        object.__setattr__(self, 'version_control_default', mode)
        if self.sync_cycles < 1:
            raise ConfigError(f'{self._name("sync_cycles")} must be a positive integer, got {self.sync_cycles}')
        if self.max_outbox_size < 1:
            raise ConfigError(f'{self._name("max_outbox_size")} must be a positive integer, got {self.max_outbox_size}')
        if self.inference_batch_size < 1:
            raise ConfigError(
                f'{self._name("inference_batch_size")} must be a positive integer, got {self.inference_batch_size}'
            )
        if self.min_uncertain_threshold > self.max_uncertain_threshold:
            raise ConfigError(
                f'{self._name("min_uncertain_threshold")} ({self.min_uncertain_threshold}) is above '
                f'{self._name("max_uncertain_threshold")} ({self.max_uncertain_threshold})'
            )
        if '://' in self.host and self.host.split('://', 1)[0].lower() not in ('http', 'https'):
            raise ConfigError(f'{self._name("host")} has an unsupported scheme: {self.host!r} (use http or https)')

    def _name(self, field_name: str) -> str:
        return self.sources.get(field_name) or PLAIN.get(field_name) or ALIASES.get(field_name, (field_name,))[0]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from the environment (or ``env``), with ``overrides`` taking precedence."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for name, (primary, alias) in ALIASES.items():
            resolved = resolve_alias(env, primary, alias, secret=name in SECRETS)
            if resolved is not None:
                values[name], sources[name] = resolved
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        for name, var in PLAIN.items():
            raw = env.get(var)
            if raw is None or (raw == '' and name != 'node_version'):
                continue
            values[name] = _parse(var, raw, str(types[name]))
            sources[name] = var
        values.update(overrides)
        return cls(**values, sources=sources)

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    @property
    def secure(self) -> bool:
        """Whether the Loop is reached over TLS: an explicit scheme decides, else the reference's host rule."""
        if '://' in self.host:
            return self.host.lower().startswith('https://')
        return 'learning-loop.ai' in self.host

    @property
    def host_port(self) -> str:
        """The host (with port) without a scheme or trailing slash."""
        return self.host.split('://', 1)[-1].rstrip('/')

    @property
    def base_url(self) -> str:
        """``http(s)://host[:port]``: the root of the Loop's REST API (paths are under ``/api``)."""
        return f'{"https" if self.secure else "http"}://{self.host_port}'

    @property
    def socket_url(self) -> str:
        """``ws(s)://host[:port]``: the Loop's Socket.IO endpoint (path ``/ws/socket.io``)."""
        return f'{"wss" if self.secure else "ws"}://{self.host_port}'

    @property
    def project_path(self) -> str:
        """``/{org}/projects/{project}``, the prefix of every project route (below ``/api``)."""
        if not self.organization or not self.project:
            missing = [self._name(n) for n in ('organization', 'project') if not getattr(self, n)]
            raise ConfigError(
                f'{" and ".join(missing)} must be set to reach a project: set them to the organization and '
                'project ids the Loop shows (llnode loop prints them)'
            )
        return f'/{self.organization}/projects/{self.project}'

    def ensure_data_folder(self) -> Path:
        """Create the data folder if needed; one that cannot be created or written is a clear error."""
        return writable_folder(self.data_folder, self._name('data_folder'))


def writable_folder(folder: Path, name: str, fix: str | None = None) -> Path:
    """Create ``folder`` if needed and prove it writable by writing a file there (``os.access`` says yes to root
    even on a read-only mount); otherwise a :class:`ConfigError` naming ``name`` (a variable or option) and ``fix``.
    """
    fix = fix or f'set {name} to a folder this user may write, or fix its permissions'
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix='.llnode-write-test-', dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as e:
        exists = folder.is_dir()
        problem = 'is not writable' if exists else 'cannot be created'
        reason = e.strerror or str(e)
        raise ConfigError(f'{name}={folder} {problem} ({reason}): {fix}') from e
    return folder


def resolve_alias(env: Mapping[str, str], primary: str, alias: str, *, secret: bool = False) -> tuple[str, str] | None:
    """Resolve a ``LOOP_X`` / ``X`` pair: unset and empty values are ignored; on conflict ``LOOP_X`` wins.

    Returns ``(value, variable name)`` or ``None`` when neither is set. The conflict warning names the values,
    except for a ``secret`` (a password), where it names only the variables.
    """
    first = env.get(primary) or None
    second = env.get(alias) or None
    if first is not None and second is not None and first != second:
        if secret:
            logger.warning('%s and %s are set to different values; using %s', primary, alias, primary)
        else:
            logger.warning('%s=%r and %s=%r differ; using %s=%r', primary, first, alias, second, primary, first)
    if first is not None:
        return first, primary
    if second is not None:
        return second, alias
    return None


def _parse(var: str, raw: str, type_name: str) -> Any:
    text = raw.strip()
    if type_name == 'bool':
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ConfigError(f'{var}={raw!r} is not a boolean (use 1/true or 0/false)')
    if type_name == 'int':
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f'{var}={raw!r} is not an integer: set a whole number') from None
    if type_name == 'float':
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f'{var}={raw!r} is not a number: set a number such as 0.5') from None
    if type_name == 'Path':
        return Path(text)
    if type_name == 'str | None':
        return text or None
    return text
