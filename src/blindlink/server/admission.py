"""Which calls may hold a call thread, and how much request data the server holds in memory.

The server's call threads are shared: a call holds one from its start until it ends, also while
it waits for its client (a stalled stream, or a unary call whose request has not arrived). So
every call is admitted, before it waits for anything, against shares of the threads:

- Linkage's streaming calls (uploads, run watches) at most `max_streams`;
- unary calls the rest of `rpc_workers`;
- health checks `HEALTH_THREADS` threads of their own, and the health and reflection
  services' streams `OTHER_STREAM_THREADS`, so that those cannot keep uploads out.

Per client certificate, at most `per_certificate` calls of each kind are open at once, and
certificates that no agreement names (outsiders: anyone the operator's CA vouches for) hold at
most half of each Linkage share between them, so that no number of outsiders' certificates
keeps the parties' calls out. A call
beyond a share is refused at once with RESOURCE_EXHAUSTED, unless a call that has sent nothing
yet makes room for it (see `Admission`), so however many calls stall, threads remain for health
checks and short calls. `SPARE_THREADS` more threads refuse calls (a refusal holds a thread for
a moment).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"
HEALTH_THREADS = 8
OTHER_STREAM_THREADS = 4
LINKAGE_PREFIX = "/blindlink.v1.Linkage/"
SPARE_THREADS = 2
MIB = 1 << 20
# Parties send encodings in 1 MiB chunks and agreements of at most 1 MiB: a larger message is
# refused before it is buffered, and all messages held at once count against a budget, so that
# concurrent streams cannot fill the server's memory.
MAX_RECEIVE_BYTES = 4 * MIB


class Kind(StrEnum):
    STREAM = "streaming"
    UNARY = "unary"
    HEALTH = "health check"
    OTHER_STREAM = "health watch or reflection"


# The shares of which outsiders may hold at most half.
OUTSIDERS_HALVED = (Kind.STREAM, Kind.UNARY)


def call_kind(method: str, request_streaming: bool, response_streaming: bool) -> Kind:
    if method == HEALTH_CHECK_METHOD:
        return Kind.HEALTH
    if not (request_streaming or response_streaming):
        return Kind.UNARY
    return Kind.STREAM if method.startswith(LINKAGE_PREFIX) else Kind.OTHER_STREAM


@dataclass(frozen=True)
class CallLimits:
    """The operator's limits (see the module docstring); `max_streams` None: half the workers."""

    max_streams: int | None = None
    per_certificate: int = 4
    max_buffered_bytes: int = 128 * MIB

    def streams(self, workers: int) -> int:
        return self.max_streams if self.max_streams is not None else max(1, workers // 2)


def pool_size(workers: int) -> int:
    """The call threads: `workers` for Linkage calls, plus the other shares' and the spares."""
    return workers + HEALTH_THREADS + OTHER_STREAM_THREADS + SPARE_THREADS


_SETTING = {
    Kind.STREAM: "max_streams",
    Kind.UNARY: "rpc_workers less max_streams",
    Kind.HEALTH: "its health check threads",
    Kind.OTHER_STREAM: "its threads for health watches and reflection",
}


@dataclass(eq=False)
class Ticket:
    """An admitted call; `evict` ends it if it still awaits its first request message (and
    says whether it did)."""

    kind: Kind
    caller: str
    evict: Callable[[], bool]
    outsider: bool = False
    evicted: bool = False


class Admission:
    """Counts the calls open by kind and by caller (a certificate's fingerprint), and refuses
    those beyond the limits. When a share is full, a call that has sent nothing yet (a client
    sends its request at once; a stalled call never does) gives its place up to the newcomer,
    the oldest call of the caller with the most first, so that calls which send nothing cannot
    keep others out, however many certificates they come from. `is_party`: whether a caller's
    certificate is one an agreement names. Thread-safe."""

    def __init__(
        self,
        workers: int,
        limits: CallLimits,
        is_party: Callable[[str], bool] = lambda caller: True,
    ) -> None:
        streams = limits.streams(workers)
        self._shares = {
            Kind.STREAM: streams,
            Kind.UNARY: workers - streams,
            Kind.HEALTH: HEALTH_THREADS,
            Kind.OTHER_STREAM: OTHER_STREAM_THREADS,
        }
        self._per_caller = limits.per_certificate
        self._is_party = is_party
        self._open: dict[Kind, list[Ticket]] = {kind: [] for kind in Kind}  # oldest first
        self._by_caller: Counter[tuple[Kind, str]] = Counter()
        self._lock = threading.Lock()

    def enter(self, kind: Kind, caller: str, evict: Callable[[], bool]) -> Ticket | str:
        """The call's ticket if it is admitted (it must `leave` when it ends); else why not."""
        with self._lock:
            mine = self._by_caller[kind, caller]
            if mine >= self._per_caller:
                return (
                    f"this client certificate has {mine} {kind} calls open already, the most "
                    "the server allows one certificate (max_calls_per_certificate); retry when "
                    "one has ended"
                )
            calls = self._open[kind]
            outsider = kind in OUTSIDERS_HALVED and not self._is_party(caller)
            if outsider and not self._outsider_room(kind):
                return (
                    f"certificates that no agreement names hold half the server's {kind} calls "
                    "already, the most it allows them; retry in a moment"
                )
            if len(calls) >= self._shares[kind] and not self._make_room(kind):
                return (
                    f"the server has {len(calls)} {kind} calls open already, the most it "
                    f"allows ({_SETTING[kind]}); retry in a moment"
                )
            ticket = Ticket(kind, caller, evict, outsider)
            calls.append(ticket)
            self._by_caller[kind, caller] += 1
            return ticket

    def open_calls(self) -> int:
        """How many calls are admitted now, of all kinds."""
        with self._lock:
            return sum(len(calls) for calls in self._open.values())

    def leave(self, ticket: Ticket) -> None:
        with self._lock:
            if not ticket.evicted:
                self._remove(ticket)

    def _outsider_room(self, kind: Kind) -> bool:
        """Whether outsiders may open one more call of this kind, after evicting one of theirs
        that has sent nothing yet if need be."""
        theirs = [t for t in self._open[kind] if t.outsider]
        return len(theirs) < max(1, self._shares[kind] // 2) or self._make_room(kind, theirs)

    def _make_room(self, kind: Kind, among: list[Ticket] | None = None) -> bool:
        """Evict a call of this kind (of those `among`, default all) that has sent nothing yet,
        the oldest of the caller with the most calls first; False if there is none."""
        open_calls = self._open[kind] if among is None else among
        calls = sorted(open_calls, key=lambda t: -self._by_caller[kind, t.caller])
        for ticket in calls:  # the sort is stable: oldest first within a caller
            if ticket.evict():
                ticket.evicted = True
                self._remove(ticket)
                return True
        return False

    def _remove(self, ticket: Ticket) -> None:
        self._open[ticket.kind].remove(ticket)
        self._by_caller[ticket.kind, ticket.caller] -= 1
        if not self._by_caller[ticket.kind, ticket.caller]:
            del self._by_caller[ticket.kind, ticket.caller]


class BufferBudget:
    """The request bytes held in memory across all calls: received, not yet handled."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held = 0
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        return self._held

    def take(self, size: int) -> bool:
        """Count `size` more bytes held, unless that would exceed the limit (then False)."""
        with self._lock:
            if self._held + size > self.limit:
                return False
            self._held += size
            return True

    def give(self, size: int) -> None:
        with self._lock:
            self._held -= size
