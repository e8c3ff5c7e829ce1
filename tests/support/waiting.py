"""Waiting for what a server does in the background."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(condition: Callable[[], bool], timeout: float = 30.0, every: float = 0.002) -> bool:
    """Whether `condition` holds within `timeout` seconds, checked every `every` seconds (often
    enough to catch a file that exists for a moment). Generous: a passing test never waits it
    out, and a loaded machine gets the time it needs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every)
    return condition()
