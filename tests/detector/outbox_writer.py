"""Writes outbox items until it is killed: prints ``ready`` once the outbox is open, then ``<token> <id>`` for
every item as soon as ``save`` returned (that item is acknowledged as durable).

    python -m tests.detector.outbox_writer DATA_FOLDER RUN JPEG_FILE
"""

from __future__ import annotations

import sys
from pathlib import Path

from llnode.config import Settings
from llnode.detector.outbox import Outbox
from llnode.schema import ImageMetadata

#: large enough that the caps never drop an acknowledged item in the crash test
CAP = 1_000_000


def main(data_folder: str, run: str, jpeg_file: str) -> None:
    settings = Settings(
        host='127.0.0.1:9',
        organization='zauberzeug',
        project='demo',
        data_folder=Path(data_folder),
        max_outbox_size=CAP,
    )
    outbox = Outbox(settings, mode='stopped', max_priority=CAP)
    print('ready', flush=True)
    jpeg = Path(jpeg_file).read_bytes()
    n = 0
    while True:
        token = f'{run}-{n}'
        item_id = outbox.save(jpeg, ImageMetadata(source=token), priority=n % 3 == 0)
        print(token, item_id, flush=True)
        n += 1


if __name__ == '__main__':
    main(sys.argv[1], sys.argv[2], sys.argv[3])
