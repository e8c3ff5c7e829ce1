"""Admission of calls to the server's thread shares: per-certificate caps, the shares of each
kind, and the rule by which a call that has sent nothing gives its place up. The server-level
behaviour over real sockets is in test_hostile_input.py."""

from __future__ import annotations

from dataclasses import dataclass

from blindlink.server.admission import (
    HEALTH_THREADS,
    Admission,
    CallLimits,
    Kind,
    Ticket,
    call_kind,
)

WORKERS = 8  # 4 streaming, 4 unary


@dataclass
class Call:
    """A call as the admission sees it: it may be evicted while it has sent nothing."""

    sent_nothing: bool = True
    evicted: bool = False

    def evict(self) -> bool:
        self.evicted = self.sent_nothing
        return self.evicted


def admit(admission: Admission, kind: Kind, caller: str, call: Call | None = None) -> Ticket:
    ticket = admission.enter(kind, caller, (call or Call()).evict)
    assert isinstance(ticket, Ticket), ticket
    return ticket


def test_calls_are_sorted_into_kinds() -> None:
    assert call_kind("/grpc.health.v1.Health/Check", False, False) is Kind.HEALTH
    assert call_kind("/grpc.health.v1.Health/Watch", False, True) is Kind.OTHER_STREAM
    assert call_kind("/blindlink.v1.Linkage/Upload", True, False) is Kind.STREAM
    assert call_kind("/blindlink.v1.Linkage/GetStatus", False, False) is Kind.UNARY


def test_a_certificate_gets_at_most_its_cap_of_each_kind() -> None:
    admission = Admission(WORKERS, CallLimits(per_certificate=2))
    for _ in range(2):
        admit(admission, Kind.STREAM, "a", Call(sent_nothing=False))
    refusal = admission.enter(Kind.STREAM, "a", Call().evict)
    assert isinstance(refusal, str) and "max_calls_per_certificate" in refusal
    admit(admission, Kind.UNARY, "a")  # another kind, another count
    admit(admission, Kind.HEALTH, "a")


def test_a_full_share_of_calls_that_sent_something_refuses_newcomers() -> None:
    admission = Admission(WORKERS, CallLimits())
    busy = [admit(admission, Kind.STREAM, c, Call(sent_nothing=False)) for c in "abcd"]
    refusal = admission.enter(Kind.STREAM, "e", Call().evict)
    assert isinstance(refusal, str) and "max_streams" in refusal
    admit(admission, Kind.UNARY, "e")  # the unary share is untouched
    admission.leave(busy[0])
    admit(admission, Kind.STREAM, "e")


def test_a_call_that_sent_nothing_gives_its_place_up_the_heaviest_callers_oldest_first() -> None:
    admission = Admission(WORKERS, CallLimits())
    heavy = [Call() for _ in range(3)]
    light = Call()
    tickets = [admit(admission, Kind.STREAM, "heavy", call) for call in heavy]
    admit(admission, Kind.STREAM, "light", light)
    admit(admission, Kind.STREAM, "party", Call(sent_nothing=False))
    assert [call.evicted for call in heavy] == [True, False, False] and not light.evicted
    admission.leave(tickets[0])  # the evicted call ends: its place is not given back twice
    for _ in range(3):  # newcomers take the places of the rest, the party's call stays
        admit(admission, Kind.STREAM, "newcomer", Call(sent_nothing=False))
    assert all(call.evicted for call in heavy + [light])
    refusal = admission.enter(Kind.STREAM, "late", Call().evict)
    assert isinstance(refusal, str) and "max_streams" in refusal


def test_health_checks_have_their_own_share_and_stalled_ones_make_room() -> None:
    admission = Admission(WORKERS, CallLimits(per_certificate=1))
    stalled = [Call() for _ in range(HEALTH_THREADS)]
    for i, call in enumerate(stalled):
        admit(admission, Kind.HEALTH, f"attacker{i}", call)
    admit(admission, Kind.HEALTH, "prober")
    assert sum(call.evicted for call in stalled) == 1


def party_only(caller: str) -> bool:
    return caller.startswith("party")


def test_outsiders_hold_at_most_half_of_a_share_and_parties_the_rest() -> None:
    """Certificates that no agreement names, however many, leave the parties half a share."""
    admission = Admission(WORKERS, CallLimits(), party_only)
    for caller in ("a", "b"):
        admit(admission, Kind.UNARY, caller, Call(sent_nothing=False))
    refusal = admission.enter(Kind.UNARY, "c", Call().evict)
    assert isinstance(refusal, str) and "no agreement names" in refusal
    for caller in ("party1", "party2"):
        admit(admission, Kind.UNARY, caller, Call(sent_nothing=False))
    refusal = admission.enter(Kind.UNARY, "party3", Call().evict)
    assert isinstance(refusal, str) and "rpc_workers" in refusal
    admit(admission, Kind.HEALTH, "c")  # health checks have threads of their own


def test_an_outsider_that_sent_nothing_gives_its_place_to_another_outsider_only() -> None:
    admission = Admission(WORKERS, CallLimits(), party_only)
    silent = Call()
    admit(admission, Kind.STREAM, "a", silent)
    admit(admission, Kind.STREAM, "b", Call(sent_nothing=False))
    # The outsiders' half is full: a's silent call makes room.
    admit(admission, Kind.STREAM, "c", Call(sent_nothing=False))
    assert silent.evicted
    party_silent = Call()
    admit(admission, Kind.STREAM, "party1", party_silent)
    refusal = admission.enter(Kind.STREAM, "d", Call(sent_nothing=False).evict)
    assert isinstance(refusal, str) and "no agreement names" in refusal
    assert not party_silent.evicted
