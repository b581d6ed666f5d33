"""What a demo run did: each step with its time and outcome, each training with its model and F1, the uploads.

The same record is printed as a short text report at the end and written as JSON with ``--report-json`` (tests
and CI read that instead of parsing text). ``ok`` is True only when every step worked.
"""

from __future__ import annotations

import re
import textwrap
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llnode.durable import write_json

REPORT_VERSION = 1
#: The text report fits a classic terminal: longer lines are wrapped, continued under their text.
REPORT_WIDTH = 80
#: Where a step's title starts in the report (``  ok     3.2 s  loop        start...``); details line up there.
STEP_TEXT_COLUMN = 29


def training_label(k: int, number: int) -> str:
    """How progress and report name the ``k``-th training of a run: ``training 1 (Loop #4)``, where 4 is the
    training number the Loop gave it (the demo project's models came from trainings 1-3)."""
    return f'training {k} (Loop #{number})'


def _wrap(line: str) -> list[str]:
    """``line`` wrapped at :data:`REPORT_WIDTH`, continuation lines indented under the line's text."""
    if len(line) <= REPORT_WIDTH:
        return [line]
    leading = len(line) - len(line.lstrip())
    step = re.match(r'^  (ok  |FAIL|\.\.\. ) ', line) is not None
    indent = ' ' * (STEP_TEXT_COLUMN if step else min(STEP_TEXT_COLUMN, leading + 4))
    return textwrap.wrap(line, REPORT_WIDTH, subsequent_indent=indent, break_on_hyphens=False)


@dataclass
class StepRecord:
    """One step: its short ``name`` (what a failure names), a ``title`` for people, how long it took."""

    name: str
    title: str
    seconds: float = 0.0
    ok: bool | None = None  # None while it runs
    detail: str = ''


@dataclass
class TrainingRecord:
    """One training and the model it produced, measured on the held-out test images."""

    training_number: int
    model_id: str | None = None
    model_version: str | None = None
    #: F1 over every box category at IoU >= 0.5 of the deployed model's detections on the test images
    f1_test: float | None = None
    #: the best F1 the trainer itself reported to the Loop (its own test split), and at which epoch
    trainer_f1: float | None = None
    best_epoch: int | None = None
    train_image_count: int | None = None
    test_image_count: int | None = None
    seconds: float | None = None


@dataclass
class UploadRecord:
    """The images a camera saw later, and how many came back to the Loop through the detector's outbox."""

    sent_to_detector: int = 0
    picked_by_filter: int = 0
    arrived_at_loop: int = 0
    annotated: int = 0
    batches: int = 0


@dataclass
class DemoReport:
    """Everything a run reports; ``failed_step`` names the first step that did not work."""

    quick: bool = False
    loop_url: str = ''
    data_folder: str = ''
    plan: dict[str, Any] = field(default_factory=dict)
    steps: list[StepRecord] = field(default_factory=list)
    trainings: list[TrainingRecord] = field(default_factory=list)
    uploads: UploadRecord = field(default_factory=UploadRecord)
    failed_step: str | None = None
    error: str | None = None
    interrupted: bool = False
    seconds_total: float = 0.0
    _started: float = field(default_factory=time.monotonic, repr=False)

    @property
    def ok(self) -> bool:
        return self.failed_step is None and not self.interrupted and all(s.ok for s in self.steps)

    def finish(self) -> None:
        self.seconds_total = round(time.monotonic() - self._started, 2)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop('_started')
        return {'report_version': REPORT_VERSION, 'ok': self.ok, **data}

    def write_json(self, path: str | Path) -> None:
        """Write the report durably (temp file, fsync, rename)."""
        write_json(Path(path), self.to_dict())

    def render(self) -> str:
        """The short text report printed at the end; no line is wider than :data:`REPORT_WIDTH` columns."""
        lines = ['', 'llnode demo: ' + ('every step worked' if self.ok else self._failure_line()), '']
        tests = self.plan.get('test_images', '?')
        for k, t in enumerate(self.trainings, start=1):
            f1 = 'n/a' if t.f1_test is None else f'{t.f1_test:.3f}'
            lines.append(
                f'  {training_label(k, t.training_number)}: model {t.model_version or "-"}, '
                f'F1 {f1} on the {tests} test images'
            )
            facts = []
            if t.trainer_f1 is not None:
                facts.append(f'trainer reported F1 {t.trainer_f1:.3f} (epoch {t.best_epoch})')
            if t.train_image_count is not None:
                facts.append(f'trained on {t.train_image_count} images, tested on {t.test_image_count}')
            if facts:
                lines.append('      ' + '; '.join(facts))
        change = self.f1_change()
        if change:
            lines.append(f'  {change}')
        u = self.uploads
        lines.append(
            f'  outbox: {u.sent_to_detector} images sent to the detector, {u.picked_by_filter} picked by the '
            f'relevance filter, {u.arrived_at_loop} arrived at the Loop in {u.batches} batches, {u.annotated} annotated'
        )
        lines.append('')
        for step in self.steps:
            mark = {True: 'ok  ', False: 'FAIL', None: '... '}[step.ok]
            lines.append(f'  {mark} {step.seconds:6.1f} s  {step.name:<11} {step.title}')
            if step.detail:
                lines.append(f'{"":{STEP_TEXT_COLUMN}}{step.detail}')
        lines.append(f'       {self.seconds_total:6.1f} s  total')
        return '\n'.join(wrapped for line in lines for wrapped in _wrap(line)) + '\n'

    def f1_change(self) -> str:
        """One line with the F1 change from the first model to the last on the test images ('' without two)."""
        measured = [t for t in self.trainings if t.f1_test is not None]
        if len(measured) < 2:
            return ''
        first, last = measured[0], measured[-1]
        assert first.f1_test is not None and last.f1_test is not None
        delta = last.f1_test - first.f1_test
        return (
            f'F1 change: {first.f1_test:.3f} -> {last.f1_test:.3f} ({delta:+.3f}) from model '
            f'{first.model_version} to model {last.model_version}'
        )

    def _failure_line(self) -> str:
        if self.interrupted:
            return f'interrupted during step {self.failed_step}' if self.failed_step else 'interrupted'
        return f'step {self.failed_step!r} failed: {self.error}'
