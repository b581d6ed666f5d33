"""The demo's steps: one turn of the active-learning loop, end to end, on this machine.

1. ``loop``: start the local Loop with the demo project (``plan.loop_images`` synthetic images with true boxes).
2. ``trainer``: serve a trainer node and wait until the Loop sees it connected.
3. ``training-1``: start a training as the Loop's UI does and follow it through the Loop (the trainer's status
   and the ``update_training`` metrics), until the trainer uploaded its model and is idle again.
4. ``deploy-1``: make that model the deployment target; serve a detector and wait until it serves that version.
5. ``test-1``: F1 of the served model on the test images (never in the Loop), through ``POST /detect``.
6. ``outbox``: a camera's images (never in the Loop) go through ``POST /detect`` with ``autoupload=filtered``:
   the relevance filter picks the images with detections the model is unsure about, and the outbox sends them
   to the Loop. ``filtered`` rather than ``all`` or ``/upload``, because picking what is worth annotating is the
   point of active learning: the report shows how many of the images were worth a person's time.
7. ``annotate``: the images that came back get their true boxes through the control API, as a person in the
   Loop's UI would annotate them, and become ``complete`` (training data).
8. ``training-2``, ``deploy-2``, ``test-2``: a second training that includes them, deployed and measured the same
   way; the last F1 must reach ``plan.min_f1``.

Every wait has a deadline and watches ``stopping`` (Ctrl-C), and whatever happens the nodes and the Loop are
stopped and their threads joined (:meth:`ActiveLearningDemo.shutdown`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import requests

from llnode.config import user_path
from llnode.demo.loop_ui import LoopUI
from llnode.demo.parts import Boxes, DemoParts
from llnode.demo.plan import DemoPlan
from llnode.demo.progress import ProgressLine, training_fraction
from llnode.demo.report import DemoReport, StepRecord, TrainingRecord, training_label
from llnode.demo.served import ServedNode
from llnode.detector.node import DetectorNode
from llnode.localloop import LocalLoop
from llnode.localloop.demo import render, true_annotations
from llnode.localloop.generator import DEMO_ORGANIZATION, DEMO_PROJECT
from llnode.trainer.callbacks import f1_score
from llnode.trainer.node import TrainerNode

logger = logging.getLogger('llnode.demo')

#: the login of the demo's Loop (the README's quickstart uses the same)
DEMO_USER = ('demo', 'demo')
#: the camera the field images come from (the relevance filter keeps one history per camera)
CAMERA_ID = 'demo-camera'
#: seconds one ``POST /detect`` may take
DETECT_TIMEOUT = 60.0


class StepFailed(Exception):
    """A step did not work; ``step`` is its short name (what the report and the exit message name)."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(f'{step}: {message}')
        self.step = step
        self.message = message


class DemoInterrupted(Exception):
    """``stopping`` was set (Ctrl-C or SIGTERM) while a step waited."""


@dataclass(frozen=True)
class NodeTimings:
    """How briskly the demo's nodes and waits move; tests make them faster."""

    #: the trainer's status cycle (the Loop sees its state this often; the demo sees a training end through it, so
    #: a long cycle adds its length to every training) and least time between metrics sends
    trainer_repeat: float = 0.25
    trainer_metrics_interval: float = 1.0
    #: a failing training stage is retried after these delays and given up after ``trainer_max_attempts``
    trainer_retry_delay: float = 1.0
    trainer_max_retry_delay: float = 5.0
    trainer_max_attempts: int = 3
    #: the detector's repeat cycle: how soon it sees a new deployment target
    detector_repeat: float = 0.25
    #: how often a wait asks the Loop again
    poll: float = 0.1


