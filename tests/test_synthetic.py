"""Tests for the synthetic requester/custodian data generator."""

import csv
import datetime as dt
import math
import re
from collections import Counter
from dataclasses import fields
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from blindlink.cli.main import main
from blindlink.synthetic import (
    CorruptionRates,
    GeneratedFiles,
    generate_batches,
    generate_datasets,
)
from blindlink.synthetic.address_parts import TOWNS
from blindlink.synthetic.corruption import make_typo, swap_date
from blindlink.synthetic.frequency_tables import TABLES
from blindlink.synthetic.nicknames import FEMALE_VARIANTS, MALE_VARIANTS
from blindlink.synthetic.population import (
    draw_people,
    female_given_names,
    male_given_names,
    surnames,
)
from blindlink.synthetic.randomness import Permutation, stream_key

HEADER = [
    "id",
    "given_name",
    "surname",
    "date_of_birth",
    "sex",
    "street_address",
    "city",
    "postcode",
]
PERSON_FIELDS = HEADER[1:]
RECORDS = 3000
OVERLAP = 0.4
NO_ERRORS = {f.name: 0.0 for f in fields(CorruptionRates)}

Row = dict[str, str]


def read_csv(path: Path) -> tuple[list[str], list[Row]]:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def pairs(files: GeneratedFiles) -> list[tuple[Row, Row]]:
    """(requester row, custodian row) for every true pair."""
    requester = {row["id"]: row for row in read_csv(files.requester)[1]}
    custodian = {row["id"]: row for row in read_csv(files.custodian)[1]}
    truth = read_csv(files.truth)[1]
    return [(requester[t["requester_id"]], custodian[t["custodian_id"]]) for t in truth]


def only(**rates: float) -> CorruptionRates:
    """Rates with every kind of error off except those given."""
    return CorruptionRates(**{**NO_ERRORS, **rates})


def differing(pair: tuple[Row, Row]) -> set[str]:
    requester, custodian = pair
    return {field for field in PERSON_FIELDS if requester[field] != custodian[field]}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> GeneratedFiles:
    return generate_datasets(tmp_path_factory.mktemp("default"), RECORDS, OVERLAP, seed=11)


def generate(tmp_path: Path, corruption: CorruptionRates, records: int = 1000) -> GeneratedFiles:
    return generate_datasets(tmp_path, records, 0.5, seed=5, corruption=corruption)


def test_every_row_has_the_documented_format(files: GeneratedFiles) -> None:
    for path, prefix in ((files.requester, "R"), (files.custodian, "C")):
        header, rows = read_csv(path)
        assert header == HEADER
        for row in rows:
            assert re.fullmatch(rf"{prefix}\d{{7,}}", row["id"])
            assert row["sex"] in {"M", "F", ""}
            assert re.fullmatch(r"(\d{4})?", row["postcode"])
            if row["date_of_birth"]:
                assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", row["date_of_birth"])
                dt.date.fromisoformat(row["date_of_birth"])
    assert read_csv(files.truth)[0] == ["requester_id", "custodian_id"]
    for path in (files.requester, files.custodian, files.truth):
        assert b"\r" not in path.read_bytes()


def test_requester_records_are_complete_and_clean(files: GeneratedFiles) -> None:
    postcodes = dict(TOWNS)
    for row in read_csv(files.requester)[1]:
        assert all(row[field] for field in PERSON_FIELDS)
        assert re.fullmatch(r"[1-9]\d* \w.*", row["street_address"])
        assert postcodes[row["city"]] == row["postcode"]
        assert row["given_name"][0].isupper() and row["surname"][0].isupper()


def test_counts_and_truth_link_existing_records(files: GeneratedFiles) -> None:
    requester_ids = [row["id"] for row in read_csv(files.requester)[1]]
    custodian_ids = [row["id"] for row in read_csv(files.custodian)[1]]
    truth = read_csv(files.truth)[1]
    assert len(requester_ids) == len(custodian_ids) == RECORDS
    assert len(truth) == files.true_matches == round(OVERLAP * RECORDS)
    assert (files.requester_records, files.custodian_records) == (RECORDS, RECORDS)
    assert {t["requester_id"] for t in truth} <= set(requester_ids)
    assert {t["custodian_id"] for t in truth} <= set(custodian_ids)
    assert len({t["requester_id"] for t in truth}) == len({t["custodian_id"] for t in truth})
    assert len(set(requester_ids)) == len(set(custodian_ids)) == RECORDS


