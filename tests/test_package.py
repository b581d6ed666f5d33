"""Package rules: the console script works, importing never configures logging or loads torch, no asyncio."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import llnode

PACKAGE = Path(llnode.__file__).parent


def test_console_script_prints_usage() -> None:
    done = subprocess.run(['llnode', '--help'], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and 'loop' in done.stdout and 'control' in done.stdout
    done = subprocess.run(['llnode', 'nonsense'], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and 'unknown command' in done.stderr


#: the demo's torch model code: importing one of these is asking for torch (``llnode demo`` imports them lazily)
TORCH_MODULES = {'llnode.demo.shapes_net', 'llnode.demo.torch_trainer', 'llnode.demo.torch_detector'}


def test_import_configures_no_logging_and_loads_no_torch() -> None:
    modules = sorted(
        '.'.join(p.relative_to(PACKAGE.parent).with_suffix('').parts)
        for p in PACKAGE.rglob('*.py')
        if p.name != '__main__.py'
    )
    modules = [m for m in modules if m not in TORCH_MODULES]
    assert len(modules) > 50
    code = (
        'import importlib, logging, sys\n'
        f'for name in {modules!r}:\n'
        '    importlib.import_module(name.removesuffix(".__init__"))\n'
        'assert logging.root.handlers == [], logging.root.handlers\n'
        'assert logging.root.level == logging.WARNING\n'
        'assert "torch" not in sys.modules\n'
        'print("ok")\n'
    )
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == 'ok'


def test_no_asyncio_in_llnode() -> None:
    pattern = re.compile(r'^\s*(import asyncio|from asyncio|async def )', re.MULTILINE)
    offenders = [str(p) for p in PACKAGE.rglob('*.py') if pattern.search(p.read_text())]
    assert offenders == []


def test_building_servers_and_clients_adds_no_log_handlers(tmp_path: Path) -> None:
    code = (
        'import logging\n'
        'from llnode.localloop import LocalLoop\n'
        'from llnode.loop.http import LoopClient\n'
        'from llnode.loop.socket import LoopSocket\n'
        'from llnode.node.app import create_socketio_server\n'
        'create_socketio_server()\n'
        f'loop = LocalLoop({str(tmp_path)!r}).start()\n'
        'LoopSocket(LoopClient(loop.settings()), "trainer").close()\n'
        'loop.stop()\n'
        'loggers = [logging.root] + [l for l in logging.root.manager.loggerDict.values() if isinstance(l, logging.Logger)]\n'
        'noisy = [l.name for l in loggers if any(not isinstance(h, logging.NullHandler) for h in l.handlers)]\n'
        'assert noisy == [], noisy\n'
        'print("ok")\n'
    )
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == 'ok'


def test_license_and_changelog_ship_with_this_release() -> None:
    root = PACKAGE.parent
    license_text = (root / 'LICENSE').read_text()
    assert license_text.startswith('MIT License') and 'WITHOUT WARRANTY' in license_text
    assert 'license = MIT' in (root / 'setup.cfg').read_text()
    changelog = (root / 'CHANGELOG.rst').read_text().splitlines()
    versions = [line.split()[0] for line in changelog if re.match(r'^\d+\.\d+\.\d+ ', line)]
    assert versions and versions[0] == llnode.__version__  # the newest section is this release


def test_version_option() -> None:
    done = subprocess.run(['llnode', '--version'], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stdout.strip() == f'llnode {llnode.__version__}'
