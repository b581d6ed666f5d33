"""Image download throughput of DataExchange against an in-process local Loop; prints one JSON line.

Downloads the 1,000 demo images (640x480 JPEG) of a LocalLoop into a fresh folder per run, in parallel (the
exchange's default ``max_workers``) and with one thread, once without delay and once with ``delay_ms=20`` per
request (a remote Loop). The first pass, in which the Loop draws the demo images, is a warm-up and not counted.

    python bench/download.py [--images 1000] [--repeats 3] [--delay-ms 20] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from machine import machine  # bench/machine.py: benchmarks run as scripts from bench/

from llnode.localloop import LocalLoop
from llnode.loop.exchange import DEFAULT_MAX_WORKERS, DataExchange
from llnode.loop.http import LoopClient

TARGET_IPS = 300.0
TARGET_DELAY_RATIO = 8.0


def rate(exchange: DataExchange, ids: list[str], folder: Path) -> float:
    """Images per second for one download of ``ids`` into the new folder ``folder``."""
    started = time.perf_counter()
    report = exchange.download_images(ids, folder)
    elapsed = time.perf_counter() - started
    if report.downloaded != len(ids):
        raise SystemExit(f'benchmark run lost images: {report}')
    return len(ids) / elapsed


def measure(loop: LocalLoop, workers: int, ids: list[str], repeats: int, scratch: Path) -> list[float]:
    with LoopClient(loop.settings()) as client:
        exchange = DataExchange(client, max_workers=workers)
        return [rate(exchange, ids, Path(tempfile.mkdtemp(dir=scratch))) for _ in range(repeats)]


def scenario(
    root: Path, *, delay_ms: int, images: int, workers: int, repeats: int, single_repeats: int, single_images: int
) -> dict[str, Any]:
    loop = LocalLoop(root / f'loop-{delay_ms}', demo=True, demo_images=images, delay_ms=delay_ms).start()
    try:
        with LoopClient(loop.settings()) as client:
            exchange = DataExchange(client, max_workers=workers)
            ids = exchange.image_ids('complete')[:images]
            warm_up = rate(exchange, ids, root / f'warm-up-{delay_ms}')  # the Loop draws each demo image once
        scratch = root / f'runs-{delay_ms}'
        scratch.mkdir()
        parallel = measure(loop, workers, ids, repeats, scratch)
        single = measure(loop, 1, ids[:single_images], single_repeats, scratch)
    finally:
        loop.stop()
    result = {
        'delay_ms': delay_ms,
        'parallel_images_per_s': round(statistics.median(parallel), 1),
        'parallel_runs': [round(r, 1) for r in parallel],
        'single_thread_images_per_s': round(statistics.median(single), 1),
        'single_thread_runs': [round(r, 1) for r in single],
        'single_thread_images': len(ids[:single_images]),
        'ratio_parallel_to_single': round(statistics.median(parallel) / statistics.median(single), 2),
        'first_pass_images_per_s': round(warm_up, 1),
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--images', type=int, default=1000)
    parser.add_argument('--repeats', type=int, default=3, help='runs per parallel figure (median reported)')
    parser.add_argument('--delay-ms', type=int, default=20)
    parser.add_argument('--workers', type=int, default=DEFAULT_MAX_WORKERS)
    parser.add_argument(
        '--single-delay-images', type=int, default=1000,
        help='images for the slow single-thread run with delay (one run)',
    )  # fmt: skip
    args = parser.parse_args(argv)
    load_before = os.getloadavg()  # other work on the machine skews the figures; the line says how busy it was
    with tempfile.TemporaryDirectory(prefix='llnode-bench-download-') as tmp:
        root = Path(tmp)
        common = {'images': args.images, 'workers': args.workers, 'repeats': args.repeats}
        fast = scenario(root, delay_ms=0, single_repeats=args.repeats, single_images=args.images, **common)
        slow = scenario(
            root, delay_ms=args.delay_ms, single_repeats=1, single_images=args.single_delay_images, **common
        )
    result = {
        'benchmark': 'download',
        'images': args.images,
        'image_size': '640x480 jpeg',
        'max_workers': args.workers,
        'machine': machine(load_before),
        'no_delay': fast,
        'with_delay': slow,
        'targets': {
            'no_delay_parallel_images_per_s': TARGET_IPS,
            'with_delay_ratio_parallel_to_single': TARGET_DELAY_RATIO,
        },
        'met': {
            'no_delay_parallel': fast['parallel_images_per_s'] >= TARGET_IPS,
            'with_delay_ratio': slow['ratio_parallel_to_single'] >= TARGET_DELAY_RATIO,
        },
    }
    print(json.dumps(result))
    return 0


if __name__ == '__main__':
    sys.exit(main())
