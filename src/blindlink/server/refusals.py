"""How many refusals reach the audit log: each is a signed, fsynced entry, so a caller who is
refused over and over could otherwise grow the log without limit. Per caller (its certificate,
or its role without TLS), at most BURST refusals are logged per WINDOW seconds; the ones
beyond are counted, and the next logged refusal of that caller says how many were left out."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

BURST = 10
WINDOW = 60.0


@dataclass
class _Caller:
    window_start: float
    logged: int = 0
    left_out: int = 0


class RefusalLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._callers: dict[str, _Caller] = {}
        self._lock = threading.Lock()

    def admit(self, caller: str) -> int | None:
        """None if this refusal goes unlogged (it is counted); else how many of the caller's
        refusals were left out of the log since its last logged one."""
        now = self._clock()
        with self._lock:
            state = self._callers.get(caller)
            if state is None or now - state.window_start >= WINDOW:
                left_out = state.left_out if state is not None else 0
                state = self._callers[caller] = _Caller(now, left_out=left_out)
                self._forget_idle(now)
            if state.logged >= BURST:
                state.left_out += 1
                return None
            state.logged += 1
            left_out, state.left_out = state.left_out, 0
            return left_out

    def _forget_idle(self, now: float) -> None:
        """Drop callers with nothing left to report whose window has passed."""
        idle = [
            key
            for key, state in self._callers.items()
            if now - state.window_start >= WINDOW and not state.left_out
        ]
        for key in idle:
            del self._callers[key]
