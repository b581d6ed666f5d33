"""Poll for a condition with a deadline: the one way tests wait for something to happen."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(
    condition: Callable[[], Any], timeout: float = 10.0, what: str = 'condition', *, interval: float = 0.01
) -> Any:
    """Call ``condition`` until it returns something truthy and return that; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f'timed out after {timeout} s waiting for {what}')
        time.sleep(interval)
