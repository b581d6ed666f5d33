"""Outbox figures against an in-process local Loop; prints one JSON line.

- ``enqueue`` cost (the detect path's hand-over to the writer thread) for a 640x480 JPEG (bytes) and for a raw
  640x480x3 array, while the writer thread stores the earlier ones; paced, so that the writer keeps up;
- durable ``save`` latency (explicit uploads: returns once the item is on disk, fsynced) for JPEG bytes and for
  a raw array (one JPEG encode included);
- upload throughput: ``--images`` 640x480 JPEGs queued while uploads are stopped, then ``continuous_upload``
  until the outbox is empty (median of ``--repeats`` runs).

The images are the local Loop's demo drawings (640x480 JPEG, ~10 KB each). The ``/detect`` autoupload
comparison (latency with ``autoupload: all`` and ``disabled`` through a served detector) is in ``bench/detect.py``.

    python bench/outbox.py [--images 1000] [--repeats 3] [--enqueues 1000] [--saves 300]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from machine import machine  # bench/machine.py: benchmarks run as scripts from bench/
from PIL import Image

from llnode.detector.outbox import Outbox
from llnode.localloop import LocalLoop
from llnode.localloop.demo import render
from llnode.schema import BoxDetection, ImageMetadata

TARGET_UPLOAD_IPS = 200.0
DISTINCT_IMAGES = 20


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def metadata(n: int) -> ImageMetadata:
    """What a detection typically hands over: a few boxes and tags."""
    boxes = [
        BoxDetection(category_name='box', x=10 * i, y=20, width=30, height=40, model_name='1.0', confidence=0.45)
        for i in range(5)
    ]
    return ImageMetadata(box_detections=boxes, tags=['uncertain'], source=f'bench-{n}')


def new_outbox(loop: LocalLoop, folder: Path, **kwargs: Any) -> Outbox:
    settings = loop.settings(data_folder=folder, max_outbox_size=1_000_000)
    return Outbox(settings, max_priority=1_000_000, **kwargs)


def enqueue_figures(
    loop: LocalLoop, folder: Path, image: bytes | np.ndarray, *, count: int, interval_s: float, burst: int
) -> dict[str, Any]:
    """Microseconds per ``enqueue`` call (uploads stopped, writer running): ``paced``, one call every
    ``interval_s`` (a camera's rhythm; each call finds cold caches), and ``burst``, ``burst`` calls back to back
    once the writer has caught up (fewer than the writer queue holds, so none is refused)."""
    outbox = new_outbox(loop, folder, mode='stopped')
    outbox.start()
    pace = threading.Event()  # never set: a stoppable wait between calls
    paced: list[float] = []
    bursts: list[float] = []
    accepted = 0
    try:
        for n in range(count):
            meta = metadata(n)
            started = time.perf_counter_ns()
            accepted += outbox.enqueue(image, meta)
            paced.append((time.perf_counter_ns() - started) / 1000)
            pace.wait(interval_s)
        for _ in range(3):
            if not outbox.wait_until_written(60):
                raise SystemExit(f'the writer did not catch up: {outbox.stats()}')
            for n in range(burst):
                meta = metadata(n)
                started = time.perf_counter_ns()
                accepted += outbox.enqueue(image, meta)
                bursts.append((time.perf_counter_ns() - started) / 1000)
        stats = outbox.stats()
    finally:
        outbox.close(timeout=60)
    return {
        'paced': {'calls': count, 'interval_ms': interval_s * 1000, **summary_us(paced)},
        'burst': {'calls': len(bursts), **summary_us(bursts)},
        'accepted': accepted,
        'dropped': stats['dropped'],
    }


def summary_us(costs: list[float]) -> dict[str, float]:
    return {
        'p50_us': round(percentile(costs, 50), 1),
        'p99_us': round(percentile(costs, 99), 1),
        'max_us': round(max(costs), 1),
    }


def save_figures(loop: LocalLoop, folder: Path, images: list[Any], count: int) -> dict[str, Any]:
    """Milliseconds per durable ``save`` (uploads stopped)."""
    outbox = new_outbox(loop, folder, mode='stopped')
    latencies = []
    try:
        for n in range(count):
            meta = metadata(n)
            started = time.perf_counter()
            outbox.save(images[n % len(images)], meta)
            latencies.append((time.perf_counter() - started) * 1000)
    finally:
        outbox.close()
    return {
        'saves': count,
        'p50_ms': round(percentile(latencies, 50), 2),
        'p99_ms': round(percentile(latencies, 99), 2),
        'max_ms': round(max(latencies), 2),
    }


def upload_rate(loop: LocalLoop, folder: Path, jpegs: list[bytes], count: int) -> float:
    """Images per second from ``continuous_upload`` until ``count`` queued images reached the Loop."""
    outbox = new_outbox(loop, folder, mode='stopped')
    try:
        for n in range(count):
            outbox.save(jpegs[n % len(jpegs)], metadata(n))
        outbox.start()
        started = time.perf_counter()
        outbox.set_mode('continuous_upload')
        if not outbox.wait_until_empty(600):
            raise SystemExit(f'upload did not finish: {outbox.stats()}')
        elapsed = time.perf_counter() - started
        stats = outbox.stats()
        if stats['uploaded'] != count or stats['upload_errors']:
            raise SystemExit(f'benchmark run lost or retried images: {stats}')
    finally:
        outbox.close()
    return count / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--images', type=int, default=1000, help='images per upload run')
    parser.add_argument('--repeats', type=int, default=3, help='upload runs (median reported)')
    parser.add_argument('--enqueues', type=int, default=1000, help='enqueue calls per image kind')
    parser.add_argument('--saves', type=int, default=300, help='durable saves per image kind')
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    jpegs = [render(i)[0] for i in range(DISTINCT_IMAGES)]
    arrays = [np.asarray(Image.open(io.BytesIO(j)).convert('RGB')) for j in jpegs[:4]]
    with tempfile.TemporaryDirectory(prefix='llnode-bench-outbox-') as tmp:
        root = Path(tmp)
        loop = LocalLoop(root / 'loop', demo=True, demo_images=1).start()
        try:
            enqueue_bytes = enqueue_figures(
                loop, root / 'enqueue-bytes', jpegs[0], count=args.enqueues, interval_s=0.005, burst=200
            )
            enqueue_array = enqueue_figures(
                loop, root / 'enqueue-array', arrays[0], count=args.enqueues // 2, interval_s=0.01, burst=100
            )
            save_bytes = save_figures(loop, root / 'save-bytes', jpegs, args.saves)
            save_array = save_figures(loop, root / 'save-array', arrays, args.saves // 3)
            rates = [upload_rate(loop, root / f'upload-{n}', jpegs, args.images) for n in range(args.repeats)]
        finally:
            loop.stop()
    upload = {
        'images': args.images,
        'images_per_s': round(statistics.median(rates), 1),
        'runs': [round(r, 1) for r in rates],
        'mean_jpeg_bytes': round(statistics.mean(len(j) for j in jpegs)),
    }
    result = {
        'benchmark': 'outbox',
        'image_size': '640x480',
        'machine': machine(load_before),
        'enqueue_jpeg_bytes': enqueue_bytes,
        'enqueue_raw_array': enqueue_array,
        'save_jpeg_bytes': save_bytes,
        'save_raw_array': save_array,
        'upload': upload,
        'targets': {'upload_images_per_s': TARGET_UPLOAD_IPS},
        'met': {'upload_images_per_s': upload['images_per_s'] >= TARGET_UPLOAD_IPS},
    }
    print(json.dumps(result))
    return 0


if __name__ == '__main__':
    sys.exit(main())
