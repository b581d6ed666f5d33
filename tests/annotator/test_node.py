"""The annotator node against the local Loop over a real Socket.IO link (loop-protocol §3.6, reference §5, §7.5):
events from the Loop answered in the ack envelope, histories per frontend taken in turns, Escape and logout,
images fetched once, annotations stored in the Loop, bad input refused without harm, the status heartbeat."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import requests

from llnode import EXIT_NEEDS_RESTART, NodeNeedsRestartError
from llnode.annotator import AnnotatorLogic, AnnotatorNode
from llnode.localloop import LocalLoop
from llnode.loop.errors import LoopConnectionError
from llnode.loop.http import LoopClient
from llnode.schema import ToolOutput, UserInput
from tests.annotator.support import (
    ORGANIZATION,
    PROJECT,
    RecordingLogic,
    category,
    demo_image,
    ok,
    user_input,
)
from tests.conftest import SMALL_DEMO_IMAGES
from tests.linked_nodes import wait_connected
from tests.node.conftest import new_threads_gone
from tests.polling import wait_for


def send(loop: LocalLoop, node: AnnotatorNode, *args: Any, event: str = 'handle_user_input') -> Any:
    return loop.send(node.uuid, event, *args, timeout=15)


def stored_segmentations(loop: LocalLoop, image_id: str) -> list[dict[str, Any]]:
    return loop.store.image(ORGANIZATION, PROJECT, image_id)['segmentation_annotations']


def test_an_annotation_from_mouse_events_is_stored_in_the_loop(
    local_loop: LocalLoop, make_annotator: Callable[..., AnnotatorNode]
) -> None:
    logic = RecordingLogic()
    node = make_annotator(local_loop, logic)
    image, cat = demo_image(local_loop), category(local_loop)

    assert send(local_loop, node, user_input('f1', 'left_mouse_down', image['id'], cat)) == ok('<text>1</text>')
    assert send(local_loop, node, user_input('f1', 'mouse_move', image['id'], cat)) == ok('<text>2</text>')
    assert stored_segmentations(local_loop, image['id']) == []
    assert send(local_loop, node, user_input('f1', 'left_mouse_up', image['id'], cat)) == ok('<text>3</text>')

    stored = stored_segmentations(local_loop, image['id'])
    assert stored == [
        {
            'id': 'seg-f1-3',
            'category_id': cat['id'],
            'shape': {'points': [{'x': 1, 'y': 2}, {'x': 30, 'y': 2}, {'x': 30, 'y': 40}]},
        }
    ]
    path = node.settings.data_folder / ORGANIZATION / PROJECT / 'images' / f'{image["id"]}.jpg'
    assert path.read_bytes() == local_loop.store.image_jpeg(ORGANIZATION, PROJECT, image['id'])
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp files left
    assert node.images.downloads == 1  # fetched for the first event only


def test_histories_are_kept_per_frontend_and_created_once(
    local_loop: LocalLoop, make_annotator: Callable[..., AnnotatorNode]
) -> None:
    logic = RecordingLogic()
    node = make_annotator(local_loop, logic)
    image, cat = demo_image(local_loop), category(local_loop)

    def event(frontend: str, kind: str = 'mouse_move', **extra: Any) -> Any:
        return send(local_loop, node, user_input(frontend, kind, image['id'], cat, **extra))

    assert [event('a'), event('b'), event('a'), event('a'), event('b')] == [
        ok('<text>1</text>'),
        ok('<text>1</text>'),
        ok('<text>2</text>'),
        ok('<text>3</text>'),
        ok('<text>2</text>'),
    ]
    assert logic.histories_created == 2  # the reference made one per event
    assert sorted(node.sessions.frontend_ids()) == ['a', 'b']

    # Escape resets that frontend's history only, without asking the tool.
    runs = len(logic.seen)
    assert event('a', 'key_up', key_up='Escape') == ok('')
    assert len(logic.seen) == runs
    assert event('a') == ok('<text>1</text>')
    assert event('b') == ok('<text>3</text>')
    assert logic.histories_created == 3


def test_user_logout_drops_the_history_and_answers_the_tools_verdict(
    local_loop: LocalLoop, make_annotator: Callable[..., AnnotatorNode]
) -> None:
    logic = RecordingLogic()
    node = make_annotator(local_loop, logic)
    image, cat = demo_image(local_loop), category(local_loop)
    send(local_loop, node, user_input('a', 'mouse_move', image['id'], cat))
    send(local_loop, node, user_input('a', 'mouse_move', image['id'], cat))

    assert send(local_loop, node, 'a', event='user_logout') == ok()
    assert logic.logged_out == ['a']
    assert node.sessions.frontend_ids() == []
    assert send(local_loop, node, user_input('a', 'mouse_move', image['id'], cat)) == ok('<text>1</text>')

    logic.logout_answer = False
    assert send(local_loop, node, 'a', event='user_logout') == {'success': False, 'error_msg': None, 'payload': None}
    assert send(local_loop, node, 'never-seen', event='user_logout')['success'] is False
    assert logic.logged_out == ['a', 'a', 'never-seen']


def test_stats_count_the_frontends_with_a_history(
    local_loop: LocalLoop, make_annotator: Callable[..., AnnotatorNode]
) -> None:
    node = make_annotator(local_loop, RecordingLogic())
    client = node.flask_app.test_client()
    stats = client.get('/stats').get_json()
    assert (stats['node_type'], stats['annotator']) == ('annotation_node', {'frontends': 0})
    assert stats['loop'] == {'connected': True, 'last_error': None, 'problem': None}
    image, cat = demo_image(local_loop), category(local_loop)
    for frontend in ('a', 'b', 'a'):
        send(local_loop, node, user_input(frontend, 'mouse_move', image['id'], cat))
    assert client.get('/stats').get_json()['annotator'] == {'frontends': 2}
    assert send(local_loop, node, 'a', event='user_logout') == ok()
    response = client.get('/stats')
    assert response.status_code == 200 and response.get_json()['annotator'] == {'frontends': 1}


def test_one_frontends_events_reach_the_tool_in_the_order_the_loop_sent_them(
    make_local_loop: Callable[..., LocalLoop], make_annotator: Callable[..., AnnotatorNode]
) -> None:
    # WebSocket: the events go back to back (engineio's long-polling client takes at most 16 packets per answer).
    loop = make_local_loop(demo=True, demo_images=SMALL_DEMO_IMAGES, websocket=True)
    logic = RecordingLogic(thread_safe=True)
    logic.gate, logic.gate_x = threading.Event(), 0
    node = make_annotator(loop, logic)
    image, cat = demo_image(loop), category(loop)
    sid = loop.hub.resolve(node.uuid)  # type: ignore[union-attr]
    acks: dict[tuple[str, int], Any] = {}

    def emit(event: str, frontend: str, x: int) -> None:
        def on_ack(*answer: Any) -> None:
            acks[(frontend, x)] = answer[0] if answer else None

        data = user_input(frontend, 'mouse_move', image['id'], cat, x=x) if event == 'handle_user_input' else frontend
        loop.sio.emit(event, data, to=sid, callback=on_ack)

    # Frontend a: 20 inputs with a logout in the middle, the first held in the tool; frontend b in between.
    for x in range(20):
        if x == 10:
            emit('user_logout', 'a', -1)
        emit('handle_user_input', 'a', x)
        if x % 2:
            emit('handle_user_input', 'b', 100 + x)
    assert logic.entered.wait(10), 'the first event never reached the tool'
    b_inputs = [100 + x for x in range(1, 20, 2)]
    wait_for(lambda: all(('b', x) in acks for x in b_inputs), what="frontend b's answers beside the held event")
    assert not [key for key in acks if key[0] == 'a']  # all of a's events wait behind the held one
    logic.gate.set()
    wait_for(lambda: len(acks) == 31, what='every ack')

    assert [x for frontend, _, x in logic.seen if frontend == 'a'] == list(range(20))
    assert logic.logged_out == ['a']
    # The logout came between inputs 9 and 10: the history counts 1-10 before it and starts afresh after it.
    assert [acks[('a', x)] for x in range(20)] == [ok(f'<text>{n}</text>') for n in [*range(1, 11), *range(1, 11)]]
    assert acks[('a', -1)] == ok()
    assert [acks[('b', x)] for x in b_inputs] == [ok(f'<text>{n}</text>') for n in range(1, 11)]
    assert logic.most_active['a'] == 1


@pytest.mark.parametrize('thread_safe', [True, False])
def test_other_frontends_run_beside_a_busy_one_only_when_the_tool_is_thread_safe(
    local_loop: LocalLoop, make_annotator: Callable[..., AnnotatorNode], thread_safe: bool
) -> None:
    logic = RecordingLogic(thread_safe=thread_safe)
    logic.gate, logic.gate_x = threading.Event(), 7
    node = make_annotator(local_loop, logic)
    image, cat = demo_image(local_loop), category(local_loop)
    held: list[Any] = []
    blocker = threading.Thread(
        target=lambda: held.append(send(local_loop, node, user_input('a', 'mouse_move', image['id'], cat, x=7))),
        name='test-held-event',
    )
    blocker.start()
    try:
        assert logic.entered.wait(10)
        other: list[Any] = []
        second = threading.Thread(
            target=lambda: other.append(send(local_loop, node, user_input('b', 'mouse_move', image['id'], cat))),
            name='test-other-frontend',
        )
        second.start()
        if thread_safe:
            second.join(10)
            assert other == [ok('<text>1</text>')]  # answered while frontend a's event is still in the tool
        else:
            # A negative, so a bounded wait: b is not answered while a's event holds the tool.
            second.join(0.5)
            assert other == []
            assert second.is_alive()
        logic.gate.set()
        second.join(10)
        assert other == [ok('<text>1</text>')]
    finally:
        logic.gate.set()
        blocker.join(10)
    assert held == [ok('<text>1</text>')]


def test_an_image_is_downloaded_once_for_concurrent_events(
    local_loop: LocalLoop, make_annotator: Callable[..., AnnotatorNode]
) -> None:
    fetched: list[str] = []
    release = threading.Event()

    class SlowImageSession(requests.Session):
        """Counts image downloads and holds each until the test lets it go (so that they would overlap)."""

        def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
            if request.method == 'GET' and str(request.url).endswith('/main'):
                fetched.append(str(request.url))
                release.wait(10)
            return super().send(request, **kwargs)

    logic = RecordingLogic(thread_safe=True)
    node = make_annotator(
        local_loop, logic, loop_client_factory=lambda settings: LoopClient(settings, session=SlowImageSession())
    )
    image, cat = demo_image(local_loop, 3), category(local_loop)
    answers: list[Any] = []
    senders = [
        threading.Thread(
            target=lambda f=frontend: answers.append(
                send(local_loop, node, user_input(f, 'mouse_move', image['id'], cat))
            ),
            name=f'test-sender-{frontend}',
        )
        for frontend in ('a', 'b', 'c')
    ]
    for sender in senders:
        sender.start()
    wait_for(lambda: fetched, what='the first download')
    path = node.image_path(ORGANIZATION, PROJECT, image['id'])
    wait_for(lambda: node.images.fetching(path) == 3, what='all three events to ask for the image')
    release.set()
    for sender in senders:
        sender.join(10)
    assert answers == [ok('<text>1</text>')] * 3
    assert len(fetched) == 1
    assert node.images.downloads == 1


def test_bad_input_is_refused_with_a_reason_and_the_link_stays_usable(
    local_loop: LocalLoop, make_annotator: Callable[..., AnnotatorNode]
) -> None:
    logic = RecordingLogic()
    node = make_annotator(local_loop, logic)
    image, cat = demo_image(local_loop), category(local_loop)
    good = user_input('a', 'mouse_move', image['id'], cat)
    assert send(local_loop, node, good) == ok('<text>1</text>')

    def refused(*args: Any) -> str:
        answer = send(local_loop, node, *args)
        assert answer['success'] is False and answer['payload'] is None, answer
        return str(answer['error_msg'])

    assert refused({'frontend_id': 'a'}) == 'missing value for field "data"'
    assert 'data.event_type' in refused({**good, 'data': {**good['data'], 'event_type': 'double_click'}})
    assert 'data.coordinate.x' in refused({**good, 'data': {**good['data'], 'coordinate': {'x': 'left', 'y': 1}}})
    assert 'expected an object' in refused('not a dict')
    assert 'one argument' in refused(good, good)
    assert 'organization' in refused(
        {**good, 'data': {**good['data'], 'context': {'organization': '..', 'project': PROJECT}}}
    )
    assert 'image_uuid' in refused({**good, 'data': {**good['data'], 'image_uuid': '../../etc'}})
    unknown = refused(user_input('a', 'mouse_move', '00000000-0000-4000-8000-000000000000', cat))
    assert '404' in unknown, unknown
    assert 'one argument' in str(send(local_loop, node, event='user_logout')['error_msg'])
    assert 'frontend id' in str(send(local_loop, node, 42, event='user_logout')['error_msg'])

    # None of that reached the tool or touched frontend a's history, and the link is still up.
    assert len(logic.seen) == 1
    assert send(local_loop, node, good) == ok('<text>2</text>')
    assert node.loop_socket is not None and node.loop_socket.connected


def test_a_failing_tool_answers_its_error_and_starts_the_frontend_afresh(
    local_loop: LocalLoop, make_annotator: Callable[..., AnnotatorNode]
) -> None:
    logic = RecordingLogic()
    node = make_annotator(local_loop, logic)
    image, cat = demo_image(local_loop), category(local_loop)
    event = user_input('a', 'mouse_move', image['id'], cat)
    send(local_loop, node, event)
    send(local_loop, node, event)

    logic.fail_with = RuntimeError('the tool broke')
    assert send(local_loop, node, event) == {'success': False, 'error_msg': 'the tool broke', 'payload': None}
    logic.fail_with = None
    assert send(local_loop, node, event) == ok('<text>1</text>')  # the history was reset


def test_a_tool_that_needs_a_fresh_process_fails_the_event_and_asks_for_a_restart(
    local_loop: LocalLoop, make_annotator: Callable[..., AnnotatorNode]
) -> None:
    logic = RecordingLogic()
    node = make_annotator(local_loop, logic)
    image, cat = demo_image(local_loop), category(local_loop)
    logic.fail_with = NodeNeedsRestartError('No CUDA GPUs are available')
    answer = send(local_loop, node, user_input('a', 'mouse_move', image['id'], cat))
    assert answer == {'success': False, 'error_msg': 'No CUDA GPUs are available', 'payload': None}
    assert node.exit_code == EXIT_NEEDS_RESTART


def test_a_tool_answering_the_wrong_type_is_reported(
    local_loop: LocalLoop, make_annotator: Callable[..., AnnotatorNode]
) -> None:
    class WrongTool(AnnotatorLogic):
        def handle_user_input(self, user_input: UserInput, history: Any) -> ToolOutput:
            return '<svg/>'  # type: ignore[return-value]

    node = make_annotator(local_loop, WrongTool())
    image, cat = demo_image(local_loop), category(local_loop)
    answer = send(local_loop, node, user_input('a', 'mouse_move', image['id'], cat))
    assert answer['success'] is False
    assert 'must return a ToolOutput, got str' in answer['error_msg']


def test_an_annotation_the_loop_refuses_is_reported_to_the_frontend(
    local_loop: LocalLoop, make_annotator: Callable[..., AnnotatorNode]
) -> None:
    logic = RecordingLogic()
    logic.annotation_image = '00000000-0000-4000-8000-000000000000'  # an image the Loop does not have
    node = make_annotator(local_loop, logic)
    image, cat = demo_image(local_loop), category(local_loop)
    answer = send(local_loop, node, user_input('a', 'left_mouse_up', image['id'], cat))
    assert answer['success'] is False
    assert answer['error_msg'].startswith('the Loop refused the annotation: image 00000000-')
    assert node.loop_socket is not None and node.loop_socket.connected


def test_the_loop_records_status_with_the_real_uptime_and_the_declared_capabilities(
    local_loop: LocalLoop, make_annotator: Callable[..., AnnotatorNode]
) -> None:
    node = make_annotator(local_loop, RecordingLogic(), name='status annotator')

    def status() -> dict[str, Any]:
        record = local_loop.store.node(node.uuid)
        assert record is not None and record['node_type'] == 'annotation_node'
        return record['status']

    first = status()
    assert first == {
        'id': node.uuid,
        'name': 'status annotator',
        'state': 'online',
        'uptime': first['uptime'],
        'errors': {},
        'capabilities': ['segmentation', 'polygon'],
    }
    assert first['uptime'] in (0, 1)
    wait_for(lambda: status()['uptime'] >= first['uptime'] + 1, timeout=5, what='the reported uptime to grow')
    assert status()['uptime'] <= node.uptime


def test_events_while_the_link_is_down_fail_and_the_node_reconnects(
    local_loop: LocalLoop, make_annotator: Callable[..., AnnotatorNode]
) -> None:
    node = make_annotator(local_loop, RecordingLogic())
    node.mute()  # PUT /socketio off: disconnected, no reconnect until unmuted
    image, cat = demo_image(local_loop), category(local_loop)
    with pytest.raises(LoopConnectionError, match='not connected to the Loop'):
        node.handle_user_input(user_input('a', 'mouse_move', image['id'], cat))
    node.unmute()
    wait_connected(local_loop, node)
    assert send(local_loop, node, user_input('a', 'mouse_move', image['id'], cat)) == ok('<text>1</text>')


def test_the_constructor_refuses_what_it_cannot_use(local_loop: LocalLoop) -> None:
    settings = local_loop.settings()
    with pytest.raises(TypeError, match='AnnotatorLogic'):
        AnnotatorNode('a', object(), settings=settings)  # type: ignore[arg-type]

    class NoCapabilities(RecordingLogic):
        capabilities = 'segmentation'  # type: ignore[assignment]  # a string, not a list of strings

    with pytest.raises(TypeError, match='capabilities must be a list of non-empty strings'):
        AnnotatorNode('a', NoCapabilities(), settings=settings)
    logic = RecordingLogic()
    node = AnnotatorNode('a', logic, settings=settings)
    assert logic.node is node
    with pytest.raises(ValueError, match='already runs in'):
        AnnotatorNode('b', logic, settings=settings)
    with pytest.raises(ValueError, match='max_pending'):
        AnnotatorNode('c', RecordingLogic(), settings=settings, max_pending_events=0)


def test_stopping_the_node_ends_waiting_events_at_once(
    local_loop: LocalLoop, make_annotator: Callable[..., AnnotatorNode]
) -> None:
    logic = RecordingLogic()
    logic.gate, logic.gate_x = threading.Event(), 0
    node = make_annotator(local_loop, logic)
    image, cat = demo_image(local_loop), category(local_loop)
    errors: list[BaseException] = []

    def handle(x: int) -> None:
        try:
            node.handle_user_input(user_input('a', 'mouse_move', image['id'], cat, x=x))
        except BaseException as e:
            errors.append(e)

    first = threading.Thread(target=handle, args=(0,), name='test-first')
    first.start()
    assert logic.entered.wait(10)
    waiting = threading.Thread(target=handle, args=(1,), name='test-waiting')
    waiting.start()
    wait_for(lambda: node.sessions.queued('a') == 2, what='the second event to wait')
    stopper = threading.Thread(target=node.stop, name='test-stop')
    stopper.start()
    waiting.join(5)
    assert not waiting.is_alive()
    assert [type(e).__name__ for e in errors] == ['SessionsClosed']
    logic.gate.set()
    first.join(10)
    stopper.join(15)


def test_stop_ends_every_thread_the_node_started(
    local_loop: LocalLoop, make_annotator: Callable[..., AnnotatorNode]
) -> None:
    before = set(threading.enumerate())
    node = make_annotator(local_loop, RecordingLogic())
    image, cat = demo_image(local_loop), category(local_loop)
    assert send(local_loop, node, user_input('a', 'mouse_move', image['id'], cat)) == ok('<text>1</text>')
    assert any(t.name.startswith('llnode-') for t in threading.enumerate() if t not in before)
    assert node.stop()
    new_threads_gone(before, prefix='llnode-')
