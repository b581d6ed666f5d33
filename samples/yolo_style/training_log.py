"""The lines ``train.py`` writes to its log for each epoch, and how the trainer node reads them back.

One module for both sides, so that the writer and the parser cannot drift apart. A line looks like::

    epoch 7/12 loss 0.8123 val_f1 0.9310 batch 4

The trainer node's ``progress`` is ``epoch / epochs`` of the last such line; the metrics of an epoch travel with
its best state (``meta_information``), as a YOLO trainer reads them from ``train.py``'s output.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

_LINE = re.compile(r'^epoch (\d+)/(\d+)((?: [a-z_0-9]+ [-+0-9.eE]+|nan)*)\s*$')
_METRIC = re.compile(r' ([a-z_0-9]+) ([-+0-9.eE]+|nan)')
#: what ``train.py`` prints once it chose its batch size
BATCH_SIZE_LINE = 'batch size {batch_size} ({how})'


@dataclass(frozen=True)
class EpochLine:
    """One epoch as the log shows it: 1-based ``epoch`` of ``epochs``, and its metrics (loss, val_f1, batch)."""

    epoch: int
    epochs: int
    metrics: dict[str, float] = field(default_factory=dict)

    def format(self) -> str:
        parts = [f'epoch {self.epoch}/{self.epochs}']
        parts += [
            f'{name} {value:.4f}' if name != 'batch' else f'{name} {int(value)}' for name, value in self.metrics.items()
        ]
        return ' '.join(parts)

    @property
    def progress(self) -> float:
        return min(1.0, self.epoch / self.epochs) if self.epochs > 0 else 0.0


def parse_line(line: str) -> EpochLine | None:
    """The epoch line in ``line``, or None for any other output (warnings, tracebacks)."""
    found = _LINE.match(line.strip())
    if not found:
        return None
    metrics = {name: float(value) for name, value in _METRIC.findall(found.group(3))}
    return EpochLine(int(found.group(1)), int(found.group(2)), metrics)


def last_epoch(lines: Iterable[str]) -> EpochLine | None:
    """The last epoch line among ``lines`` (a log's tail), or None before the first epoch ended."""
    last = None
    for line in lines:
        parsed = parse_line(line)
        if parsed is not None:
            last = parsed
    return last


def epoch_metrics(lines: Iterable[str], epoch: int) -> dict[str, float]:
    """The metrics the log shows for ``epoch`` (1-based), or {} when its line is not among ``lines``."""
    for line in lines:
        parsed = parse_line(line)
        if parsed is not None and parsed.epoch == epoch:
            return dict(parsed.metrics)
    return {}
