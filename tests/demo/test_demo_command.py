"""``llnode demo``: the whole loop as a real subprocess (``--quick``, report asserted), every step with light
stand-ins for the torch model (in-process, no torch), a failing step named in the exit, bad arguments, and the
pieces (plan, progress line, report)."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import requests

from llnode.cli import main as cli_main
from llnode.demo.active_learning import ActiveLearningDemo, NodeTimings
from llnode.demo.command import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, demo_main
from llnode.demo.parts import Boxes, DemoParts
from llnode.demo.plan import FULL, QUICK, DemoPlan, PlanError
from llnode.demo.progress import TRAINING_STAGES, ProgressLine, bar, training_fraction
from llnode.demo.report import DemoReport, StepRecord, TrainingRecord, UploadRecord
from llnode.detector import DetectorFactory, DetectorLogic
from llnode.localloop.demo import true_annotations
from llnode.localloop.generator import DEMO_ORGANIZATION as ORGANIZATION
from llnode.localloop.generator import DEMO_PROJECT as PROJECT
from llnode.localloop.store import Store
from llnode.schema import BoxDetection, ImageMetadata, ModelInformation
from llnode.trainer import CriticalError, TrainerLogic, TrainingRun
from tests.polling import wait_for
from tests.trainer.trainer_support import ScriptedLogic
from tests.ui.conftest import ui_login

REPO = Path(__file__).resolve().parents[2]

#: the steps of a full run, in order
STEPS = [
    'loop',
    'trainer',
    'training-1',
    'deploy-1',
    'test-1',
    'outbox',
    'annotate',
    'training-2',
    'deploy-2',
    'test-2',
]

#: fast nodes and waits for the in-process runs
FAST = NodeTimings(
    trainer_repeat=0.2,
    trainer_metrics_interval=0.0,
    trainer_retry_delay=0.05,
    trainer_max_retry_delay=0.1,
    trainer_max_attempts=2,
    detector_repeat=0.1,
    poll=0.05,
)

#: a small plan for the stand-in runs
SMALL = DemoPlan(loop_images=8, field_images=6, test_images=4, training_timeout=30.0, serve_timeout=20.0)


# ---------------------------------------------------------------------- stand-ins for the torch model


class UncertainLogic(DetectorLogic):
    """One box per image at a place taken from the pixels (so every image's box is new to the relevance filter),
    with a confidence inside the uncertain band: every image is picked for upload."""

    def evaluate(self, image: np.ndarray) -> ImageMetadata:
        x = int(image[::7, ::7].sum()) % 500
        box = BoxDetection('circle', x, 40, 60, 60, self.model_info.version, 0.45)
        return ImageMetadata(box_detections=[box], created=None)


class UncertainFactory(DetectorFactory):
    model_format = 'mocked'

    def build(self, model_info: ModelInformation) -> DetectorLogic:
        return UncertainLogic(model_info)


class CountingF1:
    """Records what it scored; the score is the share of images whose first box has the right category."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, predictions: Sequence[Boxes], truths: Sequence[Boxes]) -> float:
        self.calls.append((len(predictions), len(truths)))
        hits = sum(
            1
            for p, t in zip(predictions, truths, strict=True)
            if p and t and p[0]['category_name'] == t[0]['category_name']
        )
        return hits / len(truths)


def stand_in_parts(trainer: TrainerLogic | None = None, f1: CountingF1 | None = None) -> DemoParts:
    return DemoParts(
        model_format='mocked',
        trainer_logic=lambda plan: trainer if trainer is not None else ScriptedLogic(epochs=2),
        detector_factory=lambda plan: UncertainFactory(),
        f1=f1 if f1 is not None else CountingF1(),
    )


class CriticalTrainer(ScriptedLogic):
    def train(self, run: TrainingRun) -> None:
        raise CriticalError('the stand-in cannot train')


# ---------------------------------------------------------------------- the real thing


@pytest.mark.slow
@pytest.mark.timeout(200)  # about 30 s alone on 2 cores; the margin is for a machine busy with other work
def test_quick_demo_as_a_process_trains_deploys_and_learns_from_the_outbox(tmp_path: Path) -> None:
    report_path = tmp_path / 'report.json'
    process = subprocess.Popen(
        [sys.executable, '-m', 'llnode.cli', 'demo', '--quick', '--report-json', str(report_path)],
        cwd=REPO,
        env={**os.environ, 'PYTHONUNBUFFERED': '1'},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate(timeout=10)
        pytest.fail(f'llnode demo --quick did not end within 180 s\nstdout:\n{stdout}\nstderr:\n{stderr}')
    assert process.returncode == 0, f'stdout:\n{stdout}\nstderr:\n{stderr}'
    report = json.loads(report_path.read_text())
    assert report['ok'] is True and report['failed_step'] is None and report['quick'] is True
    assert [s['name'] for s in report['steps']] == STEPS
    assert all(s['ok'] for s in report['steps'])
    first, second = report['trainings']
    assert first['model_version'] and second['model_version'] and first['model_version'] != second['model_version']
    assert first['f1_test'] > 0.3 and second['f1_test'] > 0.3, report['trainings']
    uploads = report['uploads']
    assert uploads['sent_to_detector'] == QUICK.field_images
    assert 0 < uploads['picked_by_filter'] <= QUICK.field_images
    assert uploads['arrived_at_loop'] == uploads['picked_by_filter'] == uploads['annotated']
    assert (
        second['train_image_count'] + second['test_image_count']
        > first['train_image_count'] + first['test_image_count']
    )
    assert 'every step worked' in stdout
    assert 'Traceback' not in stderr, stderr


# ---------------------------------------------------------------------- every step, with stand-ins (no torch)


def llnode_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith('llnode')]


def small_args(tmp_path: Path, *extra: str) -> list[str]:
    sizes = ['--loop-images', '8', '--field-images', '6', '--test-images', '4', '--min-f1', '0']
    return [*sizes, '--data', str(tmp_path / 'demo'), *extra]


def test_every_step_with_stand_ins_and_the_annotated_images_become_training_data(tmp_path: Path) -> None:
    f1 = CountingF1()
    out, err = io.StringIO(), io.StringIO()
    report_path = tmp_path / 'report.json'
    code = demo_main(
        small_args(tmp_path, '--report-json', str(report_path)),
        parts=stand_in_parts(f1=f1),
        timings=FAST,
        stdout=out,
        stderr=err,
    )
    assert code == EXIT_OK, err.getvalue()
    report = json.loads(report_path.read_text())
    assert report['ok'] and [s['name'] for s in report['steps']] == STEPS
    assert report['loop_url'].startswith('http://127.0.0.1:')
    assert f1.calls == [(4, 4), (4, 4)]
    first, second = report['trainings']
    assert second['training_number'] == first['training_number'] + 1
    assert (first['model_version'], second['model_version']) == ('1.3', '1.4')  # after the demo's 1.0-1.2
    uploads = report['uploads']
    assert uploads == {**uploads, 'sent_to_detector': 6, 'picked_by_filter': 6, 'arrived_at_loop': 6, 'annotated': 6}
    seen_by_second = second['train_image_count'] + second['test_image_count']
    assert seen_by_second == first['train_image_count'] + first['test_image_count'] + 6
    assert 'every step worked' in out.getvalue()
    assert '==> outbox' in err.getvalue() and 'picked images at the Loop: 6/6' in err.getvalue()
    assert 'Invalid session' not in err.getvalue()  # the Socket.IO goodbye race is not shown

    # what came back is in the Loop as a person would have left it: complete, with the true boxes
    store = Store(tmp_path / 'demo' / 'loop')
    try:
        returned = [i for b in store.upload_batches(ORGANIZATION, PROJECT) for i in b['image_ids']]
        assert len(returned) == 6
        items = store.images(ORGANIZATION, PROJECT, returned)
        truths = {
            json.dumps(true_annotations(i, SMALL.field_seed)['box_annotations'], sort_keys=True) for i in range(6)
        }
        for item in items:
            assert item['state'] == 'complete'
            boxes = [
                {k: b[k] for k in ('category_id', 'category_name', 'x', 'y', 'width', 'height')}
                for b in item['box_annotations']
            ]
            assert json.dumps(boxes, sort_keys=True) in truths
    finally:
        store.close()
    wait_for(lambda: not llnode_threads(), timeout=5, what=f'llnode threads to end: {llnode_threads()}')


def test_a_second_run_on_the_same_data_folder_goes_on_from_what_the_loop_has(tmp_path: Path) -> None:
    for run in (1, 2):
        err = io.StringIO()
        report_path = tmp_path / f'report-{run}.json'
        code = demo_main(
            small_args(tmp_path, '--report-json', str(report_path)),
            parts=stand_in_parts(),
            timings=FAST,
            stdout=io.StringIO(),
            stderr=err,
        )
        assert code == EXIT_OK, err.getvalue()
    report = json.loads(report_path.read_text())
    assert [t['model_version'] for t in report['trainings']] == ['1.5', '1.6']
    assert report['uploads']['arrived_at_loop'] == 6  # this run's images, not the first run's too


def test_a_failing_step_exits_1_and_names_it(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    report_path = tmp_path / 'report.json'
    code = demo_main(
        small_args(tmp_path, '--report-json', str(report_path)),
        parts=stand_in_parts(trainer=CriticalTrainer()),
        timings=FAST,
        stdout=out,
        stderr=err,
    )
    assert code == EXIT_FAILED
    report = json.loads(report_path.read_text())
    assert report['ok'] is False and report['failed_step'] == 'training-1'
    assert 'the stand-in cannot train' in report['error']
    assert [s['name'] for s in report['steps']] == ['loop', 'trainer', 'training-1']
    assert [s['ok'] for s in report['steps']] == [True, True, False]
    assert "step 'training-1' failed" in err.getvalue() and 'the stand-in cannot train' in err.getvalue()
    assert 'FAIL' in out.getvalue()
    wait_for(lambda: not llnode_threads(), timeout=5, what=f'llnode threads to end: {llnode_threads()}')


def test_a_loop_port_in_use_is_a_start_up_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(('127.0.0.1', 0))
        taken.listen()
        port = taken.getsockname()[1]
        report_path = tmp_path / 'report.json'
        out, err = io.StringIO(), io.StringIO()
        code = demo_main(
            small_args(tmp_path, '--port', str(port), '--report-json', str(report_path)),
            parts=stand_in_parts(),
            timings=FAST,
            stdout=out,
            stderr=err,
        )
    assert code == EXIT_USAGE and out.getvalue() == '' and not report_path.exists()
    assert err.getvalue() == (
        f'llnode demo: port {port} on 127.0.0.1 is in use: stop the other process or pick another port with --port\n'
    )


def test_a_model_below_the_f1_floor_fails_the_last_step(tmp_path: Path) -> None:
    parts = stand_in_parts()
    parts = DemoParts(parts.model_format, parts.trainer_logic, parts.detector_factory, lambda p, t: 0.25)
    report_path = tmp_path / 'report.json'
    code = demo_main(
        small_args(tmp_path, '--min-f1', '0.5', '--report-json', str(report_path)),
        parts=parts,
        timings=FAST,
        stdout=io.StringIO(),
        stderr=io.StringIO(),
    )
    assert code == EXIT_FAILED
    report = json.loads(report_path.read_text())
    assert report['failed_step'] == 'test-2' and 'below the floor 0.500' in report['error']
    assert report['trainings'][1]['f1_test'] == 0.25


def test_an_interrupt_stops_every_part_and_reports_the_step(tmp_path: Path) -> None:
    trainer = ScriptedLogic(forever=True)
    stopping = threading.Event()
    demo = ActiveLearningDemo(
        SMALL, stand_in_parts(trainer=trainer), tmp_path / 'demo', timings=FAST, stopping=stopping, stream=io.StringIO()
    )
    interrupter = threading.Thread(
        target=lambda: trainer.training.wait(20) and stopping.set(), name='test-interrupter', daemon=True
    )
    interrupter.start()
    report = demo.run()
    interrupter.join(5)
    assert report.interrupted and not report.ok
    assert report.failed_step == 'training-1' and report.steps[-1].detail == 'interrupted'
    wait_for(lambda: not llnode_threads(), timeout=5, what=f'llnode threads to end: {llnode_threads()}')


def test_sigint_to_the_command_stops_it_with_exit_130(tmp_path: Path) -> None:
    report_path = tmp_path / 'report.json'
    process = subprocess.Popen(
        [sys.executable, '-m', 'llnode.cli', 'demo', '--quick', '--report-json', str(report_path)],
        cwd=REPO,
        env={**os.environ, 'PYTHONUNBUFFERED': '1'},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        lines = []
        for line in process.stderr:
            lines.append(line)
            if line.startswith('==> training-1'):
                break
        process.send_signal(signal.SIGINT)
        stdout, rest = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert process.returncode == EXIT_INTERRUPTED, ''.join(lines) + rest
    report = json.loads(report_path.read_text())
    assert report['interrupted'] and report['failed_step'] == 'training-1'
    assert 'interrupted during step training-1' in stdout
    assert 'Traceback' not in rest, rest


# ---------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ('args', 'message'),
    [
        (['--epochs', '0'], 'epochs must be at least 1'),
        (['--loop-images', '2'], 'loop-images must be an integer >= 4'),
        (['--test-images', '0'], 'test-images must be an integer >= 1'),
        (['--min-f1', '1.5'], 'min-f1 must lie in [0, 1]'),
        (['--log-level', 'LOUD'], 'not a logging level'),
    ],
)
def test_bad_values_exit_2_with_a_clear_message(args: list[str], message: str) -> None:
    err = io.StringIO()
    assert demo_main(args, parts=stand_in_parts(), stdout=io.StringIO(), stderr=err) == EXIT_USAGE
    assert message in err.getvalue()


@pytest.mark.parametrize('port', ['70000', '-1', 'http'])
def test_a_bad_port_is_a_usage_error(port: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        demo_main(['--port', port])
    assert exit_info.value.code == EXIT_USAGE
    assert '--port' in capsys.readouterr().err


def test_data_and_report_paths_are_checked_before_anything_starts(tmp_path: Path) -> None:
    a_file = tmp_path / 'file'
    a_file.write_text('x')
    foreign = tmp_path / 'foreign'
    foreign.mkdir()
    (foreign / 'thesis.tex').write_text('precious')
    cases = [
        (['--data', str(a_file)], 'not a folder'),
        (['--data', str(foreign)], 'holds other files'),
        (['--report-json', str(tmp_path / 'missing' / 'r.json')], 'does not exist'),
        (['--report-json', str(tmp_path)], 'is a folder'),
    ]
    for args, message in cases:
        err = io.StringIO()
        assert demo_main(args, parts=stand_in_parts(), stdout=io.StringIO(), stderr=err) == EXIT_USAGE, args
        assert message in err.getvalue(), (args, err.getvalue())
    assert (foreign / 'thesis.tex').read_text() == 'precious' and sorted(foreign.iterdir()) == [foreign / 'thesis.tex']


def test_the_cli_lists_and_dispatches_the_demo(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main([]) == 0
    assert 'demo' in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        cli_main(['demo', '--help'])
    assert exit_info.value.code == 0
    assert '--quick' in capsys.readouterr().out


# ---------------------------------------------------------------------- the pieces


def test_plans_check_their_values() -> None:
    assert QUICK.field_seed == QUICK.seed + 1 and QUICK.test_seed == QUICK.seed + 2
    assert QUICK.with_changes(epochs=None, test_images=3) == DemoPlan(**{**QUICK.to_dict(), 'test_images': 3})
    for bad in ({'loop_images': 3}, {'epochs': 0}, {'serve_timeout': 0}, {'min_uncertain': 0.7}, {'seed': -1}):
        with pytest.raises(PlanError):
            DemoPlan(**bad)
    with pytest.raises(PlanError, match='unknown plan values'):
        QUICK.with_changes(speed=3)


def test_progress_on_a_terminal_redraws_one_line() -> None:
    stream = io.StringIO()
    line = ProgressLine(stream, tty=True, min_interval=0.0, width=10)
    line.update(0.5, 'training 1: running', 'epoch 3, F1 0.610')
    line.update(None, 'training 1: running', 'F1 0.7')  # unknown now: the bar keeps what it showed
    line.update(0.2, 'training 1: detecting', '')  # a new stage starts at 0: the bar does not go back
    line.done()
    line.update(None, 'next', '')  # a new line starts with an empty bar
    line.done()
    assert stream.getvalue() == (
        '\r[#####-----]  50% training 1: running: epoch 3, F1 0.610'
        '\r[#####-----]  50% training 1: running: F1 0.7'
        + ' ' * 11
        + '\r[#####-----]  50% training 1: detecting'
        + ' ' * 6
        + '\n\r[..........]   ?% next\n'
    )
    assert bar(1.5, 4) == '[####] 100%' and bar(0.0, 4) == '[----]   0%'


def test_progress_into_a_log_writes_stages_and_the_last_state_only() -> None:
    stream = io.StringIO()
    line = ProgressLine(stream, tty=False, plain_interval=3600)
    for i in range(1, 11):
        line.update(i / 10, 'test images', f'{i}/10')
    line.update(None, 'next stage')
    line.update(None, 'next stage')
    line.done()
    line.done()
    assert stream.getvalue() == 'test images: 1/10 (10%)\nnext stage (100%)\n'  # the bar never goes back
    line.update(0.5, 'again', '1/2')
    line.update(1.0, 'again', '2/2')
    line.done()
    assert stream.getvalue().endswith('again: 1/2 (50%)\nagain: 2/2 (100%)\n')


def test_the_report_names_the_failed_step_in_text_and_json(tmp_path: Path) -> None:
    report = DemoReport(quick=True, plan=QUICK.to_dict())
    report.steps = [StepRecord('loop', 'start', 0.5, True), StepRecord('training-1', 'train', 2.0, False, 'boom')]
    report.trainings = [TrainingRecord(4, model_version='1.3', f1_test=0.5)]
    report.failed_step, report.error = 'training-1', 'boom'
    report.finish()
    text = report.render()
    assert "step 'training-1' failed: boom" in text and 'FAIL' in text and 'model 1.3' in text
    report.write_json(tmp_path / 'r.json')
    data = json.loads((tmp_path / 'r.json').read_text())
    assert data['ok'] is False and data['failed_step'] == 'training-1' and data['trainings'][0]['f1_test'] == 0.5
    assert [s['ok'] for s in data['steps']] == [True, False] and '_started' not in data


def test_serve_ui_keeps_the_loop_and_its_web_ui_serving_after_the_report_until_stopped(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    stopping = threading.Event()
    codes: list[int] = []
    runner = threading.Thread(
        target=lambda: codes.append(
            demo_main(
                small_args(tmp_path, '--serve-ui'),
                parts=stand_in_parts(),
                timings=FAST,
                stdout=out,
                stderr=err,
                stopping=stopping,
            )
        ),
        name='test-demo-serve-ui',
    )
    runner.start()
    try:
        line = wait_for(
            lambda: re.search(r'web UI of the local Loop at (http://\S+/) \(log in as demo/demo\)', out.getvalue()),
            timeout=90,
            what='the demo to finish and print the UI address',
        )
        assert 'every step worked' in out.getvalue()
        assert f'web UI: {line.group(1)}' in err.getvalue()  # said at the start too
        url = line.group(1).rstrip('/')
        with requests.Session() as session:
            ui_login(session, url, 'demo', 'demo')
            grid = session.get(f'{url}/projects/{ORGANIZATION}/{PROJECT}/images?per_page=1000', timeout=10)
            assert grid.status_code == 200
            # the Loop's images, the ones that came back through the outbox included (8 + a few + 6)
            assert grid.text.count('class="thumb"') >= 8 + 6
            nodes = session.get(f'{url}/nodes', timeout=10)
            assert 'llnode demo trainer' in nodes.text  # the nodes reported, and are stopped now
    finally:
        stopping.set()
        runner.join(30)
    assert not runner.is_alive()
    assert codes == [EXIT_OK], err.getvalue()
    with pytest.raises(requests.ConnectionError):
        requests.get(f'{url}/login', timeout=2)


def test_the_training_fraction_only_grows_through_the_trainers_stages() -> None:
    shown = [
        training_fraction(state, progress)
        for state, _ in TRAINING_STAGES
        for progress in (None, 0.0, 0.5, 1.0)  # every stage reports its own progress from 0 again
    ]
    assert all(isinstance(f, float) for f in shown)
    assert shown == sorted(shown) and shown[0] == 0.0 and 0.99 <= shown[-1] <= 1.0  # type: ignore[type-var]
    assert training_fraction('idle', 0.5) is None and training_fraction('blocked', None) is None


def full_report() -> DemoReport:
    report = DemoReport(plan=FULL.to_dict())
    report.trainings = [
        TrainingRecord(4, 'id-1', '1.3', 0.8431, 0.9123, 9, 51, 13, 20.0),
        TrainingRecord(5, 'id-2', '1.4', 0.9812, 0.9634, 10, 136, 33, 25.0),
    ]
    report.uploads = UploadRecord(120, 85, 85, 85, 5)
    report.steps = [
        StepRecord('outbox', 'a camera sees new images: the detector sends the uncertain ones back', 12.25, True,
                   '85 of 120 images picked, 85 arrived in 5 batches'),
        StepRecord('deploy-2', 'deploy model 1.4 and wait until the detector serves it', 3.5, False,
                   'RuntimeError: timed out after 120 s waiting for the detector to serve 1.4 (a long reason here)'),
    ]  # fmt: skip
    report.failed_step, report.error = 'deploy-2', 'RuntimeError: timed out after 120 s waiting for the detector'
    return report


def test_the_report_fits_80_columns_and_states_the_f1_change() -> None:
    text = full_report().render()
    assert max(len(line) for line in text.splitlines()) <= 80, text
    changes = [line for line in text.splitlines() if 'F1 change' in line]
    assert changes == ['  F1 change: 0.843 -> 0.981 (+0.138) from model 1.3 to model 1.4']
    assert '  training 1 (Loop #4): model 1.3, F1 0.843 on the 60 test images' in text
    assert '  training 2 (Loop #5): model 1.4, F1 0.981 on the 60 test images' in text
    single = DemoReport(plan=FULL.to_dict(), trainings=[TrainingRecord(4, model_version='1.3', f1_test=0.5)])
    assert 'F1 change' not in single.render()


def test_progress_and_report_number_trainings_the_same_way(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = demo_main(small_args(tmp_path), parts=stand_in_parts(), timings=FAST, stdout=out, stderr=err)
    assert code == EXIT_OK, err.getvalue()
    progress_names = set(re.findall(r'training \d+ \(Loop #\d+\)', err.getvalue()))
    report_names = set(re.findall(r'training \d+ \(Loop #\d+\)', out.getvalue()))
    assert progress_names == report_names == {'training 1 (Loop #4)', 'training 2 (Loop #5)'}
    assert not re.search(r'training [45]\b', out.getvalue() + err.getvalue())  # no second numbering


def test_the_quick_plan_does_at_most_half_the_full_plans_work() -> None:
    """Training dominates the demo's time: image passes (epochs x images, the camera images counted as all coming
    back) must halve at least. Measured in ``bench/demo.py``; this guards the plans."""

    def image_passes(plan: DemoPlan) -> int:
        assert plan.epochs is not None
        return plan.epochs * plan.loop_images + plan.epochs * (plan.loop_images + plan.field_images)

    assert image_passes(QUICK) <= image_passes(FULL) / 2
    assert QUICK.test_images <= FULL.test_images / 2 and QUICK.field_images <= FULL.field_images / 2