def test_file_order_does_not_reveal_shared_records(files: GeneratedFiles) -> None:
    truth = read_csv(files.truth)[1]
    for path, column in ((files.requester, "requester_id"), (files.custodian, "custodian_id")):
        shared = {t[column] for t in truth}
        positions = [i for i, row in enumerate(read_csv(path)[1]) if row["id"] in shared]
        # Shuffled rows put the shared ones evenly through the file, not at its start or end.
        assert abs(np.mean(positions) / RECORDS - 0.5) < 0.05


def test_same_seed_gives_identical_bytes_and_other_seeds_differ(tmp_path: Path) -> None:
    names = ("requester.csv", "custodian.csv", "truth.csv")
    outputs = {}
    for label, seed in (("a", 3), ("b", 3), ("c", 4)):
        generate_datasets(tmp_path / label, 500, 0.5, seed)
        outputs[label] = [(tmp_path / label / name).read_bytes() for name in names]
    assert outputs["a"] == outputs["b"]
    assert all(a != c for a, c in zip(outputs["a"], outputs["c"], strict=True))


def test_default_noise_changes_a_plausible_share_of_custodian_copies(files: GeneratedFiles) -> None:
    true_pairs = pairs(files)
    changed = [differing(pair) for pair in true_pairs]
    share_changed = sum(bool(fields_) for fields_ in changed) / len(true_pairs)
    assert 0.3 < share_changed < 0.65
    # Noise is moderate: most copies still agree on each single field.
    per_field = Counter(field for fields_ in changed for field in fields_)
    assert max(per_field.values()) / len(true_pairs) < 0.15
    assert sum(len(fields_) > 3 for fields_ in changed) / len(true_pairs) < 0.1


def test_zero_rates_give_identical_copies(tmp_path: Path) -> None:
    true_pairs = pairs(generate(tmp_path, CorruptionRates.scaled(0)))
    assert true_pairs
    assert not any(differing(pair) for pair in true_pairs)


def test_missing_blanks_every_field(tmp_path: Path) -> None:
    custodian = read_csv(generate(tmp_path, only(missing=1.0)).custodian)[1]
    assert all(row["id"] and not any(row[f] for f in PERSON_FIELDS) for row in custodian)


def test_moving_replaces_the_whole_address(tmp_path: Path) -> None:
    postcodes = dict(TOWNS)
    true_pairs = pairs(generate(tmp_path, only(moved=1.0)))
    moved = [pair for pair in true_pairs if "street_address" in differing(pair)]
    assert len(moved) > 0.98 * len(true_pairs)
    for requester, custodian in true_pairs:
        assert differing((requester, custodian)) <= {"street_address", "city", "postcode"}
        assert postcodes[custodian["city"]] == custodian["postcode"]


def test_surname_change_always_changes_only_the_surname(tmp_path: Path) -> None:
    known = set(surnames().values)
    for requester, custodian in pairs(generate(tmp_path, only(surname_change=1.0))):
        assert differing((requester, custodian)) == {"surname"}
        assert custodian["surname"] in known


def test_nicknames_are_variants_for_the_same_sex(tmp_path: Path) -> None:
    changed = 0
    for requester, custodian in pairs(generate(tmp_path, only(nickname=1.0))):
        variants = (MALE_VARIANTS if requester["sex"] == "M" else FEMALE_VARIANTS).get(
            requester["given_name"], ()
        )
        assert custodian["given_name"] in (variants or (requester["given_name"],))
        assert differing((requester, custodian)) <= {"given_name"}
        changed += bool(variants)
    assert changed > 50


def test_date_swaps_keep_valid_plausible_dates(tmp_path: Path) -> None:
    true_pairs = pairs(generate(tmp_path, only(date_swap=1.0)))
    # About a tenth of dates (e.g. 1988-08-23) admit no valid swap and stay as they are.
    assert sum("date_of_birth" in differing(pair) for pair in true_pairs) > 0.8 * len(true_pairs)
    for requester, custodian in true_pairs:
        assert differing((requester, custodian)) <= {"date_of_birth"}
        born = dt.date.fromisoformat(custodian["date_of_birth"])
        assert dt.date(1900, 1, 1) <= born <= dt.date(2025, 1, 1)
        assert sorted(custodian["date_of_birth"]) == sorted(requester["date_of_birth"])


