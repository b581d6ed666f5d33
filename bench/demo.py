"""``llnode demo`` against ``llnode demo --quick``: wall time of each as a subprocess, alternating; one JSON line.

The target (issue 13): ``--quick`` takes at most half the full run's time. Each run is a fresh process with a
temporary data folder, as a user starts it; the runs alternate (full, quick, full, quick, ...) so that both see
the same load on a shared machine. Reports the medians, the ratio of the medians and each model's F1.

    python bench/demo.py [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from machine import machine  # bench/machine.py: benchmarks run as scripts from bench/


def run_demo(quick: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix='llnode-bench-demo-') as folder:
        report_path = Path(folder) / 'report.json'
        command = [sys.executable, '-m', 'llnode.cli', 'demo', '--report-json', str(report_path)]
        started = time.monotonic()
        done = subprocess.run(
            [*command, '--quick'] if quick else command, capture_output=True, text=True, timeout=900, check=False
        )
        seconds = time.monotonic() - started
        if done.returncode != 0:
            raise SystemExit(f'llnode demo{" --quick" if quick else ""} failed:\n{done.stdout}\n{done.stderr}')
        report = json.loads(report_path.read_text())
    return {'seconds': round(seconds, 1), 'f1': [t['f1_test'] for t in report['trainings']]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--repeats', type=int, default=1, help='runs of each (default: %(default)s)')
    args = parser.parse_args()
    load_before = os.getloadavg()
    runs: dict[str, list[dict[str, Any]]] = {'full': [], 'quick': []}
    for _ in range(args.repeats):
        runs['full'].append(run_demo(quick=False))
        runs['quick'].append(run_demo(quick=True))
    full = statistics.median(r['seconds'] for r in runs['full'])
    quick = statistics.median(r['seconds'] for r in runs['quick'])
    print(
        json.dumps(
            {
                'full_s': full,
                'quick_s': quick,
                'quick_over_full': round(quick / full, 3),
                'target': 'quick_over_full <= 0.5',
                'runs': runs,
                'machine': machine(load_before),
            }
        )
    )


if __name__ == '__main__':
    main()
