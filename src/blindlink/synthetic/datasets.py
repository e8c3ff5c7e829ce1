"""Two parties' CSV files with a known overlap, plus the ground truth linking them.

The requester file is the clean reference: every requester record is a true identity as drawn.
Every custodian record, shared or not, is a copy corrupted at the configured rates, so neither
file's noise level hints at which of its records are shared.
"""

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from blindlink.synthetic.corruption import CorruptionRates, corrupt
from blindlink.synthetic.population import People, draw_people

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

# Changing the chunk size changes how corruption draws are grouped, hence the output for a seed.
_CHUNK_ROWS = 50_000
_ID_DIGITS = 9


@dataclass(frozen=True)
class GeneratedFiles:
    requester: Path
    custodian: Path
    truth: Path
    requester_records: int
    custodian_records: int
    true_matches: int


@dataclass(frozen=True)
class _Side:
    """One party's file: which person each row holds, and each row's ID."""

    path: Path
    people: np.ndarray  # population index per row, in file order
    ids: list[str]
    corruption: CorruptionRates | None


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
    sides. Rows are shuffled and IDs drawn independently per side, so neither position nor ID
    reveals a match. The same `seed` gives byte-identical files. `progress` is called with
    the number of rows just written to either party file (2 * `records` in total).
    """
    _check_arguments(records, overlap)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shared = round(overlap * records)
    population_rng, requester_rng, custodian_rng = np.random.default_rng(seed).spawn(3)

    # Population layout: [0, shared) on both sides, then requester-only, then custodian-only.
    population = draw_people(population_rng, 2 * records - shared)
    requester = _Side(
        out_dir / "requester.csv",
        requester_rng.permutation(records),
        _draw_ids(requester_rng, "R", records),
        None,
    )
    custodian_people = np.concatenate([np.arange(shared), np.arange(records, len(population))])
    custodian = _Side(
        out_dir / "custodian.csv",
        custodian_rng.permutation(custodian_people),
        _draw_ids(custodian_rng, "C", records),
        corruption,
    )
    _write_side(requester, population, requester_rng, progress)
    _write_side(custodian, population, custodian_rng, progress)
    truth = out_dir / "truth.csv"
    _write_truth(truth, requester, custodian, shared, len(population))
    return GeneratedFiles(requester.path, custodian.path, truth, records, records, shared)


def _check_arguments(records: int, overlap: float) -> None:
    if isinstance(records, bool) or not isinstance(records, int | np.integer) or records < 1:
        raise ValueError(f"records must be a whole number >= 1, got {records!r}")
    if not 0.0 <= overlap <= 1.0:
        raise ValueError(f"overlap must be a fraction in [0, 1], got {overlap!r}")


def _draw_ids(rng: np.random.Generator, prefix: str, count: int) -> list[str]:
    """Distinct random IDs of a fixed width, e.g. R482913077."""
    low = 10 ** (_ID_DIGITS - 1)
    numbers = rng.choice(10**_ID_DIGITS - low, size=count, replace=False) + low
    return [f"{prefix}{number}" for number in numbers.tolist()]


def _write_side(
    side: _Side,
    population: People,
    rng: np.random.Generator,
    progress: Callable[[int], None] | None,
) -> None:
    with side.path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(FIELDS)
        for start in range(0, len(side.people), _CHUNK_ROWS):
            stop = min(start + _CHUNK_ROWS, len(side.people))
            columns = population.take(side.people[start:stop]).render()
            if side.corruption is not None:
                corrupt(columns, side.corruption, rng)
            writer.writerows(
                zip(side.ids[start:stop], *(columns[field] for field in FIELDS[1:]), strict=True)
            )
            if progress is not None:
                progress(stop - start)


def _write_truth(
    path: Path, requester: _Side, custodian: _Side, shared: int, population: int
) -> None:
    """One row per shared person, in requester file order."""
    custodian_row = np.empty(population, dtype=np.int64)
    custodian_row[custodian.people] = np.arange(len(custodian.people))
    requester_rows = np.flatnonzero(requester.people < shared)
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(TRUTH_FIELDS)
        writer.writerows(
            (requester.ids[row], custodian.ids[custodian_row[person]])
            for row, person in zip(
                requester_rows.tolist(), requester.people[requester_rows].tolist(), strict=True
            )
        )
