"""The ``process_*`` families: the same names, types and figures as prometheus-client's ProcessCollector."""

from __future__ import annotations

import os
import sys

import pytest
from prometheus_client import ProcessCollector

from llnode.node.process_metrics import ProcessFigures

pytestmark = pytest.mark.skipif(not sys.platform.startswith('linux'), reason='/proc is Linux only')


def figures(collector: ProcessCollector | ProcessFigures) -> dict[str, tuple[str, float]]:
    return {family.name: (family.type, family.samples[0].value) for family in collector.collect()}


def test_the_figures_are_the_process_collectors() -> None:
    reference = figures(ProcessCollector(registry=None))
    ours = figures(ProcessFigures())
    assert {name: kind for name, (kind, _) in ours.items()} == {name: kind for name, (kind, _) in reference.items()}
    assert ours['process_start_time_seconds'][1] == pytest.approx(reference['process_start_time_seconds'][1], abs=0.02)
    assert ours['process_max_fds'][1] == reference['process_max_fds'][1]
    assert ours['process_cpu_seconds'][1] == pytest.approx(reference['process_cpu_seconds'][1], abs=0.5)
    for name in ('process_virtual_memory_bytes', 'process_resident_memory_bytes'):
        assert ours[name][1] == pytest.approx(reference[name][1], rel=0.1), name
    # the reference counts the descriptor its own listing opens; other threads may open or close some meanwhile
    assert abs(ours['process_open_fds'][1] - (reference['process_open_fds'][1] - 1)) <= 3


def test_open_descriptors_are_counted() -> None:
    process = ProcessFigures()
    before = process.open_fds()
    read, write = os.pipe()
    try:
        assert process.open_fds() == before + 2
    finally:
        os.close(read)
        os.close(write)
    assert process.open_fds() == before


def test_without_proc_there_are_no_process_figures(tmp_path: os.PathLike[str]) -> None:
    assert list(ProcessFigures(proc=str(tmp_path)).collect()) == []
