"""LoopClient: login and session, 401 re-login, 429 back-off, timeouts, TLS, settings, threads.

Real servers throughout: the local Loop where it has the behaviour, a scripted HTTP(S) server for faults.
"""

from __future__ import annotations

import email.utils
import logging
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from llnode.config import ConfigError, Settings
from llnode.loop.errors import (
    LoopAuthError,
    LoopConnectionError,
    LoopError,
    LoopHTTPError,
    LoopRateLimited,
    LoopTimeout,
)
from llnode.loop.http import DEFAULT_RETRY_AFTER, LoopClient, retry_after_seconds
from tests.loop.scripted_server import Reply, ScriptedServer, Seen, login_route
from tests.polling import wait_for


class CountingSession(requests.Session):
    """A real session that records the path of every request it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []
        self._lock = threading.Lock()

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        with self._lock:
            self.paths.append(f'{method!s} {urlsplit(str(url)).path}')
        return super().request(method, url, *args, **kwargs)

    def count(self, entry: str) -> int:
        with self._lock:
            return self.paths.count(entry)


def settings_for(port: int, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        'host': f'127.0.0.1:{port}',
        'username': 'u',
        'password': 'p',
        'organization': 'zauberzeug',
        'project': 'demo',
    }
    values.update(overrides)
    return Settings(**values)


class SessionServer(ScriptedServer):
    """A scripted Loop with numbered login sessions; ``/api/x`` accepts only sessions not in ``expired``."""

    def __init__(self, login_delay: float = 0.0) -> None:
        self.sessions = 0
        self.expired: set[str] = set()
        self.login_delay = login_delay
        self._count_lock = threading.Lock()
        super().__init__({('POST', '/api/login'): self._login, ('GET', '/api/x'): self._protected})

    def _login(self, seen: Seen) -> Reply:
        if parse_qs(seen.body.decode()) != {'username': ['u'], 'password': ['p']}:
            return Reply(401, b'{"detail": "bad credentials"}')
        if self.login_delay:
            time.sleep(self.login_delay)  # widens the window in which other threads want a login too
        with self._count_lock:
            self.sessions += 1
            token = str(self.sessions)
        return Reply(200, b'{}', {'Set-Cookie': f'session={token}; Path=/; HttpOnly'})

    def _protected(self, seen: Seen) -> Reply:
        cookie = seen.headers.get('cookie', '')
        token = cookie.removeprefix('session=') if cookie.startswith('session=') else None
        if token is None or token in self.expired:
            return Reply(401, b'{"detail": "not logged in"}')
        return Reply(200, b'{"ok": true}', {'Content-Type': 'application/json'})


# -- login and session ------------------------------------------------------------------------------------


def test_login_sends_form_and_reuses_the_session() -> None:
    with SessionServer() as server, LoopClient(settings_for(server.port)) as client:
        assert client.json('GET', '/x') == {'ok': True}
        assert client.json('GET', '/x') == {'ok': True}
        assert server.count('POST', '/api/login') == 1
        (login,) = server.requests_to('POST', '/api/login')
        assert login.headers['content-type'] == 'application/x-www-form-urlencoded'
        assert client.cookies() == {'session': '1'}
        assert client.logged_in


def test_refused_login_raises_auth_error_and_sends_nothing_else() -> None:
    with SessionServer() as server, LoopClient(settings_for(server.port, password='wrong')) as client:
        with pytest.raises(LoopAuthError) as caught:
            client.get('/x')
        assert caught.value.status == 401
        assert server.count('GET', '/api/x') == 0
        assert not client.logged_in


def test_a_401_forces_exactly_one_relogin_with_a_cleared_jar() -> None:
    with SessionServer() as server, LoopClient(settings_for(server.port)) as client:
        client.login()
        server.expired.add('1')
        assert client.get('/x').status_code == 200
        assert server.count('POST', '/api/login') == 2
        relogin = server.requests_to('POST', '/api/login')[1]
        assert 'cookie' not in relogin.headers  # the stale session is not sent along
        assert client.cookies() == {'session': '2'}


def test_a_second_401_is_returned_by_request_and_raised_by_json() -> None:
    with SessionServer() as server, LoopClient(settings_for(server.port)) as client:
        server.routes['GET', '/api/x'] = lambda seen: Reply(401, b'{"detail": "nope"}')
        assert client.get('/x').status_code == 401
        assert server.count('POST', '/api/login') == 2  # the first login and one forced re-login, no more
        assert server.count('GET', '/api/x') == 2
        with pytest.raises(LoopAuthError, match='nope'):
            client.json('GET', '/x')


def test_no_login_calls_do_not_log_in() -> None:
    with SessionServer() as server, LoopClient(settings_for(server.port)) as client:
        assert client.get('/x', requires_login=False).status_code == 401
        assert server.count('POST', '/api/login') == 0


def test_concurrent_calls_log_in_once_and_relogin_once() -> None:
    with SessionServer(login_delay=0.2) as server, LoopClient(settings_for(server.port)) as client:
        barrier = threading.Barrier(8)
        statuses: list[int] = []

        def call() -> None:
            barrier.wait(timeout=5)
            statuses.append(client.get('/x').status_code)

        def run_threads() -> None:
            threads = [threading.Thread(target=call, name=f'caller-{n}') for n in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=10)
            assert not any(t.is_alive() for t in threads)

        run_threads()
        assert statuses == [200] * 8
        assert server.count('POST', '/api/login') == 1

        server.expired.add('1')  # the Loop forgets the session: all eight see a 401 at about the same time
        statuses.clear()
        run_threads()
        assert statuses == [200] * 8
        assert server.count('POST', '/api/login') == 2


def test_logout_forgets_the_session() -> None:
    with SessionServer() as server, LoopClient(settings_for(server.port)) as client:
        server.routes['POST', '/api/logout'] = lambda seen: Reply(200, b'{}')
        client.login()
        client.logout()
        assert client.cookies() == {}
        assert not client.logged_in
        assert client.get('/x').status_code == 200
        assert server.count('POST', '/api/login') == 2


# -- 429 ------------------------------------------------------------------------------------------------------


def throttled(first: int, retry_after: str | None) -> Callable[[Seen], Reply]:
    """A route answering 429 to the first ``first`` requests, then 200."""
    seen_count = [0]

    def route(seen: Seen) -> Reply:
        seen_count[0] += 1
        if seen_count[0] <= first:
            return Reply(429, b'{"detail": "slow down"}', {'Retry-After': retry_after} if retry_after else {})
        return Reply(200, b'{"ok": true}', {'Content-Type': 'application/json'})

    return route


def test_429_waits_for_retry_after_seconds() -> None:
    with ScriptedServer({('GET', '/api/status'): throttled(1, '1')}) as server:
        with LoopClient(settings_for(server.port)) as client:
            started = time.monotonic()
            response = client.get('/status', requires_login=False)
            elapsed = time.monotonic() - started
        assert response.status_code == 200
        assert server.count('GET', '/api/status') == 2
        assert 0.9 <= elapsed < 3.0


def test_429_waits_until_an_http_date() -> None:
    retry_at = email.utils.formatdate(time.time() + 2, usegmt=True)  # whole seconds: the wait is 1 to 2 s
    with (
        ScriptedServer({('GET', '/api/status'): throttled(1, retry_at)}) as server,
        LoopClient(settings_for(server.port)) as client,
    ):
        started = time.monotonic()
        assert client.get('/status', requires_login=False).status_code == 200
        assert 0.9 <= time.monotonic() - started < 3.5


def test_429_budget_bounds_the_retries_then_returns_the_429() -> None:
    with (
        ScriptedServer({('GET', '/api/status'): throttled(100, '0.4')}) as server,
        LoopClient(settings_for(server.port), retry_429_budget=1.0) as client,
    ):
        started = time.monotonic()
        response = client.get('/status', requires_login=False)
        elapsed = time.monotonic() - started
        assert response.status_code == 429
        assert server.count('GET', '/api/status') == 3  # waits 0.4 + 0.4; a third wait would pass 1.0 s
        assert 0.75 <= elapsed < 1.5
        with pytest.raises(LoopRateLimited) as caught:
            client.json('GET', '/status', requires_login=False)
        assert caught.value.status == 429


def test_retry_after_beyond_the_budget_returns_at_once() -> None:
    with (
        ScriptedServer({('GET', '/api/status'): throttled(100, '3600')}) as server,
        LoopClient(settings_for(server.port)) as client,
    ):
        started = time.monotonic()
        assert client.get('/status', requires_login=False).status_code == 429
        assert time.monotonic() - started < 1.0
        assert server.count('GET', '/api/status') == 1


def test_login_that_keeps_answering_429_raises_rate_limited() -> None:
    with (
        ScriptedServer({('POST', '/api/login'): throttled(100, '0.1')}) as server,
        LoopClient(settings_for(server.port), retry_429_budget=0.3) as client,
    ):
        with pytest.raises(LoopRateLimited):
            client.get('/x')
        assert server.count('POST', '/api/login') >= 2


def test_retry_after_parsing() -> None:
    def header(value: str | None) -> requests.Response:
        response = requests.Response()
        if value is not None:
            response.headers['Retry-After'] = value
        return response

    assert retry_after_seconds(header(None)) == DEFAULT_RETRY_AFTER == 5.0
    assert retry_after_seconds(header('7')) == 7.0
    assert retry_after_seconds(header('-3')) == 0.0
    assert retry_after_seconds(header('soon')) == 5.0
    assert retry_after_seconds(header('nan')) == 5.0
    assert retry_after_seconds(header('Wed, 21 Oct 2015 07:28:00 GMT')) == 0.0  # in the past
    future = email.utils.formatdate(time.time() + 60, usegmt=True)
    assert 55 < retry_after_seconds(header(future)) <= 60


def test_files_are_sent_again_in_full_after_a_429(tmp_path: Path) -> None:
    payload = tmp_path / 'weights.bin'
    payload.write_bytes(b'W' * 10_000)
    with ScriptedServer({('PUT', '/api/upload'): throttled(1, '0.1')}) as server:
        with LoopClient(settings_for(server.port)) as client, payload.open('rb') as handle:
            response = client.put('/upload', requires_login=False, files=[('files', ('weights.bin', handle))])
        assert response.status_code == 200
        first, second = server.requests_to('PUT', '/api/upload')
        assert first.body.count(b'W' * 10_000) == 1
        assert second.body.count(b'W' * 10_000) == 1  # the file was rewound, not sent empty the second time


def test_close_cuts_a_429_wait_short() -> None:
    with ScriptedServer({('GET', '/api/status'): throttled(100, '30')}) as server:
        client = LoopClient(settings_for(server.port))

        def close_after_first_answer() -> None:
            wait_for(lambda: server.count('GET', '/api/status') == 1)
            client.close()

        closer = threading.Thread(target=close_after_first_answer, name='closer')
        closer.start()
        started = time.monotonic()
        assert client.get('/status', requires_login=False).status_code == 429
        assert time.monotonic() - started < 5
        closer.join(timeout=5)
        with pytest.raises(LoopError, match='closed'):
            client.get('/status', requires_login=False)


# -- timeouts and connection errors ------------------------------------------------------------------------


@pytest.fixture
def stalling_server() -> Iterator[ScriptedServer]:
    """Logs in at once but answers everything else only after the test ends."""
    release = threading.Event()

    def stall(seen: Seen) -> Reply:
        release.wait(10)
        return Reply(200, b'late')

    routes = {('POST', '/api/login'): login_route(), ('GET', '/api/slow'): stall}
    with ScriptedServer(routes) as server:
        try:
            yield server
        finally:
            release.set()


@pytest.mark.parametrize('requires_login', [True, False])
def test_the_per_call_timeout_applies_on_every_path(stalling_server: ScriptedServer, requires_login: bool) -> None:
    with LoopClient(settings_for(stalling_server.port), timeout=30) as client:
        started = time.monotonic()
        with pytest.raises(LoopTimeout) as caught:
            client.get('/slow', requires_login=requires_login, timeout=0.3)
        assert time.monotonic() - started < 2.0
        assert isinstance(caught.value.__cause__, requests.Timeout)


def test_the_client_default_timeout_applies(stalling_server: ScriptedServer) -> None:
    with LoopClient(settings_for(stalling_server.port), timeout=0.3) as client:
        started = time.monotonic()
        with pytest.raises(LoopTimeout):
            client.get('/slow', requires_login=False)
        assert time.monotonic() - started < 2.0


def test_timeout_against_a_slow_local_loop(make_local_loop: Any) -> None:
    loop = make_local_loop(delay_ms=800)
    with LoopClient(loop.settings()) as client:
        started = time.monotonic()
        with pytest.raises(LoopTimeout):
            client.get('/status', requires_login=False, timeout=0.2)
        assert time.monotonic() - started < 0.7
        assert client.backend_ready(timeout=0.2) is False
        assert client.backend_ready(timeout=5.0) is True


def test_refused_connection_raises_connection_error() -> None:
    with ScriptedServer() as server:
        port = server.port
    with LoopClient(settings_for(port)) as client:  # nothing listens there any more
        with pytest.raises(LoopConnectionError) as caught:
            client.get('/status', requires_login=False)
        assert not isinstance(caught.value, LoopTimeout)
        assert isinstance(caught.value.__cause__, requests.ConnectionError)
        with pytest.raises(LoopConnectionError):
            client.login()
        assert client.backend_ready() is False


def test_backend_ready_is_true_only_for_200() -> None:
    status = [200]
    with (
        ScriptedServer({('GET', '/api/status'): lambda seen: Reply(status[0])}) as server,
        LoopClient(settings_for(server.port)) as client,
    ):
        assert client.backend_ready() is True
        status[0] = 503
        assert client.backend_ready() is False
        status[0] = 429
        assert client.backend_ready() is False
        assert server.count('GET', '/api/status') == 3  # no retries inside the probe


# -- TLS ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A private CA and a server certificate for 127.0.0.1 signed by it (openssl command line)."""
    if shutil.which('openssl') is None:
        pytest.skip('the openssl command is not installed (and the cryptography package is not available)')
    folder = tmp_path_factory.mktemp('tls')
    key = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes']

    def openssl(*args: str) -> None:
        subprocess.run(['openssl', *args], cwd=folder, check=True, capture_output=True, timeout=60)

    openssl('req', '-x509', *key, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=llnode test CA',
            '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign')  # fmt: skip
    openssl('req', *key, '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=127.0.0.1')
    (folder / 'server.ext').write_text(
        'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n'
        'extendedKeyUsage=serverAuth\nauthorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n'
    )
    openssl('x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial',
            '-out', 'server.pem', '-days', '2', '-extfile', 'server.ext')  # fmt: skip
    return {'ca': folder / 'ca.pem', 'cert': folder / 'server.pem', 'key': folder / 'server.key'}


