"""The calibrated decision on labelled files: two parties' CSV files, and which of their records
are the same person, linked as `bl.link` links them under a new agreement's default decision
(unhardened, and with the recommended hardening), against the truth and against the best fixed
threshold chosen with it. Public linkage data sets nobody built the model on show where the
model's estimates hold; the files stay where they are and nothing of them is written out but
the measured numbers."""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from blindlink.agreement.document import RECOMMENDED_HARDENING
from blindlink.agreement.model import PartyInfo, agreement_from_document, new_agreement_document
from blindlink.benchmarking.quality import FLOOR, curve_from, partners
from blindlink.encoded import encode
from blindlink.encoding.schema import LinkageSchema
from blindlink.errors import InputError
from blindlink.evaluation import Quality, read_truth
from blindlink.local_linkage import LinkResult, link_locally

# Stand-ins for the parties' certificates: the agreement is only read, never signed.
_PARTY = {
    role: PartyInfo(role, letter * 64) for role, letter in (("requester", "a"), ("custodian", "b"))
}


@dataclass(frozen=True)
class LabelledFiles:
    """Two parties' CSV files, their linkage schema and ID column, and the true pairs by
    (requester ID, custodian ID)."""

    requester: Path
    custodian: Path
    schema: LinkageSchema
    id_column: str
    truth: frozenset[tuple[str, str]]


def same_ids(requester: Path, custodian: Path, id_column: str) -> frozenset[tuple[str, str]]:
    """The true pairs where a record ID on both sides names the same person (as in data sets
    generated with one ID per person)."""

    def ids(path: Path) -> set[str]:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if id_column not in (reader.fieldnames or []):
                raise InputError(str(path), f"no record ID column {id_column!r}", line=1)
            return {row[id_column] for row in reader}

    return frozenset((i, i) for i in ids(requester) & ids(custodian))


def truth_file(path: Path) -> frozenset[tuple[str, str]]:
    """The true pairs listed in a CSV file with requester_id and custodian_id columns."""
    return frozenset(read_truth(path))


def secret(index: int) -> bytes:
    """The shared secret of the `index`-th linkage: fixed, so that runs repeat."""
    return hashlib.sha256(f"blindlink labelled benchmark {index}".encode()).digest()


def measure(files: LabelledFiles, hardened: bool, secret_index: int) -> dict[str, Any]:
    """One linkage: the calibrated decision's true and estimated quality, and the best fixed
    Dice threshold's."""
    document = new_agreement_document(
        reference="labelled benchmark",
        requester=_PARTY["requester"],
        custodian=_PARTY["custodian"],
        schema_sha256=files.schema.sha256,
        bit_length=files.schema.bit_length,
        hardening=RECOMMENDED_HARDENING if hardened else [],
    )
    agreement = agreement_from_document(document)
    key = secret(secret_index)
    ours, theirs = (
        encode(path, files.schema, key, agreement=agreement, id_column=files.id_column)
        for path in (files.requester, files.custodian)
    )
    calibrated = link_locally(ours, theirs, agreement=agreement)
    every = link_locally(ours, theirs, threshold=FLOOR)
    estimates = calibrated.estimates
    return {
        "hardened": hardened,
        "secret": secret_index,
        "records": [len(ours), len(theirs)],
        "true_pairs": len(files.truth),
        "calibrated": {
            "threshold": calibrated.threshold,
            "rule": calibrated.rule,
            "released": len(calibrated.matches()),
            "true": _released(calibrated, files.truth),
            "estimated": None if estimates is None else estimates.to_dict(),
        },
        "oracle": _oracle(every, files.truth),
    }


def _oracle(every: LinkResult, truth: frozenset[tuple[str, str]]) -> dict[str, float]:
    """The fixed Dice threshold of the grid with the best true F*, from one run at the lowest:
    solving takes the most similar pairs first, so a higher threshold releases those above it."""
    pairs = zip(every.requester_ids, every.custodian_ids, strict=True)
    right = np.array([pair in truth for pair in pairs], dtype=bool)
    curve = curve_from(right, every.dice, partners(truth))
    return curve.at(curve.best_threshold())


def _released(result: LinkResult, truth: frozenset[tuple[str, str]]) -> dict[str, float]:
    """True precision, recall and F* of a run's matches."""
    released = set(result.matches())
    right = len(released & truth)
    return Quality(right, len(released) - right, partners(truth) - right).to_dict()
