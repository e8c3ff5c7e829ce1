"""The agreement's rules as checks. Each refusal names the rule (the agreement key) it enforces."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from blindlink.agreement.document import ReleaseKind, format_timestamp, purpose_text_problem
from blindlink.agreement.model import Agreement
from blindlink.matching.rules import FixedThreshold


class PolicyViolation(Exception):
    """A request the agreement does not allow. `rule` is the agreement key, e.g.
    "limits.max_uploads_per_period"; `denied` when the caller's role may never do this
    (PERMISSION_DENIED) rather than not now; `invalid` when the request itself does not say
    what the agreement asks of it (INVALID_ARGUMENT)."""

    def __init__(
        self, rule: str, message: str, denied: bool = False, invalid: bool = False
    ) -> None:
        super().__init__(f"{rule}: {message}")
        self.rule = rule
        self.message = message
        self.denied = denied
        self.invalid = invalid


@dataclass(frozen=True)
class PastUpload:
    committed_at: float
    count: int


def check_validity(agreement: Agreement, now: datetime) -> None:
    """Nothing is accepted or released outside the agreement's validity window."""
    if now < agreement.valid_from:
        raise PolicyViolation(
            "limits.valid_from",
            f"the agreement is not valid before {format_timestamp(agreement.valid_from)}",
        )
    if now >= agreement.valid_until:
        raise PolicyViolation(
            "limits.valid_until",
            f"the agreement expired at {format_timestamp(agreement.valid_until)}",
        )


def run_threshold(agreement: Agreement, party: str, requested: float) -> float:
    """The threshold of a requester batch's run. A fixed rule: the agreement's (`requested`
    0), or the requested one if it does not go below the floor. A calibrated rule: 0, as each
    run calibrates its own."""
    chosen = agreement.decision.threshold
    if not isinstance(chosen, FixedThreshold):
        if requested != 0:
            raise PolicyViolation(
                "matching.decision",
                "the agreement calibrates each run's threshold; a batch cannot choose one",
            )
        return 0.0
    if requested == 0:
        return chosen.threshold
    key = agreement.decision_key
    if party != "requester":
        raise PolicyViolation(f"{key}.threshold", "only the requester's batches choose a threshold")
    if not 0 < requested <= 1:
        raise PolicyViolation(f"{key}.threshold", f"{requested} is not in (0, 1]")
    floor = agreement.threshold_floor
    if floor is not None and requested < floor:
        raise PolicyViolation(
            f"{key}.threshold_floor",
            f"threshold {requested} is below the agreed floor {floor}",
        )
    return requested


def batch_purpose(agreement: Agreement, party: str, purpose: str) -> str | None:
    """The purpose a batch's audit entry records, checked against the agreement ("": none
    given): required of each requester batch where the agreement has batch_purpose (free text
    within max_length, or one of the allowed values), refused where it has none (the parties
    did not agree to its recording) and on the custodian's upload. Refusals never repeat the
    purpose."""
    rule = agreement.batch_purpose
    if party != "requester" or rule is None:
        if purpose:
            why = (
                "only the requester's batches declare a purpose"
                if party != "requester"
                else "the agreement does not ask batches for a purpose, so none is recorded"
            )
            raise PolicyViolation("batch_purpose", f"{why}; leave it out", invalid=True)
        return None
    if not purpose:
        wanted = (
            f"one of {_listed(rule.allowed)}"
            if rule.allowed is not None
            else f"free text of at most {rule.max_length} characters"
        )
        raise PolicyViolation(
            "batch_purpose",
            f"the agreement requires each batch to declare its purpose or case reference "
            f"({wanted}; `blindlink upload --purpose`)",
            invalid=True,
        )
    problem = purpose_text_problem(purpose)
    if problem:
        raise PolicyViolation("batch_purpose", f"the purpose {problem}", invalid=True)
    if rule.allowed is not None and purpose not in rule.allowed:
        raise PolicyViolation(
            "batch_purpose.allowed",
            f"the purpose is not one of the agreed values: {_listed(rule.allowed)}",
            invalid=True,
        )
    if rule.max_length is not None and len(purpose) > rule.max_length:
        raise PolicyViolation(
            "batch_purpose.max_length",
            f"the purpose has {len(purpose)} characters; the agreement allows at most "
            f"{rule.max_length}",
            invalid=True,
        )
    return purpose


