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


@dataclass(frozen=True)
class EnvironmentVariable:
    """One environment variable llnode reads: its meaning, and who reads it (for the docs' configuration page)."""

    name: str
    help: str
    #: the topic it belongs to, one of :data:`TOPICS`
    topic: str
    #: the ``Settings`` field it fills (its default comes from there), or None when read elsewhere
    setting: str | None = None
    #: the generic name the reference also accepts (``HOST`` for ``LOOP_HOST``)
    alias: str | None = None
    #: the default where ``setting`` is None (as text for the docs)
    default: str = 'unset'
    #: the module that reads it, where ``setting`` is None
    read_by: str = 'llnode.config.Settings'


#: Topics of :data:`ENVIRONMENT`, in the order the docs show them.
TOPICS: dict[str, str] = {
    'loop': 'Reaching the Learning Loop',
    'node': 'Every node',
    'detector': 'Detectors',
    'trainer': 'Trainers',
    'process': 'The process and its libraries',
    'tools': 'Command-line tools',
}


def _setting(field_name: str, topic: str, text: str) -> EnvironmentVariable:
    primary, alias = ALIASES.get(field_name, (PLAIN.get(field_name, ''), None))
    return EnvironmentVariable(primary, text, topic, setting=field_name, alias=alias)


#: Every environment variable llnode reads, with its meaning: the one place the docs' configuration page is
#: generated from. ``tests/docs/test_environment_catalogue.py`` fails when code reads a variable missing here.
ENVIRONMENT: tuple[EnvironmentVariable, ...] = (
    _setting(
        'host',
        'loop',
        'Host with optional port, and optionally a scheme (``https://loop.example``). Without a scheme, https/wss '
        'is used only for hosts containing ``learning-loop.ai``.',
    ),
    _setting('username', 'loop', 'Login user name.'),
    _setting('password', 'loop', 'Login password (never logged).'),
    _setting('organization', 'loop', 'Organization id.'),
    _setting('project', 'loop', 'Project id.'),
    _setting('ssl_cert_path', 'loop', "CA bundle used to verify the Loop's certificate (a private CA)."),
    _setting('data_folder', 'node', 'Root of all local state (models, outbox, trainings); created if missing.'),
    _setting('skip_repeat_on_start', 'node', 'Start with the repeat cycle muted.'),
    _setting(
        'use_backdoor_controls',
        'node',
        "Mount the test/control routes the Loop's own tests drive (``POST /reset``, the trainer's backdoor).",
    ),
    _setting('node_version', 'node', 'Sent as ``node_version`` in the detector status.'),
    _setting('sync_cycles', 'detector', 'Detector status POST every N repeat cycles (5 s each).'),
    _setting(
        'version_control_default',
        'detector',
        '``pause`` starts the detector paused; a choice made with ``PUT /model_version`` is saved and wins at a '
        'restart.',
    ),
    _setting(
        'exclusive_model_build',
        'detector',
        'Free the old model before building a new one (for models that do not fit twice into memory).',
    ),
    _setting('min_uncertain_threshold', 'detector', "Lower bound of the relevance filter's uncertain band."),
    _setting('max_uncertain_threshold', 'detector', 'Upper bound (inclusive) of the uncertain band.'),
    _setting('max_outbox_size', 'detector', "Cap of the detector's normal outbox queue; drops are counted."),
    _setting('inference_batch_size', 'trainer', "Images per batch in the trainer's detecting stage."),
    _setting('restart_after_training', 'trainer', 'The trainer exits (code 0) after a training ends.'),
    _setting('keep_old_trainings', 'trainer', 'Keep older training folders.'),
    _setting('trainer_idle_timeout_sec', 'trainer', 'The trainer exits (code 0) after being idle this long; 0 is off.'),
    _setting(
        'training_slot_lock',
        'trainer',
        'Lock file several trainers share to take turns on one GPU (its folder must exist).',
    ),
    EnvironmentVariable(
        'LLNODE_ALLOCATOR',
        "``default`` leaves glibc's malloc as it is under ``serve()``; otherwise it is tuned for serving images.",
        'process',
        default='tuned',
        read_by='llnode.node.memory',
    ),
    EnvironmentVariable(
        'PILLOW_BLOCKS_MAX',
        "Pillow's own setting; where it is unset, the detector lets Pillow keep a few image blocks for reuse.",
        'process',
        read_by='llnode.detector.images',
    ),
    EnvironmentVariable(
        'REQUESTS_CA_BUNDLE',
        "requests' CA bundle, used by ``LoopClient`` where ``LOOP_SSL_CERT_PATH`` is unset.",
        'process',
        read_by='llnode.loop.http',
    ),
    EnvironmentVariable(
        'CURL_CA_BUNDLE',
        'Used like ``REQUESTS_CA_BUNDLE`` where that is unset.',
        'process',
        read_by='llnode.loop.http',
    ),
    EnvironmentVariable(
        'RANK',
        "torch.distributed's rank of this process; callbacks limited to rank 0 run only there.",
        'process',
        default='0',
        read_by='llnode.trainer.callbacks',
    ),
    EnvironmentVariable(
        'OMP_WAIT_POLICY',
        "OpenMP's setting; ``llnode demo`` sets it to ``PASSIVE`` where unset, so idle torch threads sleep.",
        'process',
        read_by='llnode.demo.command',
    ),
    EnvironmentVariable(
        'LLNODE_LOOP_URL',
        'The local Loop ``llnode control`` talks to (its ``--url`` default).',
        'tools',
        default='http://127.0.0.1:8080',
        read_by='llnode.localloop.command',
    ),
)


def setting_default(variable: EnvironmentVariable) -> str:
    """The default of a variable as the docs show it: the ``Settings`` field's default, or the catalogue's text."""
    if variable.setting is None:
        return variable.default
    value = {f.name: f.default for f in dataclasses.fields(Settings)}[variable.setting]
    if value is None or value == '':
        return 'unset'
    if isinstance(value, bool):
        return 'on' if value else 'off'
    return str(value)


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
