"""A test detector served in its own process, so that gunicorn (which forks and handles signals in the main
thread) is tested like waitress and werkzeug: ``python -m tests.node.served_detector SERVER DATA_FOLDER [options]``.

It installs model 0.0, serves a :class:`DetectorNode` with the testing logic on a free loopback port, and logs
``serving on http://HOST:PORT`` (the master's line, under gunicorn) to stdout. ``--ping`` shortens engine.io's
ping interval and timeout (``--ping-interval`` and ``--ping-timeout`` each), so that vanished clients are noticed
within a test's time; they reach the node as :class:`ServingLimits`, as a user's would.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from llnode.detector import DetectorNode
from llnode.node.admission import ServingLimits
from tests.detector.conftest import offline_settings
from tests.detector.node_helpers import TestingFactory, install_model, nothing


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument('server')
    parser.add_argument('data_folder', type=Path)
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--ping', type=float, default=None, help='engine.io ping interval and timeout (s)')
    parser.add_argument('--ping-interval', type=float, default=None)
    parser.add_argument('--ping-timeout', type=float, default=None)
    parser.add_argument('--max-sessions', type=int, default=100)
    parser.add_argument('--read-timeout', type=float, default=ServingLimits.read_timeout_s)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format='%(process)d %(name)s %(message)s')
    logging.getLogger('llnode.node').setLevel(logging.INFO)
    settings = offline_settings(args.data_folder)
    settings.ensure_data_folder()
    install_model(settings.data_folder)
    node = DetectorNode('test detector', TestingFactory(nothing), settings=settings, repeat_interval=0.2)
    pings = {
        'ping_interval_s': args.ping_interval or args.ping or ServingLimits.ping_interval_s,
        'ping_timeout_s': args.ping_timeout or args.ping or ServingLimits.ping_timeout_s,
    }
    limits = ServingLimits(max_sessions=args.max_sessions, read_timeout_s=args.read_timeout, **pings)
    code = node.serve('127.0.0.1', 0, server=args.server, threads=args.threads, limits=limits)
    print(f'EXIT {code}', flush=True)
    return code


if __name__ == '__main__':
    sys.exit(main())
