"""ConverterNode against the local Loop, with a text logic (no torch): what it converts and uploads, how it backs off
from a broken model and gives it up, how it rides out 5xx, 409s, a failing listing, and what status the Loop sees."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llnode import EXIT_NEEDS_RESTART, NodeNeedsRestartError
from llnode.converter import ConverterNode, ModelFailure
from llnode.localloop import LocalLoop
from tests.converter.conftest import (
    ORGANIZATION,
    PROJECT,
    SOURCE,
    TARGET,
    WEIGHTS,
    UpperLogic,
    add_format,
    converter_status,
    formats,
    stored_files,
    upload_new_model,
    wait_connected,
)
from tests.polling import wait_for

MakeConverter = Callable[..., ConverterNode]


def work_root(node: ConverterNode) -> Path:
    return node.worker.work_root


def test_converts_the_models_that_lack_the_target_and_gives_a_broken_one_up_with_spaced_attempts(
    local_loop: LocalLoop, make_converter: MakeConverter
) -> None:
    first = upload_new_model(local_loop, SOURCE, {WEIGHTS: b'first weights'})
    second = upload_new_model(local_loop, SOURCE, {WEIGHTS: b'second weights', 'extra.bin': b'\x00\x01'})
    broken = upload_new_model(local_loop, SOURCE, {WEIGHTS: b'BROKEN weights'})
    done_before = upload_new_model(local_loop, SOURCE, {WEIGHTS: b'converted elsewhere'})
    assert add_format(local_loop, done_before, TARGET, {'weights.upper.txt': b'BY SOMEONE ELSE'}).status_code == 200
    other_format = upload_new_model(local_loop, 'something_else', {WEIGHTS: b'not ours'})

    logic = UpperLogic()
    node = make_converter(local_loop, logic, max_attempts=3, retry_delay=0.3, max_retry_delay=5.0)

    wait_for(lambda: TARGET in formats(local_loop, first) and TARGET in formats(local_loop, second), what='2 models')
    for model_id, text in ((first, b'FIRST WEIGHTS'), (second, b'SECOND WEIGHTS')):
        files = stored_files(local_loop, model_id, TARGET)
        assert files['weights.upper.txt'] == text
        model_json = json.loads(files['model.json'])
        assert (model_json['id'], model_json['format']) == (model_id, TARGET)
    # the node counts a model as converted once the Loop's answer is in (just after the Loop stored it)
    wait_for(lambda: sorted(node.converted) == sorted([first, second]), what='the node to count both')

    def given_up() -> ModelFailure | None:
        record = node.failures().get(broken)
        return record if record is not None and record.given_up else None

    record = wait_for(given_up, timeout=10, what='the broken model to be given up')
    assert record.attempts == 3 and 'ValueError: broken weights' in record.error
    calls = logic.calls_for(broken)
    assert len(calls) == 3
    gaps = [later - earlier for earlier, later in itertools.pairwise(calls)]
    assert gaps[0] >= 0.3 * 0.7 and gaps[1] >= 0.6 * 0.7, gaps  # 0.3 s, then doubled (less up to 25 % jitter)
    # the worker listed far more often than it tried the broken model: attempts are spaced, not every cycle
    cycles = node.worker.cycles
    assert cycles >= 10, cycles
    wait_for(lambda: node.worker.cycles >= cycles + 5, what='more cycles after giving up')
    assert len(logic.calls_for(broken)) == 3  # given up: never tried again
    assert logic.calls_for(done_before) == [] and logic.calls_for(other_format) == []
    assert len(logic.calls_for(first)) == 1 and len(logic.calls_for(second)) == 1
    assert formats(local_loop, broken) == [SOURCE]
    assert stored_files(local_loop, done_before, TARGET)['weights.upper.txt'] == b'BY SOMEONE ELSE'

    status = node.status()
    assert status.errors == {broken: f'given up after 3 failed attempts: {record.error}'}
    loop_status = wait_for(
        lambda: (s := converter_status(local_loop, node)) and broken in s['errors'] and s,
        what='the Loop to see the given-up model',
    )
    assert loop_status['errors'][broken].startswith('given up after 3 failed attempts')
    # nothing is left in the work folders: converted and given-up models are cleaned up
    assert not work_root(node).exists() or list(work_root(node).iterdir()) == []
    assert node.readiness_problem() is None

    # retry_failed() forgets the given-up model: it is tried (and fails) again
    assert node.retry_failed(given_up_only=True) == [broken]
    wait_for(lambda: len(logic.calls_for(broken)) >= 4, what='a new attempt after retry_failed')


def test_a_given_up_model_stays_given_up_after_a_restart(local_loop: LocalLoop, make_converter: MakeConverter) -> None:
    broken = upload_new_model(local_loop, SOURCE, {WEIGHTS: b'BROKEN weights'})
    logic = UpperLogic()
    node = make_converter(local_loop, logic, max_attempts=1)
    wait_for(lambda: (r := node.failures().get(broken)) is not None and r.given_up, what='the model to be given up')
    assert node.stop()

    restarted_logic = UpperLogic()
    node = make_converter(local_loop, restarted_logic, max_attempts=1)
    assert node.failures()[broken].given_up  # known before the first listing
    assert node.status().errors[broken].startswith('given up after 1 failed attempt')
    cycles = node.worker.cycles
    wait_for(lambda: node.worker.cycles >= cycles + 5, what='a few listings')
    assert restarted_logic.calls_for(broken) == []
    assert node.retry_failed(given_up_only=True) == [broken]  # an operator can still ask for another try
    wait_for(lambda: len(restarted_logic.calls_for(broken)) == 1, what='the attempt asked for')


def test_stats_count_converted_and_failed_models(local_loop: LocalLoop, make_converter: MakeConverter) -> None:
    good = upload_new_model(local_loop, SOURCE, {WEIGHTS: b'weights'})
    broken = upload_new_model(local_loop, SOURCE, {WEIGHTS: b'BROKEN weights'})
    node = make_converter(local_loop, UpperLogic(), max_attempts=1)
    wait_for(lambda: node.converted == [good], what='the good model to be converted')
    wait_for(lambda: (r := node.failures().get(broken)) is not None and r.given_up, what='the model to be given up')
    response = node.flask_app.test_client().get('/stats')
    assert response.status_code == 200
    stats = response.get_json()
    assert stats['node_type'] == 'converter'
    assert stats['converter'] == {'converted': 1, 'failures': 1, 'given_up': 1, 'converting': None}
    assert set(stats['loop']) == {'connected', 'last_error', 'problem'}


def test_5xx_during_download_and_upload_is_retried_and_never_counts_toward_giving_up(
    local_loop: LocalLoop, make_converter: MakeConverter
) -> None:
    model_id = upload_new_model(local_loop, SOURCE, {WEIGHTS: b'weights'})
    download = local_loop.inject_fault('GET', rf'/models/{model_id}/{SOURCE}/file$', 503, count=2)
    upload = local_loop.inject_fault('PUT', rf'/models/{model_id}/{TARGET}/file$', 502, count=1)
    logic = UpperLogic()
    # one counted failure would give the model up: the outage must not count
    node = make_converter(local_loop, logic, max_attempts=1, retry_delay=0.05, max_retry_delay=0.2)

    wait_for(lambda: node.converted == [model_id], what='the conversion after the faults')
    rules = {rule['id']: rule for rule in local_loop.fault_rules()}
    assert rules[download['id']]['hits'] == 2 and rules[upload['id']]['hits'] == 1
    # two downloads failed before the logic ran; the failed upload made it convert once more
    assert len(logic.calls_for(model_id)) == 2
    assert node.failures() == {}
    assert stored_files(local_loop, model_id, TARGET)['weights.upper.txt'] == b'WEIGHTS'


def test_a_409_on_upload_counts_as_done(local_loop: LocalLoop, make_converter: MakeConverter) -> None:
    """Another converter uploads the target while this one converts: the Loop answers 409, the model is done."""
    model_id = upload_new_model(local_loop, SOURCE, {WEIGHTS: b'weights'})
    logic = UpperLogic()

    def race(model_json: dict[str, Any]) -> None:
        response = add_format(local_loop, model_json['id'], TARGET, {'weights.upper.txt': b'FROM THE OTHER ONE'})
        assert response.status_code == 200

    logic.before_convert = race
    node = make_converter(local_loop, logic, max_attempts=1)
    wait_for(lambda: node.converted == [model_id], what='the model to count as converted')
    assert node.failures() == {}
    assert stored_files(local_loop, model_id, TARGET)['weights.upper.txt'] == b'FROM THE OTHER ONE'
    cycles = node.worker.cycles
    wait_for(lambda: node.worker.cycles >= cycles + 3, what='more cycles')
    assert len(logic.calls_for(model_id)) == 1


def test_a_failing_listing_shows_in_the_status_and_readyz_until_it_works_again(
    local_loop: LocalLoop, make_converter: MakeConverter
) -> None:
    node = make_converter(local_loop)
    wait_connected(local_loop, node)
    wait_for(lambda: node.readiness_problem() is None, what='the node to be ready')
    local_loop.inject_fault('GET', rf'/projects/{PROJECT}/models$', 503, count=10_000)
    wait_for(lambda: 'list_models' in node.status().errors, what='the listing error')
    assert '503' in node.status().errors['list_models']
    client = node.flask_app.test_client()
    response = client.get('/readyz')
    assert response.status_code == 503 and 'cannot list the models' in response.get_json()['detail']
    wait_for(
        lambda: 'list_models' in ((converter_status(local_loop, node) or {}).get('errors') or {}),
        what='the Loop to see the listing error',
    )

    local_loop.clear_faults()
    wait_for(lambda: client.get('/readyz').status_code == 200, what='readiness after the listing works again')
    assert 'list_models' not in node.status().errors


def test_the_loop_records_the_converter_status_idle_and_running(
    local_loop: LocalLoop, make_converter: MakeConverter
) -> None:
    logic = UpperLogic()
    release = threading.Event()
    logic.before_convert = lambda model_json: release.wait(10)
    node = make_converter(local_loop, logic, name='status converter')

    status = wait_connected(local_loop, node)
    assert status == {
        'id': node.uuid,
        'name': 'status converter',
        'state': 'idle',
        'uptime': status['uptime'],
        'errors': {},
        'capabilities': [f'{SOURCE}->{TARGET}'],
    }
    assert isinstance(status['uptime'], int)
    record = next(n for n in local_loop.nodes() if n['id'] == node.uuid)
    assert (record['node_type'], record['organization'], record['project'], record['connected']) == (
        'converter',
        ORGANIZATION,
        PROJECT,
        True,
    )

    model_id = upload_new_model(local_loop, SOURCE, {WEIGHTS: b'weights'})
    wait_for(lambda: (converter_status(local_loop, node) or {}).get('state') == 'running', what='state running')
    assert node.status().state == 'running'
    release.set()
    wait_for(lambda: TARGET in formats(local_loop, model_id), what='the conversion')
    wait_for(lambda: (converter_status(local_loop, node) or {}).get('state') == 'idle', what='state idle again')


def test_stop_ends_a_long_conversion_within_its_bound_without_counting_a_failure(
    local_loop: LocalLoop, make_converter: MakeConverter
) -> None:
    model_id = upload_new_model(local_loop, SOURCE, {WEIGHTS: b'weights'})
    logic = UpperLogic()
    converting = threading.Event()

    def long_conversion(model_json: dict[str, Any]) -> None:
        converting.set()
        deadline = time.monotonic() + 30
        while not logic.stop_requested and time.monotonic() < deadline:
            time.sleep(0.01)
        if logic.stop_requested:
            raise RuntimeError('stopped')

    logic.before_convert = long_conversion
    node = make_converter(local_loop, logic, worker_stop_timeout=5.0)
    assert converting.wait(10)
    started = time.monotonic()
    assert node.stop(timeout=8.0)
    assert time.monotonic() - started < 5.0
    assert not node.worker.alive
    assert node.failures() == {}
    assert formats(local_loop, model_id) == [SOURCE]
    threads = [t.name for t in threading.enumerate() if t.name.startswith('llnode-converter-')]
    assert threads == []


def test_a_muted_converter_does_not_convert_until_unmuted(local_loop: LocalLoop, make_converter: MakeConverter) -> None:
    model_id = upload_new_model(local_loop, SOURCE, {WEIGHTS: b'weights'})
    logic = UpperLogic()
    node = make_converter(local_loop, logic, settings={'skip_repeat_on_start': True}, check_interval=0.05)
    assert node.muted
    time.sleep(0.3)  # several check intervals: a muted worker must not have converted anything in that time
    assert logic.calls == [] and node.worker.cycles == 0
    node.unmute()
    wait_for(lambda: TARGET in formats(local_loop, model_id), what='the conversion after unmute')


def test_a_failing_listing_is_retried_at_the_check_interval_even_while_a_retry_is_due(
    local_loop: LocalLoop, make_converter: MakeConverter
) -> None:
    broken = upload_new_model(local_loop, SOURCE, {WEIGHTS: b'BROKEN'})
    logic = UpperLogic()
    node = make_converter(local_loop, logic, check_interval=0.1, retry_delay=0.05, max_attempts=None)
    wait_for(lambda: logic.calls_for(broken), what='a first attempt')
    rule = local_loop.inject_fault('GET', rf'/projects/{PROJECT}/models$', 503, count=10_000)
    wait_for(lambda: 'list_models' in node.status().errors, what='the listing error')
    first = next(r for r in local_loop.fault_rules() if r['id'] == rule['id'])['hits']
    time.sleep(1.0)  # a window to measure the listing rate in
    hits = next(r for r in local_loop.fault_rules() if r['id'] == rule['id'])['hits'] - first
    assert 3 <= hits <= 15, hits  # about one listing per 0.1 s check, not a spin on the due retry


def test_a_logic_that_needs_a_fresh_process_stops_the_worker_and_asks_for_a_restart(
    local_loop: LocalLoop, make_converter: MakeConverter
) -> None:
    model = upload_new_model(local_loop, SOURCE, {WEIGHTS: b'weights'})
    logic = UpperLogic()

    def wedged(model_json: dict[str, Any]) -> None:
        raise NodeNeedsRestartError('CUDA error: an illegal memory access was encountered')

    logic.before_convert = wedged
    node = make_converter(local_loop, logic)
    wait_for(lambda: node.exit_code is not None, what='the restart wish')
    assert node.exit_code == EXIT_NEEDS_RESTART
    wait_for(lambda: not node.worker.alive, what='the worker to stop')
    assert node.failures() == {}  # not the model's fault: nothing recorded against it
    assert len(logic.calls_for(model)) == 1
    assert formats(local_loop, model) == [SOURCE]
