"""``llnode demo``: the whole active-learning loop on this machine, in one process (see
:mod:`llnode.demo.active_learning` for the steps).

Exit codes: 0 when every step worked, 1 when one failed (the message and the report name it), 2 for bad
arguments, 130 when interrupted (SIGINT/SIGTERM; a second signal stops waiting for a clean shutdown).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, TextIO

from llnode.config import ConfigError, user_path, writable_folder
from llnode.demo.plan import FULL, QUICK, DemoPlan, PlanError
from llnode.startup import check_port
from llnode.startup import report as report_startup_error

if TYPE_CHECKING:
    from llnode.demo.active_learning import NodeTimings
    from llnode.demo.parts import DemoParts

logger = logging.getLogger('llnode.demo')

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

#: Longest wait at the end for the thread that imports torch ahead of the first training (it is long done by then).
PRELOAD_JOIN_TIMEOUT = 30.0

#: The local Loop of the demo listens here (loopback only).
DEMO_HOST = '127.0.0.1'


class UsageError(ConfigError):
    """An argument the demo cannot run with (a start-up error: one line, exit 2)."""


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a port number, got {text!r}') from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f'a port lies in 0..65535, got {port}')
    return port


def demo_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='llnode demo',
        description='A complete active-learning loop on this machine: a local Learning Loop with the demo '
        'project, a torch trainer, a torch detector following the deployment, and images coming back through the '
        "detector's outbox into a second training. Progress on stderr, the report on stdout.",
    )
    parser.add_argument(
        '--quick',
        action='store_true',
        help="a smaller run (fewer images, shorter trainings) in at most half the full run's time",
    )
    parser.add_argument(
        '--data',
        type=user_path,
        metavar='DIR',
        help="keep the Loop's data in DIR/loop (a new or empty folder, or one an earlier demo used; "
        'default: a temporary folder, deleted at the end)',
    )
    parser.add_argument(
        '--port', type=_port, default=0, help="the local Loop's port on 127.0.0.1 (default: any free port)"
    )
    parser.add_argument('--report-json', type=user_path, metavar='PATH', help='also write the report as JSON to PATH')
    parser.add_argument(
        '--serve-ui',
        action='store_true',
        help="after the report, keep the local Loop and its web UI serving until Ctrl-C: look at both models' "
        'detections and the images that came back (login demo/demo)',
    )
    for flag, what in (
        ('epochs', 'epochs per training'),
        ('loop_images', 'annotated images the Loop starts with'),
        ('field_images', 'images a camera sends to the detector'),
        ('test_images', 'images (never in the Loop) each model is measured on'),
    ):
        defaults = f'default {getattr(FULL, flag)}, with --quick {getattr(QUICK, flag)}'
        parser.add_argument(f'--{flag.replace("_", "-")}', type=int, metavar='N', help=f'{what} ({defaults})')
    parser.add_argument(
        '--min-f1',
        type=float,
        metavar='F',
        help=f"fail unless the last model's F1 on the test images reaches F (default {FULL.min_f1}, "
        f'with --quick {QUICK.min_f1})',
    )
    parser.add_argument('--log-level', default='WARNING', help='logging level of the nodes (default: %(default)s)')
    return parser


def plan_from(args: argparse.Namespace) -> DemoPlan:
    """The plan for these arguments: ``--quick`` or the full one, with the sizes given on the command line."""
    base = QUICK if args.quick else FULL
    try:
        return base.with_changes(
            epochs=args.epochs,
            loop_images=args.loop_images,
            field_images=args.field_images,
            test_images=args.test_images,
            min_f1=args.min_f1,
        )
    except PlanError as e:
        raise UsageError(str(e).replace('_', '-')) from None


def check_data_folder(folder: Path) -> None:
    """A data folder must be new, empty, or one an earlier demo used (it has ``loop/``): never someone's files."""
    if folder.exists() and not folder.is_dir():
        raise UsageError(f'--data {folder}: not a folder')
    if folder.is_dir() and any(folder.iterdir()) and not (folder / 'loop').is_dir():
        raise UsageError(f'--data {folder}: the folder holds other files; give a new or empty folder')


