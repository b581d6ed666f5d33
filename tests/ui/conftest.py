"""Fixtures for the web UI's tests: one headless Chromium for the whole test session (Debian's ``chromium``,
driven by Playwright; never a downloaded browser), a fresh browser context per test, and logged-in HTTP sessions.

Without ``/usr/bin/chromium`` or the ``playwright`` package the browser tests are skipped, except under CI
(``CI=true``), where ``.ci/run`` installs both and a missing browser fails the tests.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from llnode.localloop import LocalLoop

CHROMIUM = os.environ.get('LLNODE_TEST_CHROMIUM', '/usr/bin/chromium')
CHROMIUM_FLAGS = [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
]
ORGANIZATION, PROJECT = 'zauberzeug', 'demo'
#: how long a browser-side expectation may take (ms)
EXPECT_MS = 15_000


def _unavailable() -> str | None:
    if not shutil.which(CHROMIUM):
        return f'no Chromium at {CHROMIUM} (apt-get install chromium)'
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return 'the playwright package is not installed (pip install -e ".[test]")'
    return None


@pytest.fixture(scope='session')
def browser() -> Iterator[Any]:
    """One headless Chromium shared by every browser test of the session."""
    reason = _unavailable()
    if reason is not None:
        if os.environ.get('CI'):
            pytest.fail(f'browser tests cannot run: {reason}')
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def ui_loop(make_local_loop: Callable[..., LocalLoop]) -> LocalLoop:
    """A local Loop with the demo project (a few images)."""
    return make_local_loop(demo=True, demo_images=12)


@pytest.fixture
def page(browser: Any, ui_loop: LocalLoop) -> Iterator[Any]:
    """A page in a fresh browser context (own cookies) for ``ui_loop``; a JavaScript error fails the test."""
    context = browser.new_context(base_url=ui_loop.url, viewport={'width': 1400, 'height': 1000})
    context.set_default_timeout(EXPECT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on('pageerror', lambda error: errors.append(str(error)))
    page.on('dialog', lambda dialog: errors.append(f'a dialog opened: {dialog.message}'))
    try:
        yield page
    finally:
        context.close()
    assert not errors, f'errors in the page: {errors}'


def log_in(page: Any, user: str = 'u', password: str = 'p', next_path: str = '/') -> None:
    """Log in through the login form, as a person does."""
    page.goto(f'/login?next={next_path}')
    page.fill('input[name=username]', user)
    page.fill('input[name=password]', password)
    page.click('#login-button')
    page.wait_for_url(re.compile(re.escape(next_path) + r'$'))


@pytest.fixture
def ui_session(ui_loop: LocalLoop) -> Iterator[requests.Session]:
    """A requests session logged in through the UI's login form; its CSRF token in ``session.csrf``."""
    with requests.Session() as session:
        ui_login(session, ui_loop.url)
        yield session


def ui_login(session: requests.Session, url: str, user: str = 'u', password: str = 'p') -> requests.Response:
    form = session.get(f'{url}/login', timeout=10)
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token is not None, form.text
    answer = session.post(
        f'{url}/login', data={'username': user, 'password': password, 'csrf_token': token.group(1)}, timeout=10
    )
    page = session.get(f'{url}/nodes', timeout=10)
    csrf = re.search(r'<meta name="csrf-token" content="([^"]*)">', page.text)
    session.csrf = csrf.group(1) if csrf else ''  # type: ignore[attr-defined]
    return answer
