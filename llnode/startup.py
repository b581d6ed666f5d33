"""Start-up errors: one exception type and one place that turns it into one line on stderr with exit code 2.

A mistake a user can make before anything runs (a bad environment value, a missing ``LOOP_ORGANIZATION``, a data
folder that cannot be written, a port in use) is a :class:`~llnode.config.ConfigError` whose message says what is
wrong and how to fix it. ``Node.serve()``/``run()``, every ``llnode`` command and every sample hand it to
:func:`report`, which prints that one line and answers exit code 2; the traceback is logged at DEBUG only.
Any server that runs a node (waitress, werkzeug, gunicorn) uses :func:`bind_error` for the address it cannot use.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import sys
from collections.abc import Callable
from typing import TextIO

from llnode.config import ConfigError

logger = logging.getLogger('llnode.startup')

#: Exit code of a start-up error (as argparse uses for a usage error).
EXIT_STARTUP_ERROR = 2


def bind_error(host: str, port: int, error: OSError) -> ConfigError:
    """The start-up error for a server that cannot listen on ``host:port``, naming both and the fix."""
    code = getattr(error, 'errno', None)
    if code == errno.EADDRINUSE:
        text = f'port {port} on {host} is in use: stop the other process or pick another port with --port'
    elif code == errno.EACCES:
        text = f'port {port} on {host} needs privileges: pick a port above 1023 with --port, or run as root'
    elif code == errno.EADDRNOTAVAIL or isinstance(error, socket.gaierror):
        text = (
            f'cannot listen on {host}: not an address of this machine: use 127.0.0.1 (this machine only) '
            'or 0.0.0.0 (every interface) with --host'
        )
    else:
        reason = error.strerror or str(error)
        text = f'cannot listen on {host}:{port}: {reason}: pick another address or port with --host/--port'
    return ConfigError(text)


def check_port(host: str, port: int) -> None:
    """Raise the :func:`bind_error` now if ``host:port`` cannot be bound, for a program that binds it later, after
    other work (a probe: the port is free again when this returns; port 0 is always fine)."""
    if port == 0:
        return
    family = socket.AF_INET6 if ':' in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
            probe.bind((host, port))
    except OSError as e:
        raise bind_error(host, port, e) from e


def program_name() -> str:
    """The name a message starts with: the script or command, as argparse names it."""
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else 'llnode'


def report(error: ConfigError, program: str | None = None, *, stream: TextIO | None = None) -> int:
    """Print ``program: message`` as one line (on stderr by default) and return :data:`EXIT_STARTUP_ERROR`."""
    logger.debug('start-up error', exc_info=error)  # before the line, so that the line comes last
    line = ' '.join(str(error).split())
    print(f'{program or program_name()}: {line}', file=stream if stream is not None else sys.stderr, flush=True)
    return EXIT_STARTUP_ERROR


def run_main(main: Callable[[], int | None], program: str | None = None) -> int:
    """Run a program's ``main``; a start-up error becomes one line on stderr and exit code 2."""
    try:
        return main() or 0
    except ConfigError as e:
        return report(e, program)
