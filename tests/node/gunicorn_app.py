"""A detector module for a plain gunicorn command line (``gunicorn tests.node.gunicorn_app:app``); its
data folder comes from ``TEST_DATA_FOLDER``. gunicorn imports it in the worker (no ``--preload``)."""

from __future__ import annotations

import os
from pathlib import Path

from llnode.detector import DetectorNode
from tests.detector.conftest import offline_settings
from tests.detector.node_helpers import TestingFactory, install_model, nothing

settings = offline_settings(Path(os.environ['TEST_DATA_FOLDER']))
settings.ensure_data_folder()
install_model(settings.data_folder)
node = DetectorNode('test detector', TestingFactory(nothing), settings=settings, repeat_interval=0.2)
app = node.wsgi_app  # gunicorn names a module attribute: gunicorn tests.node.gunicorn_app:app
