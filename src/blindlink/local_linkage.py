"""Linking two parties' encodings on one machine, through the server's decision pipeline: an
analyst tries an agreement's settings on their own data without a server."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from blindlink.agreement.model import Agreement, default_rule
from blindlink.agreement.policy import run_threshold
from blindlink.encoded import Encoded
from blindlink.errors import InputError
from blindlink.matching.decision import Decisions, Estimates, PairStatus, link
from blindlink.matching.engine import SharedEncodings
from blindlink.matching.executors import Executor, LocalPoolExecutor, SerialExecutor
from blindlink.matching.rules import DecisionRule, FixedThreshold

if TYPE_CHECKING:
    import pandas as pd

STATUS_NAMES = {
    PairStatus.MATCH: "match",
    PairStatus.WITHHELD: "withheld",
    PairStatus.POSSIBLE: "possible",
}


@dataclass(frozen=True, eq=False)
class LinkResult:
    """The solved pairs a run decided on, by both parties' record IDs, and how it decided.

    `status` says per pair: "match", "withheld" (a match the ambiguity rule withholds) or
    "possible" (in the possible-match band); `probability` is NaN where no match model was
    fitted; `estimates` are the model's for the matches (None when it was not fitted)."""

    requester_ids: tuple[str, ...]
    custodian_ids: tuple[str, ...]
    dice: np.ndarray
    probability: np.ndarray
    status: tuple[str, ...]
    threshold: float
    rule: str
    estimates: Estimates | None

    def __len__(self) -> int:
        return len(self.status)

    def matches(self) -> list[tuple[str, str]]:
        """(requester ID, custodian ID) of each match, as a server run releases them."""
        return [
            (r, c)
            for r, c, s in zip(self.requester_ids, self.custodian_ids, self.status, strict=True)
            if s == "match"
        ]

    def to_pandas(self) -> pd.DataFrame:
        """The pairs as a DataFrame (needs the `pandas` extra)."""
        from blindlink.extras import require_pandas

        require_pandas("LinkResult.to_pandas()")
        import pandas as pd

        return pd.DataFrame(
            {
                "requester_id": list(self.requester_ids),
                "custodian_id": list(self.custodian_ids),
                "dice": self.dice,
                "probability": self.probability,
                "status": list(self.status),
            }
        )


def link_locally(
    requester: Encoded,
    custodian: Encoded,
    *,
    agreement: Agreement | None = None,
    threshold: float | None = None,
    workers: int = 1,
) -> LinkResult:
    """Link the requester's records to the custodian's as a server run under `agreement`
    would: its decision rule (a requested `threshold` as a requester batch may ask for) and its
    blocking. Without an agreement, compare all pairs and decide at the fixed Dice `threshold`
    or, without one, as a new agreement does by default for encodings without hardening (what
    `encode` makes without an agreement): the run's match model calibrates the threshold and
    estimates precision and recall. Encodings made with an agreement are linked with it."""
    if agreement is None:
        rule = default_rule([]) if threshold is None else DecisionRule(FixedThreshold(threshold))
        blocking = None
    else:
        for party in (requester, custodian):
            if party.origin != agreement.encodings_id:
                raise InputError(
                    "encodings", "not encoded as the agreement says: encode with agreement="
                )
        rule = agreement.rule_for_run(run_threshold(agreement, "requester", threshold or 0.0))
        blocking = agreement.blocking
    if requester.origin != custodian.origin:
        raise InputError("encodings", "the parties' encodings were made differently")
    shared = SharedEncodings.from_rows(requester.records, custodian.records, requester.key_count)
    executor: Executor = LocalPoolExecutor(workers) if workers > 1 else SerialExecutor()
    return _result(link(shared, rule, executor, workers, blocking), requester, custodian)


def _result(decisions: Decisions, requester: Encoded, custodian: Encoded) -> LinkResult:
    summary = decisions.summary()
    return LinkResult(
        tuple(requester.ids[r] for r in decisions.requester_rows),
        tuple(custodian.ids[c] for c in decisions.custodian_rows),
        decisions.similarities,
        decisions.probabilities,
        tuple(STATUS_NAMES[PairStatus(s)] for s in decisions.status),
        decisions.threshold,
        summary.rule,
        decisions.estimates,
    )