def test_typos_are_single_edits_in_a_name_or_address(tmp_path: Path) -> None:
    true_pairs = pairs(generate(tmp_path, only(typo=1.0)))
    assert sum(bool(differing(pair)) for pair in true_pairs) > 0.95 * len(true_pairs)
    for requester, custodian in true_pairs:
        changed = differing((requester, custodian))
        assert len(changed) <= 1
        assert changed <= {"given_name", "surname", "street_address", "city"}
        for field in changed:
            assert abs(len(requester[field]) - len(custodian[field])) <= 1
            assert requester[field][0] == custodian[field][0]


@pytest.mark.parametrize(
    ("text", "kind", "expected"),
    [
        ("Smith", 0.1, "Saith"),  # substitution at position 1 with 'a'
        ("Smith", 0.3, "Samith"),  # insertion
        ("Smith", 0.6, "Sith"),  # deletion
        ("Smith", 0.9, "Simth"),  # transposition
    ],
)
def test_make_typo_kinds(text: str, kind: float, expected: str) -> None:
    assert make_typo(text, kind, position=0.0, char=0.0) == expected


def test_make_typo_leaves_text_without_editable_characters() -> None:
    assert make_typo("A", 0.1, 0.5, 0.5) == "A"


def test_swap_date_prefers_valid_day_month_swap() -> None:
    assert swap_date("1985-03-07", kind=0.1, position=0.5) == "1985-07-03"
    assert swap_date("1985-03-27", kind=0.1, position=0.0) != "1985-03-27"


def test_swap_date_always_returns_a_valid_date() -> None:
    draws = np.random.default_rng(0).random((2000, 3))
    start = dt.date(1925, 1, 1).toordinal()
    for offset, kind, position in draws.tolist():
        original = dt.date.fromordinal(start + int(offset * 36500)).isoformat()
        dt.date.fromisoformat(swap_date(original, kind, position))


def test_name_and_age_frequencies_are_realistic(tmp_path: Path) -> None:
    rows = read_csv(generate_datasets(tmp_path, 20_000, 0.0, seed=8).requester)[1]
    top_surnames = [name for name, _ in Counter(r["surname"] for r in rows).most_common(3)]
    assert "Smith" in top_surnames
    table = surnames()
    expected_smith = table.probabilities[list(table.values).index("Smith")]
    observed_smith = sum(r["surname"] == "Smith" for r in rows) / len(rows)
    assert observed_smith == pytest.approx(expected_smith, rel=0.25)
    male, female = set(male_given_names().values), set(female_given_names().values)
    assert all(r["given_name"] in (male if r["sex"] == "M" else female) for r in rows)
    assert 0.45 < sum(r["sex"] == "M" for r in rows) / len(rows) < 0.55
    ages = [
        (dt.date(2025, 1, 1) - dt.date.fromisoformat(r["date_of_birth"])).days / 365.25
        for r in rows
    ]
    assert min(ages) >= 0
    assert max(ages) < 102
    assert 25 < float(np.median(ages)) < 50


@pytest.mark.parametrize("overlap", [0.0, 1.0])
def test_overlap_edge_cases(tmp_path: Path, overlap: float) -> None:
    files = generate_datasets(tmp_path, 200, overlap, seed=1)
    truth = read_csv(files.truth)[1]
    assert len(truth) == files.true_matches == round(200 * overlap)
    assert len(read_csv(files.requester)[1]) == len(read_csv(files.custodian)[1]) == 200
    if overlap == 1.0:
        assert {t["requester_id"] for t in truth} == {r["id"] for r in read_csv(files.requester)[1]}


def test_progress_reports_every_written_record(tmp_path: Path) -> None:
    reported: list[int] = []
    generate_datasets(tmp_path, 120_000, 0.5, seed=2, progress=reported.append)
    assert sum(reported) == 240_000
    assert len(reported) > 2


@pytest.mark.parametrize(
    ("records", "overlap"),
    [(0, 0.5), (-3, 0.5), (10, -0.1), (10, 1.5), (10, math.nan)],
)
def test_invalid_arguments_raise(tmp_path: Path, records: int, overlap: float) -> None:
    with pytest.raises(ValueError, match="records|overlap"):
        generate_datasets(tmp_path, records, overlap, seed=1)


def test_corruption_rates_scale_and_validate() -> None:
    defaults = CorruptionRates()
    doubled = CorruptionRates.scaled(2.0)
    assert all(
        getattr(doubled, f.name) == pytest.approx(2 * getattr(defaults, f.name))
        for f in fields(CorruptionRates)
    )
    assert set(vars(CorruptionRates.scaled(1000.0)).values()) == {1.0}
    assert set(vars(CorruptionRates.scaled(0)).values()) == {0.0}
    with pytest.raises(ValueError, match="typo"):
        CorruptionRates(typo=1.5)


