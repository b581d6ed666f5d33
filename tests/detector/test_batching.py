"""The inference worker with real threads: shared batches, results to the right caller, no concurrent logic calls,
failures confined to their batch, back-pressure, bounded stop and drain, caller-thread mode for thread-safe logics."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from llnode.detector.batching import InferenceBusy, InferenceStopped, InferenceTimeout, InferenceWorker
from llnode.detector.logic import DetectorLogic, ImageInputError, LogicResultError
from llnode.schema import ImageMetadata, ModelInformation
from tests.polling import wait_for as wait_until

INFO = ModelInformation(id='m1', organization='o', project='p', version='3.1')
POISON = 250  # an image of this width makes RecordingLogic raise


def image(ident: int) -> np.ndarray:
    """An image whose width is its id, so every result can be traced back to its image."""
    return np.zeros((2, ident, 3), np.uint8)


def ident_of(result: ImageMetadata) -> int:
    return int(result.tags[0])


class RecordingLogic(DetectorLogic):
    """Records every batch (image ids) and the thread it ran on; counts concurrent calls; waits on ``gate``.

    Its images differ in width (their ids), so it declares that it takes mixed shapes.
    """

    accepts_mixed_shapes = True

    def __init__(self, model_info: ModelInformation, *, work: float = 0.0) -> None:
        super().__init__(model_info)
        self.work = work
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.batches: list[list[int]] = []
        self.threads: set[str] = set()
        self.active = 0
        self.max_active = 0
        self.closed = False
        self._lock = threading.Lock()

    def batch_evaluate(self, images: list[np.ndarray]) -> list[ImageMetadata]:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.batches.append([i.shape[1] for i in images])
            self.threads.add(threading.current_thread().name)
        try:
            self.entered.set()
            assert self.gate.wait(10), 'test never opened the gate'
            if self.work:
                threading.Event().wait(self.work)  # stands in for inference time
            if any(i.shape[1] == POISON for i in images):
                raise RuntimeError('poisoned batch')
            return [ImageMetadata(tags=[str(i.shape[1])]) for i in images]
        finally:
            with self._lock:
                self.active -= 1

    def evaluate(self, image: np.ndarray) -> ImageMetadata:
        return self.batch_evaluate([image])[0]

    def close(self) -> None:
        self.closed = True


class ThreadSafeLogic(RecordingLogic):
    thread_safe = True


@pytest.fixture
def workers() -> Iterator[list[InferenceWorker]]:
    """Every worker a test appends is stopped at teardown, so no test leaves a thread behind."""
    made: list[InferenceWorker] = []
    yield made
    for worker in made:
        worker.stop(timeout=5)
        assert not worker.is_alive()


def run_callers(caller: Callable[[int], None], count: int) -> None:
    """``caller(0)`` ... ``caller(count - 1)`` in threads of their own, all joined (30 s each at most)."""
    threads = [threading.Thread(target=caller, args=(i,), name=f'test-caller-{i}') for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
        assert not thread.is_alive(), f'{thread.name} still runs'


def start_call(worker: InferenceWorker, ident: int, results: dict[int, object]) -> threading.Thread:
    """``worker.evaluate(image(ident))`` in a thread; the result or exception lands in ``results[ident]``."""

    def call() -> None:
        try:
            results[ident] = worker.evaluate(image(ident), timeout=10)
        except Exception as error:
            results[ident] = error

    thread = threading.Thread(target=call, name=f'test-caller-{ident}')
    thread.start()
    return thread


def test_concurrent_callers_share_batches_and_each_gets_its_own_result(workers: list[InferenceWorker]) -> None:
    logic = RecordingLogic(INFO, work=0.003)
    worker = InferenceWorker(logic, max_batch_size=8, max_wait_ms=2, name='test-inference')
    workers.append(worker)
    callers, rounds = 16, 5
    barrier = threading.Barrier(callers)
    mismatches: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def caller(index: int) -> None:
        try:
            barrier.wait(5)
            for round_ in range(rounds):
                ident = 1 + index * rounds + round_
                got = ident_of(worker.evaluate(image(ident), timeout=10))
                if got != ident:
                    mismatches.append((ident, got))
        except BaseException as error:
            errors.append(error)

    run_callers(caller, callers)
    assert errors == [] and mismatches == []
    sizes = [len(batch) for batch in logic.batches]
    assert sum(sizes) == callers * rounds
    assert max(sizes) > 1, sizes
    assert max(sizes) <= 8
    assert logic.max_active == 1  # a non-thread-safe logic never ran concurrently with itself
    assert logic.threads == {'test-inference'}  # every batch ran on the named worker thread


def test_a_lone_request_is_not_delayed_by_max_wait(workers: list[InferenceWorker]) -> None:
    logic = RecordingLogic(INFO)
    worker = InferenceWorker(logic, max_wait_ms=300)
    workers.append(worker)
    durations = []
    for ident in range(1, 21):
        began = time.perf_counter()
        assert ident_of(worker.evaluate(image(ident))) == ident
        durations.append(time.perf_counter() - began)
    # each would take >= 300 ms if the worker waited for company; a thread hand-off takes well under 1 ms
    assert statistics.median(durations) < 0.05, durations
    assert max(durations) < 0.25, durations
    assert all(len(batch) == 1 for batch in logic.batches)


def test_a_client_batch_stays_together_in_order_and_is_chunked(workers: list[InferenceWorker]) -> None:
    logic = RecordingLogic(INFO)
    worker = InferenceWorker(logic, max_batch_size=2)
    workers.append(worker)
    results = worker.evaluate_many([image(i) for i in (5, 4, 3, 2, 1)])
    assert [ident_of(r) for r in results] == [5, 4, 3, 2, 1]
    assert logic.batches == [[5, 4], [3, 2], [1]]
    assert worker.evaluate_many([]) == []


def test_queued_requests_form_one_batch_in_arrival_order(workers: list[InferenceWorker]) -> None:
    logic = RecordingLogic(INFO)
    logic.gate.clear()
    worker = InferenceWorker(logic, max_batch_size=4)
    workers.append(worker)
    results: dict[int, object] = {}
    threads = [start_call(worker, 1, results)]
    assert logic.entered.wait(5)
    for ident in (2, 3, 4, 5, 6):
        threads.append(start_call(worker, ident, results))
        wait_until(lambda: worker.queued == len(threads) - 1)
    logic.gate.set()
    for thread in threads:
        thread.join(10)
    assert logic.batches == [[1], [2, 3, 4, 5], [6]]
    assert {k: ident_of(v) for k, v in results.items()} == {i: i for i in range(1, 7)}  # type: ignore[arg-type]


def test_an_exception_fails_exactly_the_requests_of_its_batch(workers: list[InferenceWorker]) -> None:
    logic = RecordingLogic(INFO)
    logic.gate.clear()
    worker = InferenceWorker(logic, max_batch_size=2)
    workers.append(worker)
    results: dict[int, object] = {}
    threads = [start_call(worker, 1, results)]
    assert logic.entered.wait(5)
    for ident in (POISON, 2, 3):
        threads.append(start_call(worker, ident, results))
        wait_until(lambda: worker.queued == len(threads) - 1)
    logic.gate.set()
    for thread in threads:
        thread.join(10)
    assert logic.batches == [[1], [POISON, 2], [3]]
    assert isinstance(results[POISON], RuntimeError) and str(results[POISON]) == 'poisoned batch'
    assert results[2] is results[POISON]  # the original exception, for every request of that batch
    assert ident_of(results[1]) == 1 and ident_of(results[3]) == 3  # type: ignore[arg-type]
    assert ident_of(worker.evaluate(image(4))) == 4  # the worker went on
    assert worker.is_alive()


def test_a_wrong_result_fails_the_request_with_a_clear_error(workers: list[InferenceWorker]) -> None:
    class Wrong(DetectorLogic):
        def evaluate(self, image: np.ndarray) -> ImageMetadata:
            return None  # type: ignore[return-value]

    worker = InferenceWorker(Wrong(INFO))
    workers.append(worker)
    with pytest.raises(LogicResultError, match=r'Wrong\.evaluate returned NoneType'):
        worker.evaluate(image(1))
    assert worker.is_alive()


def test_a_full_queue_raises_busy_at_once(workers: list[InferenceWorker]) -> None:
    logic = RecordingLogic(INFO)
    logic.gate.clear()
    worker = InferenceWorker(logic, max_queue=3)
    workers.append(worker)
    running = worker.submit([image(1)])
    assert logic.entered.wait(5)
    queued = [worker.submit([image(2), image(3)]), worker.submit([image(4)])]
    began = time.monotonic()
    with pytest.raises(InferenceBusy, match=r'queue is full \(3 of 3') as caught:
        worker.submit([image(5)])
    assert time.monotonic() - began < 0.5
    assert caught.value.status == 503 and caught.value.headers == {'Retry-After': '1'}
    with pytest.raises(ValueError, match='more than the queue holds'):
        worker.submit([image(i) for i in range(1, 5)])
    logic.gate.set()
    assert [ident_of(r) for f in [running, *queued] for r in f.result(5)] == [1, 2, 3, 4]


def test_bad_input_is_refused_before_it_is_queued(workers: list[InferenceWorker]) -> None:
    logic = RecordingLogic(INFO)
    worker = InferenceWorker(logic)
    workers.append(worker)
    with pytest.raises(ImageInputError, match='image 1 must have 1, 3 or 4 channels'):
        worker.evaluate_many([image(1), np.zeros((2, 2, 2), np.uint8)])
    with pytest.raises(TypeError, match='list of images'):
        worker.submit(image(1))
    assert logic.batches == [] and worker.queued == 0


def test_a_caller_timeout_cancels_a_request_that_has_not_started(workers: list[InferenceWorker]) -> None:
    logic = RecordingLogic(INFO)
    logic.gate.clear()
    worker = InferenceWorker(logic)
    workers.append(worker)
    running = worker.submit([image(1)])
    assert logic.entered.wait(5)
    with pytest.raises(InferenceTimeout, match=r'within 0\.05 s'):
        worker.evaluate(image(2), timeout=0.05)
    logic.gate.set()
    assert ident_of(running.result(5)[0]) == 1
    assert ident_of(worker.evaluate(image(3))) == 3
    assert logic.batches == [[1], [3]]  # the abandoned request never ran


def test_stop_is_bounded_fails_pending_and_ends_the_thread() -> None:
    logic = RecordingLogic(INFO)
    logic.gate.clear()
    worker = InferenceWorker(logic, name='test-stop-worker')
    assert 'test-stop-worker' in [t.name for t in threading.enumerate()]
    running = worker.submit([image(1)])
    assert logic.entered.wait(5)
    pending = [worker.submit([image(2)]), worker.submit([image(3)])]
    began = time.monotonic()
    assert worker.stop(timeout=0.1, close_logic=True) is False  # the running batch holds it
    assert time.monotonic() - began < 1.0
    for future in pending:
        with pytest.raises(InferenceStopped, match='test-stop-worker stopped'):
            future.result(1)
    with pytest.raises(InferenceStopped, match='is stopped'):
        worker.submit([image(4)])
    assert not logic.closed  # never closed while a batch still runs
    logic.gate.set()
    assert ident_of(running.result(5)[0]) == 1  # the running batch finished
    assert worker.stop(timeout=5, close_logic=True) is True
    assert not worker.is_alive() and 'test-stop-worker' not in [t.name for t in threading.enumerate()]
    assert logic.closed and logic.batches == [[1]]


def test_drain_and_stop_finishes_queued_work_then_ends() -> None:
    logic = RecordingLogic(INFO)
    logic.gate.clear()
    worker = InferenceWorker(logic, max_batch_size=1)
    futures = [worker.submit([image(1)])]
    assert logic.entered.wait(5)
    futures += [worker.submit([image(2)]), worker.submit([image(3)])]
    outcome: list[bool] = []
    drainer = threading.Thread(target=lambda: outcome.append(worker.drain_and_stop(10, close_logic=True)))
    drainer.start()
    wait_until(lambda: not worker.accepting)
    with pytest.raises(InferenceStopped):
        worker.evaluate(image(4))
    logic.gate.set()
    drainer.join(10)
    assert outcome == [True] and not worker.is_alive() and logic.closed
    assert [ident_of(f.result(0)[0]) for f in futures] == [1, 2, 3]
    assert logic.batches == [[1], [2], [3]]


def test_drain_and_stop_gives_up_after_its_timeout() -> None:
    logic = RecordingLogic(INFO)
    logic.gate.clear()
    worker = InferenceWorker(logic)
    running = worker.submit([image(1)])
    assert logic.entered.wait(5)
    queued = worker.submit([image(2)])
    began = time.monotonic()
    assert worker.drain_and_stop(0.2) is False
    assert time.monotonic() - began < 1.5
    with pytest.raises(InferenceStopped):
        queued.result(1)
    logic.gate.set()
    assert ident_of(running.result(5)[0]) == 1
    assert worker.stop(5) is True


def test_a_thread_safe_logic_runs_in_the_callers_thread(workers: list[InferenceWorker]) -> None:
    logic = ThreadSafeLogic(INFO)
    worker = InferenceWorker(logic, max_queue=1, max_batch_size=2)
    workers.append(worker)
    assert worker.in_caller_thread and not worker.is_alive()
    assert ident_of(worker.evaluate(image(7))) == 7
    assert logic.threads == {threading.current_thread().name}
    logic.gate.clear()
    logic.entered.clear()
    results: dict[int, object] = {}
    caller = start_call(worker, 8, results)
    assert logic.entered.wait(5)
    with pytest.raises(InferenceBusy):  # max_queue bounds the images in flight
        worker.evaluate(image(9))
    logic.gate.set()
    caller.join(10)
    assert ident_of(results[8]) == 8  # type: ignore[arg-type]
    assert worker.stop(5) is True
    with pytest.raises(InferenceStopped):
        worker.evaluate(image(10))
    batched = InferenceWorker(ThreadSafeLogic(INFO), in_caller_thread=False)
    workers.append(batched)
    assert batched.is_alive() and ident_of(batched.evaluate(image(3))) == 3


def test_bad_settings_are_refused() -> None:
    logic = RecordingLogic(INFO)
    with pytest.raises(ValueError, match='max_batch_size'):
        InferenceWorker(logic, max_batch_size=0)
    with pytest.raises(ValueError, match='max_wait_ms'):
        InferenceWorker(logic, max_wait_ms=-1)
    with pytest.raises(ValueError, match='max_queue'):
        InferenceWorker(logic, max_queue=0)
    with pytest.raises(ValueError, match='not thread_safe'):
        InferenceWorker(logic, in_caller_thread=True)
    with pytest.raises(TypeError, match='needs a DetectorLogic'):
        InferenceWorker(object())  # type: ignore[arg-type]
    assert not any(t.name.startswith('llnode-inference') for t in threading.enumerate())


# ---------------------------------------------------------------------------------------------------------------
# Counters


def test_stats_start_at_zero_and_show_the_settings(workers: list[InferenceWorker]) -> None:
    worker = InferenceWorker(RecordingLogic(INFO), max_batch_size=4, max_wait_ms=1.5, max_queue=32)
    workers.append(worker)
    assert worker.stats() == {
        'requests': 0,
        'images': 0,
        'batches': 0,
        'failed_batches': 0,
        'largest_batch': 0,
        'logic_seconds': 0.0,
        'mean_batch_size': 0.0,
        'queued': 0,
        'max_batch_size': 4,
        'max_wait_ms': 1.5,
        'max_queue': 32,
        'in_caller_thread': False,
    }


def run_concurrent_callers(worker: InferenceWorker, callers: int, rounds: int) -> tuple[int, int]:
    """``callers`` threads each send ``rounds`` requests of 1 to 3 images; returns (requests, images) sent."""
    barrier = threading.Barrier(callers)
    errors: list[BaseException] = []

    def caller(index: int) -> None:
        try:
            barrier.wait(5)
            for round_ in range(rounds):
                count = 1 + (index + round_) % 3
                idents = [POISON + 1 + (index * rounds + round_) * 3 + k for k in range(count)]  # never POISON
                results = worker.evaluate_many([image(i) for i in idents], timeout=10)
                assert [ident_of(r) for r in results] == idents
        except BaseException as error:
            errors.append(error)

    run_callers(caller, callers)
    assert errors == []
    images = sum(1 + (index + round_) % 3 for index in range(callers) for round_ in range(rounds))
    return callers * rounds, images


def test_stats_count_every_request_image_and_batch_of_concurrent_callers(workers: list[InferenceWorker]) -> None:
    logic = RecordingLogic(INFO, work=0.002)
    worker = InferenceWorker(logic, max_batch_size=4, max_wait_ms=2)
    workers.append(worker)
    requests, images = run_concurrent_callers(worker, callers=12, rounds=6)
    assert [ident_of(r) for r in worker.evaluate_many([image(i) for i in range(1, 11)])] == list(range(1, 11))
    stats = worker.stats()
    sizes = [len(batch) for batch in logic.batches]
    assert stats['requests'] == requests + 1
    assert stats['images'] == images + 10 == sum(sizes)
    assert stats['batches'] == len(sizes)
    assert stats['largest_batch'] == max(sizes) <= 4  # the 10-image request ran as 4 + 4 + 2
    assert stats['failed_batches'] == 0
    assert stats['mean_batch_size'] == round(stats['images'] / stats['batches'], 3)
    assert stats['logic_seconds'] >= 0.002 * len(sizes) * 0.9  # every call waits 2 ms
    assert stats['queued'] == 0


def test_stats_count_in_the_callers_threads_too(workers: list[InferenceWorker]) -> None:
    """Caller-thread mode: many threads run the logic at once and each adds its batch; no update is lost."""
    logic = ThreadSafeLogic(INFO)
    worker = InferenceWorker(logic, max_batch_size=2, max_queue=1000)
    workers.append(worker)
    requests, images = run_concurrent_callers(worker, callers=16, rounds=25)
    stats = worker.stats()
    sizes = [len(batch) for batch in logic.batches]
    assert stats['in_caller_thread'] is True
    assert stats['requests'] == requests
    assert stats['images'] == images == sum(sizes)
    assert stats['batches'] == len(sizes)  # a 3-image request is chunked into 2 + 1
    assert stats['largest_batch'] == 2
    assert stats['queued'] == 0


@pytest.mark.parametrize('thread_safe', [False, True])
def test_stats_count_failed_batches(workers: list[InferenceWorker], thread_safe: bool) -> None:
    logic = (ThreadSafeLogic if thread_safe else RecordingLogic)(INFO)
    worker = InferenceWorker(logic, max_batch_size=1)
    workers.append(worker)
    with pytest.raises(RuntimeError, match='poisoned batch'):
        worker.evaluate(image(POISON))
    stats = worker.stats()
    assert (stats['requests'], stats['images'], stats['batches'], stats['failed_batches']) == (1, 1, 1, 1)
    # chunks [1] and [POISON] run, the failure ends the request: [3] is never handed to the logic
    with pytest.raises(RuntimeError, match='poisoned batch'):
        worker.evaluate_many([image(1), image(POISON), image(3)])
    assert logic.batches[-2:] == [[1], [POISON]]
    stats = worker.stats()
    assert (stats['requests'], stats['images'], stats['batches'], stats['failed_batches']) == (2, 3, 3, 2)
    assert ident_of(worker.evaluate(image(4))) == 4
    assert worker.stats()['failed_batches'] == 2


class ShapeLogic(DetectorLogic):
    """Takes the default (no mixed shapes); records each batch as (pixel value, width) pairs; waits on ``gate``."""

    def __init__(self, model_info: ModelInformation) -> None:
        super().__init__(model_info)
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.batches: list[list[tuple[int, int]]] = []

    def batch_evaluate(self, images: list[np.ndarray]) -> list[ImageMetadata]:
        self.batches.append([(int(i.flat[0]), i.shape[1]) for i in images])
        self.entered.set()
        assert self.gate.wait(10), 'test never opened the gate'
        return [ImageMetadata(tags=[f'{int(i.flat[0])}/{i.shape[1]}']) for i in images]


def camera_image(value: int, width: int) -> np.ndarray:
    return np.full((4, width, 3), value, np.uint8)


def test_queued_requests_of_different_shapes_never_share_a_batch(workers: list[InferenceWorker]) -> None:
    logic = ShapeLogic(INFO)
    logic.gate.clear()
    worker = InferenceWorker(logic, max_batch_size=8)
    workers.append(worker)
    results: dict[int, object] = {}

    def call(value: int, width: int) -> threading.Thread:
        def run() -> None:
            results[value] = worker.evaluate(camera_image(value, width), timeout=10).tags[0]

        thread = threading.Thread(target=run, name=f'test-caller-{value}')
        thread.start()
        return thread

    threads = [call(1, 10)]
    assert logic.entered.wait(5)
    for value, width in ((2, 20), (3, 10), (4, 20), (5, 10)):  # two cameras, interleaved
        threads.append(call(value, width))
        wait_until(lambda: worker.queued == len(threads) - 1)
    logic.gate.set()
    for thread in threads:
        thread.join(10)
    # the first waiting request (camera 20) leads the next batch; its camera's later request joins it
    assert logic.batches == [[(1, 10)], [(2, 20), (4, 20)], [(3, 10), (5, 10)]]
    assert results == {1: '1/10', 2: '2/20', 3: '3/10', 4: '4/20', 5: '5/10'}


def test_a_client_batch_of_mixed_shapes_is_split_per_shape_and_answered_in_order(
    workers: list[InferenceWorker],
) -> None:
    logic = ShapeLogic(INFO)
    worker = InferenceWorker(logic, max_batch_size=2)
    workers.append(worker)
    images = [camera_image(v, w) for v, w in ((1, 10), (2, 20), (3, 10), (4, 10), (5, 20))]
    results = worker.evaluate_many(images)
    assert [r.tags[0] for r in results] == ['1/10', '2/20', '3/10', '4/10', '5/20']
    assert logic.batches == [[(1, 10), (3, 10)], [(4, 10)], [(2, 20), (5, 20)]]
    assert worker.stats()['batches'] == 3


def test_dtype_counts_as_part_of_the_shape(workers: list[InferenceWorker]) -> None:
    logic = ShapeLogic(INFO)
    worker = InferenceWorker(logic, max_batch_size=4)
    workers.append(worker)
    worker.evaluate_many([camera_image(1, 10), camera_image(2, 10).astype(np.float32)])
    assert logic.batches == [[(1, 10)], [(2, 10)]]