def check_report_path(path: Path) -> None:
    if path.is_dir():
        raise UsageError(f'--report-json {path}: is a folder')
    if not path.parent.is_dir():
        raise UsageError(f'--report-json {path}: the folder {path.parent} does not exist')


def quiet_waiting_threads() -> None:
    """Let torch's OpenMP threads sleep instead of spin while they wait (``OMP_WAIT_POLICY=PASSIVE``, unless set).

    Why: the demo trains on every core while its Loop, detector and the rest of the machine want some too; a
    spinning thread that waits for a descheduled sibling burns its core for nothing. On a 2-core machine busy with
    other work, ``llnode demo --quick`` took about 70 s with spinning threads and 30 s with sleeping ones. libgomp
    reads the variable when torch is loaded, so this works only before the first ``import torch``.
    """
    if 'torch' not in sys.modules:
        os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')


@contextmanager
def stop_on_signals(stopping: threading.Event, err: TextIO) -> Iterator[None]:
    """SIGINT/SIGTERM set ``stopping`` (the demo winds down and stops everything); a second one raises
    KeyboardInterrupt. Only in the main thread; elsewhere nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if stopping.is_set():
            raise KeyboardInterrupt
        err.write(f'\nllnode demo: {signal.Signals(signum).name}: stopping (again to force)\n')
        stopping.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def demo_main(
    argv: list[str],
    *,
    parts: DemoParts | None = None,
    timings: NodeTimings | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    stopping: threading.Event | None = None,
) -> int:
    """Run ``llnode demo ARGV``; the exit code. ``parts`` (:class:`~llnode.demo.parts.DemoParts`) and ``timings``
    (:class:`~llnode.demo.active_learning.NodeTimings`) replace the torch model and the node timings (tests);
    setting ``stopping`` does what SIGINT does (it also ends ``--serve-ui``)."""
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    args = demo_parser().parse_args(argv)
    try:
        plan = plan_from(args)
        if args.data is not None:
            check_data_folder(args.data)
            writable_folder(args.data, '--data', 'choose another folder with --data, or fix its permissions')
        check_port(DEMO_HOST, args.port)
        if args.report_json is not None:
            check_report_path(args.report_json)
        level = logging.getLevelName(args.log_level.upper())
        if not isinstance(level, int):
            raise UsageError(f'--log-level {args.log_level}: not a logging level')
    except ConfigError as e:
        return report_startup_error(e, 'llnode demo', stream=err)

    from llnode.demo.active_learning import ActiveLearningDemo
    from llnode.demo.parts import preload_torch, torch_parts

    preload = None
    if parts is None:
        quiet_waiting_threads()  # before torch is imported
        preload = preload_torch()
    temporary = args.data is None
    data = Path(tempfile.mkdtemp(prefix='llnode-demo-')) if temporary else args.data
    stopping = stopping if stopping is not None else threading.Event()
    demo = ActiveLearningDemo(
        plan,
        parts if parts is not None else torch_parts(),
        data,
        port=args.port,
        quick=args.quick,
        stream=err,
        timings=timings,
        stopping=stopping,
        keep_loop=args.serve_ui,
    )
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter('%(asctime)s %(levelname)s %(name)s: %(message)s'))
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(handler)
    root.setLevel(level)
    try:
        with stop_on_signals(stopping, err):
            report = demo.run()
            if temporary:
                report.data_folder = ''
            if args.report_json is not None:
                report.write_json(args.report_json)
            out.write(report.render())
            out.flush()
            if args.serve_ui and demo.loop is not None and not report.interrupted:
                out.write(
                    f'web UI of the local Loop at {demo.loop.ui_url} (log in as demo/demo); '
                    'Ctrl-C stops it and ends the demo\n'
                )
                out.flush()
                stopping.wait()
    finally:
        demo.shutdown()
        if preload is not None:
            preload.join(PRELOAD_JOIN_TIMEOUT)
        root.removeHandler(handler)
        root.setLevel(previous_level)
        if temporary:
            shutil.rmtree(data, ignore_errors=True)
    if report.interrupted:
        return EXIT_INTERRUPTED
    if not report.ok:
        err.write(f'llnode demo: step {report.failed_step!r} failed: {report.error}\n')
        return EXIT_FAILED
    return EXIT_OK
