"""Checking an audit log export, and parties' receipts, against the server's public key.

Each entry must be signed by the server, hash to its `entry_hash`, carry the seq after its
predecessor's and link to its predecessor's hash; in one project's entries (a partial log), the
project_seq after its predecessor's and link to its hash. A tampering is named at the entry it
affects:
an edited entry is named, not its successor whose link it broke; a removed entry is named at the
entry that now follows the gap; an inserted entry, when its successor links past it, is named as
inserted and its successor is not blamed.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from blindlink.audit.chain import GENESIS, AuditEntry, AuditFormatError, entry_hash
from blindlink.security.keys import parse_public_key, verify_signature


@dataclass(frozen=True)
class Problem:
    position: int  # 0-based index in the list checked
    seq: int | None  # the entry's seq as stored
    reason: str


@dataclass(frozen=True)
class VerifyReport:
    entries: int
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_entries(
    entries: Sequence[AuditEntry], server_public_key: str, *, partial: bool = False
) -> VerifyReport:
    """Check a log in order and report every problem, each at the entry it concerns.

    A full log starts at seq 1, linked to GENESIS, and its seqs are consecutive. With `partial`
    the entries are one project's (`audit export --project`): its own chain, from project_seq 1
    linked to GENESIS, with consecutive project_seqs, each linked to the one before by
    prev_project_hash. Raises SecurityError if the key text is malformed.
    """
    parse_public_key(server_public_key)
    if partial:
        return VerifyReport(len(entries), _project_walk(entries, server_public_key))
    return VerifyReport(len(entries), _Walk(entries, server_public_key).run())


def verify_receipt(receipt: dict[str, Any], server_public_key: str) -> bool:
    """True iff the receipt is a well-formed entry whose hash and server signature check out."""
    try:
        entry = AuditEntry.from_json(receipt)
    except AuditFormatError:
        return False
    return not _own_problems(entry, server_public_key)


def check_receipts_in_log(receipts: Sequence[dict], entries: Sequence[AuditEntry]) -> list[str]:
    """Problems with receipts whose entry is absent from the log or differs from it."""
    logged: dict[int, AuditEntry] = {}
    for entry in entries:
        logged.setdefault(entry.seq, entry)
    problems = []
    for number, receipt in enumerate(receipts, 1):
        try:
            held = AuditEntry.from_json(receipt)
        except AuditFormatError as exc:
            problems.append(f"receipt {number} is not an audit entry: {exc}")
            continue
        found = logged.get(held.seq)
        what = f"receipt for seq {held.seq} ({held.kind})"
        if found is None:
            problems.append(f"{what}: no such entry in the log (removed)")
        elif found != held:
            fields = [k for k, v in held.to_json().items() if found.to_json()[k] != v]
            problems.append(f"{what}: the log's entry differs in {', '.join(fields)}")
    return problems


def _own_problems(entry: AuditEntry, server_public_key: str) -> list[str]:
    """What is wrong with the entry on its own: its hash and its signature."""
    reasons = []
    recomputed = entry_hash(
        entry.seq,
        entry.time,
        entry.kind,
        entry.project_id,
        entry.party,
        entry.details,
        entry.prev_hash,
        entry.project_seq,
        entry.prev_project_hash,
    )
    if recomputed != entry.entry_hash:
        reasons.append("entry_hash does not match the entry's fields (edited)")
    if not verify_signature(server_public_key, entry.entry_hash.encode(), entry.signature):
        reasons.append("signature does not match the entry (edited, or signed by another key)")
    return reasons


class _Walk:
    """One pass over the entries, tracking the entry each one should follow."""

    def __init__(self, entries: Sequence[AuditEntry], key: str) -> None:
        self.entries = entries
        self.key = key
        self.seqs = sorted({e.seq for e in entries})
        self.position_of_hash: dict[str, int] = {}
        for position, entry in enumerate(entries):
            self.position_of_hash.setdefault(entry.entry_hash, position)
        self.problems: list[Problem] = []
        self.pred: int | None = None  # position of the entry with the highest seq so far
        self.trusted: int | None = None  # position of the last entry that passed its own checks
        self.failed: set[int] = set()  # positions of entries that failed their own checks

    def run(self) -> list[Problem]:
        for position, entry in enumerate(self.entries):
            self._check(position, entry)
        return sorted(self.problems, key=lambda problem: problem.position)

    def _check(self, position: int, entry: AuditEntry) -> None:
        own = _own_problems(entry, self.key)
        if self._links_past_failed(entry):
            self._report_inserted(position, entry)
            self.pred = self.trusted
        order, linkable = self._order(entry)
        link = self._link(entry) if linkable else []
        for reason in order + link + own:
            self.problems.append(Problem(position, entry.seq, reason))
        if own:
            self.failed.add(position)
        else:
            self.trusted = position
        if self.pred is None or entry.seq > self.entries[self.pred].seq:
            self.pred = position

    def _links_past_failed(self, entry: AuditEntry) -> bool:
        """True if the entries since the last trusted one failed and this one links past them."""
        if self.pred not in self.failed:
            return False
        if entry.prev_hash == self.entries[self.pred].entry_hash:
            return False
        if self.trusted is None:
            return entry.seq == 1 and entry.prev_hash == GENESIS
        anchor = self.entries[self.trusted]
        return entry.seq == anchor.seq + 1 and entry.prev_hash == anchor.entry_hash

    def _report_inserted(self, position: int, entry: AuditEntry) -> None:
        start, target = 0, "GENESIS"
        if self.trusted is not None:
            start, target = self.trusted + 1, f"seq {self.entries[self.trusted].seq}"
        for skipped in range(start, position):
            reason = f"not part of the chain: seq {entry.seq} links past it to {target} (inserted)"
            self.problems.append(Problem(skipped, self.entries[skipped].seq, reason))

    def _order(self, entry: AuditEntry) -> tuple[list[str], bool]:
        """Problems with the entry's seq, and whether its link can then be checked."""
        if self.pred is None:
            if entry.seq == 1:
                return [], True
            if entry.seq < 1:
                return [f"first entry has seq {entry.seq}; a log starts at seq 1"], False
            gap = self._gap(0, entry.seq)
            return [f"first entry has seq {entry.seq}; a full log starts at seq 1 ({gap})"], False
        before = self.entries[self.pred].seq
        if entry.seq == before + 1:
            return [], True
        if entry.seq == before:
            return [f"seq {entry.seq} appears twice (duplicate)"], False
        if entry.seq < before:
            return [f"seq {entry.seq} appears after seq {before} (reordered)"], False
        return [f"seq {entry.seq} follows seq {before} ({self._gap(before, entry.seq)})"], True

    def _gap(self, low: int, high: int) -> str:
        return _gap(self.seqs, low, high)

    def _link(self, entry: AuditEntry) -> list[str]:
        """Problems with the entry's prev_hash, unless its predecessor failed (then it is to
        blame for the broken link)."""
        if self.pred is None:
            if entry.prev_hash == GENESIS:
                return []
            return ["prev_hash is not GENESIS although seq 1 starts the log"]
        before = self.entries[self.pred]
        if self.pred in self.failed or entry.prev_hash == before.entry_hash:
            return []
        linked = self.position_of_hash.get(entry.prev_hash)
        if linked is not None:
            return [
                f"prev_hash links to seq {self.entries[linked].seq}, "
                f"not to seq {before.seq} before it (reordered)"
            ]
        return [
            f"prev_hash does not match entry seq {before.seq} "
            "(an entry was removed, inserted or reordered before it)"
        ]


