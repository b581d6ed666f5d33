"""The Converter node: converts the Loop's models from one format into another (see :mod:`llnode.converter.node`).

Write a :class:`ConverterLogic` (``convert(model_folder, out_folder) -> list[Path]``) and run it with
:class:`ConverterNode`; ``samples/torchscript_converter.py`` is a complete example.
"""

from llnode.converter.logic import ConverterLogic
from llnode.converter.node import CONVERTER_NODE_TYPE, STATUS_EVENT, ConverterNode
from llnode.converter.retries import ModelFailure, RetryBook
from llnode.converter.worker import ConversionError

__all__ = [
    'CONVERTER_NODE_TYPE',
    'STATUS_EVENT',
    'ConversionError',
    'ConverterLogic',
    'ConverterNode',
    'ModelFailure',
    'RetryBook',
]
