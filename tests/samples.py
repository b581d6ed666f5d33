"""Running a sample script (``samples/*.py``) as a real process against the local Loop, for end-to-end tests."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import queue
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from llnode.localloop import LocalLoop

REPO = Path(__file__).resolve().parent.parent

#: what a node logs once it serves (``Node.serve``), with the address it got for ``--port 0``
SERVING = re.compile(r'serving on (http://127\.0\.0\.1:\d+)')


def load_sample(script: str) -> ModuleType:
    """``samples/<script>`` imported as a module (once per test process), to test its parts directly."""
    name = f'sample_{Path(script).stem}'
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / 'samples' / script)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
    return sys.modules[name]


@dataclass
class Sample:
    """A started sample: its process, the URL it serves on, and every line it printed so far."""

    process: subprocess.Popen[str]
    url: str
    output: list[str] = field(default_factory=list)

    def text(self) -> str:
        return '\n'.join(self.output)


def _read_lines(stream: Any, lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line.rstrip('\n'))


def sample_env(local_loop: LocalLoop, data_folder: Path) -> dict[str, str]:
    """The environment of a sample run against ``local_loop``: its ``LOOP_*`` variables, none of the samples' own
    options (``NODE_HOST``, ``NODE_PORT``, ``NODE_SERVER``, ``NODE_NAME``) from the test's environment."""
    settings = local_loop.settings()
    options = {'NODE_HOST', 'NODE_PORT', 'NODE_SERVER', 'NODE_NAME'}
    env = {key: value for key, value in os.environ.items() if key not in options}
    return {
        **env,
        'LOOP_HOST': settings.host,
        'LOOP_USERNAME': settings.username,
        'LOOP_PASSWORD': settings.password,
        'LOOP_ORGANIZATION': settings.organization,
        'LOOP_PROJECT': settings.project,
        'DATA_FOLDER': str(data_folder),
    }


@contextlib.contextmanager
def sample_process(
    script: str, local_loop: LocalLoop, data_folder: Path, *args: str, host: str | None = '127.0.0.1'
) -> Iterator[Sample]:
    """``python samples/<script> --host 127.0.0.1 --port 0 <args>`` with the ``LOOP_*`` variables of ``local_loop``.

    ``host=None`` leaves ``--host`` out (the sample's default; ``NODE_HOST`` is never passed on).

    Yields once the sample says where it serves; afterwards it is killed if still alive, and ``output`` holds
    everything it printed (check it for tracebacks after the ``with``).
    """
    env = sample_env(local_loop, data_folder)
    host_args = ['--host', host] if host is not None else []
    command = [sys.executable, str(REPO / 'samples' / script), *host_args, '--port', '0', *args]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=_read_lines, args=(process.stdout, lines), name='test-sample-output', daemon=True)
    reader.start()
    output: list[str] = []
    try:
        url = None
        while url is None:
            line = lines.get(timeout=30)
            output.append(line)
            found = SERVING.search(line)
            url = found.group(1) if found else None
        yield Sample(process, url, output)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        reader.join(5)
        while not lines.empty():
            output.append(lines.get())
