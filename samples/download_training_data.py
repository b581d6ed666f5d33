"""Download a project's training data (image metadata and JPEGs) from a Learning Loop.

Works against the hosted Loop and against the local one::

    llnode loop --demo --user demo:demo            # in another terminal; prints the LOOP_* variables
    LOOP_HOST=127.0.0.1:PORT LOOP_USERNAME=demo LOOP_PASSWORD=demo LOOP_ORGANIZATION=zauberzeug \
        LOOP_PROJECT=demo python samples/download_training_data.py --out ./dataset
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from llnode import Settings
from llnode.config import user_path
from llnode.loop.errors import LoopError
from llnode.loop.exchange import DataExchange
from llnode.loop.http import LoopClient
from llnode.startup import run_main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', type=user_path, default='dataset', help='target folder (default: ./dataset)')
    parser.add_argument('--state', default='complete', help='image state to download (default: complete)')
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')

    with LoopClient(Settings.from_env()) as client:
        exchange = DataExchange(client)
        try:
            ids = exchange.image_ids(args.state)
            items = exchange.image_metadata(ids)
            report = exchange.download_images(
                ids, args.out / 'images', progress=lambda done, total: print(f'\r{done}/{total}', end='', flush=True)
            )
        except LoopError as e:
            print(f'\nfailed: {e}', file=sys.stderr)
            return 1
    print()
    (args.out / 'images.json').write_text(json.dumps(items, indent=1))
    train = sum(1 for item in items if item.get('set') == 'train')
    print(
        f'{len(items)} images ({train} train, {len(items) - train} test): {report.downloaded} downloaded, '
        f'{report.skipped_existing} already there, {len(report.corrupt)} corrupt, {len(report.failed)} failed'
    )
    return 0 if report.ok else 1


if __name__ == '__main__':
    sys.exit(run_main(main))  # a start-up error: one line on stderr, exit code 2
