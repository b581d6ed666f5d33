"""A node program for the signal and exit-code tests: ``python node_script.py MODE DATA_FOLDER``.

Modes: ``run`` (runs until a signal), ``restart`` (asks for a restart with code 3 on its first cycle),
``slow-stop`` (its ``on_stop`` hangs, so only a second signal ends it), ``serve`` (serves with werkzeug on a
free loopback port); ``gunicorn``, ``gunicorn-restart`` and ``gunicorn-slow-stop`` do the same served by
gunicorn (the node runs in its forked worker), and ``gunicorn-stop`` calls ``node.stop()`` from a thread of the
master once it serves. It prints ``READY`` once started and ``RESTORED True`` if the
signal handlers it had before ``run()`` are back afterwards.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from llnode.config import Settings
from llnode.node import Node


def main() -> int:
    logging.basicConfig(level=logging.INFO, format='%(name)s %(message)s')
    mode, data_folder = sys.argv[1], Path(sys.argv[2])

    gunicorn = mode.startswith('gunicorn')

    class ScriptNode(Node):
        def on_start(self) -> None:
            if mode != 'serve' and not gunicorn:
                print('READY', flush=True)

        def on_repeat(self) -> None:
            if mode.endswith('restart'):
                self.request_restart(3)
            if (mode == 'serve' and self.server_address is not None) or gunicorn:
                print('READY', flush=True)

        def on_stop(self) -> None:
            print('STOPPING', flush=True)
            if mode.endswith('slow-stop'):
                threading.Event().wait(60)

    def own_handler(signum: int, frame: FrameType | None) -> None:
        print('own handler called', flush=True)

    signal.signal(signal.SIGTERM, own_handler)
    node = ScriptNode('script node', settings=Settings(data_folder=data_folder), repeat_interval=0.05)
    if mode == 'gunicorn-stop':

        def stop_when_served() -> None:
            while node.server_address is None:
                threading.Event().wait(0.05)
            threading.Event().wait(1.0)  # the worker has started its node by then
            node.stop()

        threading.Thread(target=stop_when_served, name='script-stopper', daemon=True).start()
    if gunicorn:
        code = node.serve('127.0.0.1', 0, server='gunicorn', threads=4)
    else:
        code = node.serve('127.0.0.1', 0, server='werkzeug') if mode == 'serve' else node.run()
    restored = signal.getsignal(signal.SIGTERM) is own_handler and signal.getsignal(signal.SIGINT) is (
        signal.default_int_handler
    )
    print(f'RESTORED {restored}', flush=True)
    return code


if __name__ == '__main__':
    sys.exit(main())
