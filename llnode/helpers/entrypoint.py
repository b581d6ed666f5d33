"""A node's ``main.py`` in a few lines, as the reference 0.27's ``helpers/entrypoint.py``.

Every node's entry point reads a few settings, builds its logic, builds the node and serves it. A node is
configured on the command line while it is developed and through its container's environment when deployed, so
:func:`node_parser` gives every option both: ``--conf-threshold`` also reads ``CONF_THRESHOLD`` (the option's
``dest`` in upper case), with the command line first, then the environment, then the default. ``--host`` and
``--port`` read ``NODE_HOST`` and ``NODE_PORT``, not ``HOST``, which already means the Loop's address; the server
choice reads ``NODE_SERVER``. A value from the environment is checked like one from the command line and a bad
one is a one-line error naming the variable (exit 2).

::

    parser = node_parser(description='My detector')
    parser.add_argument('--conf-threshold', type=float, default=0.2)
    args = parser.parse_args()
    sys.exit(run_node(DetectorNode('my detector', MyFactory(args.conf_threshold)), args))

Unlike the reference (uvicorn and an import string), :func:`run_node` takes the node itself and calls its
``serve()``. The reference binds ``0.0.0.0:80`` by default, for containers; a node may pass other defaults
(the samples bind ``127.0.0.1`` unless ``--host 0.0.0.0`` or ``NODE_HOST`` says otherwise).
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import shlex
from collections.abc import Sequence
from typing import Any, NoReturn

from llnode.trainer.batch_size import VRAM_LIMIT_GB_FLAG, VRAM_LIMIT_GB_HELP

logger = logging.getLogger('llnode.entrypoint')

_TRUE = {'1', 'true', 'yes', 'on'}
_FALSE = {'0', 'false', 'no', 'off'}


class NodeArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose every option is also an environment variable (``env_var=`` names another).

    ``legacy_env_prefix`` (e.g. ``'MY_DETECTOR_'``): where the new variable is unset, ``PREFIX + NAME`` (or
    ``PREFIX + DEST``) is copied into ``os.environ`` under the new name at parse time, with a deprecation warning,
    so a deployment keeps working until it is updated.
    """

    def __init__(self, *args: Any, legacy_env_prefix: str = '', **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.legacy_env_prefix = legacy_env_prefix
        self._env_vars: dict[str, str] = {}  # action dest -> environment variable

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        env_var = kwargs.pop('env_var', None)
        action = super().add_argument(*args, **kwargs)
        if action.dest == 'help' or isinstance(action, argparse._VersionAction) or not action.option_strings:
            return action
        name = env_var or action.dest.upper()
        self._env_vars[action.dest] = name
        if action.help != argparse.SUPPRESS:
            action.help = f'{action.help or ""} [env {name}]'.strip()
        return action

    def error(self, message: str) -> NoReturn:
        """One line on stderr that says what is wrong (``--help`` shows the usage), exit code 2."""
        self.exit(2, f'{self.prog}: {message} (--help lists the options)\n')

    def env_var(self, dest: str) -> str | None:
        """The environment variable of the option with ``dest``."""
        return self._env_vars.get(dest)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self._adopt_legacy_env_vars()
        saved: list[tuple[argparse.Action, Any, bool]] = []
        try:
            for action in self._actions:
                name = self._env_vars.get(action.dest)
                if name is None or name not in os.environ:
                    continue
                saved.append((action, action.default, action.required))
                action.default = self._env_value(action, name, os.environ[name])
                action.required = False  # the environment gave it
            return super().parse_known_args(args, namespace)
        finally:
            for action, default, required in saved:
                action.default, action.required = default, required

    def _env_value(self, action: argparse.Action, name: str, raw: str) -> Any:
        """The value of environment variable ``name`` for ``action``, converted and checked as argparse would."""
        flag = '/'.join(action.option_strings)
        if action.nargs == 0:  # store_true / store_false / store_const
            text = raw.strip().lower()
            if text not in _TRUE | _FALSE:
                self.error(f'environment variable {name}={raw!r} ({flag}) is not a boolean (use 1/true or 0/false)')
            return action.const if text in _TRUE else action.default
        many = action.nargs in ('*', '+') or (isinstance(action.nargs, int) and action.nargs > 1)
        values = [self._convert(action, name, flag, item) for item in shlex.split(raw)] if many else None
        return values if many else self._convert(action, name, flag, raw)

    def _convert(self, action: argparse.Action, name: str, flag: str, raw: str) -> Any:
        value: Any = raw
        if callable(action.type):
            try:
                value = action.type(raw)
            except (TypeError, ValueError, argparse.ArgumentTypeError) as e:
                kind = getattr(action.type, '__name__', 'value')
                detail = f': {e}' if isinstance(e, argparse.ArgumentTypeError) else ''
                self.error(f'environment variable {name}={raw!r} ({flag}) is not a valid {kind}{detail}')
        if action.choices is not None and value not in action.choices:
            allowed = ', '.join(map(str, action.choices))
            self.error(f'environment variable {name}={raw!r} ({flag}) must be one of: {allowed}')
        return value

    def _adopt_legacy_env_vars(self) -> None:
        if not self.legacy_env_prefix:
            return
        for dest, name in self._env_vars.items():
            if name in os.environ:
                continue
            for legacy in (self.legacy_env_prefix + name, self.legacy_env_prefix + dest.upper()):
                if legacy in os.environ:
                    os.environ[name] = os.environ[legacy]
                    logger.warning('%s is deprecated and will stop being read; set %s instead', legacy, name)
                    break


def node_parser(
    *,
    description: str,
    legacy_env_prefix: str = '',
    vram_limit: bool = False,
    host: str = '0.0.0.0',
    port: int = 80,
    **parser_options: Any,
) -> NodeArgumentParser:
    """A parser with the options every node has: ``--host`` (``NODE_HOST``), ``--port`` (``NODE_PORT``),
    ``--server`` (``NODE_SERVER``), and with ``vram_limit=True`` ``--vram-limit-gb`` (``VRAM_LIMIT_GB``).

    ``host`` and ``port`` are the defaults (the reference's: ``0.0.0.0:80``, what a container wants); every
    option added later is an environment variable too (see :class:`NodeArgumentParser`).
    """
    from llnode.node.node import Node
    from llnode.node.serving import SERVERS

    default_server = inspect.signature(Node.serve).parameters['server'].default
    if not isinstance(default_server, str) or default_server not in SERVERS:
        default_server = "the node's choice"

    parser = NodeArgumentParser(description=description, legacy_env_prefix=legacy_env_prefix, **parser_options)
    every = host in ('0.0.0.0', '::')
    parser.add_argument(
        '--host',
        default=host,
        env_var='NODE_HOST',
        help=f'address to listen on (default: {host}, all interfaces)'
        if every
        else f'address to listen on (default: {host}, this machine only; 0.0.0.0 listens on every interface)',
    )
    parser.add_argument(
        '--port', type=int, default=port, env_var='NODE_PORT', help=f'port to listen on, 0 for any (default: {port})'
    )
    parser.add_argument(
        '--server',
        choices=SERVERS,
        default=None,
        env_var='NODE_SERVER',
        help=f'the HTTP server: {", ".join(SERVERS)} (default: {default_server})',
    )
    if vram_limit:
        parser.add_argument(
            VRAM_LIMIT_GB_FLAG, type=float, default=0.0, dest='vram_limit_gb', env_var='VRAM_LIMIT_GB',
            help=VRAM_LIMIT_GB_HELP,
        )  # fmt: skip
    return parser


def run_node(node: Any, args: argparse.Namespace) -> int:
    """Serve ``node`` on ``args.host:args.port`` with ``args.server`` until it stops; returns its exit code.

    With ``args.vram_limit_gb`` > 0 this process's GPU memory is capped first
    (:func:`llnode.trainer.cuda.limit_cuda_memory`; a training subprocess must cap its own). A port that cannot be
    bound is one line on stderr and exit code 2 (``serve()`` reports it through :mod:`llnode.startup`).
    """
    vram = getattr(args, 'vram_limit_gb', 0) or 0
    if vram > 0:
        from llnode.trainer.cuda import limit_cuda_memory

        limit_cuda_memory(vram)
    options: dict[str, Any] = {}
    if getattr(args, 'server', None):
        options['server'] = args.server
    return int(node.serve(args.host, args.port, **options))  # a port it cannot bind: one line, exit 2
