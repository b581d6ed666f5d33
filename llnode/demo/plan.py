"""How big the demo is: images in the Loop, images held out of it, epochs, and how long each wait may take.

Why a plan: the full demo and ``--quick`` run the same steps with different sizes, and tests pick their own. The
held-out images are demo images of other seeds than the Loop's (:mod:`llnode.localloop.demo` draws every image
from ``(index, seed)``), so they are certainly not in the Loop at first and the demo still knows their true boxes:

- ``seed``: the Loop's images (``loop_images`` complete ones, train/test split by the Loop);
- ``seed + 1``: ``field_images`` images a camera "sees" later; the detector gets them and its outbox sends back
  the ones the relevance filter picks;
- ``seed + 2``: ``test_images`` images that never reach the Loop; each deployed model's F1 is measured on them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any


class PlanError(ValueError):
    """A plan value the demo cannot run with; the message names the value."""


@dataclass(frozen=True)
class DemoPlan:
    """Sizes and time limits of one demo run (see the module docstring for the three image sets)."""

    loop_images: int = 160
    field_images: int = 60
    test_images: int = 40
    #: epochs of each training (None: the trainer's own default)
    epochs: int | None = None
    #: images per training step (None: the trainer's own default, 8); smaller batches take more, cheaper steps
    batch_size: int | None = None
    seed: int = 0
    #: longest wait for one training, from ``begin_training`` until the trainer is idle again
    training_timeout: float = 900.0
    #: longest wait for a deployed version to serve, and for the outbox's images to reach the Loop
    serve_timeout: float = 120.0
    #: the uncertain band of the detector's relevance filter (the reference's defaults)
    min_uncertain: float = 0.3
    max_uncertain: float = 0.6
    #: the demo fails when the last model's F1 on the test images is below this
    min_f1: float = 0.0

    def __post_init__(self) -> None:
        for name, minimum in (('loop_images', 4), ('field_images', 1), ('test_images', 1), ('seed', 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise PlanError(f'{name} must be an integer >= {minimum}, got {value!r}')
        if self.epochs is not None and (isinstance(self.epochs, bool) or not isinstance(self.epochs, int)):
            raise PlanError(f'epochs must be an integer or None, got {self.epochs!r}')
        if self.epochs is not None and self.epochs < 1:
            raise PlanError(f'epochs must be at least 1, got {self.epochs}')
        if self.batch_size is not None and (
            isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1
        ):
            raise PlanError(f'batch_size must be a positive integer or None, got {self.batch_size!r}')
        for name in ('training_timeout', 'serve_timeout'):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise PlanError(f'{name} must be a positive number of seconds, got {value!r}')
        if not 0.0 <= self.min_uncertain <= self.max_uncertain <= 1.0:
            raise PlanError(
                f'the uncertain band must satisfy 0 <= min ({self.min_uncertain}) <= max ({self.max_uncertain}) <= 1'
            )
        if not 0.0 <= self.min_f1 <= 1.0:
            raise PlanError(f'min_f1 must lie in [0, 1], got {self.min_f1}')

    @property
    def field_seed(self) -> int:
        return self.seed + 1

    @property
    def test_seed(self) -> int:
        return self.seed + 2

    def with_changes(self, **changes: Any) -> DemoPlan:
        """A copy with some values changed (None values are ignored: "not given")."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise PlanError(f'unknown plan values {unknown}')
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


#: ``llnode demo``: a first model from few images and few epochs (F1 about 0.8), a camera's images of which the
#: uncertain ones come back, and a second model that learned from them (about 0.95); under a minute on 2 CPU cores
FULL = DemoPlan(loop_images=64, field_images=120, test_images=60, epochs=10, min_f1=0.5)

#: ``llnode demo --quick``: the same steps with fewer images of each kind and a quarter of the full run's training
#: work (CI runs it); ``bench/demo.py`` measures it against the full run: 8.7 s against 18.6 s (0.47) on 2 cores
QUICK = DemoPlan(
    loop_images=32,
    field_images=20,
    test_images=12,
    epochs=7,
    batch_size=4,
    training_timeout=180.0,
    serve_timeout=60.0,
    min_f1=0.3,
)
