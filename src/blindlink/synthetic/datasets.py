"""A custodian's CSV file and requester batches drawn from it, with the ground truth linking them.

Requester records are the clean reference: every one is a true identity as drawn. Every custodian
record, shared or not, is a copy corrupted at the configured rates, so neither file's noise level
hints at which of its records are shared.

Files are written in chunks, and every value is a pure function of the seed and the record's
index (`randomness`), so memory stays bounded by the chunk, not the record count, and the bytes
written do not depend on the chunk size. The population is laid out as: custodian row j holds
person j; batch k's requester-only people follow the custodian's, `batch_records` per batch.
"""

import csv
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Self

import numpy as np

from blindlink.synthetic.corruption import CORRUPTION_DRAWS, CorruptionRates, corrupt
from blindlink.synthetic.population import draw_people
from blindlink.synthetic.randomness import Permutation, stream_key, uniforms

FIELDS = (
    "id",
    "given_name",
    "surname",
    "date_of_birth",
    "sex",
    "street_address",
    "city",
    "postcode",
)
TRUTH_FIELDS = ("requester_id", "custodian_id")

_CHUNK_ROWS = 65_536  # rows rendered at once: bounds memory, does not change the output
_ID_DIGITS = 9
_MAX_RECORDS = 10**_ID_DIGITS - 10 ** (_ID_DIGITS - 1)  # per party: one distinct ID each


@dataclass(frozen=True)
class GeneratedFiles:
    requester: Path
    custodian: Path
    truth: Path
    requester_records: int
    custodian_records: int
    true_matches: int


@dataclass(frozen=True)
class GeneratedBatches:
    custodian: Path
    custodian_records: int
    requesters: tuple[Path, ...]  # one file per batch
    truths: tuple[Path, ...]  # batch k's true pairs, in its requester file's order
    batch_records: int
    true_matches_per_batch: int


class _Stream(IntEnum):
    """The independent random streams of one seed."""

    POPULATION = 0
    CORRUPTION = 1
    CUSTODIAN_IDS = 2
    REQUESTER_IDS = 3
    SHARED_ROWS = 4  # which custodian rows the batches share
    BATCH_ORDER = 5  # per batch: the order of its rows


def generate_datasets(
    out_dir: Path,
    records: int,
    overlap: float,
    seed: int,
    corruption: CorruptionRates = CorruptionRates(),  # noqa: B008 - frozen, so sharing is safe
    progress: Callable[[int], None] | None = None,
) -> GeneratedFiles:
    """Write requester.csv, custodian.csv and truth.csv into `out_dir` (created if needed).

    Each side holds `records` distinct people, `round(overlap * records)` of whom are on both
    sides. Shared rows sit at random positions and IDs are drawn independently per side, so
    neither position nor ID reveals a match. The same `seed` gives byte-identical files.
    `progress` is called with the number of rows just written to either party file
    (2 * `records` in total).
    """
    _check_arguments(records, overlap)
    plan = _Plan(Path(out_dir), records, 1, records, overlap, seed, corruption)
    _write(plan, ("requester.csv",), ("truth.csv",), progress)
    return GeneratedFiles(
        plan.out_dir / "requester.csv",
        plan.out_dir / "custodian.csv",
        plan.out_dir / "truth.csv",
        records,
        records,
        plan.shared,
    )


def generate_batches(
    out_dir: Path,
    custodian_records: int,
    batches: int,
    batch_records: int,
    overlap: float,
    seed: int,
    corruption: CorruptionRates = CorruptionRates(),  # noqa: B008 - frozen, so sharing is safe
    progress: Callable[[int], None] | None = None,
    chunk_rows: int = _CHUNK_ROWS,
) -> GeneratedBatches:
    """Write custodian.csv and, per batch k (1-based), requester-k.csv and truth-k.csv.

    Each batch holds `batch_records` people, `round(overlap * batch_records)` of them drawn
    from the custodian's rows (no custodian row in two batches) and the rest absent from it.
    `chunk_rows` bounds memory and does not change the output.
    """
    _check_arguments(custodian_records, overlap)
    _check_count("batches", batches)
    _check_count("batch_records", batch_records)
    _check_count("chunk_rows", chunk_rows)
    plan = _Plan(
        Path(out_dir), custodian_records, batches, batch_records, overlap, seed, corruption
    )
    if plan.shared * batches > custodian_records:
        raise ValueError(
            f"{batches} batches sharing {plan.shared} records each need "
            f"{plan.shared * batches} custodian records, but the custodian has "
            f"{custodian_records}"
        )
    width = len(str(batches))
    requesters = tuple(f"requester-{k:0{width}d}.csv" for k in range(1, batches + 1))
    truths = tuple(f"truth-{k:0{width}d}.csv" for k in range(1, batches + 1))
    _write(plan, requesters, truths, progress, chunk_rows)
    return GeneratedBatches(
        plan.out_dir / "custodian.csv",
        custodian_records,
        tuple(plan.out_dir / name for name in requesters),
        tuple(plan.out_dir / name for name in truths),
        batch_records,
        plan.shared,
    )