@pytest.mark.parametrize("table", TABLES)
def test_frequency_tables_are_clkhash_s_own(table: str) -> None:
    """The shipped name and age tables are byte for byte those clkhash ships, so synthetic data
    and attack simulations are what they were when blindlink read clkhash's copies."""
    ours = resources.files("blindlink.synthetic") / "data" / table
    assert ours.read_bytes() == (resources.files("clkhash") / "data" / table).read_bytes()


def test_chunk_size_does_not_change_the_output(tmp_path: Path) -> None:
    outputs = []
    for chunk_rows in (1, 97, 65_536):
        batches = generate_batches(
            tmp_path / str(chunk_rows), 400, 3, 60, 0.5, 9, chunk_rows=chunk_rows
        )
        paths = (batches.custodian, *batches.requesters, *batches.truths)
        outputs.append([path.read_bytes() for path in paths])
    assert outputs[0] == outputs[1] == outputs[2]


def test_batches_draw_their_overlap_from_the_custodian(tmp_path: Path) -> None:
    batches = generate_batches(
        tmp_path, 500, 4, 80, 0.25, seed=6, corruption=CorruptionRates.scaled(0)
    )
    custodian = {row["id"]: row for row in read_csv(batches.custodian)[1]}
    assert len(custodian) == batches.custodian_records == 500
    assert batches.true_matches_per_batch == 20
    matched: list[str] = []
    requester_ids: set[str] = set()
    for requester_path, truth_path in zip(batches.requesters, batches.truths, strict=True):
        requester = {row["id"]: row for row in read_csv(requester_path)[1]}
        truth = read_csv(truth_path)[1]
        assert len(requester) == 80 and len(truth) == 20
        requester_ids |= set(requester)
        # Clean copies: a true pair is the same person, and no unmatched requester record is.
        for pair in truth:
            assert (
                differing((requester[pair["requester_id"]], custodian[pair["custodian_id"]]))
                == set()
            )
        people = {tuple(row[f] for f in PERSON_FIELDS) for row in custodian.values()}
        unmatched = set(requester) - {pair["requester_id"] for pair in truth}
        assert not any(tuple(requester[i][f] for f in PERSON_FIELDS) in people for i in unmatched)
        matched += [pair["custodian_id"] for pair in truth]
    assert len(set(matched)) == len(matched) == 80  # no custodian record in two batches
    assert len(requester_ids) == 4 * 80  # IDs distinct across batches


def test_batches_need_enough_custodian_records(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="need 300 custodian records"):
        generate_batches(tmp_path, 299, 3, 100, 1.0, seed=1)
    with pytest.raises(ValueError, match="batches"):
        generate_batches(tmp_path, 299, 0, 100, 1.0, seed=1)
    with pytest.raises(ValueError, match="9-digit IDs allow at most 900000000"):
        generate_batches(tmp_path, 10, 1000, 900_001, 0.0, seed=1)


def test_people_are_a_function_of_their_index() -> None:
    key = stream_key(4, 0)
    everyone = draw_people(key, np.arange(1000)).render()
    some = draw_people(key, np.array([999, 3, 500])).render()
    assert some == {field: [column[i] for i in (999, 3, 500)] for field, column in everyone.items()}


@pytest.mark.parametrize("size", [1, 2, 5, 1000, 4097])
def test_permutation_is_a_bijection(size: int) -> None:
    image = Permutation(stream_key(1, 2), size)(np.arange(size))
    assert sorted(image.tolist()) == list(range(size))
    if size > 100:
        assert (image != np.arange(size)).mean() > 0.9


def test_generate_command_writes_batches_and_rejects_bad_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["generate", "--records", "300", "--out", str(tmp_path), "--seed", "2"]
    assert main([*args, "--batches", "2", "--batch-records", "40"]) == 0
    names = {"custodian.csv", "requester-1.csv", "requester-2.csv", "truth-1.csv", "truth-2.csv"}
    assert {path.name for path in tmp_path.iterdir()} == names
    assert len(read_csv(tmp_path / "truth-2.csv")[1]) == 20
    assert main([*args, "--batch-records", "40"]) == 2
    assert "--batch-records needs --batches" in capsys.readouterr().err
    assert main([*args, "--batches", "4", "--batch-records", "200", "--overlap", "1"]) == 2
    assert "need 800 custodian records, but the custodian has 300" in capsys.readouterr().err
