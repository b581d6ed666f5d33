"""A node served in a subprocess (:mod:`tests.node.served_detector`): its URL, the process that serves (the
worker under gunicorn) and that process's thread count, read from ``/proc``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from tests.polling import wait_for

REPO = Path(__file__).resolve().parent.parent.parent


class ServedProcess:
    def __init__(self, server: str, data_folder: Path, *args: str) -> None:
        self.server = server
        self.proc = subprocess.Popen(
            [sys.executable, '-m', 'tests.node.served_detector', server, str(data_folder), *args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, name='test-served-reader', daemon=True)
        self._reader.start()
        line = wait_for(
            lambda: next((x for x in self.lines if 'serving on http://' in x), None) or self.proc.poll() is not None,
            20,
            f'{server} to listen',
        )
        assert isinstance(line, str), self.output
        self.url = line.split('serving on ', 1)[1].split()[0]
        wait_for(self._ready, 20, 'the detector to be ready')

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip('\n'))

    def _ready(self) -> bool:
        import requests

        try:
            return requests.get(f'{self.url}/readyz', timeout=2).status_code == 200
        except requests.RequestException:
            return False

    @property
    def output(self) -> str:
        return '\n'.join(self.lines)

    @property
    def serving_pid(self) -> int:
        """The process that runs the node: gunicorn's worker, else the process itself."""
        if self.server != 'gunicorn':
            return self.proc.pid
        children = Path(f'/proc/{self.proc.pid}/task/{self.proc.pid}/children').read_text().split()
        assert len(children) == 1, children
        return int(children[0])

    def threads(self) -> int:
        return len(os.listdir(f'/proc/{self.serving_pid}/task'))

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
