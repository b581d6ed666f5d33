"""The detector's model management against the local Loop: deployment, version modes, failures, exclusive swaps.

Each test runs a real DetectorNode (started in process, short repeat interval) against a real LocalLoop; models are
downloaded over HTTP in the ``mocked`` format the demo project holds (1.0, 1.1, 1.2; the deployment target is 1.1).
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llnode.backoff import Backoff
from llnode.config import Settings
from llnode.detector import DetectorFactory, DetectorLogic, DetectorNode, VersionControlError
from llnode.detector.deployment import NotServing
from llnode.detector.model_store import RetryBackoff
from llnode.localloop import LocalLoop
from llnode.localloop.archives import build_model_zip
from llnode.node.errors import InsufficientStorage
from llnode.schema import BoxDetection, ImageMetadata, ModelInformation, OperationMode, OutboxMode, VersionMode
from tests.node.conftest import new_threads_gone
from tests.polling import wait_for

ORG, PROJECT = 'zauberzeug', 'demo'
IMAGE = np.zeros((8, 8, 3), np.uint8)


class VersionLogic(DetectorLogic):
    """Answers one box whose ``model_name`` says which model version served the request."""

    def evaluate(self, image: np.ndarray) -> ImageMetadata:
        return ImageMetadata(
            box_detections=[
                BoxDetection('thing', 0, 0, 1, 1, model_name=self.model_info.version, confidence=0.99, category_id='t')
            ]
        )


class ControlledFactory(DetectorFactory):
    """Builds VersionLogic; versions in ``broken`` fail to build, a build of ``hold`` waits for ``release``."""

    model_format = 'mocked'

    def __init__(self) -> None:
        super().__init__()
        self.broken: set[str] = set()
        self.builds: list[str] = []
        self.built_at: list[float] = []  # time.monotonic() of each build, as builds
        self.hold: str | None = None
        self.holding = threading.Event()
        self.release = threading.Event()

    def build(self, model_info: ModelInformation) -> DetectorLogic:
        self.builds.append(model_info.version)
        self.built_at.append(time.monotonic())
        if model_info.version == self.hold:
            self.holding.set()
            assert self.release.wait(20), 'the test never released the build'
        if model_info.version in self.broken:
            raise RuntimeError(f'cannot build {model_info.version}')
        return VersionLogic(model_info)


class NullOutbox:
    """The outbox plays no part in model management; this one keeps nothing."""

    def __init__(self, settings: Any) -> None:
        self._mode = OutboxMode.CONTINUOUS_UPLOAD

    def start(self) -> None:
        pass

    def close(self, timeout: float = 10.0) -> bool:
        return True

    def save(self, image: Any, metadata: ImageMetadata, *, priority: bool = False) -> str:
        return 'x'

    def enqueue(self, image: Any, metadata: ImageMetadata, *, priority: bool = False) -> bool:
        return True

    @property
    def mode(self) -> OutboxMode:
        return self._mode

    def set_mode(self, mode: OutboxMode | str, timeout: float = 30.0) -> bool:
        self._mode = OutboxMode(mode)
        return True

    def stats(self) -> dict[str, Any]:
        return {}


@pytest.fixture
def make_node(tmp_path: Path) -> Iterator[Callable[..., DetectorNode]]:
    """``make_node(loop_or_settings, factory=None, **kwargs)`` starts a DetectorNode; all are stopped at teardown."""
    nodes: list[DetectorNode] = []

    def make(loop: LocalLoop | None = None, factory: DetectorFactory | None = None, **kwargs: Any) -> DetectorNode:
        overrides = {'data_folder': tmp_path / 'node', 'sync_cycles': kwargs.pop('sync_cycles', 1000)}
        overrides.update(kwargs.pop('settings', {}))
        if loop is not None:
            settings = loop.settings(**overrides)
        else:
            from llnode.config import Settings

            settings = Settings(host='127.0.0.1:1', organization=ORG, project=PROJECT, **overrides)
        kwargs.setdefault('update_backoff', RetryBackoff(initial=0.2, maximum=0.5))
        node = DetectorNode(
            'model test',
            factory or ControlledFactory(),
            settings=settings,
            repeat_interval=0.05,
            outbox_factory=NullOutbox,
            relevance_filter=None,
            **kwargs,
        )
        nodes.append(node)
        return node.start()

    yield make
    for node in nodes:
        node.stop()


def serving(node: DetectorNode) -> str | None:
    """The version that answers a detection now (None when no model serves)."""
    try:
        return node.detect(IMAGE, autoupload='disabled').box_detections[0].model_name
    except NotServing:
        return None


def readiness(node: DetectorNode) -> str | None:
    """What ``GET /readyz`` would say: None when ready, else the reason."""
    try:
        return node.readiness_problem()
    except NotServing as e:
        return e.detail


def loop_status(loop: LocalLoop, node: DetectorNode) -> dict[str, Any] | None:
    for entry in loop.nodes():
        if entry['id'] == node.uuid:
            return dict(entry['status'])
    return None


def deploy(loop: LocalLoop, version: str) -> None:
    model = loop.store.model_by_version(ORG, PROJECT, version)
    loop.store.set_deployment_target(ORG, PROJECT, model['id'])


def add_model(loop: LocalLoop, version: str, formats: tuple[str, ...]) -> str:
    model = loop.store.create_model(ORG, PROJECT, version=version)
    for model_format in formats:
        add_format(loop, model['id'], version, model_format)
    return str(model['id'])


def add_format(loop: LocalLoop, model_id: str, version: str, model_format: str) -> None:
    zip_bytes = build_model_zip(
        [('weights.bin', b'\x00' * 16)],
        model_id=model_id,
        version=version,
        organization=ORG,
        project=PROJECT,
        model_format=model_format,
        host=None,
        categories=loop.store.categories(ORG, PROJECT),
    )
    loop.store.add_model_format(model_id, model_format, zip_bytes)


def seed_model(data_folder: Path, version: str) -> None:
    """A model folder and the ``current_model`` link, as an earlier run leaves them."""
    folder = data_folder / 'models' / version
    folder.mkdir(parents=True)
    info = {'id': f'seeded-{version}', 'organization': ORG, 'project': PROJECT, 'version': version, 'categories': []}
    (folder / 'model.json').write_text(json.dumps(info))
    os.symlink(f'models/{version}', data_folder / 'current_model')


# ------------------------------------------------------------------------------------------------ following the Loop


def test_downloads_builds_and_serves_the_deployed_model_and_reports_it(
    local_loop: LocalLoop, make_node: Callable[..., DetectorNode], tmp_path: Path
) -> None:
    node = make_node(local_loop)
    wait_for(lambda: serving(node) == '1.1', what='the deployed model 1.1 to serve')
    data = tmp_path / 'node'
    assert (data / 'models' / '1.1' / 'model.json').is_file()
    link = data / 'current_model'
    # the link follows the swap (ModelDeployment._record_current): the new model may answer a moment before it
    wait_for(lambda: link.is_symlink() and os.readlink(link) == 'models/1.1', what='current_model to follow the swap')
    assert readiness(node) is None
    status = wait_for(lambda: (s := loop_status(local_loop, node)) and s['current_model'] == '1.1' and s, what='status')
    assert status['target_model'] == '1.1'
    assert status['model_format'] == 'mocked'
    assert status['operation_mode'] == 'idle'
    assert status['errors'] == {}
    assert list(status) == [
        'uuid',
        'name',
        'state',
        'uptime',
        'model_format',
        'current_model',
        'target_model',
        'errors',
        'operation_mode',
        'node_version',
    ]

    deploy(local_loop, '1.2')
    wait_for(lambda: serving(node) == '1.2', what='the new deployment 1.2 to serve')
    # sync_cycles is 1000: only the sync after the swap can have told the Loop
    wait_for(lambda: (loop_status(local_loop, node) or {}).get('current_model') == '1.2', what='status after swap')
    assert node.model_versions().to_dict() == {
        'current_version': '1.2',
        'target_version': '1.2',
        'loop_version': '1.2',
        'local_versions': ['1.1', '1.2'],
        'version_control': 'follow_loop',
    }


def test_the_current_model_serves_at_start_without_any_loop(
    make_node: Callable[..., DetectorNode], tmp_path: Path
) -> None:
    seed_model(tmp_path / 'node', '1.0')
    node = make_node(None)  # the Loop address is unreachable
    assert node.models.current_version == '1.0'  # built in start(), before any cycle
    assert serving(node) == '1.0'
    assert node.about().model_info is not None
    assert node.about().model_info.model_root_path == str(tmp_path / 'node' / 'models' / '1.0')  # type: ignore[union-attr]


def test_a_broken_current_model_leaves_the_node_without_model_but_running(
    make_node: Callable[..., DetectorNode], tmp_path: Path
) -> None:
    seed_model(tmp_path / 'node', '1.0')
    factory = ControlledFactory()
    factory.broken.add('1.0')
    node = make_node(None, factory)
    assert node.running
    assert serving(node) is None
    assert readiness(node) == 'detector not yet initialized: Could not load model 1.0: cannot build 1.0'
    assert node.stats()['model']['update_error'] == 'Could not load model 1.0: cannot build 1.0'


# ------------------------------------------------------------------------------------------------ version modes


def test_pause_specific_version_and_back_to_follow_loop(
    local_loop: LocalLoop, make_node: Callable[..., DetectorNode]
) -> None:
    node = make_node(local_loop)
    wait_for(lambda: serving(node) == '1.1', what='1.1 to serve')

    node.set_version_mode('pause')
    deploy(local_loop, '1.2')
    wait_for(lambda: node.models.loop_target and node.models.loop_target.version == '1.2', what='the poll to see 1.2')
    cycles = node._repeat.cycles
    wait_for(lambda: node._repeat.cycles >= cycles + 5, what='five more cycles')
    assert serving(node) == '1.1'
    assert node.model_versions().version_control == 'pause'

    node.set_version_mode('1.0')
    assert node.models.version_mode == VersionMode.SPECIFIC_VERSION
    wait_for(lambda: serving(node) == '1.0', what='the specific version 1.0')
    assert node.about().target_model == '1.0'

    node.set_version_mode('follow_loop')
    wait_for(lambda: serving(node) == '1.2', what='following the Loop to 1.2 again')
    assert node.model_versions().local_versions == ['1.0', '1.1', '1.2']


def test_version_control_default_pause_downloads_nothing(
    local_loop: LocalLoop, make_node: Callable[..., DetectorNode], tmp_path: Path
) -> None:
    node = make_node(local_loop, settings={'version_control_default': 'pause'})
    wait_for(lambda: node.model_versions().loop_version == '1.1', what='the poll to see the deployment')
    assert node.model_versions().to_dict() == {
        'current_version': 'None',
        'target_version': 'None',
        'loop_version': '1.1',
        'local_versions': [],
        'version_control': 'pause',
    }
    assert not (tmp_path / 'node' / 'models' / '1.1').exists()


@pytest.mark.parametrize(
    ('text', 'message'),
    [('abc', 'Invalid version number'), ('', 'Invalid version number'), ('9.9', 'No Model with version 9.9')],
)
def test_a_version_request_that_cannot_be_followed_changes_nothing(
    local_loop: LocalLoop, make_node: Callable[..., DetectorNode], text: str, message: str
) -> None:
    node = make_node(local_loop)
    wait_for(lambda: serving(node) == '1.1', what='1.1 to serve')
    with pytest.raises(VersionControlError) as error:
        node.set_version_mode(text)
    assert error.value.detail == message
    assert error.value.status == 400
    assert node.models.version_mode == VersionMode.FOLLOW_LOOP  # quirk Q5 fixed: the mode stays as it was
    assert node.about().target_model == '1.1'


def test_offline_a_specific_version_that_is_installed_can_still_be_chosen(
    make_node: Callable[..., DetectorNode], tmp_path: Path
) -> None:
    seed_model(tmp_path / 'node', '1.0')
    folder = tmp_path / 'node' / 'models' / '2.0'
    folder.mkdir()
    (folder / 'model.json').write_text(
        json.dumps({'id': 'm2', 'organization': ORG, 'project': PROJECT, 'version': '2.0'})
    )
    node = make_node(None)
    node.set_version_mode('2.0')
    wait_for(lambda: serving(node) == '2.0', what='the installed version 2.0')
    with pytest.raises(VersionControlError):
        node.set_version_mode('3.0')  # neither reachable nor installed


def test_a_pinned_version_and_a_pause_survive_a_restart(
    local_loop: LocalLoop, make_node: Callable[..., DetectorNode], tmp_path: Path
) -> None:
    node = make_node(local_loop)
    wait_for(lambda: serving(node) == '1.1', what='1.1 to serve')
    node.set_version_mode('1.0')
    wait_for(lambda: serving(node) == '1.0', what='the pinned version 1.0')
    saved = json.loads((tmp_path / 'node' / 'version_control.json').read_text())
    assert saved['mode'] == 'specific_version' and saved['version'] == '1.0'
    node.stop()

    deploy(local_loop, '1.2')  # what a restarted node that forgot the pin would switch to
    node = make_node(local_loop)
    assert node.models.version_mode == VersionMode.SPECIFIC_VERSION
    assert serving(node) == '1.0'  # the current model, built at start
    wait_for(lambda: node.model_versions().loop_version == '1.2', what='the poll to see 1.2')
    cycles = node._repeat.cycles
    wait_for(lambda: node._repeat.cycles >= cycles + 5, what='five more cycles')
    assert serving(node) == '1.0' and '1.2' not in node.model_versions().local_versions

    node.set_version_mode('pause')
    node.stop()
    node = make_node(local_loop)
    assert node.model_versions().version_control == 'pause'
    node.set_version_mode('follow_loop')
    node.stop()
    node = make_node(local_loop, settings={'version_control_default': 'pause'})  # the saved choice wins
    assert node.models.version_mode == VersionMode.FOLLOW_LOOP
    wait_for(lambda: serving(node) == '1.2', what='following the Loop to 1.2')


def test_a_version_choice_that_cannot_be_saved_fails_and_changes_nothing(
    local_loop: LocalLoop, make_node: Callable[..., DetectorNode], monkeypatch: pytest.MonkeyPatch
) -> None:
    node = make_node(local_loop)
    wait_for(lambda: serving(node) == '1.1', what='1.1 to serve')

    def full_disk(*args: Any) -> None:
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr('llnode.detector.node.save_choice', full_disk)
    with pytest.raises(InsufficientStorage) as error:
        node.set_version_mode('pause')
    assert error.value.status == 507 and 'No space left on device' in error.value.detail
    assert node.models.version_mode == VersionMode.FOLLOW_LOOP


@pytest.mark.parametrize(
    'content',
    ['{not json', '{"mode": "sometimes"}', '{"mode": "specific_version", "version": "1.0"}', '[]'],
)
def test_a_saved_choice_that_cannot_be_read_is_reported_and_the_default_applies(
    make_node: Callable[..., DetectorNode], tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str
) -> None:
    folder = tmp_path / 'node'
    folder.mkdir()
    (folder / 'version_control.json').write_text(content)
    node = make_node(None, settings={'version_control_default': 'pause'})
    assert node.models.version_mode == VersionMode.PAUSE
    assert 'ignoring the saved version control' in caplog.text


# ------------------------------------------------------------------------------------------------ failures


@pytest.mark.parametrize('mode', ['follow_loop', 'specific_version'])
def test_a_failed_download_keeps_the_old_model_and_is_retried(
    local_loop: LocalLoop, make_node: Callable[..., DetectorNode], mode: str
) -> None:
    node = make_node(local_loop)
    wait_for(lambda: serving(node) == '1.1', what='1.1 to serve')
    model_id = add_model(local_loop, '1.3', ('other_format',))  # no "mocked" zip: the download answers 404
    if mode == 'follow_loop':
        deploy(local_loop, '1.3')
    else:
        node.set_version_mode('1.3')

    error = wait_for(lambda: node.models.errors().get('update_model'), what='the update error')
    assert error.startswith('Could not update model: ')
    assert serving(node) == '1.1'
    status = wait_for(lambda: (s := loop_status(local_loop, node)) and s['errors'] and s, what='error in the status')
    assert status['errors']['update_model'] == error
    assert status['current_model'] == '1.1'
    assert status['target_model'] == '1.3'
    assert not (local_loop.settings().data_folder.parent / 'node' / 'models' / '1.3').exists()

    add_format(local_loop, model_id, '1.3', 'mocked')  # the Loop can now serve it: the back-off retry gets it
    wait_for(lambda: serving(node) == '1.3', what='the retried update')
    assert node.models.errors() == {}
    wait_for(lambda: (loop_status(local_loop, node) or {}).get('errors') == {}, what='the error cleared in the status')


@pytest.mark.parametrize('exclusive', [False, True])
def test_a_failed_build_keeps_or_restores_the_old_model(
    local_loop: LocalLoop, make_node: Callable[..., DetectorNode], exclusive: bool
) -> None:
    factory = ControlledFactory()
    factory.broken.add('1.2')
    node = make_node(local_loop, factory, settings={'exclusive_model_build': exclusive})
    wait_for(lambda: serving(node) == '1.1', what='1.1 to serve')
    deploy(local_loop, '1.2')
    wait_for(lambda: factory.builds.count('1.2') >= 2, what='a failed build and its retry')
    # exclusive: between a failed build and the rebuild of 1.1 nothing serves, so poll for the old model
    wait_for(lambda: serving(node) == '1.1', what='the old model serving after the failed build')
    assert node.models.errors()['update_model'] == 'Could not update model: cannot build 1.2'
    assert os.readlink(node.store.link_path) == 'models/1.1'
    if exclusive:
        assert factory.builds.count('1.1') >= 2  # released for the exclusive build, then built again
    else:
        assert factory.builds.count('1.1') == 1
    assert node.running  # no process exit after two failed builds (the reference exits)

    factory.broken.clear()
    wait_for(lambda: serving(node) == '1.2', what='the retried build')


def test_failed_updates_back_off_exponentially_instead_of_retrying_every_cycle(
    local_loop: LocalLoop, make_node: Callable[..., DetectorNode]
) -> None:
    """The repeat cycle asks for an update every 0.05 s; a build that keeps failing is still tried only after
    0.2 s, 0.4 s, 0.8 s (less up to a quarter of jitter), not every cycle."""
    factory = ControlledFactory()
    factory.broken.add('1.1')
    node = make_node(local_loop, factory, update_backoff=RetryBackoff(policy=Backoff(base=0.2, cap=10)))
    wait_for(lambda: len(factory.built_at) >= 4, what='a failed build and three retries')
    gaps = [later - earlier for earlier, later in itertools.pairwise(factory.built_at[:4])]
    assert gaps[0] >= 0.14 and gaps[1] >= 0.29 and gaps[2] >= 0.59, gaps
    assert node.models.backoff.failures('1.1') >= 4
    assert node.models.errors()['update_model'] == 'Could not update model: cannot build 1.1'


def test_a_detector_backs_off_model_updates_from_5_s_to_300_s_by_default(tmp_path: Path) -> None:
    settings = Settings(host='127.0.0.1:1', organization=ORG, project=PROJECT, data_folder=tmp_path / 'node')
    node = DetectorNode('defaults', ControlledFactory(), settings=settings, outbox_factory=NullOutbox)
    assert node.models.backoff.policy == Backoff(base=5.0, cap=300.0)


@pytest.mark.parametrize('exclusive', [False, True])
def test_a_current_model_link_that_cannot_be_written_is_reported_and_written_later(
    local_loop: LocalLoop, make_node: Callable[..., DetectorNode], monkeypatch: pytest.MonkeyPatch, exclusive: bool
) -> None:
    node = make_node(local_loop, settings={'exclusive_model_build': exclusive})
    wait_for(lambda: serving(node) == '1.1', what='1.1 to serve')
    store = node.store
    activate = store.activate
    failures = [OSError(28, 'No space left on device')] * 3  # the first cycles after the swap fail too

    def failing_activate(version: str) -> None:
        if failures:
            raise failures.pop()
        activate(version)

    monkeypatch.setattr(store, 'activate', failing_activate)
    deploy(local_loop, '1.2')
    wait_for(lambda: serving(node) == '1.2', what='the new model to serve although its link failed')
    error = wait_for(lambda: node.models.errors().get('update_model'), what='the link error')
    assert error.startswith('Serving model 1.2, but could not make it the current model on disk: ')
    assert 'No space left on device' in error

    wait_for(lambda: os.readlink(store.link_path) == 'models/1.2', what='the link written on a later cycle')
    wait_for(lambda: node.models.errors() == {}, what='the error cleared')
    assert serving(node) == '1.2' and not failures


@pytest.mark.parametrize('exclusive', [False, True])
def test_during_a_build_the_old_model_serves_unless_exclusive(
    local_loop: LocalLoop, make_node: Callable[..., DetectorNode], exclusive: bool
) -> None:
    factory = ControlledFactory()
    node = make_node(local_loop, factory, settings={'exclusive_model_build': exclusive})
    wait_for(lambda: serving(node) == '1.1', what='1.1 to serve')
    factory.hold = '1.2'
    deploy(local_loop, '1.2')
    assert factory.holding.wait(10)
    try:
        if exclusive:
            with pytest.raises(NotServing, match=r'^updating model to version 1\.2$'):
                node.detect(IMAGE)
            assert node.models.updating_to == '1.2'
            assert readiness(node) == 'updating model to version 1.2'
        else:
            assert serving(node) == '1.1'
            assert node.models.updating_to is None
    finally:
        factory.release.set()
    wait_for(lambda: serving(node) == '1.2', what='1.2 after the build')


def test_requests_during_a_swap_all_get_an_answer(
    local_loop: LocalLoop, make_node: Callable[..., DetectorNode]
) -> None:
    node = make_node(local_loop)
    wait_for(lambda: serving(node) == '1.1', what='1.1 to serve')
    stop = threading.Event()
    answers: list[str] = []
    failures: list[BaseException] = []

    def client() -> None:
        while not stop.is_set():
            try:
                answers.append(node.detect(IMAGE, autoupload='disabled').box_detections[0].model_name)
            except BaseException as e:
                failures.append(e)

    threads = [threading.Thread(target=client, name=f'test-client-{n}') for n in range(4)]
    for thread in threads:
        thread.start()
    try:
        for version in ('1.2', '1.0', '1.1'):
            deploy(local_loop, version)
            wait_for(lambda v=version: serving(node) == v, what=f'{version} to serve')
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert failures == []
    assert {'1.0', '1.1', '1.2'} <= set(answers)


# ------------------------------------------------------------------------------------------------ operation mode


def test_detecting_mode_holds_updates_and_a_mode_change_is_synced_at_once(
    local_loop: LocalLoop, make_node: Callable[..., DetectorNode]
) -> None:
    node = make_node(local_loop)
    wait_for(lambda: serving(node) == '1.1', what='1.1 to serve')
    node.set_operation_mode('detecting')
    # sync_cycles is 1000: only the sync after the change can deliver it this soon
    wait_for(lambda: (loop_status(local_loop, node) or {}).get('operation_mode') == 'detecting', what='mode synced')
    deploy(local_loop, '1.2')
    cycles = node._repeat.cycles
    wait_for(lambda: node._repeat.cycles >= cycles + 5, what='five more cycles')
    assert serving(node) == '1.1'  # inference still works in every mode
    assert node.models.loop_target is not None
    assert node.models.loop_target.version == '1.1'  # no deployment polls while detecting

    node.set_operation_mode(OperationMode.IDLE)
    wait_for(lambda: serving(node) == '1.2', what='the update after going idle')


def test_status_is_synced_every_sync_cycles(local_loop: LocalLoop, make_node: Callable[..., DetectorNode]) -> None:
    node = make_node(local_loop, sync_cycles=2)
    wait_for(lambda: serving(node) == '1.1', what='1.1 to serve')
    first = wait_for(lambda: (s := loop_status(local_loop, node)) and s['uptime'] >= 1 and s, what='a sync after 1 s')
    wait_for(lambda: loop_status(local_loop, node)['uptime'] > first['uptime'], timeout=5, what='a later periodic sync')  # type: ignore[index]


def test_stop_ends_every_detector_thread(local_loop: LocalLoop, make_node: Callable[..., DetectorNode]) -> None:
    before = set(threading.enumerate())
    node = make_node(local_loop)
    wait_for(lambda: serving(node) == '1.1', what='1.1 to serve')
    names = {t.name for t in threading.enumerate()} - {t.name for t in before}
    assert any(name.startswith('llnode-model-updater-') for name in names)
    assert any(name.startswith('llnode-status-') for name in names)
    assert any(name.startswith('llnode-inference-') for name in names)
    assert node.stop()
    new_threads_gone(before, prefix='llnode-', ignore='llnode-localloop')