@pytest.fixture
def tls_server(certificates: dict[str, Path]) -> Iterator[ScriptedServer]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificates['cert'], certificates['key'])
    routes = {
        ('GET', '/api/status'): lambda seen: Reply(200, b'{}'),
        ('POST', '/api/login'): login_route(),
    }
    with ScriptedServer(routes, tls=context) as server:
        yield server


def test_tls_is_verified_with_the_configured_ca(tls_server: ScriptedServer, certificates: dict[str, Path]) -> None:
    settings = settings_for(tls_server.port, host=f'https://127.0.0.1:{tls_server.port}')
    with LoopClient(settings.replace(ssl_cert_path=str(certificates['ca']))) as client:
        assert client.base_url.startswith('https://')
        assert client.backend_ready() is True
        client.login()
        assert client.cookies() == {'session': 'abc'}


def test_tls_fails_without_the_ca(tls_server: ScriptedServer) -> None:
    settings = settings_for(tls_server.port, host=f'https://127.0.0.1:{tls_server.port}')
    with LoopClient(settings) as client:
        assert client.backend_ready() is False
        with pytest.raises(LoopConnectionError) as caught:
            client.login()
        assert isinstance(caught.value.__cause__, requests.exceptions.SSLError)
    assert tls_server.count('POST', '/api/login') == 0


