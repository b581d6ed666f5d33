"""The REST client every node uses to talk to its Learning Loop (a small, thread-safe, Session-like object).

It speaks the Loop's side of the protocol as the reference does (form login, cookie session, ``/api`` prefix,
one forced re-login after a 401, retries on 429) and fixes the reference's weak points: the per-call timeout
applies on every path, ``Retry-After`` is honoured within a time budget, and several threads can share one
client without logging in more than once.

Error contract:

- :meth:`LoopClient.request` and the verbs return the :class:`requests.Response` whatever its status, so a
  caller such as an outbox sees a final 429 or 5xx and can back off. They raise only when no usable answer came:
  :class:`LoopConnectionError` / :class:`LoopTimeout` (network), :class:`LoopAuthError` (the login that the
  call needed was refused) or :class:`LoopRateLimited` (that login kept answering 429).
- :meth:`LoopClient.json` raises for every non-2xx answer: :class:`LoopAuthError` for a 401 that survived the
  re-login, :class:`LoopRateLimited` for a 429 beyond the budget, :class:`LoopHTTPError` otherwise, and
  :class:`LoopProtocolError` when a 2xx body is not JSON.
"""

from __future__ import annotations

import email.utils
import logging
import math
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from http.cookiejar import DefaultCookiePolicy
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from requests.cookies import RequestsCookieJar

from llnode.config import ConfigError, Settings
from llnode.loop.errors import (
    LoopAuthError,
    LoopConnectionError,
    LoopError,
    LoopHTTPError,
    LoopProtocolError,
    LoopRateLimited,
    LoopTimeout,
)

logger = logging.getLogger('llnode.loop')

#: Wait after a 429 that carries no usable ``Retry-After`` (the reference always waits 5 s).
DEFAULT_RETRY_AFTER = 5.0
#: Shortest wait after a 429, so that ``Retry-After: 0`` cannot turn the retry loop into a busy loop.
MIN_RETRY_AFTER = 0.1
#: Connections kept per host; fits the data exchange's default thread pool with room to spare.
DEFAULT_POOL_SIZE = 32
#: How many bytes :func:`write_body` reads at a time.
CHUNK_SIZE = 64 * 1024


