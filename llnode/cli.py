"""The ``llnode`` command."""

from __future__ import annotations

import sys

USAGE = """usage: llnode [--version] <command> [options]

commands:
  loop      run a local Learning Loop server (llnode loop --help)
  control   talk to a running local loop's control API (llnode control --help)
  demo      a complete active-learning loop on this machine (llnode demo --help)
"""


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a sub-command; each keeps its own argument parser."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ('-h', '--help'):
        print(USAGE, end='')
        return 0
    if args[0] in ('-V', '--version'):
        from llnode import __version__

        print(f'llnode {__version__}')
        return 0
    command, rest = args[0], args[1:]
    from llnode.startup import run_main

    if command == 'loop':
        from llnode.localloop.command import loop_main

        return run_main(lambda: loop_main(rest), 'llnode loop')
    if command == 'control':
        from llnode.localloop.command import control_main

        return run_main(lambda: control_main(rest), 'llnode control')
    if command == 'demo':
        from llnode.demo.command import demo_main

        return run_main(lambda: demo_main(rest), 'llnode demo')
    print(f'llnode: unknown command {command!r}\n\n{USAGE}', end='', file=sys.stderr)
    return 2


if __name__ == '__main__':
    sys.exit(main())