def test_a_missing_ca_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match='LOOP_SSL_CERT_PATH'):
        LoopClient(settings_for(1, ssl_cert_path=str(tmp_path / 'nope.pem')))


# -- settings, arguments -----------------------------------------------------------------------------------


def test_environment_aliases_resolve_with_loop_names_winning(local_loop: Any, caplog: pytest.LogCaptureFixture) -> None:
    env = {
        'LOOP_HOST': local_loop.host_port,
        'HOST': 'elsewhere.example:1',
        'LOOP_USERNAME': 'u',
        'USERNAME': 'somebody-else',
        'PASSWORD': 'p',
        'LOOP_ORGANIZATION': 'zauberzeug',
        'PROJECT': 'demo',
    }
    with caplog.at_level(logging.WARNING, logger='llnode'):
        settings = Settings.from_env(env)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any('LOOP_HOST' in w and repr(local_loop.host_port) in w for w in warnings)
    assert any('LOOP_USERNAME' in w and "'u'" in w for w in warnings)
    with LoopClient(settings) as client:
        assert client.base_url == f'http://{local_loop.host_port}'
        assert client.project_url('/data') == '/zauberzeug/projects/demo/data'
        assert 'image_ids' in client.json('GET', client.project_url('/data'))


def test_settings_default_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ('LOOP_HOST', 'HOST', 'LOOP_ORGANIZATION', 'ORGANIZATION', 'LOOP_PROJECT', 'PROJECT'):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv('LOOP_HOST', 'https://loop.example:8443')
    with LoopClient() as client:
        assert client.base_url == 'https://loop.example:8443'
        with pytest.raises(ConfigError):
            client.project_url()


