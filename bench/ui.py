"""Server time of the local Loop's web UI pages; prints one JSON line.

A LocalLoop with the demo project of ``--images`` annotated images (1,000 by default), every one with stored
detections of the newest model, is asked over loopback, logged in, for:

- the image grid with all ``--images`` images on one page (``per_page``), annotations and detections drawn
  (target < 300 ms), and the default page of 60 at the start and at the end of the project;
- an image page (target < 100 ms);
- a thumbnail, drawn on first request and served from the cache after.

"Server time" is what the UI's ``Server-Timing`` header reports (the request inside Flask, from the login check
to the rendered page); the latency a client sees over loopback is reported beside it. The first request of each
kind is a warm-up and not counted. ``--paging-images 10000`` adds the default page at the start and the end of a
10,000-image project.

    python bench/ui.py [--images 1000] [--repeats 20] [--paging-images 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests
from machine import machine  # bench/machine.py: benchmarks run as scripts from bench/

from llnode.localloop import LocalLoop
from llnode.localloop.generator import DEMO_ORGANIZATION as ORGANIZATION
from llnode.localloop.generator import DEMO_PROJECT as PROJECT

TARGET_GRID_MS = 300.0
TARGET_IMAGE_MS = 100.0
PROJECT_PATH = f'/projects/{ORGANIZATION}/{PROJECT}'


def add_detections(loop: LocalLoop, model: str) -> None:
    """Detections of ``model`` for every image: each true box, shifted a little, with a confidence."""
    ids = loop.store.image_ids(ORGANIZATION, PROJECT)
    for start in range(0, len(ids), 500):
        items = []
        for image in loop.store.images(ORGANIZATION, PROJECT, ids[start : start + 500]):
            boxes = [
                {**{k: b[k] for k in ('category_name', 'category_id', 'y', 'width', 'height')}, 'x': b['x'] + 3}
                | {'model_name': model, 'confidence': 0.7}
                for b in image['box_annotations']
            ]
            items.append({'image_id': image['id'], 'box_detections': boxes, 'point_detections': []})
        loop.store.put_detections(ORGANIZATION, PROJECT, items)


def login(url: str) -> requests.Session:
    session = requests.Session()
    form = session.get(f'{url}/login', timeout=30)
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    if token is None:
        raise SystemExit('the login page has no form')
    answer = session.post(f'{url}/login', data={'username': 'u', 'password': 'p', 'csrf_token': token.group(1)})
    if not answer.ok or '/login' in answer.url:
        raise SystemExit(f'login failed: {answer.status_code}')
    return session


def timed(session: requests.Session, url: str, repeats: int) -> dict[str, Any]:
    """Server and client milliseconds of ``repeats`` GETs of ``url`` (after one warm-up)."""
    server: list[float] = []
    client: list[float] = []
    size = 0
    for attempt in range(repeats + 1):
        started = time.perf_counter()
        answer = session.get(url, timeout=60)
        elapsed = (time.perf_counter() - started) * 1000
        if answer.status_code != 200:
            raise SystemExit(f'GET {url} -> {answer.status_code}')
        timing = re.search(r'dur=([0-9.]+)', answer.headers.get('Server-Timing', ''))
        if timing is None:
            raise SystemExit(f'GET {url}: no Server-Timing header')
        if attempt:
            server.append(float(timing.group(1)))
            client.append(elapsed)
        size = len(answer.content)
    return {
        'server_ms_p50': round(statistics.median(server), 1),
        'server_ms_p95': round(sorted(server)[max(0, int(len(server) * 0.95) - 1)], 1),
        'client_ms_p50': round(statistics.median(client), 1),
        'bytes': size,
    }


def project_loop(root: Path, images: int) -> LocalLoop:
    loop = LocalLoop(root, demo=True, demo_images=images).start()
    add_detections(loop, '1.2')
    return loop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--images', type=int, default=1000)
    parser.add_argument('--repeats', type=int, default=20)
    parser.add_argument('--paging-images', type=int, default=10000, help='0 to skip the 10,000-image paging run')
    args = parser.parse_args()
    load_before = os.getloadavg()
    result: dict[str, Any] = {'benchmark': 'ui', 'images': args.images, 'repeats': args.repeats}
    with tempfile.TemporaryDirectory(prefix='llnode-bench-ui-') as folder:
        root = Path(folder)
        started = time.perf_counter()
        loop = project_loop(root / 'loop', args.images)
        result['seed_seconds'] = round(time.perf_counter() - started, 1)
        try:
            session = login(loop.url)
            base = loop.url + PROJECT_PATH
            total = len(loop.store.image_ids(ORGANIZATION, PROJECT))
            result['grid_all_on_one_page'] = {
                'shown': total,
                **timed(session, f'{base}/images?per_page={total}', args.repeats),
            }
            result['grid_default_page'] = timed(session, f'{base}/images', args.repeats)
            image_id = loop.store.image_ids(ORGANIZATION, PROJECT, 'complete')[0]
            result['image_page'] = timed(session, f'{base}/images/{image_id}', args.repeats)
            fresh = loop.store.image_ids(ORGANIZATION, PROJECT, 'complete')[1:]
            cold = []
            for other in fresh[: min(20, len(fresh))]:
                answer = session.get(f'{base}/images/{other}/thumb', timeout=30)
                cold.append(float(re.search(r'dur=([0-9.]+)', answer.headers['Server-Timing']).group(1)))  # type: ignore[union-attr]
            result['thumbnail_first_ms_p50'] = round(statistics.median(cold), 1)
            result['thumbnail_cached'] = timed(session, f'{base}/images/{fresh[0]}/thumb', args.repeats)
            session.close()
        finally:
            loop.stop()
        if args.paging_images:
            big = project_loop(root / 'big', args.paging_images)
            try:
                session = login(big.url)
                base = big.url + PROJECT_PATH
                total = len(big.store.image_ids(ORGANIZATION, PROJECT))
                last = -(-total // 60)
                result['paging'] = {
                    'images': total,
                    'first_page': timed(session, f'{base}/images?page=1', args.repeats),
                    'last_page': timed(session, f'{base}/images?page={last}', args.repeats),
                    'filtered_has_detections_last_page': timed(
                        session, f'{base}/images?detections=1&state=complete&page={last - 1}', args.repeats
                    ),
                }
                session.close()
            finally:
                big.stop()
    result['targets'] = {'grid_server_ms': TARGET_GRID_MS, 'image_page_server_ms': TARGET_IMAGE_MS}
    result['met'] = (
        result['grid_all_on_one_page']['server_ms_p50'] < TARGET_GRID_MS
        and result['image_page']['server_ms_p50'] < TARGET_IMAGE_MS
    )
    result['machine'] = machine(load_before)
    print(json.dumps(result))


if __name__ == '__main__':
    sys.exit(main())