def _check_arguments(records: int, overlap: float) -> None:
    _check_count("records", records)
    if not 0.0 <= overlap <= 1.0:
        raise ValueError(f"overlap must be a fraction in [0, 1], got {overlap!r}")


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")


@dataclass(frozen=True)
class _Plan:
    """What to generate; every per-record value is computed from it on demand."""

    out_dir: Path
    custodian_records: int
    batches: int
    batch_records: int
    overlap: float
    seed: int
    corruption: CorruptionRates

    def __post_init__(self) -> None:
        for party, records in (
            ("custodian", self.custodian_records),
            ("requester", self.batches * self.batch_records),
        ):
            if records > _MAX_RECORDS:
                raise ValueError(
                    f"the {party} would have {records} records; {_ID_DIGITS}-digit IDs allow "
                    f"at most {_MAX_RECORDS}"
                )

    @property
    def shared(self) -> int:
        return round(self.overlap * self.batch_records)

    def key(self, stream: _Stream, *more: int) -> np.uint64:
        return stream_key(self.seed, stream, *more)

    def ids(self, stream: _Stream, prefix: str, index: np.ndarray) -> list[str]:
        """Distinct random IDs of a fixed width, e.g. R482913077, for distinct indices."""
        numbers = Permutation(self.key(stream), _MAX_RECORDS)(index) + 10 ** (_ID_DIGITS - 1)
        return [f"{prefix}{number}" for number in numbers.tolist()]


def _write(
    plan: _Plan,
    requesters: tuple[str, ...],
    truths: tuple[str, ...],
    progress: Callable[[int], None] | None,
    chunk_rows: int = _CHUNK_ROWS,
) -> None:
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    with _CsvFile(plan.out_dir / "custodian.csv", FIELDS) as custodian:
        for start in range(0, plan.custodian_records, chunk_rows):
            rows = np.arange(start, min(start + chunk_rows, plan.custodian_records))
            custodian.write(_custodian_rows(plan, rows))
            if progress is not None:
                progress(len(rows))
    shared_rows = Permutation(plan.key(_Stream.SHARED_ROWS), plan.custodian_records)
    for batch, (requester_name, truth_name) in enumerate(zip(requesters, truths, strict=True)):
        order = Permutation(plan.key(_Stream.BATCH_ORDER, batch), plan.batch_records)
        with (
            _CsvFile(plan.out_dir / requester_name, FIELDS) as requester,
            _CsvFile(plan.out_dir / truth_name, TRUTH_FIELDS) as truth,
        ):
            for start in range(0, plan.batch_records, chunk_rows):
                rows = np.arange(start, min(start + chunk_rows, plan.batch_records))
                records, pairs = _batch_rows(plan, batch, rows, order, shared_rows)
                requester.write(records)
                truth.write(pairs)
                if progress is not None:
                    progress(len(rows))


def _custodian_rows(plan: _Plan, rows: np.ndarray) -> Iterable[Sequence[str]]:
    columns = draw_people(plan.key(_Stream.POPULATION), rows).render()
    corrupt(
        columns, plan.corruption, uniforms(plan.key(_Stream.CORRUPTION), rows, CORRUPTION_DRAWS)
    )
    ids = plan.ids(_Stream.CUSTODIAN_IDS, "C", rows)
    return zip(ids, *(columns[field] for field in FIELDS[1:]), strict=True)


def _batch_rows(
    plan: _Plan, batch: int, rows: np.ndarray, order: Permutation, shared_rows: Permutation
) -> tuple[Iterable[Sequence[str]], Iterable[Sequence[str]]]:
    """Batch `batch`'s requester records at `rows`, and their true pairs.

    Row r takes slot order(r); the first `shared` slots hold custodian rows (the batch's share
    of `shared_rows`), the others people of the batch's own block after the custodian's.
    """
    slot = order(rows)
    is_shared = slot < plan.shared
    custodian_row = shared_rows(batch * plan.shared + slot[is_shared])
    person = plan.custodian_records + batch * plan.batch_records + slot
    person[is_shared] = custodian_row
    columns = draw_people(plan.key(_Stream.POPULATION), person).render()
    ids = plan.ids(_Stream.REQUESTER_IDS, "R", batch * plan.batch_records + rows)
    records = zip(ids, *(columns[field] for field in FIELDS[1:]), strict=True)
    shared_ids = [ids[i] for i in np.flatnonzero(is_shared).tolist()]
    pairs = zip(shared_ids, plan.ids(_Stream.CUSTODIAN_IDS, "C", custodian_row), strict=True)
    return records, pairs


class _CsvFile:
    """A CSV file being written: its header first, then rows as they come."""

    def __init__(self, path: Path, header: Sequence[str]) -> None:
        self._file = path.open("w", encoding="utf-8", newline="")
        self._writer = csv.writer(self._file, lineterminator="\n")
        self._writer.writerow(header)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()

    def write(self, rows: Iterable[Sequence[str]]) -> None:
        self._writer.writerows(rows)