def test_bad_arguments_are_refused() -> None:
    settings = settings_for(1)
    with pytest.raises(ValueError, match='timeout'):
        LoopClient(settings, timeout=0)
    with pytest.raises(ValueError, match='retry_429_budget'):
        LoopClient(settings, retry_429_budget=-1)
    with LoopClient(settings) as client:
        with pytest.raises(ValueError, match='start with'):
            client.get('status')
        with pytest.raises(ValueError, match='cookies'):
            client.get('/status', cookies={'a': 'b'})
        with pytest.raises(ValueError, match='timeout'):
            client.get('/status', timeout=-1)


# -- against the local Loop --------------------------------------------------------------------------------


def test_local_loop_login_and_data(local_loop: Any) -> None:
    with LoopClient(local_loop.settings()) as client:
        assert client.backend_ready()
        body = client.json('GET', client.project_url('/data'))
        assert isinstance(body['image_ids'], list)
        assert client.logged_in
        assert client.cookies()
    with LoopClient(local_loop.settings(password='wrong')) as client, pytest.raises(LoopAuthError):
        client.json('GET', client.project_url('/data'))


def test_local_loop_without_login_answers_401(local_loop: Any) -> None:
    with LoopClient(local_loop.settings()) as client:
        response = client.get(client.project_url('/data'), requires_login=False)
        assert response.status_code == 401
        with pytest.raises(LoopHTTPError) as caught:
            client.json('GET', client.project_url('/data'), requires_login=False)
        assert caught.value.status == 401


def test_local_loop_concurrent_first_calls_log_in_once(local_loop: Any) -> None:
    session = CountingSession()
    with LoopClient(local_loop.settings(), session=session) as client:
        barrier = threading.Barrier(8)
        results: list[int] = []

        def call() -> None:
            barrier.wait(timeout=5)
            results.append(len(client.json('GET', client.project_url('/data'))['image_ids']))

        threads = [threading.Thread(target=call, name=f'caller-{n}') for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=20)
        assert len(results) == 8
        assert session.count('POST /api/login') == 1

        local_loop.store.delete_session(client.cookies()['session'])  # the Loop forgets the session
        assert client.get(client.project_url('/data')).status_code == 200
        assert session.count('POST /api/login') == 2
