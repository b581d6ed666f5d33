"""The CUDA paths of the toolkit on a real card, in one run; prints one JSON line.

- ``limit``: ``limit_cuda_memory(gb)`` caps the process (``usable_memory_bytes`` is the budget, an allocation
  beyond it fails with out-of-memory) and a limit at or above the card is ignored.
- ``measure``: ``measure_batch_size`` with a ProbeStep whose memory grows with the batch (a linear layer over a
  large input): the size found fits the budget, twice it would not, the request is honoured when it fits, and
  the step and the margin are released (allocated memory back to where it was).
- ``probe``: ``probe_batch_size`` for a pass without a requested size.
- ``free_mb``: ``get_free_memory_mb()`` (the card's free memory; on a Jetson the free RAM).

Without CUDA it prints ``{"cuda": false, ...}`` with the CPU fallbacks.

    python bench/toolkit_gpu.py [--budget-gb 4]
"""

from __future__ import annotations

import argparse
import json
import time

from llnode.trainer import cuda


class GrowingStep(cuda.ProbeStep):
    """A linear layer over 4 M floats per sample: about 16 MB of activations per sample and step."""

    def __init__(self) -> None:
        import torch

        self.torch = torch
        self.layer = torch.nn.Linear(4096, 1024, device='cuda')
        self.optimizer = torch.optim.SGD(self.layer.parameters(), lr=0.01)

    def _batch(self, batch_size: int):  # type: ignore[no-untyped-def]
        return self.torch.randn(batch_size, 1024, 4096, device='cuda')

    def train_step(self, batch_size: int) -> str | None:
        loss = self.layer(self._batch(batch_size)).square().mean()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return None

    def val_step(self, batch_size: int) -> str | None:
        with self.torch.no_grad():
            self.layer(self._batch(batch_size))
        return None

    def on_out_of_memory(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def release(self) -> None:
        del self.layer, self.optimizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--budget-gb', type=float, default=4.0)
    args = parser.parse_args()
    if not cuda.cuda_available():
        print(
            json.dumps(
                {
                    'cuda': False,
                    'measure': cuda.measure_batch_size(GrowingStep),
                    'probe': cuda.probe_batch_size(lambda bs: None, probe='detection'),
                    'free_mb': round(cuda.get_free_memory_mb()),
                }
            )
        )
        return
    import torch

    total = torch.cuda.get_device_properties(0).total_memory
    result: dict[str, object] = {'cuda': True, 'device': torch.cuda.get_device_name(0), 'total_gb': total / 2**30}
    cuda.limit_cuda_memory(total / 2**30 + 1)  # above the card: ignored
    result['limit_above_card_ignored'] = cuda.usable_memory_bytes() == total
    cuda.limit_cuda_memory(args.budget_gb)
    result['limit'] = {'usable_gb': cuda.usable_memory_bytes() / 2**30}
    try:
        torch.empty(int((args.budget_gb + 0.5) * 2**30), dtype=torch.uint8, device='cuda')
        result['limit']['over_budget_refused'] = False
    except torch.cuda.OutOfMemoryError:
        result['limit']['over_budget_refused'] = True
    cuda.free_cuda_memory()
    before = torch.cuda.memory_allocated()
    started = time.monotonic()
    found = cuda.measure_batch_size(GrowingStep)
    requested = cuda.measure_batch_size(GrowingStep, max_batch_size=max(1, found - 1)) if found > 2 else None
    result['measure'] = {
        'batch_size': found,
        'requested_and_fitting': requested,
        'seconds': round(time.monotonic() - started, 2),
        'released': torch.cuda.memory_allocated() == before,
    }

    def detection_pass(batch_size: int) -> str | None:
        torch.randn(batch_size, 3, 2048, 2048, device='cuda').relu_()
        return None

    result['probe'] = cuda.probe_batch_size(detection_pass, probe='detection', limit=256)
    result['free_mb'] = round(cuda.get_free_memory_mb())
    print(json.dumps(result))


if __name__ == '__main__':
    main()
