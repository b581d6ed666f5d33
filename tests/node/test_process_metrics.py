"""The ``process_*`` families: the same names, types and figures as prometheus-client's ProcessCollector."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from prometheus_client import ProcessCollector

from llnode.node.process_metrics import ProcessFigures, ProcHandles

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


def test_without_proc_there_are_no_process_figures(tmp_path: Path) -> None:
    assert list(ProcessFigures(proc=str(tmp_path)).collect()) == []


def test_descriptors_closed_behind_its_back_are_opened_again(tmp_path: Path) -> None:
    handles = ProcHandles()
    statm, _, _ = handles.read()
    assert len(statm.split()) == 7
    opened = handles._opened
    assert opened is not None
    os.close(opened.statm)  # as code that closes descriptors it does not own would
    other = tmp_path / 'other'
    other.write_bytes(b'not statm at all')
    reused = os.open(other, os.O_RDONLY)  # most likely the same number again
    try:
        statm, open_fds, _ = handles.read()
        assert len(statm.split()) == 7 and open_fds > 0
    finally:
        os.close(reused)
        again = handles._opened
        assert again is not None and again is not opened
        os.close(again.statm)
        os.close(again.folder)


def test_a_forked_child_reads_its_own_process() -> None:
    handles = ProcHandles()
    _, _, parent_start = handles.read()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its own handles and start time, then out at once
        try:
            _, _, start = handles.read()
            opened = handles._opened
            ok = opened is not None and opened.pid == os.getpid() and start >= parent_start
            os.write(write, b'ok' if ok else b'wrong')
        finally:
            os._exit(0)
    os.close(write)
    try:
        assert os.read(read, 16) == b'ok'
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    assert handles._opened is not None and handles._opened.pid == os.getpid()
