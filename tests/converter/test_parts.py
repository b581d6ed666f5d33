"""The converter's parts on their own: the logic's contract, the per-model retry book (with a fake clock), the checks
of a conversion's result, the listing's parsing and the node's argument checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import responses

from llnode.backoff import Backoff
from llnode.config import ConfigError, Settings
from llnode.converter import ConversionError, ConverterLogic, ConverterNode, RetryBook
from llnode.converter.transfer import ListedModel, convertible_models
from llnode.converter.worker import checked_outputs, is_loop_unavailable
from llnode.loop.errors import (
    LoopAuthError,
    LoopConnectionError,
    LoopHTTPError,
    LoopProtocolError,
    LoopTimeout,
    ModelArchiveError,
)
from llnode.loop.exchange import DataExchange
from llnode.loop.http import LoopClient
from tests.converter.conftest import UpperLogic

#: the converter's policy without jitter, so that the schedule can be checked exactly
NO_JITTER = Backoff(jitter=0)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------------- logic


class Plain(ConverterLogic):
    def convert(self, model_folder: Path, out_folder: Path) -> list[Path]:
        return []


def test_a_logic_needs_two_different_plain_format_names() -> None:
    assert Plain('a', 'b').capabilities == ['a->b']
    for source, target in (('', 'a'), ('a/b', 'c'), ('a', '../x'), ('a', None), ('.hidden', 'b'), ('a b', 'c')):
        with pytest.raises(ValueError, match='format must be a name'):
            Plain(source, target)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match='nothing to convert'):
        Plain('same', 'same')
    with pytest.raises(TypeError):
        ConverterLogic('a', 'b')  # type: ignore[abstract]


def test_stop_requested_is_set_by_request_stop() -> None:
    logic = UpperLogic()
    assert not logic.stop_requested
    logic.request_stop()
    assert logic.stop_requested


# ---------------------------------------------------------------------- retry book


def test_failures_back_off_exponentially_and_a_model_is_given_up_after_max_attempts() -> None:
    clock = Clock()
    book = RetryBook(
        max_attempts=3, retry_delay=2.0, max_retry_delay=5.0, clock=clock, backoff=NO_JITTER.replace(base=2.0, cap=5.0)
    )
    assert book.due('m') and book.next_due() is None
    record = book.record_failure('m', '1.0', 'ValueError: x', counted=True, started_at=99.0)
    assert (record.attempts, record.failures, record.given_up, record.next_attempt_at) == (1, 1, False, 102.0)
    assert not book.due('m') and book.next_due() == 102.0
    clock.now = 101.9
    assert not book.due('m')
    clock.now = 102.0
    assert book.due('m')
    record = book.record_failure('m', '1.0', 'ValueError: y', counted=True, started_at=102.0)
    assert record.next_attempt_at == 106.0  # 2 s doubled
    clock.now = 106.0
    record = book.record_failure('m', '1.0', 'ValueError: z', counted=True, started_at=106.0)
    assert record.given_up and record.next_attempt_at is None and record.attempted_at == (99.0, 102.0, 106.0)
    clock.now = 10_000.0
    assert not book.due('m') and book.next_due() is None
    assert book.describe() == {'m': 'given up after 3 failed attempts: ValueError: z'}


def test_an_unavailable_loop_backs_off_but_is_not_counted() -> None:
    clock = Clock()
    book = RetryBook(
        max_attempts=1, retry_delay=1.0, max_retry_delay=8.0, clock=clock, backoff=NO_JITTER.replace(base=1.0, cap=8.0)
    )
    for n in range(6):
        record = book.record_failure('m', '1.0', 'LoopHTTPError: 503', counted=False, started_at=clock.now)
        assert not record.given_up and record.attempts == 0
        assert record.next_attempt_at == clock.now + min(8.0, 2.0**n)
        clock.now = record.next_attempt_at
    assert book.describe()['m'].startswith('the Loop was unavailable (6 times, not counted)')
    record = book.record_failure('m', '1.0', 'ValueError: bad', counted=True, started_at=clock.now)
    assert record.given_up and record.attempts == 1
    assert book.describe()['m'] == 'given up after 1 failed attempt: ValueError: bad'


def test_unlimited_attempts_keep_a_bounded_history_and_prune_and_clear_forget() -> None:
    clock = Clock()
    book = RetryBook(
        max_attempts=None,
        retry_delay=1.0,
        max_retry_delay=1.0,
        clock=clock,
        backoff=NO_JITTER.replace(base=1.0, cap=1.0),
    )
    for n in range(50):
        record = book.record_failure('m', '1.0', 'E', counted=True, started_at=float(n))
    assert not record.given_up and record.attempts == 50 and len(record.attempted_at) == 20
    assert book.describe()['m'] == 'attempt 50 failed: E'
    book.record_failure('gone', '1.1', 'E', counted=True, started_at=0.0)
    assert book.prune(['m', 'new']) == ['gone']
    assert set(book.records()) == {'m'}
    assert book.clear(given_up_only=True) == []
    assert book.clear() == ['m'] and book.records() == {}
    book.forget('nothing')  # forgetting an unknown model is fine


def test_a_book_with_a_path_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / 'conversions' / 'a_to_b.failures.json'
    clock = Clock()
    book = RetryBook(max_attempts=2, retry_delay=5.0, max_retry_delay=5.0, clock=clock, path=path)
    book.record_failure('broken', '1.0', 'ValueError: x', counted=True, started_at=clock.now)
    book.record_failure('broken', '1.0', 'ValueError: y', counted=True, started_at=clock.now)
    book.record_failure('waiting', '2.0', 'ValueError: z', counted=True, started_at=clock.now)
    book.record_failure('outage', None, 'LoopHTTPError: 503', counted=False, started_at=clock.now)
    assert not book.due('waiting')

    later = Clock()
    later.now = 7.0  # a new process: its monotonic clock has nothing to do with the old one
    again = RetryBook(max_attempts=2, retry_delay=5.0, max_retry_delay=5.0, clock=later, path=path)
    records = again.records()
    assert records['broken'].given_up and not again.due('broken')
    assert records['broken'].error == 'ValueError: y' and records['broken'].attempts == 2
    assert (records['waiting'].attempts, records['waiting'].version) == (1, '2.0') and again.due('waiting')
    assert records['outage'].attempts == 0 and records['outage'].failures == 1 and again.due('outage')
    again.record_failure('waiting', '2.0', 'ValueError: z', counted=True, started_at=later.now)
    assert again.records()['waiting'].given_up  # the attempts went on where they stopped

    raised = RetryBook(max_attempts=5, path=path)  # a higher limit gives the models their attempts back
    assert not raised.records()['broken'].given_up and raised.due('broken')
    assert sorted(raised.prune(['broken'])) == ['outage', 'waiting'] and raised.clear() == ['broken']
    assert RetryBook(path=path).records() == {}
    RetryBook(path=path).forget('unknown')  # nothing changed: nothing written
    assert json.loads(path.read_text()) == {}


@pytest.mark.parametrize('content', ['{not json', '[1]', '{"m": {"attempts": 1}}', '{"m": 3}'])
def test_a_saved_book_that_cannot_be_read_is_reported_and_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str
) -> None:
    path = tmp_path / 'failures.json'
    path.write_text(content)
    book = RetryBook(path=path)
    assert book.records() == {} and 'ignoring the saved conversion failures' in caplog.text
    book.record_failure('m', '1.0', 'E', counted=True, started_at=0.0)
    assert set(json.loads(path.read_text())) == {'m'}  # the next change replaces the unreadable file


@pytest.mark.parametrize(
    'options',
    [{'max_attempts': 0}, {'max_attempts': True}, {'retry_delay': 0}, {'retry_delay': 2, 'max_retry_delay': 1}],
)
def test_retry_book_rejects_bad_settings(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RetryBook(**options)


def test_which_errors_say_the_loop_is_unavailable() -> None:
    unavailable = [
        LoopConnectionError('refused'),
        LoopTimeout('slow'),
        LoopHTTPError('GET', 'u', 503),
        LoopHTTPError('GET', 'u', 500),
        LoopHTTPError('PUT', 'u', 408),
        LoopHTTPError('PUT', 'u', 429),
        LoopAuthError('POST', 'u', 401),
    ]
    counted = [
        LoopHTTPError('GET', 'u', 404),
        LoopHTTPError('PUT', 'u', 422),
        ModelArchiveError('no model.json'),
        LoopProtocolError('bad'),
        ValueError('logic'),
        ConversionError('no files'),
    ]
    assert all(is_loop_unavailable(e) for e in unavailable)
    assert not any(is_loop_unavailable(e) for e in counted)


# ---------------------------------------------------------------------- a conversion's result


def test_checked_outputs_accepts_files_and_refuses_what_cannot_be_uploaded(tmp_path: Path) -> None:
    good = tmp_path / 'a.bin'
    good.write_bytes(b'x')
    other = tmp_path / 'sub'
    other.mkdir()
    same_name = other / 'a.bin'
    same_name.write_bytes(b'y')
    empty = tmp_path / 'empty.bin'
    empty.touch()
    model_json = tmp_path / 'model.json'
    model_json.write_text('{}')
    assert checked_outputs([good]) == [good]
    assert checked_outputs((str(good),)) == [good]
    cases: list[tuple[Any, str]] = [
        ([], 'no files'),
        (None, 'must return a list'),
        (str(good), 'must return a list'),
        (good, 'must return a list'),
        ([good, same_name], 'two files named'),
        ([empty], 'empty'),
        ([tmp_path / 'missing.bin'], 'not a file'),
        ([other], 'not a file'),
        ([model_json], 'leave model.json out'),
        ([42], 'not a file path'),
    ]
    for files, message in cases:
        with pytest.raises(ConversionError, match=message):
            checked_outputs(files)


# ---------------------------------------------------------------------- the listing


@responses.activate
def test_the_listing_keeps_models_with_the_source_and_without_the_target(tmp_path: Path) -> None:
    settings = Settings(host='loop.test', organization='o', project='p', username='u', password='p')
    responses.post('http://loop.test/api/login', status=200, headers={'Set-Cookie': 'session=s'})
    models = [
        {'id': 'a', 'version': '1.0', 'formats': ['text']},
        {'id': 'b', 'version': '1.1', 'formats': ['text', 'upper']},  # converted already
        {'id': 'c', 'version': '1.2', 'formats': ['other']},  # a Loop that ignores ?format=
        {'id': 'd', 'version': None, 'formats': ['text']},  # no version yet (reference: skipped)
        {'id': '../x', 'version': '1.3', 'formats': ['text']},  # unusable id
        {'id': 'e', 'version': '1.4'},  # no formats
        'junk',
        {'id': 'f', 'version': '1.5', 'formats': ['text'], 'created': 'x', 'comment': None},
    ]
    listing = responses.get('http://loop.test/api/o/projects/p/models', json={'models': models})
    with LoopClient(settings) as client:
        found = convertible_models(DataExchange(client), 'text', 'upper')
        assert found == [ListedModel('a', '1.0', ('text',)), ListedModel('f', '1.5', ('text',))]
        assert listing.calls[0].request.url.endswith('/models?format=text')
        responses.get('http://loop.test/api/o/projects/p/models', json={'items': []})
        with pytest.raises(LoopProtocolError, match='expected'):
            convertible_models(DataExchange(client), 'text', 'upper')


# ---------------------------------------------------------------------- the node's arguments


def test_the_node_checks_its_arguments(tmp_path: Path) -> None:
    settings = Settings(host='127.0.0.1:1', organization='o', project='p', data_folder=tmp_path / 'data')
    with pytest.raises(TypeError, match='ConverterLogic'):
        ConverterNode('c', object())  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        ConverterNode('c', UpperLogic(), settings=settings.replace(project=''))
    for bad in (0, -1, float('nan'), float('inf'), True):
        with pytest.raises(ValueError, match='check_interval'):
            ConverterNode('c', UpperLogic(), settings=settings, check_interval=bad)
    with pytest.raises(ValueError, match='max_attempts'):
        ConverterNode('c', UpperLogic(), settings=settings, max_attempts=0)
    node = ConverterNode('c', UpperLogic(), settings=settings)
    assert node.node_type == 'converter' and node.status().state == 'idle' and node.status().errors == {}
    assert node.worker.work_root == tmp_path / 'data' / 'o' / 'p' / 'conversions' / 'text_to_upper'
    assert node.stop()