def _gap(seqs: list[int], low: int, high: int) -> str:
    """Describe the numbers strictly between `low` and `high`, given the sorted numbers seen."""
    between = high - low - 1
    elsewhere = bisect_left(seqs, high) - bisect_right(seqs, low)
    if elsewhere == 0:
        if between == 1:
            return f"entry {low + 1} is missing"
        return f"entries {low + 1}-{high - 1} are missing"
    if elsewhere == between:
        return "reordered: the entries between appear elsewhere"
    return f"{between - elsewhere} of the {between} entries between are missing"


def _project_walk(entries: Sequence[AuditEntry], key: str) -> list[Problem]:
    """Check one project's entries as a chain of their own, by project_seq and
    prev_project_hash. Entries from before per-project links may only come first; the first
    linked entry counts on from them. Like the full walk, an entry that fails its own checks is
    blamed, not its successor: the successor may link to it, or past it if it was inserted."""
    project = entries[0].project_id if entries else ""
    numbers = sorted({e.project_seq for e in entries if e.project_seq is not None})
    problems = []
    expected = (1, GENESIS)  # (project_seq, prev_project_hash) of the next genuine entry
    after_failed: tuple[int, str] | None = None  # the same, if the failed entry before is genuine
    highest = 0  # the highest project_seq so far
    unlinked_seq = 0  # seq of the last entry without links
    for position, entry in enumerate(entries):
        own = _own_problems(entry, key)
        reasons = []
        if entry.project_id != project:
            reasons.append(f"an entry of project {entry.project_id}, not {project} (inserted)")
        elif entry.project_seq is None:
            if highest:
                reasons.append("an entry without project links after linked ones (reordered)")
            elif entry.seq <= unlinked_seq:
                reasons.append(f"seq {entry.seq} appears after seq {unlinked_seq} (reordered)")
            else:
                unlinked_seq, expected = entry.seq, (expected[0] + 1, entry.entry_hash)
        else:
            number = entry.project_seq
            linked = (number, entry.prev_project_hash) in (expected, after_failed)
            if not linked:
                before = expected[0] - 1
                if number == highest:
                    reasons.append(f"project_seq {number} appears twice (duplicate)")
                elif number < highest:
                    reasons.append(f"project_seq {number} appears after {highest} (reordered)")
                elif number > expected[0]:
                    gap = _gap(numbers, before, number)
                    after = f"project_seq {before}" if before else "the project's start"
                    reasons.append(f"project_seq {number} follows {after} ({gap})")
                else:
                    reasons.append(
                        f"prev_project_hash does not match the project's entry {before} (an "
                        "entry was removed, inserted or reordered before it)"
                    )
            if linked or number > highest:
                if own:
                    after_failed = (number + 1, entry.entry_hash)
                else:
                    expected, after_failed = (number + 1, entry.entry_hash), None
                highest = max(highest, number)
        problems += [Problem(position, entry.seq, reason) for reason in reasons + own]
    return problems
