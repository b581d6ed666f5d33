"""A node program whose logic raises NodeNeedsRestartError: ``python -m tests.node.restart_script MODE DATA [LOOP]``.

Modes: ``hook`` (a plain node's ``on_repeat`` raises), ``build`` (a detector whose model build raises at start),
``evaluate`` (a served detector whose logic raises on the first image; it prints ``URL http://...`` once it
serves), ``train`` (a trainer, on the Loop at ``LOOP``, whose ``train`` raises). The process exits with what
``run()``/``serve()`` return and prints ``EXIT <code>`` before.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np

from llnode import NodeNeedsRestartError
from llnode.config import Settings
from llnode.detector import DetectorFactory, DetectorLogic, DetectorNode
from llnode.node import Node
from llnode.schema import ImageMetadata, ModelInformation
from llnode.trainer import TrainerNode, TrainingRun
from tests.detector.node_helpers import install_model
from tests.trainer.trainer_support import ScriptedLogic

NODE_UUID = '5a1e0000-0000-4000-8000-00000000beef'


class WedgedLogic(DetectorLogic):
    def evaluate(self, image: np.ndarray) -> ImageMetadata:
        raise NodeNeedsRestartError('CUDA error: an illegal memory access was encountered')


class WedgedFactory(DetectorFactory):
    model_format = 'mocked'

    def __init__(self, fail_build: bool) -> None:
        super().__init__()
        self.fail_build = fail_build

    def build(self, model_info: ModelInformation) -> DetectorLogic:
        if self.fail_build:
            raise NodeNeedsRestartError('No CUDA GPUs are available')
        return WedgedLogic(model_info)


class WedgedTrainerLogic(ScriptedLogic):
    def train(self, run: TrainingRun) -> None:
        self.record('train')
        raise NodeNeedsRestartError('CUDA out of memory')


class WedgedNode(Node):
    def on_repeat(self) -> None:
        raise NodeNeedsRestartError('the hook cannot go on')


def main(mode: str, data_folder: Path, loop: str = '127.0.0.1:1') -> int:
    logging.basicConfig(level=logging.INFO, format='%(threadName)s %(name)s %(message)s')
    settings = Settings(
        host=loop,
        username='u',
        password='p',
        organization='zauberzeug',
        project='demo',
        data_folder=data_folder,
    )
    if mode == 'hook':
        return WedgedNode('wedged node', settings=settings, repeat_interval=0.05).run()
    if mode in ('build', 'evaluate'):
        settings.ensure_data_folder()
        install_model(settings.data_folder)
        detector = DetectorNode('wedged detector', WedgedFactory(mode == 'build'), settings=settings)

        def announce() -> None:
            address = detector.server_address
            if address is not None:
                print(f'URL http://{address[0]}:{address[1]}', flush=True)

        detector.on_repeat = announce  # type: ignore[method-assign]  # prints once serving, each cycle
        return detector.serve('127.0.0.1', 0, server='werkzeug')
    if mode == 'train':
        node = TrainerNode(
            'wedged trainer', WedgedTrainerLogic(), settings=settings, uuid=NODE_UUID, repeat_interval=0.1
        )
        return node.run()
    raise SystemExit(f'unknown mode {mode!r}')


if __name__ == '__main__':
    code = main(sys.argv[1], Path(sys.argv[2]), *sys.argv[3:])
    print(f'EXIT {code}', flush=True)
    sys.exit(code)
