"""A converter from the sample torch model's weights to TorchScript, on a ConverterNode.

Source format ``torch_state_dict``: ``model.pt``, the ``state_dict`` of :class:`TinyClassifier` (the architecture
lives here, in the sample). Target format ``torchscript``: ``model_scripted.pt``, written by ``torch.jit.save``
of the scripted module, which loads with ``torch.jit.load`` alone, without this file. Nothing beyond torch is
needed::

    llnode loop --demo --user demo:demo          # in another terminal: the local Loop on 127.0.0.1:8080
    LOOP_HOST=127.0.0.1:8080 LOOP_USERNAME=demo LOOP_PASSWORD=demo LOOP_ORGANIZATION=zauberzeug \\
        LOOP_PROJECT=demo python samples/torchscript_converter.py --port 8005

Every ``--check-interval`` seconds the node looks for models of the project that have ``torch_state_dict`` but
no ``torchscript`` yet and converts them. To give it one, upload weights as a new model::

    python -c "import torch, torchscript_converter as t; torch.save(t.TinyClassifier().state_dict(), 'model.pt')"
    curl -b cookies -F files=@model.pt 127.0.0.1:8080/api/zauberzeug/projects/demo/torch_state_dict

Like every sample it listens on 127.0.0.1 only; ``--host 0.0.0.0`` (or ``NODE_HOST=0.0.0.0``) serves other
machines too. Every option is also an environment variable (``--help`` names them).
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from llnode.converter import ConversionError, ConverterLogic, ConverterNode
from llnode.helpers import node_parser, run_node
from llnode.startup import run_main

SOURCE_FORMAT = 'torch_state_dict'
TARGET_FORMAT = 'torchscript'
WEIGHTS = 'model.pt'
SCRIPTED = 'model_scripted.pt'


class TinyClassifier(nn.Module):
    """A small image classifier: two convolutions, global average pooling, one linear layer."""

    def __init__(self, classes: int = 4, channels: int = 3, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1, stride=2),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(width, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(images), 1))

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> TinyClassifier:
        """The module whose sizes the weights imply, with the weights loaded (strictly: every key must fit)."""
        try:
            classes, width = state['head.weight'].shape
            channels = state['features.0.weight'].shape[1]
        except (KeyError, AttributeError, ValueError) as e:
            raise ConversionError(f'{WEIGHTS} is not a TinyClassifier state_dict: {e!r}') from e
        module = cls(classes=int(classes), channels=int(channels), width=int(width))
        module.load_state_dict(state)
        return module


class TorchScriptConverter(ConverterLogic):
    """``torch_state_dict`` -> ``torchscript`` for :class:`TinyClassifier` weights."""

    def __init__(self) -> None:
        super().__init__(SOURCE_FORMAT, TARGET_FORMAT)

    def convert(self, model_folder: Path, out_folder: Path) -> list[Path]:
        weights = model_folder / WEIGHTS
        if not weights.is_file():
            raise ConversionError(f'the {SOURCE_FORMAT} model has no {WEIGHTS}')
        try:
            state = torch.load(weights, map_location='cpu', weights_only=True)
        except Exception as e:  # torch raises many kinds for a file that is not what it expects
            raise ConversionError(f'{WEIGHTS} cannot be read by torch.load: {type(e).__name__}: {e}') from e
        if not isinstance(state, dict):
            raise ConversionError(f'{WEIGHTS} holds a {type(state).__name__}, not a state_dict')
        module = TinyClassifier.from_state_dict(state).eval()
        target = out_folder / SCRIPTED
        torch.jit.save(torch.jit.script(module), str(target))
        self._check(module, int(state['features.0.weight'].shape[1]), target)
        return [target]

    @staticmethod
    def _check(module: nn.Module, channels: int, scripted_file: Path) -> None:
        """Load the written file back and compare it with the source module on a probe batch."""
        probe = torch.rand(2, channels, 16, 16, generator=torch.Generator().manual_seed(0))
        loaded = torch.jit.load(str(scripted_file), map_location='cpu')
        with torch.no_grad():
            if not torch.allclose(module(probe), loaded(probe), atol=1e-6):
                raise ConversionError('the scripted module does not compute what the weights do')


def main(argv: list[str] | None = None) -> int:
    parser = node_parser(description=__doc__.split('\n\n')[0], host='127.0.0.1', port=8005)
    parser.add_argument(
        '--name', env_var='NODE_NAME', default='torchscript converter', help='the node name the Loop shows'
    )
    parser.add_argument(
        '--check-interval', type=float, default=60.0, help='seconds between two looks for models (default: 60)'
    )
    parser.add_argument('--log-level', default='INFO')
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    # Recent torch releases mark TorchScript deprecated (in favour of torch.export); it still works and loads with
    # torch.jit.load alone, which is what this format is for. Keep the log free of that warning per conversion.
    warnings.filterwarnings('ignore', message=r'.*torch\.jit.* is deprecated', category=DeprecationWarning)
    node = ConverterNode(args.name, TorchScriptConverter(), check_interval=args.check_interval)
    return run_node(node, args)


if __name__ == '__main__':
    sys.exit(run_main(main))  # a start-up error: one line on stderr, exit code 2