class ActiveLearningDemo:
    """One run of the demo's steps (see the module docstring); ``run()`` returns the report, never raises for a
    failed step (``report.failed_step`` names it)."""

    def __init__(
        self,
        plan: DemoPlan,
        parts: DemoParts,
        data_dir: str | Path,
        *,
        port: int = 0,
        quick: bool = False,
        stream: TextIO | None = None,
        tty: bool | None = None,
        timings: NodeTimings | None = None,
        stopping: threading.Event | None = None,
        keep_loop: bool = False,
    ) -> None:
        self.plan = plan
        #: leave the local Loop (and its web UI) serving after the run; :meth:`shutdown` stops it later
        self.keep_loop = keep_loop
        self.parts = parts
        self.data_dir = user_path(data_dir)
        self.port = port
        self.stream = stream if stream is not None else sys.stderr
        self.tty = tty
        self.timings = timings or NodeTimings()
        self.stopping = stopping if stopping is not None else threading.Event()
        self.report = DemoReport(quick=quick, data_folder=str(self.data_dir), plan=plan.to_dict())
        self.loop: LocalLoop | None = None
        self.ui: LoopUI | None = None
        self.trainer: ServedNode[TrainerNode] | None = None
        self.detector: ServedNode[DetectorNode] | None = None
        self._http = requests.Session()  # the demo's own client of the detector's REST API
        self._field_digests: dict[str, int] = {}  # sha256 of a field image's JPEG -> its index
        self._returned_ids: list[str] = []  # Loop image ids of the images the outbox delivered

    # ------------------------------------------------------------------ the run

    def run(self) -> DemoReport:
        """Run every step, stop everything, and return the report."""
        try:
            self._start_loop()
            self._start_trainer()
            first = self._train(1)
            self._deploy(1, first)
            self._test(1, first)
            self._send_field_images()
            self._annotate_returned_images()
            second = self._train(2)
            self._deploy(2, second)
            self._test(2, second, final=True)
        except StepFailed as e:
            self.report.failed_step, self.report.error = e.step, e.message
        except DemoInterrupted:
            self.report.interrupted = True
            running = next((s for s in self.report.steps if s.ok is not True), None)
            self.report.failed_step = running.name if running is not None else None
            self.report.error = 'interrupted'
        finally:
            self.shutdown(keep_loop=self.keep_loop)
            self.report.finish()
        return self.report

    def shutdown(self, *, keep_loop: bool = False) -> None:
        """Stop the nodes, then the Loop unless ``keep_loop``; every part within a bounded time. Safe to call more
        than once."""
        for served in (self.detector, self.trainer):
            if served is not None:
                try:
                    served.stop()
                except Exception:
                    logger.exception('stopping %s failed', served.node.name)
        self.detector = self.trainer = None
        self._http.close()
        if self.ui is not None:
            self.ui.close()
            self.ui = None
        if self.loop is not None and not keep_loop:
            try:
                self.loop.stop()
            except Exception:
                logger.exception('stopping the local Loop failed')
            self.loop = None

    # ------------------------------------------------------------------ steps

    def _start_loop(self) -> None:
        with self._step('loop', 'start the local Loop with the demo project') as record:
            nodes = self.data_dir / 'nodes'
            shutil.rmtree(nodes, ignore_errors=True)  # the nodes start fresh; the Loop keeps what it has
            self.loop = LocalLoop(
                self.data_dir / 'loop',
                port=self.port,
                users=[DEMO_USER],
                demo=True,
                demo_images=self.plan.loop_images,
                seed=self.plan.seed,
            ).start()
            self.report.loop_url = self.loop.url
            self.ui = LoopUI(self.loop.url, *DEMO_USER, DEMO_ORGANIZATION, DEMO_PROJECT)
            self.ui.login()
            complete = len(self.ui.images('complete'))
            record.detail = f'{self.loop.url}, {complete} annotated images'
            self._say(
                f'local Loop at {self.loop.url} (login {DEMO_USER[0]}/{DEMO_USER[1]}, project '
                f'{DEMO_ORGANIZATION}/{DEMO_PROJECT}); watch it with: llnode control --url {self.loop.url} '
                f'--user {DEMO_USER[0]}:{DEMO_USER[1]} nodes'
            )
            self._say(f'web UI: {self.loop.ui_url} (log in as {DEMO_USER[0]}/{DEMO_USER[1]})')

    def _start_trainer(self) -> None:
        with self._step('trainer', 'connect a trainer to the Loop') as record:
            t = self.timings
            node = TrainerNode(
                'llnode demo trainer',
                self.parts.trainer_logic(self.plan),
                settings=self._loop().settings(data_folder=self.data_dir / 'nodes' / 'trainer'),
                repeat_interval=t.trainer_repeat,
                metrics_interval=t.trainer_metrics_interval,
                retry_delay=t.trainer_retry_delay,
                max_retry_delay=t.trainer_max_retry_delay,
                max_attempts=t.trainer_max_attempts,
            )
            self.trainer = ServedNode(node)
            self.trainer.start()
            ui = self._ui()
            self._wait(
                lambda: (n := ui.node(node.uuid)) is not None and n['connected'] and bool(n.get('status')),
                timeout=self.plan.serve_timeout,
                what='the trainer to connect to the Loop',
            )
            record.detail = f'{node.name} at {self.trainer.url}'

    def _train(self, k: int) -> TrainingRecord:
        title = 'train a first model' if k == 1 else 'train again, with the annotated images'
        with self._step(f'training-{k}', title) as record:
            trainer = self._trainer()
            ui = self._ui()
            updates_before = len(ui.training_updates())
            begun = ui.begin_training(trainer.uuid)
            if not begun.get('accepted'):
                raise RuntimeError(f'the trainer refused the training: {begun.get("ack")}')
            number = int(begun['training_number'])
            training = TrainingRecord(training_number=number)
            self.report.trainings.append(training)
            started = time.monotonic()
            model = self._follow_training(k, number, updates_before, training)
            training.seconds = round(time.monotonic() - started, 2)
            training.model_id, training.model_version = model['id'], model['version']
            f1 = '' if training.trainer_f1 is None else f', trainer F1 {training.trainer_f1:.3f}'
            record.detail = f'{training_label(k, number)} -> model {model["version"]}{f1}'
            return training

    def _deploy(self, k: int, training: TrainingRecord) -> None:
        version = training.model_version
        with self._step(f'deploy-{k}', f'deploy model {version}; the detector serves it') as record:
            if training.model_id is None or version is None:
                raise RuntimeError('the training has no model to deploy')
            self._ui().deploy(training.model_id)
            if self.detector is None:
                self._start_detector()
            detector = self._detector()
            line = self._progress()
            started = time.monotonic()

            def serving() -> bool:
                current = detector.models.current_version
                errors = detector.models.errors()
                problem = f' ({"; ".join(errors.values())})' if errors else ''
                line.update(None, f'detector serves {current or "no model"}', f'deployed {version}{problem}')
                return current == version and self._served_version() == version

            try:
                self._wait(serving, timeout=self.plan.serve_timeout, what=f'the detector to serve {version}')
                line.update(1.0, f'detector serves {version}')
            finally:
                line.done()
            record.detail = f'served {time.monotonic() - started:.1f} s after deployment'

    def _test(self, k: int, training: TrainingRecord, *, final: bool = False) -> None:
        with self._step(f'test-{k}', f'measure model {training.model_version} on the test images') as record:
            predictions: list[Boxes] = []
            truths: list[Boxes] = []
            line = self._progress()
            count = self.plan.test_images
            try:
                for index in range(count):
                    jpeg, annotations = render(index, self.plan.test_seed)
                    answer = self._detect(jpeg, autoupload='disabled')
                    predictions.append(list(answer.get('box_detections') or []))
                    truths.append(list(annotations['box_annotations']))
                    line.update((index + 1) / count, 'test images', f'{index + 1}/{count}')
            finally:
                line.done()
            training.f1_test = round(self.parts.f1(predictions, truths), 4)
            detected = sum(len(p) for p in predictions)
            record.detail = f'F1 {training.f1_test:.3f} ({detected} boxes found, {sum(len(t) for t in truths)} true)'
            if final and training.f1_test < self.plan.min_f1:
                raise RuntimeError(f'F1 {training.f1_test:.3f} is below the floor {self.plan.min_f1:.3f}')

    def _send_field_images(self) -> None:
        title = 'camera images; the uncertain ones return'
        with self._step('outbox', title) as record:
            detector = self._detector()
            ui = self._ui()
            uploads = self.report.uploads
            saved_before = int(detector.outbox.stats()['saved'])
            arrived_before = len(ui.uploaded_image_ids())
            batches_before = len(ui.upload_batches())
            count = self.plan.field_images
            line = self._progress()
            try:
                for index in range(count):
                    jpeg, _ = render(index, self.plan.field_seed)
                    self._field_digests[hashlib.sha256(jpeg).hexdigest()] = index
                    self._detect(jpeg, autoupload='filtered')
                    uploads.sent_to_detector += 1
                    line.update((index + 1) / count, 'field images sent to the detector', f'{index + 1}/{count}')
            finally:
                line.done()
            stats = self._wait(
                lambda: (now := detector.outbox.stats())['pending_writes'] == 0 and now,
                timeout=self.plan.serve_timeout,
                what='the outbox to store the picked images',
            )
            uploads.picked_by_filter = int(stats['saved']) - saved_before
            if uploads.picked_by_filter == 0:
                raise RuntimeError(
                    f'the relevance filter picked none of the {count} images (no new detection with a confidence '
                    f'in [{self.plan.min_uncertain}, {self.plan.max_uncertain}]): nothing comes back to learn from'
                )
            line = self._progress()

            def arrived() -> bool:
                returned = ui.uploaded_image_ids()[arrived_before:]
                now = detector.outbox.stats()
                if now['rejected'] or now['dropped']:
                    raise RuntimeError(f'the outbox lost images: rejected {now["rejected"]}, dropped {now["dropped"]}')
                uploads.arrived_at_loop = len(returned)
                problem = f' (last error: {now["last_error"]})' if now.get('last_error') else ''
                line.update(
                    len(returned) / uploads.picked_by_filter,
                    'picked images at the Loop',
                    f'{len(returned)}/{uploads.picked_by_filter}{problem}',
                )
                self._returned_ids = returned
                return len(returned) >= uploads.picked_by_filter

            try:
                self._wait(arrived, timeout=self.plan.serve_timeout, what='the picked images to reach the Loop')
            finally:
                line.done()
            uploads.batches = len(ui.upload_batches()) - batches_before
            record.detail = (
                f'{uploads.picked_by_filter} of {count} images picked, {uploads.arrived_at_loop} arrived '
                f'in {uploads.batches} batches'
            )

    def _annotate_returned_images(self) -> None:
        with self._step('annotate', 'annotate the returned images with their true boxes') as record:
            ui = self._ui()
            boxes = 0
            line = self._progress()
            try:
                for n, image_id in enumerate(self._returned_ids, start=1):
                    self._check_stop()
                    index = self._field_digests.get(hashlib.sha256(ui.image_jpeg(image_id)).hexdigest())
                    if index is None:
                        raise RuntimeError(f'image {image_id} came back, but its bytes are none of the field images')
                    annotations = true_annotations(index, self.plan.field_seed)
                    ui.annotate(image_id, annotations, state='complete')
                    boxes += len(annotations['box_annotations'])
                    self.report.uploads.annotated += 1
                    line.update(n / len(self._returned_ids), 'annotated', f'{n}/{len(self._returned_ids)}')
            finally:
                line.done()
            record.detail = f'{self.report.uploads.annotated} images, {boxes} boxes, now complete'

    # ------------------------------------------------------------------ following a training through the Loop

    def _follow_training(self, k: int, number: int, updates_before: int, record: TrainingRecord) -> dict[str, Any]:
        """Show the training's progress as the Loop sees it; return its model once the trainer is idle again."""
        ui = self._ui()
        trainer = self._trainer()
        begun_at = next((t['created'] for t in ui.trainings() if t['number'] == number), '')
        seen_active = False
        label = training_label(k, number)
        line = self._progress()
        deadline = time.monotonic() + self.plan.training_timeout
        try:
            while True:
                node = ui.node(trainer.uuid) or {}
                status = node.get('status') or {}
                state = str(status.get('state') or 'unknown')
                errors = status.get('errors') or {}
                fresh = str(node.get('updated') or '') > begun_at
                seen_active = seen_active or (fresh and state != 'idle')
                updates = [u for u in ui.training_updates()[updates_before:] if u.get('trainer_id') == trainer.uuid]
                details = []
                if updates:
                    latest = updates[-1]
                    matrix = latest.get('confusion_matrix')
                    if isinstance(matrix, dict) and matrix:
                        record.trainer_f1 = round(f1_score(matrix), 4)
                    record.best_epoch = latest.get('best_epoch')
                    record.train_image_count = latest.get('train_image_count')
                    record.test_image_count = latest.get('test_image_count')
                    f1 = '' if record.trainer_f1 is None else f', F1 {record.trainer_f1:.3f}'
                    details.append(f'best epoch {record.best_epoch}{f1}')
                if errors:
                    details.append(f'error: {"; ".join(f"{key}: {value}" for key, value in errors.items())}')
                if fresh and state == 'idle':
                    model = ui.model_of_training(number, self.parts.model_format)
                    if model is not None:
                        line.update(1.0, f'{label}: done', ' - '.join(details))
                        return model
                    if errors or seen_active:
                        raise RuntimeError(f'the training ended without a model: {errors or "no error reported"}')
                progress = status.get('progress')
                stage = float(progress) if isinstance(progress, (int, float)) else None
                fraction = training_fraction(state, stage) if fresh else None
                line.update(fraction, f'{label}: {state if fresh else "starting"}', ' - '.join(details))
                if node and not node.get('connected'):
                    raise RuntimeError('the trainer lost its connection to the Loop')
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f'the training did not finish within {self.plan.training_timeout:g} s (last state {state})'
                    )
                self._sleep(self.timings.poll)
        finally:
            line.done()

    # ------------------------------------------------------------------ the detector

    def _start_detector(self) -> None:
        settings = self._loop().settings(
            data_folder=self.data_dir / 'nodes' / 'detector',
            min_uncertain_threshold=self.plan.min_uncertain,
            max_uncertain_threshold=self.plan.max_uncertain,
        )
        node = DetectorNode(
            'llnode demo detector',
            self.parts.detector_factory(self.plan),
            settings=settings,
            repeat_interval=self.timings.detector_repeat,
        )
        self.detector = ServedNode(node).start()
        self._say(f'detector served at {self.detector.url}')

    def _served_version(self) -> str | None:
        """The version ``GET /about`` names (what a client of the detector sees), or None."""
        served = self.detector
        if served is None:
            return None
        response = self._http.get(f'{served.url}/about', timeout=DETECT_TIMEOUT)
        response.raise_for_status()
        info = response.json().get('model_info') or {}
        return info.get('version')

    def _detect(self, jpeg: bytes, *, autoupload: str) -> dict[str, Any]:
        self._check_stop()
        served = self.detector
        if served is None:
            raise RuntimeError('no detector is running')
        response = self._http.post(
            f'{served.url}/detect',
            files={'file': ('image.jpg', jpeg, 'image/jpeg')},
            headers={'autoupload': autoupload, 'camera-id': CAMERA_ID},
            timeout=DETECT_TIMEOUT,
        )
        if response.status_code != 200:
            raise RuntimeError(f'POST /detect answered {response.status_code}: {response.text[:200]}')
        return dict(response.json())

    # ------------------------------------------------------------------ helpers

    @contextlib.contextmanager
    def _step(self, name: str, title: str) -> Iterator[StepRecord]:
        """Time a step and record its outcome; any error becomes :class:`StepFailed` naming the step."""
        self._check_stop()
        record = StepRecord(name=name, title=title)
        self.report.steps.append(record)
        self._say(f'==> {name}: {title}')
        started = time.monotonic()
        try:
            yield record
        except DemoInterrupted:
            record.ok, record.detail = False, 'interrupted'
            raise
        except StepFailed:
            record.ok = False
            raise
        except Exception as e:
            logger.debug('step %s failed', name, exc_info=True)
            record.ok, record.detail = False, f'{type(e).__name__}: {e}'
            self._say(f'    FAILED: {record.detail}')
            raise StepFailed(name, record.detail) from e
        else:
            record.ok = True
            if record.detail:
                self._say(f'    {record.detail}')
        finally:
            record.seconds = round(time.monotonic() - started, 2)

    def _wait(self, condition: Callable[[], Any], *, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f'timed out after {timeout:g} s waiting for {what}')
            self._sleep(self.timings.poll)

    def _sleep(self, seconds: float) -> None:
        if self.stopping.wait(seconds):
            raise DemoInterrupted

    def _check_stop(self) -> None:
        if self.stopping.is_set():
            raise DemoInterrupted

    def _say(self, text: str) -> None:
        self.stream.write(text + '\n')
        self.stream.flush()

    def _progress(self) -> ProgressLine:
        return ProgressLine(self.stream, tty=self.tty)

    def _loop(self) -> LocalLoop:
        if self.loop is None:
            raise RuntimeError('the local Loop is not running')
        return self.loop

    def _ui(self) -> LoopUI:
        if self.ui is None:
            raise RuntimeError('not logged in to the Loop')
        return self.ui

    def _trainer(self) -> TrainerNode:
        if self.trainer is None:
            raise RuntimeError('no trainer is running')
        return self.trainer.node

    def _detector(self) -> DetectorNode:
        if self.detector is None:
            raise RuntimeError('no detector is running')
        return self.detector.node