class LoopClient:
    """A cookie session with one Learning Loop; safe to share between threads.

    ``timeout`` is the default per-call timeout in seconds, handed to requests as its connect and read timeout
    (seconds of silence, not a total deadline). ``retry_429_budget`` bounds, in seconds, the total time one call
    spends waiting after 429 answers. ``session`` lets a caller supply a prepared :class:`requests.Session`
    (adapters, proxies); the client takes over its cookie handling and does not close it.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        timeout: float = 60.0,
        retry_429_budget: float = 100.0,
        session: requests.Session | None = None,
        pool_size: int = DEFAULT_POOL_SIZE,
    ) -> None:
        self.settings = settings if settings is not None else Settings.from_env()
        self.base_url = self.settings.base_url
        self.timeout = _check_timeout(timeout)
        if not (retry_429_budget >= 0 and math.isfinite(retry_429_budget)):
            raise ValueError(f'retry_429_budget must be a finite number of seconds >= 0, got {retry_429_budget!r}')
        self.retry_429_budget = float(retry_429_budget)
        if pool_size < 1:
            raise ValueError(f'pool_size must be at least 1, got {pool_size}')
        self.pool_size = pool_size
        self._verify: bool | str = True
        if self.settings.ssl_cert_path:
            if not Path(self.settings.ssl_cert_path).is_file():
                raise ConfigError(
                    f'LOOP_SSL_CERT_PATH={self.settings.ssl_cert_path} is not a readable file: point it at the CA '
                    "bundle (PEM) that signed the Loop's certificate, or unset it"
                )
            self._verify = self.settings.ssl_cert_path

        self._owns_session = session is None
        self._session = session if session is not None else requests.Session()
        # The session's own jar is never written: requests mutates it from every response without a lock, which
        # is unsafe with several threads. The client keeps the cookies itself and sends a snapshot with each call.
        self._session.cookies = RequestsCookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
        if self._owns_session:
            adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
            self._session.mount('http://', adapter)
            self._session.mount('https://', adapter)
            # requests reads the proxy variables (and ~/.netrc) again for every request, which costs about 0.5 ms
            # of CPU each; the client talks to one host only, so the environment is read once, here.
            self._session.trust_env = False
            self._session.proxies.update(requests.utils.get_environ_proxies(self.base_url))
            if self._verify is True:
                self._verify = os.environ.get('REQUESTS_CA_BUNDLE') or os.environ.get('CURL_CA_BUNDLE') or True

        # Login state. ``_login_lock`` is held for a whole login so that threads needing one wait for it;
        # ``_state_lock`` guards the fields below and is only held for a moment.
        self._login_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._cookies: dict[str, str] = {}
        self._logged_in = False
        self._generation = 0  # grows with every successful login; tells a waiting thread "someone else did it"
        self._closed = threading.Event()  # set by close(); also cuts 429 waits short

    # -- public API -------------------------------------------------------------------------------------------

    def login(self, *, timeout: float | None = None) -> None:
        """Log in now (``POST /api/login``), replacing any session; raises :class:`LoopAuthError` unless 200."""
        with self._login_lock:
            self._login_locked(self._timeout(timeout), clear=True)

    def logout(self, *, timeout: float | None = None) -> None:
        """Tell the Loop to end the session (``POST /api/logout``) and forget the cookies either way."""
        try:
            response = self.request('POST', '/logout', requires_login=False, timeout=timeout)
            if response.status_code != 200:
                logger.warning('logout answered %s; forgetting the session anyway', response.status_code)
            response.close()
        finally:
            with self._state_lock:
                self._cookies.clear()
                self._logged_in = False

    def request(
        self,
        method: str,
        path: str,
        *,
        requires_login: bool = True,
        timeout: float | None = None,
        api_prefix: str = '/api',
        **requests_kwargs: Any,
    ) -> requests.Response:
        """Send ``method`` to ``{base_url}{api_prefix}{path}`` and return the answer whatever its status.

        With ``requires_login`` a login happens first when there is no session, and a 401 leads to exactly one
        forced re-login (shared by all threads that saw the same stale session) and one repeat; that repeat's
        answer is returned, even a second 401. 429 answers are retried after ``Retry-After`` (seconds or an HTTP
        date; 5 s when absent) until the next wait would exceed ``retry_429_budget``; then the 429 is returned.
        ``timeout`` (default: the client's) applies to every attempt, the login included. Other keyword
        arguments go to :meth:`requests.Session.request` (``params``, ``json``, ``data``, ``files``,
        ``stream``, ``headers``...). File objects in ``files`` are rewound before a repeat.
        """
        if not path.startswith('/'):
            raise ValueError(f'path must start with "/", got {path!r}')
        if 'cookies' in requests_kwargs:
            raise ValueError('cookies are managed by the client; do not pass cookies=')
        call_timeout = self._timeout(timeout)
        method = method.upper()
        url = f'{self.base_url}{api_prefix}{path}'
        rewind = _file_positions(requests_kwargs)
        if requires_login:
            self._ensure_login(call_timeout)
        generation = self._current_generation()
        response = self._send_with_429(method, url, call_timeout, requests_kwargs, rewind)
        if response.status_code == 401 and requires_login:
            logger.info('%s %s answered 401; logging in again and repeating once', method, url)
            response.close()
            self._ensure_login(call_timeout, stale_generation=generation)
            _rewind(rewind)
            response = self._send_with_429(method, url, call_timeout, requests_kwargs, rewind)
        return response

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        """``request('GET', path, ...)``."""
        return self.request('GET', path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        """``request('POST', path, ...)``."""
        return self.request('POST', path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> requests.Response:
        """``request('PUT', path, ...)``."""
        return self.request('PUT', path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        """``request('DELETE', path, ...)``."""
        return self.request('DELETE', path, **kwargs)

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """:meth:`request`, then raise for any non-2xx answer and return the parsed JSON body."""
        response = self.request(method, path, **kwargs)
        raise_for_status(response)
        try:
            return response.json()
        except ValueError as e:
            raise LoopProtocolError(
                f'{response.request.method} {response.url} answered {response.status_code} without JSON: '
                f'{response.text[:200]!r}'
            ) from e

    def backend_ready(self, timeout: float = 5.0) -> bool:
        """Whether ``GET /api/status`` answers 200 within ``timeout``; never raises for network trouble."""
        try:
            response = self._send_once('GET', f'{self.base_url}/api/status', _check_timeout(timeout), {})
        except LoopError as e:
            logger.debug('Loop not ready: %s', e)
            return False
        response.close()
        return response.status_code == 200

    def cookies(self) -> dict[str, str]:
        """The session cookies (name -> value), e.g. for the Socket.IO handshake."""
        with self._state_lock:
            return dict(self._cookies)

    def project_url(self, suffix: str = '') -> str:
        """``/{org}/projects/{project}`` + ``suffix``: a path below ``/api`` for :meth:`request`."""
        return self.settings.project_path + suffix

    @property
    def logged_in(self) -> bool:
        """Whether the client holds a session from a successful login."""
        with self._state_lock:
            return self._logged_in

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed.is_set()

    def close(self) -> None:
        """Stop pending 429 waits and release the connections (a session passed in by the caller stays open)."""
        self._closed.set()
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> LoopClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f'<LoopClient {self.base_url} user={self.settings.username!r} logged_in={self.logged_in}>'

    # -- login ---------------------------------------------------------------------------------------------

    def _current_generation(self) -> int:
        with self._state_lock:
            return self._generation

    def _ensure_login(self, timeout: float, stale_generation: int | None = None) -> None:
        """Log in if there is no session, or (with ``stale_generation``) if that session is still the current one.

        Threads that waited for the lock while another one logged in see a newer generation and do nothing.
        """
        with self._login_lock:
            with self._state_lock:
                logged_in, generation = self._logged_in, self._generation
            if logged_in and (stale_generation is None or generation != stale_generation):
                return
            self._login_locked(timeout, clear=stale_generation is not None)

    def _login_locked(self, timeout: float, *, clear: bool) -> None:
        """The login itself; the caller holds ``_login_lock``."""
        if clear:
            with self._state_lock:
                self._cookies.clear()
                self._logged_in = False
        url = f'{self.base_url}/api/login'
        form = {'username': self.settings.username, 'password': self.settings.password}
        response = self._send_with_429('POST', url, timeout, {'data': form}, [])
        body = response.text
        response.close()
        if response.status_code == 429:
            raise LoopRateLimited('POST', url, 429, body)
        if response.status_code != 200:
            raise LoopAuthError('POST', url, response.status_code, body)
        with self._state_lock:
            self._cookies.update(response.cookies.get_dict())
            self._logged_in = True
            self._generation += 1
        logger.info('logged in to %s as %r', self.base_url, self.settings.username)

    # -- sending -------------------------------------------------------------------------------------------

    def _send_with_429(
        self,
        method: str,
        url: str,
        timeout: float,
        kwargs: dict[str, Any],
        rewind: list[tuple[IO[Any], int]],
    ) -> requests.Response:
        """Send once, and again after each 429 while the waits fit into ``retry_429_budget``."""
        started = time.monotonic()
        while True:
            response = self._send_once(method, url, timeout, kwargs)
            if response.status_code != 429:
                return response
            delay = max(MIN_RETRY_AFTER, retry_after_seconds(response))
            spent = time.monotonic() - started
            if spent + delay > self.retry_429_budget or self._closed.is_set():
                logger.warning('%s %s still answers 429 after %.1f s; giving up', method, url, spent)
                return response
            logger.info('%s %s answered 429; retrying in %.1f s', method, url, delay)
            response.close()
            if self._closed.wait(delay):
                return response
            _rewind(rewind)

    def _send_once(self, method: str, url: str, timeout: float, kwargs: dict[str, Any]) -> requests.Response:
        if self._closed.is_set():
            raise LoopError(f'{self!r} is closed')
        with self._state_lock:
            cookie_header = '; '.join(f'{name}={value}' for name, value in self._cookies.items())
            generation = self._generation
        if cookie_header:  # one header instead of cookies=: requests' cookie jars cost ~0.1 ms per request
            kwargs = {**kwargs, 'headers': {**(kwargs.get('headers') or {}), 'Cookie': cookie_header}}
        try:
            response = self._session.request(method, url, timeout=timeout, verify=self._verify, **kwargs)
        except requests.RequestException as e:
            raise translate_exception(e, method, url, timeout) from e
        if response.cookies:
            with self._state_lock:
                if generation == self._generation:  # never let an answer to a stale session overwrite a new one
                    self._cookies.update(response.cookies.get_dict())
        return response

    def _timeout(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else _check_timeout(timeout)


def raise_for_status(response: requests.Response) -> None:
    """Raise the fitting :class:`LoopHTTPError` subclass unless ``response`` is 2xx."""
    status = response.status_code
    if 200 <= status < 300:
        return
    method = response.request.method or '?'
    url = response.url
    body = response.text[:10_000]
    if status == 401:
        raise LoopAuthError(method, url, status, body)
    if status == 429:
        raise LoopRateLimited(method, url, status, body)
    raise LoopHTTPError(method, url, status, body)


def retry_after_seconds(response: requests.Response, default: float = DEFAULT_RETRY_AFTER) -> float:
    """Seconds to wait according to ``Retry-After`` (delta seconds or an HTTP date); ``default`` if unusable."""
    value = response.headers.get('Retry-After', '').strip()
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return default
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - datetime.now(timezone.utc)).total_seconds()
    if not math.isfinite(seconds):
        return default
    return max(0.0, seconds)


def translate_exception(error: requests.RequestException, method: str, url: str, timeout: float) -> LoopError:
    """The llnode error for a requests failure (the caller chains it with ``raise ... from``)."""
    if isinstance(error, requests.Timeout) or _caused_by_timeout(error):
        return LoopTimeout(f'{method} {url} got no answer within {timeout} s: {error}')
    if isinstance(error, (requests.ConnectionError, requests.exceptions.ChunkedEncodingError)):
        return LoopConnectionError(f'{method} {url} failed: {error}')
    if isinstance(error, requests.exceptions.ContentDecodingError):
        return LoopProtocolError(f'{method} {url} sent a body that cannot be decoded: {error}')
    return LoopError(f'{method} {url} failed: {error}')


@contextmanager
def translated_errors(response: requests.Response, timeout: float) -> Iterator[None]:
    """Turn requests failures while reading a streamed body into llnode errors."""
    try:
        yield
    except requests.RequestException as e:
        raise translate_exception(e, response.request.method or '?', response.url, timeout) from e


def write_body(response: requests.Response, target: IO[bytes], *, timeout: float) -> int:
    """Stream a (``stream=True``) response body into ``target``; returns the byte count.

    A broken or stalled transfer raises :class:`LoopConnectionError` / :class:`LoopTimeout`.
    """
    size = 0
    with translated_errors(response, timeout):
        for chunk in response.iter_content(CHUNK_SIZE):
            target.write(chunk)
            size += len(chunk)
    return size


def _caused_by_timeout(error: BaseException) -> bool:
    # requests reports a read timeout in the middle of a streamed body as a ConnectionError around urllib3's
    # ReadTimeoutError; look at the wrapped exception to tell it apart from a refused connection.
    pending: list[object] = [error]
    for _ in range(10):
        if not pending:
            return False
        seen = pending.pop()
        if isinstance(seen, urllib3.exceptions.NewConnectionError):  # a subclass of the timeout error in urllib3 2
            return False
        if isinstance(seen, urllib3.exceptions.TimeoutError):
            return True
        if isinstance(seen, BaseException):
            args = seen.args
            pending.extend(a for a in args[:1] if isinstance(a, BaseException))
            pending.extend(c for c in (getattr(seen, 'reason', None), seen.__cause__) if isinstance(c, BaseException))
    return False


def _check_timeout(timeout: float) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (0 < timeout < math.inf):
        raise ValueError(f'timeout must be a positive number of seconds, got {timeout!r}')
    return float(timeout)


def _file_positions(kwargs: dict[str, Any]) -> list[tuple[IO[Any], int]]:
    """Where each seekable file object in ``files``/``data`` starts, so a repeat can send it again."""
    candidates: list[Any] = []
    files = kwargs.get('files')
    if files:
        items = files.values() if isinstance(files, dict) else (v for _, v in files)
        for value in items:
            candidates.append(value[1] if isinstance(value, (tuple, list)) and len(value) > 1 else value)
    candidates.append(kwargs.get('data'))
    positions = []
    for candidate in candidates:
        if hasattr(candidate, 'seek') and hasattr(candidate, 'tell'):
            try:
                positions.append((candidate, candidate.tell()))
            except (OSError, ValueError):
                continue
    return positions


def _rewind(positions: list[tuple[IO[Any], int]]) -> None:
    for handle, offset in positions:
        handle.seek(offset)
