"""A trainer process for the kill test: runs a TrainerNode with the scripted test logic until it is killed.

    python -m tests.trainer.kill_trainer LOOP_HOST DATA_FOLDER NODE_UUID

Timings are chosen so every stage takes a moment (epochs of 50 ms, detections of 20 ms per batch) and the node
cycles and retries fast. It logs to stdout, which the test keeps in a file.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from llnode.config import Settings
from llnode.trainer import TrainerNode
from tests.trainer.trainer_support import ScriptedLogic

EPOCHS = 12
EPOCH_SECONDS = 0.05
DETECT_SECONDS = 0.02
BATCH_SIZE = 10


def main(host: str, data_folder: str, node_uuid: str) -> int:
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(threadName)s %(name)s %(message)s')
    settings = Settings(
        host=host,
        username='u',
        password='p',
        organization='zauberzeug',
        project='demo',
        data_folder=Path(data_folder),
        inference_batch_size=BATCH_SIZE,
    )
    logic = ScriptedLogic(epochs=EPOCHS, epoch_seconds=EPOCH_SECONDS, detect_seconds=DETECT_SECONDS)
    node = TrainerNode(
        'kill test trainer',
        logic,
        settings=settings,
        uuid=node_uuid,
        repeat_interval=0.1,
        retry_delay=0.05,
        max_retry_delay=0.2,
        metrics_interval=0.0,
    )
    return node.run()


if __name__ == '__main__':
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3]))
