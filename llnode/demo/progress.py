"""A text progress line for long waits: ``\\r`` updates on a terminal, a few plain lines everywhere else.

Why not a library: it is one line of text. ``update(fraction, text, detail)`` takes a stable ``text`` (the stage:
``training 1: running``) and a ``detail`` that changes often (``epoch 3, F1 0.61``). On a TTY the line is redrawn
in place (padded so that a shorter line wipes a longer one) at most ``min_interval`` apart. Into a file or pipe
(CI logs) a line is written when the stage changes, at most every ``plain_interval`` seconds while only the detail
changes, and once more at the end with the last state, so a log shows every stage without hundreds of lines.
A line's bar never goes back: until ``done()`` it shows the highest fraction it was given.

A trainer reports the progress of each stage on its own (downloading 0..1, then running 0..1, ...);
:func:`training_fraction` turns that into one fraction for the whole training.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

BAR_WIDTH = 24

#: Share of a training's time per trainer state, in pipeline order (what the demo's trainings take on 2 cores);
#: states not named take none.
TRAINING_STAGES: tuple[tuple[str, float], ...] = (
    ('preparing', 0.0),
    ('initialized', 0.0),
    ('data_downloading', 0.10),
    ('data_downloaded', 0.0),
    ('train_model_downloading', 0.02),
    ('train_model_downloaded', 0.0),
    ('running', 0.70),
    ('training_finished', 0.0),
    ('confusion_matrix_syncing', 0.0),
    ('confusion_matrix_synced', 0.0),
    ('train_model_uploading', 0.05),
    ('train_model_uploaded', 0.0),
    ('detecting', 0.10),
    ('detected', 0.0),
    ('detection_uploading', 0.03),
    ('ready_for_cleanup', 0.0),
)


def training_fraction(state: str, stage_progress: float | None) -> float | None:
    """How far a whole training is, 0..1, from the trainer's ``state`` and the progress of that stage; None for a
    state outside the pipeline (idle, blocked, waiting for the slot)."""
    done = 0.0
    for name, weight in TRAINING_STAGES:
        if name == state:
            within = 0.0 if stage_progress is None else min(1.0, max(0.0, float(stage_progress)))
            return min(1.0, done + weight * within)
        done += weight
    return None


def bar(fraction: float | None, width: int = BAR_WIDTH) -> str:
    """``[#########---------------]  37%``; an unknown fraction shows an empty bar and ``  ?%``."""
    if fraction is None:
        return f'[{"." * width}]   ?%'
    fraction = min(1.0, max(0.0, float(fraction)))
    filled = round(fraction * width)
    return f'[{"#" * filled}{"-" * (width - filled)}] {int(fraction * 100):3d}%'


def _joined(text: str, detail: str) -> str:
    return f'{text}: {detail}' if detail else text


class ProgressLine:
    """One progress line on ``stream`` (default stderr): ``update(...)`` while waiting, ``done()`` at the end.

    ``tty`` overrides the stream's own ``isatty()``. Not thread-safe: one thread owns a line.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        tty: bool | None = None,
        min_interval: float = 0.1,
        plain_interval: float = 10.0,
        width: int = BAR_WIDTH,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        if tty is None:
            isatty = getattr(self.stream, 'isatty', None)
            tty = bool(isatty()) if callable(isatty) else False
        self.tty = tty
        self.min_interval = min_interval
        self.plain_interval = plain_interval
        self.width = width
        self._drawn = ''  # what the terminal line shows now (TTY)
        self._pending = ''  # the latest TTY line asked for (drawn or not: updates are rate-limited)
        self._last_write = 0.0
        self._open = False  # a TTY line is drawn and not yet ended with a newline
        self._text = ''  # the stage of the last plain line written
        self._written = ''  # the last plain line written
        self._latest = ''  # the latest plain line asked for (written or not)
        self._highest: float | None = None  # the highest fraction given since the last done(): the bar's floor

    def update(self, fraction: float | None, text: str, detail: str = '') -> None:
        """Show stage ``text`` and ``detail`` with a bar for ``fraction`` (0..1, None: unknown); the bar shows
        the highest fraction given so far, so it never goes back."""
        if fraction is not None:
            fraction = max(fraction, self._highest) if self._highest is not None else fraction
            self._highest = fraction
        elif self._highest is not None:
            fraction = self._highest
        now = time.monotonic()
        if self.tty:
            line = self._pending = f'{bar(fraction, self.width)} {_joined(text, detail)}'
            if line == self._drawn or (self._open and now - self._last_write < self.min_interval):
                return
            self._draw(line)
            self._last_write = now
            return
        percent = '' if fraction is None else f' ({int(min(1.0, max(0.0, fraction)) * 100)}%)'
        self._latest = _joined(text, detail) + percent
        if self._latest == self._written:
            return
        if text != self._text or now - self._last_write >= self.plain_interval:
            self._write(self._latest + '\n')
            self._text, self._written, self._last_write = text, self._latest, now

    def done(self) -> None:
        """End the line with its last state; the next update starts a new line (with an empty bar)."""
        self._highest = None
        if self.tty:
            if self._pending and self._pending != self._drawn:
                self._draw(self._pending)
            if self._open:
                self._write('\n')
            self._open = False
            self._drawn = self._pending = ''
            return
        if self._latest and self._latest != self._written:
            self._write(self._latest + '\n')
        self._text = self._written = self._latest = ''

    def _draw(self, line: str) -> None:
        padding = ' ' * max(0, len(self._drawn) - len(line))
        self._write(f'\r{line}{padding}')
        self._drawn = line
        self._open = True

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()
