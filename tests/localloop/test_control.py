"""The control API (/control), the ``llnode control`` command, and the hosted Loop's test-suite routes."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator

import pytest
import requests

from llnode.localloop import LocalLoop
from llnode.localloop.command import control_main, control_parser
from tests.localloop.helpers import CONTROL, PROJECT, connect_node, login
from tests.polling import wait_for


def test_control_routes_need_login(local_loop: LocalLoop) -> None:
    for method, path in (
        ('GET', '/control/projects'),
        ('GET', '/control/nodes'),
        ('POST', '/control/users'),
        ('PUT', f'{CONTROL}/images/x'),
    ):
        response = requests.request(method, f'{local_loop.url}{path}', json={}, timeout=10)
        assert response.status_code == 401, path
        assert 'detail' in response.json()


def test_projects_categories_and_users(local_loop: LocalLoop) -> None:
    session = login(local_loop)
    created = session.post(
        f'{local_loop.url}/control/projects',
        json={
            'organization': 'acme',
            'project': 'weeds',
            'categories': [{'name': 'weed', 'type': 'box', 'color': '#00FF00'}, {'name': 'stem', 'type': 'point'}],
        },
        timeout=10,
    )
    assert created.status_code == 201, created.text
    assert [c['name'] for c in created.json()['categories']] == ['weed', 'stem']
    again = session.post(
        f'{local_loop.url}/control/projects', json={'organization': 'acme', 'project': 'weeds'}, timeout=10
    )
    assert again.status_code == 409
    bad_name = session.post(f'{local_loop.url}/control/projects', json={'project': '../etc'}, timeout=10)
    assert bad_name.status_code == 400
    category = session.post(
        f'{local_loop.url}/control/projects/acme/weeds/categories',
        json={'name': 'leaf', 'type': 'segmentation'},
        timeout=10,
    )
    assert category.status_code == 201
    data = session.get(f'{local_loop.url}/api/acme/projects/weeds/data', timeout=10).json()
    assert data == {'image_ids': [], 'categories': [*created.json()['categories'], category.json()]}
    assert session.post(f'{local_loop.url}/control/users', json={'username': 'bob', 'password': 'pw'}, timeout=10).ok
    login(local_loop, 'bob', 'pw')
    assert session.get(f'{local_loop.url}/control/users', timeout=10).json()['users'] == ['bob', 'u']


def test_a_person_annotates_an_uploaded_image(local_loop: LocalLoop) -> None:
    session = login(local_loop)
    image_id = local_loop.store.image_ids('zauberzeug', 'demo', 'inbox')[0]
    circle = next(c for c in local_loop.store.categories('zauberzeug', 'demo') if c['name'] == 'circle')
    box = {'category_id': circle['id'], 'x': 10, 'y': 20, 'width': 30, 'height': 40}
    changed = session.put(
        f'{local_loop.url}{CONTROL}/images/{image_id}',
        json={
            'state': 'complete',
            'set': 'test',
            'box_annotations': [box],
            'classification_annotation': {'category_id': circle['id']},
        },
        timeout=10,
    )
    assert changed.status_code == 200, changed.text
    item = changed.json()
    assert (item['state'], item['set']) == ('complete', 'test')
    assert [{k: b[k] for k in box} for b in item['box_annotations']] == [box]
    assert item['box_annotations'][0]['category_name'] == 'circle'
    assert item['classification_annotation']['category_name'] == 'circle'
    complete = session.get(f'{local_loop.url}{PROJECT}/data', params={'state': 'complete'}, timeout=10).json()
    assert image_id in complete['image_ids']
    listed = session.get(f'{local_loop.url}{CONTROL}/images', params={'state': 'complete'}, timeout=10).json()
    assert image_id in [i['id'] for i in listed['images']]
    by_name = session.put(
        f'{local_loop.url}{CONTROL}/images/{image_id}',
        json={'point_annotations': [{'category_name': 'purple point', 'x': 1.5, 'y': 2}]},
        timeout=10,
    )
    assert (
        by_name.json()['point_annotations'][0]['category_id']
        == local_loop.store.categories('zauberzeug', 'demo')[3]['id']
    )
    assert by_name.json()['box_annotations'] == item['box_annotations']  # kinds not named are kept
    for body in (
        {'state': 'done'},
        {'set': 'validation'},
        {'box_annotations': 'x'},
        {'tags': [1]},
        {'box_annotations': [{**box, 'x': 'left'}]},
        {'box_annotations': [{**box, 'category_id': 'nope'}]},
        {'point_annotations': [{'x': 1, 'y': 2}]},
        {'segmentation_annotations': [{'category_id': circle['id'], 'shape': {'points': 'x'}}]},
    ):
        response = session.put(f'{local_loop.url}{CONTROL}/images/{image_id}', json=body, timeout=10)
        assert response.status_code == 400, body
    assert session.put(f'{local_loop.url}{CONTROL}/images/nope', json={}, timeout=10).status_code == 404


def test_generator_and_project_deletion(local_loop: LocalLoop) -> None:
    session = login(local_loop)
    recipe = {
        'project_name': 'pytest_nodelib_general',
        'inbox': 1,
        'annotate': 2,
        'review': 3,
        'complete': 4,
        'image_style': 'beautiful',
        'box_categories': 2,
        'point_categories': 2,
        'segmentation_categories': 1,
        'thumbs': False,
        'tags': [],
        'trainings': 1,
        'box_detections': 3,
        'box_annotations': 0,
    }
    response = session.post(f'{local_loop.url}/api/zauberzeug/projects/generator', json=recipe, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json() == 'pytest_nodelib_general'
    base = f'{local_loop.url}/api/zauberzeug/projects/pytest_nodelib_general'
    data = session.get(f'{base}/data', timeout=10).json()
    assert len(data['image_ids']) == 10
    assert [c['type'] for c in data['categories']] == ['box', 'box', 'point', 'point', 'segmentation']
    assert len(session.get(f'{base}/data', params={'state': 'complete'}, timeout=10).json()['image_ids']) == 4
    model_id = session.get(f'{base}/trainings', timeout=10).json()['charts'][0]['data'][0]['model_id']
    assert requests.get(f'{base}/models/{model_id}/mocked/file', timeout=10).status_code == 200
    assert (
        session.post(f'{local_loop.url}/api/zauberzeug/projects/generator', json=recipe, timeout=10).status_code == 409
    )
    for bad in ({'inbox': 1}, {'project_name': 'x', 'inbox': -1}, {'project_name': 'x', 'tags': 'a'}, [1]):
        answer = session.post(f'{local_loop.url}/api/zauberzeug/projects/generator', json=bad, timeout=10)
        assert answer.status_code == 400, bad
    assert session.delete(base, params={'keep_images': 'true'}, timeout=10).status_code == 200
    assert session.get(f'{base}/data', timeout=10).status_code == 404
    assert session.delete(base, timeout=10).status_code == 404


def test_the_generator_honours_annotation_and_detection_counts(local_loop: LocalLoop) -> None:
    session = login(local_loop)
    generator = f'{local_loop.url}/api/zauberzeug/projects/generator'
    recipe = {'project_name': 'counted', 'inbox': 2, 'annotate': 1, 'review': 1, 'complete': 3}
    recipe |= {'box_categories': 2, 'trainings': 2, 'box_annotations': 2, 'box_detections': 3}
    assert session.post(generator, json=recipe, timeout=30).status_code == 200
    control = f'{local_loop.url}/control/projects/zauberzeug/counted'
    images = session.get(f'{control}/images', timeout=10).json()['images']
    assert sorted(i['state'] for i in images) == [
        'annotate',
        'complete',
        'complete',
        'complete',
        'inbox',
        'inbox',
        'review',
    ]
    version = session.get(f'{control}/models', timeout=10).json()['models'][-1]['version']
    for listed in images:
        item = session.get(f'{control}/images/{listed["id"]}', timeout=10).json()
        expected = 2 if item['state'] in ('complete', 'review') else 0
        assert len(item['box_annotations']) == expected, item
        (detections,) = item['detections']
        assert len(detections['box_detections']) == 3
        assert {d['model_name'] for d in detections['box_detections']} == {version}
        if expected:  # the first detections lie on the drawn, annotated boxes
            first = detections['box_detections'][0]
            assert {k: first[k] for k in ('x', 'y', 'width', 'height')} in [
                {k: a[k] for k in ('x', 'y', 'width', 'height')} for a in item['box_annotations']
            ]
    recipe = {'project_name': 'unannotated', 'complete': 2, 'box_annotations': 0}
    assert session.post(generator, json=recipe, timeout=30).status_code == 200
    control = f'{local_loop.url}/control/projects/zauberzeug/unannotated'
    for listed in session.get(f'{control}/images', timeout=10).json()['images']:
        item = session.get(f'{control}/images/{listed["id"]}', timeout=10).json()
        assert item['box_annotations'] == [] and item['detections'] == []
        image = session.get(
            f'{local_loop.url}/api/zauberzeug/projects/unannotated/images/{listed["id"]}/main', timeout=10
        )
        assert image.status_code == 200 and image.content.startswith(b'\xff\xd8')


def run_control(loop: LocalLoop, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = control_main(['--url', loop.url, '--user', 'u:p', *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_control_command(local_loop: LocalLoop, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_control(local_loop, capsys, 'deployment')
    assert code == 0
    assert json.loads(out)['target']['version'] == '1.1'
    code, out, _ = run_control(local_loop, capsys, 'images', '--state', 'inbox', '--ids')
    assert code == 0
    inbox = out.split()
    assert inbox == local_loop.store.image_ids('zauberzeug', 'demo', 'inbox')
    code, out, _ = run_control(
        local_loop,
        capsys,
        'set-image',
        inbox[0],
        '--state',
        'review',
        '--annotations',
        '{"point_annotations": [{"x": 5, "y": 6, "category_name": "purple point"}]}',
    )
    assert code == 0
    assert json.loads(out)['state'] == 'review'
    assert json.loads(out)['point_annotations'][0]['x'] == 5
    code, out, _ = run_control(local_loop, capsys, 'deploy', '--version', '1.2')
    assert (code, json.loads(out)['target']['version']) == (0, '1.2')
    code, out, _ = run_control(local_loop, capsys, '-p', 'fresh', 'create-project', '--category', 'weed:box:#00FF00')
    assert code == 0
    assert json.loads(out)['categories'][0]['color'] == '#00FF00'
    code, _, err = run_control(local_loop, capsys, 'begin-training')
    assert code == 1
    assert '409' in err and 'no trainer' in err
    code, _, err = run_control(local_loop, capsys, 'deploy', '--version', '7.7')
    assert code == 1 and '404' in err
    assert control_main(['--url', local_loop.url, '--user', 'u:wrong', 'nodes']) == 1
    assert 'login' in capsys.readouterr().err
    assert control_main(['--url', 'http://127.0.0.1:9', '--user', 'u:p', 'nodes']) == 1
    assert 'no answer' in capsys.readouterr().err


def test_control_without_a_user_refuses_to_guess_and_takes_what_the_loop_prints(
    local_loop: LocalLoop, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv('LOOP_USERNAME', raising=False)
    monkeypatch.delenv('LOOP_PASSWORD', raising=False)
    assert control_main(['--url', local_loop.url, 'nodes']) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('llnode control: no login given: pass --user NAME:PASSWORD')
    monkeypatch.setenv('LOOP_USERNAME', 'u')  # as `llnode loop` prints them
    monkeypatch.setenv('LOOP_PASSWORD', 'p')
    assert control_main(['--url', local_loop.url, 'nodes']) == 0
    assert 'nodes' in json.loads(capsys.readouterr().out)


def test_control_defaults_are_what_llnode_loop_uses() -> None:
    from llnode.localloop.command import loop_parser
    from llnode.localloop.generator import DEMO_ORGANIZATION, DEMO_PROJECT

    loop = loop_parser().parse_args([])
    control = control_parser().parse_args(['nodes'])
    assert control.url == f'http://{loop.host}:{loop.port}'
    assert (control.organization, control.project) == (DEMO_ORGANIZATION, DEMO_PROJECT)


def _options(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from ((f'{name} {n}', a) for n, a in _options(sub))
        elif not isinstance(action, argparse._HelpAction):
            yield '/'.join(action.option_strings) or action.dest, action


def test_every_option_of_every_llnode_command_has_help() -> None:
    from llnode.demo.command import demo_parser
    from llnode.localloop.command import loop_parser

    for parser in (control_parser(), loop_parser(), demo_parser()):
        missing = [name for name, action in _options(parser) if not action.help]
        assert missing == [], f'{parser.prog}: {missing}'


def test_stop_and_abort_pick_the_only_connected_trainer(
    local_loop: LocalLoop, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_control(local_loop, capsys, 'stop-training')
    assert code == 1 and '409' in err and 'no trainer' in err  # none connected yet
    calls: list[str] = []
    session = login(local_loop)
    client = connect_node(
        local_loop,
        'trainer',
        cookie=session.cookies['session'],
        handlers={
            'stop_training': lambda: calls.append('stop') or True,
            'abort_training': lambda: calls.append('abort'),
        },
    )
    try:
        wait_for(lambda: any(n['connected'] for n in local_loop.nodes()), what='the trainer to connect')
        code, out, err = run_control(local_loop, capsys, 'stop-training')
        assert code == 0, err
        assert json.loads(out)['event'] == 'stop_training' and json.loads(out)['ack'] is True
        code, out, err = run_control(local_loop, capsys, 'abort-training', '--ack-timeout', '5')
        assert code == 0, err
        assert calls == ['stop', 'abort']
        sid = client.get_sid()
        code, out, err = run_control(local_loop, capsys, 'stop-training', sid)
        assert code == 0 and calls == ['stop', 'abort', 'stop']
    finally:
        client.disconnect()