def _listed(values: Sequence[str], shown: int = 5) -> str:
    """The first few agreed values, quoted, and how many there are (a status message stays
    short)."""
    listed = ", ".join(map(repr, values[:shown]))
    return listed if len(values) <= shown else f"{listed}, ... ({len(values)} in all)"


def check_upload(
    agreement: Agreement, count: int, past: Sequence[PastUpload], now: datetime
) -> None:
    """Per-upload and rolling-period limits of one party's uploads (`past`: its earlier ones)."""
    check_validity(agreement, now)
    if count > agreement.max_records_per_upload:
        raise PolicyViolation(
            "limits.max_records_per_upload",
            f"{count} records exceed the limit of {agreement.max_records_per_upload} per upload",
        )
    since = now.timestamp() - agreement.period_seconds
    recent = [u for u in past if u.committed_at > since]
    if len(recent) + 1 > agreement.max_uploads_per_period:
        raise PolicyViolation(
            "limits.max_uploads_per_period",
            f"{len(recent)} uploads in the "
            f"last {agreement.period_seconds} s already reach the limit of "
            f"{agreement.max_uploads_per_period}",
        )
    records = sum(u.count for u in recent) + count
    if records > agreement.max_records_per_period:
        raise PolicyViolation(
            "limits.max_records_per_period",
            f"{records} records in the last "
            f"{agreement.period_seconds} s would exceed the limit of "
            f"{agreement.max_records_per_period}",
        )


def check_update(agreement: Agreement, party: str, now: datetime) -> None:
    """Whether `party` may update its records now: only the custodian, only in a project whose
    agreement blocks on keys (updates change the custodian's standing index)."""
    check_validity(agreement, now)
    if party != "custodian":
        raise PolicyViolation(
            "custodian_updates", "only the custodian updates its records", denied=True
        )
    if agreement.blocking_keys is None:
        raise PolicyViolation(
            "blocking.keys",
            "custodian updates need an agreement with blocking keys (the server keeps such a "
            "custodian's records in a standing index it can update); without blocking keys, "
            "sign a new agreement (a new reference) and upload the new data to a new project",
        )


def check_release(
    agreement: Agreement, state: str, approved: bool, results_deleted: bool, now: datetime
) -> None:
    """Whether a finished run's results may be released now."""
    check_validity(agreement, now)
    if state != "done":
        raise PolicyViolation("run", f"nothing to release: the run is {state}")
    if agreement.custodian_approval and not approved:
        raise PolicyViolation(
            "release.custodian_approval", "the custodian has not approved this run's results yet"
        )
    if results_deleted:
        raise PolicyViolation(
            "retention.results_ttl_seconds",
            "the run's results were deleted under the agreement's retention rules",
        )


def check_approval(agreement: Agreement, party: str, state: str) -> None:
    """Whether `party` may approve a run in `state` now."""
    if party != "custodian":
        raise PolicyViolation(
            "release.custodian_approval", "only the custodian approves runs", denied=True
        )
    if not agreement.custodian_approval:
        raise PolicyViolation(
            "release.custodian_approval", "this agreement releases results without approval"
        )
    if state != "done":
        raise PolicyViolation("run", f"only a finished run can be approved; this one is {state}")


def counts_visible(agreement: Agreement, party: str, approved: bool) -> bool:
    """A party may see a run's counts when it would be released at least the count (after
    approval, where approval is required), and the custodian whenever it must approve them."""
    if party == "custodian" and agreement.custodian_approval:
        return True
    released = not agreement.custodian_approval or approved
    return agreement.release[party] is not ReleaseKind.NOTHING and released


Pairs = tuple[Sequence[int], Sequence[int]]  # (requester rows, custodian rows) of a run's pairs


def released_rows(
    agreement: Agreement, party: str, matches: Pairs, possible: Pairs
) -> tuple[list[int], list[int], list[int], list[int]]:
    """The row references a party's release holds: (own, other party's) rows of the matches,
    then of the possible matches where the agreement lists them. Pairs come in requester-row
    order; own rows alone are sorted, so that their order says nothing of the pairing."""
    kind = agreement.release[party]

    def rows(pairs: Pairs) -> tuple[list[int], list[int]]:
        requester, custodian = pairs
        own, other = (requester, custodian) if party == "requester" else (custodian, requester)
        if kind is ReleaseKind.OWN_ROWS:
            return sorted(own), []
        if kind is ReleaseKind.PAIRS:
            return list(own), list(other)
        return [], []

    listed = agreement.possible_release == "list"
    return (*rows(matches), *rows(possible if listed else ([], [])))
