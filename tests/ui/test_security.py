"""The web UI without a browser: login redirects, session lifetime, CSRF refusals, escaping of names and tags,
and nothing served from outside the package's static folder or the data folder."""

from __future__ import annotations

import http.client
import re
from collections.abc import Callable
from urllib.parse import urlsplit

import requests

from llnode.localloop import LocalLoop
from tests.polling import wait_for
from tests.ui.conftest import ORGANIZATION, PROJECT, ui_login

PROJECT_PATH = f'/projects/{ORGANIZATION}/{PROJECT}'
PAGES = [
    '/',
    PROJECT_PATH,
    f'{PROJECT_PATH}/images',
    f'{PROJECT_PATH}/trainings',
    f'{PROJECT_PATH}/models',
    '/nodes',
]
EVIL = '<script>alert("x")</script>'


def raw_get(url: str, path: str, cookie: str | None = None) -> tuple[int, bytes]:
    """GET ``path`` exactly as written (no client-side normalisation of ``..``)."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or '', parts.port, timeout=10)
    try:
        connection.request('GET', path, headers={'Cookie': cookie} if cookie else {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_every_page_redirects_to_login_and_actions_answer_401(ui_loop: LocalLoop) -> None:
    image_id = ui_loop.store.image_ids(ORGANIZATION, PROJECT)[0]
    for path in [*PAGES, f'{PROJECT_PATH}/images/{image_id}', f'{PROJECT_PATH}/images/{image_id}/thumb']:
        answer = requests.get(ui_loop.url + path, allow_redirects=False, timeout=10)
        assert answer.status_code == 302, path
        assert answer.headers['Location'].startswith('/login?next=' + path.split('?')[0][:1]), path
    answer = requests.post(f'{ui_loop.url}{PROJECT_PATH}/images/{image_id}', json={'state': 'trash'}, timeout=10)
    assert answer.status_code == 401
    assert 'log in' in answer.json()['detail']
    assert ui_loop.store.image(ORGANIZATION, PROJECT, image_id)['state'] != 'trash'


def test_login_then_every_page_serves_and_the_api_accepts_the_same_cookie(
    ui_loop: LocalLoop, ui_session: requests.Session
) -> None:
    for path in PAGES:
        assert ui_session.get(ui_loop.url + path, timeout=10).status_code == 200, path
    # the UI's login is the API's login (one cookie)
    assert ui_session.get(f'{ui_loop.url}/control/projects', timeout=10).status_code == 200
    # and the API's login opens the UI
    with requests.Session() as api:
        api.post(f'{ui_loop.url}/api/login', data={'username': 'u', 'password': 'p'}, timeout=10).raise_for_status()
        assert api.get(f'{ui_loop.url}/nodes', allow_redirects=False, timeout=10).status_code == 200


def test_a_wrong_password_or_a_forged_login_form_is_refused(ui_loop: LocalLoop) -> None:
    with requests.Session() as session:
        answer = ui_login(session, ui_loop.url, password='wrong')
        assert answer.status_code == 401
        assert 'invalid username or password' in answer.text
        # a login form posted from elsewhere has no login token cookie
        answer = requests.post(
            f'{ui_loop.url}/login', data={'username': 'u', 'password': 'p', 'csrf_token': 'x'}, timeout=10
        )
        assert answer.status_code == 401
        assert 'session' not in answer.cookies


def test_login_goes_back_only_to_a_path_of_this_server(ui_loop: LocalLoop) -> None:
    for target, expected in (('//evil.example/x', '/'), ('https://evil.example/', '/'), ('/nodes', '/nodes')):
        with requests.Session() as session:
            form = session.get(f'{ui_loop.url}/login', timeout=10)
            token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
            assert token is not None
            answer = session.post(
                f'{ui_loop.url}/login',
                data={'username': 'u', 'password': 'p', 'csrf_token': token.group(1), 'next': target},
                allow_redirects=False,
                timeout=10,
            )
            assert answer.status_code == 302
            assert answer.headers['Location'] == expected, target


def test_state_changing_requests_need_the_csrf_token(ui_loop: LocalLoop, ui_session: requests.Session) -> None:
    image_id = ui_loop.store.image_ids(ORGANIZATION, PROJECT, 'inbox')[0]
    url = f'{ui_loop.url}{PROJECT_PATH}/images/{image_id}'
    for headers in ({}, {'X-CSRF-Token': 'forged'}, {'X-CSRF-Token': ''}):
        answer = ui_session.post(url, json={'state': 'trash'}, headers=headers, timeout=10)
        assert answer.status_code == 403, headers
        assert 'CSRF' in answer.json()['detail']
    for path, body in (
        (f'{PROJECT_PATH}/deployment', {'version': '1.2'}),
        (f'{PROJECT_PATH}/trainings', {}),
        ('/logout', None),
    ):
        assert ui_session.post(ui_loop.url + path, json=body, timeout=10).status_code == 403, path
    assert ui_loop.store.image(ORGANIZATION, PROJECT, image_id)['state'] == 'inbox'
    assert ui_loop.store.deployment_target(ORGANIZATION, PROJECT)['version'] == '1.1'  # type: ignore[index]
    # with the page's token the same request is stored as the control API stores it
    csrf = {'X-CSRF-Token': ui_session.csrf}  # type: ignore[attr-defined]
    answer = ui_session.post(url, json={'state': 'complete', 'tags': ['checked']}, headers=csrf, timeout=10)
    assert answer.status_code == 200
    assert ui_loop.store.image(ORGANIZATION, PROJECT, image_id)['tags'] == ['checked']
    # logging out ends the session for the API too
    assert ui_session.post(f'{ui_loop.url}/logout', data={'csrf_token': ui_session.csrf}, timeout=10).ok  # type: ignore[attr-defined]
    assert ui_session.get(f'{ui_loop.url}/control/projects', timeout=10).status_code == 401


def test_sessions_expire(make_local_loop: Callable[..., LocalLoop]) -> None:
    loop = make_local_loop(demo=True, demo_images=2, session_seconds=1.0)
    with requests.Session() as session:
        ui_login(session, loop.url)
        assert session.get(f'{loop.url}/nodes', allow_redirects=False, timeout=10).status_code == 200

        def sent_to_login() -> bool:
            answer = session.get(f'{loop.url}/nodes', allow_redirects=False, timeout=10)
            return answer.status_code == 302 and 'expired=1' in answer.headers['Location']

        wait_for(sent_to_login, timeout=10, interval=0.2, what='the session to expire')
        page = session.get(f'{loop.url}/nodes', timeout=10)
        assert '<form method="post" action="/login">' in page.text
        # an expired session is gone for the API too
        assert session.get(f'{loop.url}/control/projects', timeout=10).status_code == 401


def test_names_tags_and_categories_are_escaped(ui_loop: LocalLoop, ui_session: requests.Session) -> None:
    image_id = ui_loop.store.image_ids(ORGANIZATION, PROJECT, 'complete')[0]
    category = ui_loop.store.add_category(ORGANIZATION, PROJECT, EVIL, 'box', color='red" onmouseover="alert(1)')
    box = {'category_id': category['id'], 'x': 1, 'y': 2, 'width': 30, 'height': 40}
    ui_loop.store.update_image(ORGANIZATION, PROJECT, image_id, tags=[EVIL], annotations={'box_annotations': [box]})
    for path in [*PAGES, f'{PROJECT_PATH}/images/{image_id}', f'{PROJECT_PATH}/images?tag=%3Cscript%3E']:
        page = ui_session.get(ui_loop.url + path, timeout=10).text
        assert '<script>alert' not in page, path
        assert 'onmouseover="alert' not in page, path
    grid = ui_session.get(f'{ui_loop.url}{PROJECT_PATH}/images', timeout=10).text
    assert '&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;' in grid  # the tag, as text
    project = ui_session.get(f'{ui_loop.url}{PROJECT_PATH}', timeout=10).text
    assert '&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;' in project  # the category name, as text
    image = ui_session.get(f'{ui_loop.url}{PROJECT_PATH}/images/{image_id}', timeout=10).text
    assert '\\u003cscript\\u003e' in image  # inside the page's JSON data


def test_nothing_is_served_from_outside_the_static_folder_or_the_data_folder(
    ui_loop: LocalLoop, ui_session: requests.Session
) -> None:
    cookie = f'session={ui_session.cookies["session"]}'
    assert raw_get(ui_loop.url, '/ui/static/ui.css', cookie)[0] == 200
    for path in (
        '/ui/static/../../server.py',
        '/ui/static/..%2f..%2fserver.py',
        '/ui/static/%2e%2e/%2e%2e/store.py',
        '/ui/static//etc/passwd',
        f'{PROJECT_PATH}/images/..%2f..%2f..%2floop.sqlite3/thumb',
        f'{PROJECT_PATH}/images/..%2f..%2f..%2floop.sqlite3/file',
        f'/projects/..%2f..%2f/{PROJECT}/images/x/thumb',
        '/projects/zauberzeug/..%2f..%2fetc/images/passwd/file',
    ):
        status, body = raw_get(ui_loop.url, path, cookie)
        # werkzeug merges the double slash with a redirect that stays in the static folder
        assert status in (400, 404) or (status == 308 and path.startswith('/ui/static//')), (path, status)
        assert b'SQLite format' not in body and b'import ' not in body and b'root:' not in body, path
    # thumbnails are cached under the data folder, named by a hash of the id
    image_id = ui_loop.store.image_ids(ORGANIZATION, PROJECT)[0]
    assert ui_session.get(f'{ui_loop.url}{PROJECT_PATH}/images/{image_id}/thumb', timeout=10).status_code == 200
    cached = list((ui_loop.data_dir / 'thumbs').rglob('*.jpg'))
    assert len(cached) == 1 and cached[0].resolve().is_relative_to(ui_loop.data_dir.resolve())
