"""The encoder client's input validation: every bad file is refused with a precise, value-free
error before any output is written; a good file encodes completely, in a shuffled order."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from blindlink.encoding.encoder import encode_csv, encode_rows
from blindlink.encoding.encodings_file import read_header, read_payload
from blindlink.encoding.id_map import read_id_map
from blindlink.encoding.schema import LinkageSchema
from blindlink.errors import InputError
from blindlink.hardening import encode_with_steps
from blindlink.matching.blocking import KeyBlocking

# The `schema` fixture (tests/conftest.py) is the shipped default schema.
SECRET = b"a shared secret for the csv input tests"
COLUMNS = [
    "id",
    "given_name",
    "surname",
    "date_of_birth",
    "sex",
    "street_address",
    "city",
    "postcode",
]
HEADER = ",".join(COLUMNS) + "\n"


def row(
    record_id: str = "R1",
    given_name: str = "Alice",
    surname: str = "Smith",
    date_of_birth: str = "1980-01-31",
    sex: str = "F",
    street_address: str = "12 Wattle Street",
    city: str = "Springfield",
    postcode: str = "2041",
) -> str:
    """One CSV line (fields are not quoted: pass values without commas or quotes)."""
    fields = [record_id, given_name, surname, date_of_birth, sex, street_address, city, postcode]
    return ",".join(fields) + "\n"


def write_input(tmp_path: Path, content: str | bytes, name: str = "people.csv") -> Path:
    folder = tmp_path / "input"
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def output_paths(tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "output"
    folder.mkdir(exist_ok=True)
    return folder / "people.enc", folder / "people.idmap.json"


def rejected(
    tmp_path: Path, path: Path, schema: LinkageSchema, hardening: list | None = None
) -> InputError:
    """encode_csv refuses `path`, writing nothing."""
    out, id_map = output_paths(tmp_path)
    with pytest.raises(InputError) as encoded:
        encode_csv(path, schema, SECRET, out, id_map, workers=1, hardening=hardening)
    assert sorted(p.name for p in out.parent.iterdir()) == [], "encode_csv wrote output"
    return encoded.value


def assert_not_leaked(err: InputError, value: str) -> None:
    """The offending value (raw, or escaped as repr() would show it) is not in the error.

    A value of one or two characters occurs inside ordinary words ("m" in "column"), so for
    those only its quoted forms are looked for."""
    message = str(err).replace(err.path, "<path>")
    forms = {repr(value), f"'{value}'", f'"{value}"'}
    if len(value) >= 3:
        forms |= {value, repr(value)[1:-1]}
    for form in forms:
        assert form not in message
        assert form not in err.reason


def assert_where(
    err: InputError,
    path: Path,
    line: int | None,
    column: int | None = None,
    field: str | None = None,
) -> None:
    assert (err.path, err.line, err.column, err.field) == (str(path), line, column, field)
    where = [str(path)]
    if line is not None:
        where.append(f"line {line}")
    if column is not None:
        where.append(f"column {column}")
    if field is not None:
        where.append(f"field '{field}'")
    assert str(err) == f"{', '.join(where)}: {err.reason}"


def csv_rows(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        return list(csv.reader(f))[1:]


def records(payload: bytes, record_bytes: int) -> list[bytes]:
    return [payload[i : i + record_bytes] for i in range(0, len(payload), record_bytes)]


# --- header ------------------------------------------------------------------------------------


def test_missing_column_is_named(tmp_path: Path, schema: LinkageSchema) -> None:
    header = ",".join(COLUMNS[:-1]) + "\n"
    path = write_input(tmp_path, header + "R1,Alice,Smith,1980-01-31,F,12 Wattle St,Springfield\n")
    err = rejected(tmp_path, path, schema)
    assert_where(err, path, line=1, field="postcode")
    assert err.reason.startswith("no column for this schema field: ")
    assert "--column FIELD=CSVCOLUMN" in err.reason
    assert ",".join(COLUMNS[:-1]) in err.reason


def test_several_missing_columns_are_all_named(tmp_path: Path, schema: LinkageSchema) -> None:
    path = write_input(tmp_path, "id,given_name,surname,date_of_birth,sex\nR1,A,B,1980-01-31,F\n")
    err = rejected(tmp_path, path, schema)
    assert_where(err, path, line=1)
    assert "schema fields street_address, city, postcode" in err.reason


def mapped_encodings(
    tmp_path: Path, schema: LinkageSchema, content: str, id_column: str = "id", **columns: str
) -> tuple[list[bytes], list[str], tuple[str, ...]]:
    """Encode `content` with a column mapping: its records in ID order, its IDs and the CSV
    columns it did not use."""
    path = write_input(tmp_path, content, name="mapped.csv")
    out = tmp_path / "output" / "mapped.enc"
    out.parent.mkdir(exist_ok=True)
    result = encode_csv(
        path, schema, SECRET, out, out.with_suffix(".json"), id_column, 1, columns=columns
    )
    header, payload = read_payload(out)
    ids = read_id_map(result.id_map_path).ids
    by_id = dict(zip(ids, records(payload, header.record_bytes), strict=True))
    return [by_id[i] for i in sorted(by_id)], sorted(ids), result.unused_columns


def expected_encodings(schema: LinkageSchema, lines: list[str]) -> list[bytes]:
    """The encodings of records in the schema's own layout, sorted by ID."""
    rows = sorted(line.rstrip("\n").split(",") for line in lines)
    return records(encode_rows(rows, schema, SECRET), 128)


def test_extra_columns_are_ignored(tmp_path: Path, schema: LinkageSchema) -> None:
    header = ",".join(["nickname", *COLUMNS, "notes"]) + "\n"
    lines = [row("R1"), row("R2", "Bob", "Jones")]
    content = header + "".join(f"Ally,{line.rstrip()},x\n" for line in lines)
    encodings, ids, unused = mapped_encodings(tmp_path, schema, content)
    assert ids == ["R1", "R2"]
    assert encodings == expected_encodings(schema, lines)
    assert unused == ("nickname", "notes")


def test_columns_are_matched_by_name_in_any_order(tmp_path: Path, schema: LinkageSchema) -> None:
    lines = [row("R1"), row("R2", "Bob", "Jones", "1975-02-28", "M")]
    order = list(reversed(range(len(COLUMNS))))
    content = ",".join(COLUMNS[i] for i in order) + "\n"
    for line in lines:
        values = line.rstrip("\n").split(",")
        content += ",".join(values[i] for i in order) + "\n"
    encodings, _, unused = mapped_encodings(tmp_path, schema, content)
    assert encodings == expected_encodings(schema, lines)
    assert unused == ()


def test_renamed_columns_and_id_column_are_mapped(tmp_path: Path, schema: LinkageSchema) -> None:
    # A FEBRL-like file: `rec_id` for the ID, `suburb` for the city, and no `id` column (the
    # schema's `id` field is not hashed, so it needs none).
    lines = [row("R1"), row("R2", "Bob", "Jones")]
    header = "rec_id,given_name,surname,date_of_birth,sex,street_address,suburb,postcode,state\n"
    content = header + "".join(line.rstrip("\n") + ",nsw\n" for line in lines)
    encodings, ids, unused = mapped_encodings(
        tmp_path, schema, content, id_column="rec_id", city="suburb"
    )
    assert ids == ["R1", "R2"]
    assert encodings == expected_encodings(schema, lines)
    assert unused == ("state",)


def test_id_field_mapped_with_column_is_the_record_id(
    tmp_path: Path, schema: LinkageSchema
) -> None:
    content = HEADER.replace("id,", "rec_id,", 1) + row("R1") + row("R2", "Bob")
    _, ids, _ = mapped_encodings(tmp_path, schema, content, id="rec_id")
    assert ids == ["R1", "R2"]


def test_value_error_names_the_csv_column_of_a_moved_field(
    tmp_path: Path, schema: LinkageSchema
) -> None:
    header = "extra,rec_id,date_of_birth,given_name,surname,sex,street_address,city,postcode\n"
    path = write_input(tmp_path, header + "x,R1,1975-02-30,A,B,F,1 Main St,Town,2041\n")
    out, id_map = output_paths(tmp_path)
    with pytest.raises(InputError) as info:
        encode_csv(path, schema, SECRET, out, id_map, "rec_id", 1)
    assert_where(info.value, path, line=2, column=3, field="date_of_birth")


def test_missing_id_column_is_named(tmp_path: Path, schema: LinkageSchema) -> None:
    path = write_input(tmp_path, HEADER.replace("id,", "rec_id,", 1) + row())
    err = rejected(tmp_path, path, schema)
    assert_where(err, path, line=1)
    assert err.reason.startswith("no record ID column 'id': pass --id-column")


def test_mapping_to_an_absent_column_names_the_field(tmp_path: Path, schema: LinkageSchema) -> None:
    path = write_input(tmp_path, HEADER + row())
    out, id_map = output_paths(tmp_path)
    with pytest.raises(InputError) as info:
        encode_csv(path, schema, SECRET, out, id_map, workers=1, columns={"city": "suburb"})
    assert_where(info.value, path, line=1, field="city")
    assert "(looked for 'suburb')" in info.value.reason


def test_mapping_an_unknown_field_is_refused(tmp_path: Path, schema: LinkageSchema) -> None:
    path = write_input(tmp_path, HEADER + row())
    out, id_map = output_paths(tmp_path)
    with pytest.raises(InputError) as info:
        encode_csv(path, schema, SECRET, out, id_map, workers=1, columns={"town": "city"})
    assert "names town, which the schema does not have" in info.value.reason


def test_duplicated_header_column_is_not_reported_as_a_reordering(
    tmp_path: Path, schema: LinkageSchema
) -> None:
    # Every expected column is present, plus a second 'id': nothing is out of order.
    path = write_input(tmp_path, ",".join(["id", *COLUMNS]) + "\n" + "X1," + row())
    err = rejected(tmp_path, path, schema)
    assert_where(err, path, line=1)
    assert "different order" not in err.reason
    assert "id" in err.reason.split(";")[0]


# --- row shape -----------------------------------------------------------------------------------


def test_row_with_too_few_fields(tmp_path: Path, schema: LinkageSchema) -> None:
    short = "R2,Bobby,Jones,1975-12-01,M,3 Banksia Road,Riverton\n"
    path = write_input(tmp_path, HEADER + row() + short)
    err = rejected(tmp_path, path, schema)
    assert_where(err, path, line=3)
    assert err.reason == "expected 8 fields, found 7"
    assert_not_leaked(err, "Banksia")


def test_row_with_too_many_fields(tmp_path: Path, schema: LinkageSchema) -> None:
    path = write_input(tmp_path, HEADER + row() + row("R2").rstrip("\n") + ",Overflow\n")
    err = rejected(tmp_path, path, schema)
    assert_where(err, path, line=3)
    assert err.reason == "expected 8 fields, found 9"
    assert_not_leaked(err, "Overflow")


def test_unclosed_quote_on_last_line(tmp_path: Path, schema: LinkageSchema) -> None:
    bad = 'R2,"Bobby,Jones,1975-12-01,M,3 Banksia Road,Riverton,3011\n'
    path = write_input(tmp_path, HEADER + row() + bad)
    err = rejected(tmp_path, path, schema)
    assert_where(err, path, line=3)
    assert err.reason.startswith("malformed CSV:")
    assert "end of data" in err.reason
    assert_not_leaked(err, "Bobby")


def test_unclosed_quote_mid_file_points_at_the_line_where_it_opens(
    tmp_path: Path, schema: LinkageSchema
) -> None:
    # The quote opened on line 3 swallows lines 4 and 5; the error belongs to line 3, not to
    # the end of the file where the csv module gives up.
    bad = 'R2,"Bobby,Jones,1975-12-01,M,3 Banksia Road,Riverton,3011\n'
    path = write_input(tmp_path, HEADER + row() + bad + row("R3") + row("R4"))
    err = rejected(tmp_path, path, schema)
    assert err.reason.startswith("malformed CSV:")
    assert_where(err, path, line=3)


def test_stray_quote_inside_field(tmp_path: Path, schema: LinkageSchema) -> None:
    path = write_input(tmp_path, HEADER + row() + row("R2", given_name='"Bobby"x'))
    err = rejected(tmp_path, path, schema)
    assert_where(err, path, line=3)
    assert err.reason.startswith("malformed CSV:")
    assert_not_leaked(err, "Bobby")


# --- field values --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("1980-02-30", "day is out of range for month"),
        ("1980-13-01", "does not match format '%Y-%m-%d'"),
        ("31/01/1980", "does not match format '%Y-%m-%d'"),
    ],
)
def test_invalid_date_of_birth(
    tmp_path: Path, schema: LinkageSchema, value: str, reason: str
) -> None:
    path = write_input(tmp_path, HEADER + row() + row("R2") + row("R3", date_of_birth=value))
    err = rejected(tmp_path, path, schema)
    assert_where(err, path, line=4, column=4, field="date_of_birth")
    assert reason in err.reason
    assert_not_leaked(err, value)


def test_invalid_date_with_backslashes_is_not_leaked_in_escaped_form(
    tmp_path: Path, schema: LinkageSchema
) -> None:
    # strptime quotes the value with repr(), which doubles backslashes, so a plain
    # str.replace of the raw value does not redact it.
    value = "31\\01\\1980"
    path = write_input(tmp_path, HEADER + row(date_of_birth=value))
    err = rejected(tmp_path, path, schema)
    assert_where(err, path, line=2, column=4, field="date_of_birth")
    assert "does not match format" in err.reason
    assert_not_leaked(err, value)
    assert "1980" not in err.reason


# "m" also checks that redaction does not mangle the message's own words ("enum").
@pytest.mark.parametrize("value", ["Female", "X", "m"])
def test_bad_sex_value(tmp_path: Path, schema: LinkageSchema, value: str) -> None:
    path = write_input(tmp_path, HEADER + row() + row("R2", sex=value))
    err = rejected(tmp_path, path, schema)
    assert_where(err, path, line=3, column=5, field="sex")
    assert "Expected enum value to be one of ['M', 'F']" in err.reason
    assert_not_leaked(err, value)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("20411", "regular expression '[0-9]{4}'"),
        ("2O41", "regular expression '[0-9]{4}'"),
        ("２０４１", "encoded in ascii"),
    ],
)
def test_bad_postcode(tmp_path: Path, schema: LinkageSchema, value: str, reason: str) -> None:
    path = write_input(tmp_path, HEADER + row(postcode=value))
    err = rejected(tmp_path, path, schema)
    assert_where(err, path, line=2, column=8, field="postcode")
    assert reason in err.reason
    assert_not_leaked(err, value)


def test_name_longer_than_schema_allows(tmp_path: Path, schema: LinkageSchema) -> None:
    value = "Bartholomew" * 10
    path = write_input(tmp_path, HEADER + row(given_name=value))
    err = rejected(tmp_path, path, schema)
    assert_where(err, path, line=2, column=2, field="given_name")
    assert "at most 100" in err.reason
    assert_not_leaked(err, value)


# --- file-level problems -----------------------------------------------------------------------


def test_empty_file(tmp_path: Path, schema: LinkageSchema) -> None:
    path = write_input(tmp_path, b"")
    err = rejected(tmp_path, path, schema)
    assert_where(err, path, line=None)
    assert err.reason.startswith("the file is empty")
    assert ", ".join(COLUMNS) in err.reason


def test_header_only_file(tmp_path: Path, schema: LinkageSchema) -> None:
    path = write_input(tmp_path, HEADER)
    err = rejected(tmp_path, path, schema)
    assert_where(err, path, line=None)
    assert err.reason == "the file has a header but no records"


def test_latin1_file_points_at_the_bad_byte(tmp_path: Path, schema: LinkageSchema) -> None:
    content = HEADER + row() + row("R2", surname="M\xfcller") + row("R3")
    path = write_input(tmp_path, content.encode("latin-1"))
    err = rejected(tmp_path, path, schema)
    # "R2,Alice,M" is 10 bytes: the 0xFC byte is column 11 of line 3.
    assert_where(err, path, line=3, column=11)
    assert "not UTF-8" in err.reason
    assert_not_leaked(err, "M\xfcller")
    assert_not_leaked(err, "ller")


def test_bad_byte_after_multibyte_char_across_read_block_boundary(
    tmp_path: Path, schema: LinkageSchema
) -> None:
    # check_utf8 decodes in 1 MiB blocks; a two-byte character split by the block boundary
    # must not shift the reported position of a later bad byte.
    block = 1 << 20
    filler = HEADER.encode() + b"R1,"
    first = filler + b"a" * (block - 1 - len(filler)) + "\u00e9".encode() + b",x,y,z,w,v,u\n"
    assert first[block - 1 : block + 1] == "\u00e9".encode()
    path = write_input(tmp_path, first + b"R2,M\xfcller\n")
    err = rejected(tmp_path, path, schema)
    first_line_count = first.count(b"\n")
    assert_where(err, path, line=first_line_count + 1, column=5)


def test_duplicate_record_id(tmp_path: Path, schema: LinkageSchema) -> None:
    path = write_input(tmp_path, HEADER + row("P-4711") + row("P-0815") + row("P-4711"))
    err = rejected(tmp_path, path, schema)
    assert_where(err, path, line=4, column=1, field="id")
    assert err.reason == "duplicate record ID (first seen on line 2)"
    assert_not_leaked(err, "P-4711")


def test_empty_record_id(tmp_path: Path, schema: LinkageSchema) -> None:
    path = write_input(tmp_path, HEADER + row("R1") + row(""))
    err = rejected(tmp_path, path, schema)
    assert_where(err, path, line=3, column=1, field="id")
    assert err.reason == "record ID is empty"


def test_missing_file(tmp_path: Path, schema: LinkageSchema) -> None:
    path = tmp_path / "input" / "nowhere.csv"
    err = rejected(tmp_path, path, schema)
    assert_where(err, path, line=None)
    assert err.reason == "file not found"


# --- good files ----------------------------------------------------------------------------------


def good_file_content() -> str:
    lines = [
        "\ufeff" + HEADER,
        row("A1", "Zoë", "Müller-Lüdenscheidt", "2001-06-15", "F", "x", "Saint-Étienne", "4000"),
        'A2,"Smith, Jr",O\'Connor,1975-12-01,M,"7 Elm Avenue, Unit 2",Riverton,3011\n',
        row("A3", "", "Nguyen", "1999-02-28", "", "", "Hillside", ""),
        row("A4", "Chris", "Lee", "", "M", "99 Long Road", "", "6401"),
        row("A5", "Łukasz", "Żółć", "1966-07-04", "M", "1 Rue", "Kraków", "1234"),
    ]
    return "".join(lines)


def test_good_file_with_bom_unicode_quotes_and_missing_values_encodes(
    tmp_path: Path, schema: LinkageSchema
) -> None:
    path = write_input(tmp_path, good_file_content())
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    out, id_map_path = output_paths(tmp_path)

    result = encode_csv(path, schema, SECRET, out, id_map_path, workers=1)

    assert result.header.count == 5
    assert result.header.bit_length == 1024
    assert result.header.schema_sha256 == schema.sha256
    assert read_header(out) == result.header
    id_map = read_id_map(id_map_path)
    assert sorted(id_map.ids) == ["A1", "A2", "A3", "A4", "A5"]
    assert id_map.content_sha256 == result.header.content_sha256.hex()
    assert sorted(p.name for p in out.parent.iterdir()) == ["people.enc", "people.idmap.json"]


def test_id_map_row_references_match_the_encodings(tmp_path: Path, schema: LinkageSchema) -> None:
    path = write_input(tmp_path, good_file_content())
    out, id_map_path = output_paths(tmp_path)
    encode_csv(path, schema, SECRET, out, id_map_path, workers=1)

    rows = csv_rows(path)
    encoded = records(encode_rows(rows, schema, SECRET), 128)
    expected = dict(zip([r[0] for r in rows], encoded, strict=True))
    header, payload = read_payload(out)
    ids = read_id_map(id_map_path).ids
    assert records(payload, header.record_bytes) == [expected[i] for i in ids]


def many_rows_content(n: int) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for i in range(n):
        writer.writerow(
            [
                f"P{i:04d}",
                f"Given{i}",
                f"Family{i % 37}",
                f"19{50 + i % 50}-{1 + i % 12:02d}-{1 + i % 28:02d}",
                "FM"[i % 2],
                f"{i} Long Road, Unit {i % 7}",
                f"Town{i % 11}",
                f"{1000 + i:04d}",
            ]
        )
    return out.getvalue()


def test_encoding_twice_gives_the_same_encodings_in_a_shuffled_order(
    tmp_path: Path, schema: LinkageSchema
) -> None:
    path = write_input(tmp_path, many_rows_content(200))
    out, id_map_path = output_paths(tmp_path)
    first = encode_csv(path, schema, SECRET, out, id_map_path, workers=1)
    first_payload = read_payload(out)[1]
    second_out = out.with_name("again.enc")
    encode_csv(path, schema, SECRET, second_out, out.with_name("again.idmap.json"), workers=1)
    second_payload = read_payload(second_out)[1]

    in_file_order = records(encode_rows(csv_rows(path), schema, SECRET), 128)
    first_records = records(first_payload, 128)
    assert first.header.count == 200
    assert len(set(in_file_order)) == 200
    assert sorted(first_records) == sorted(records(second_payload, 128)) == sorted(in_file_order)
    assert first_records != in_file_order
    # Not merely rotated or reversed: many rows leave their file position.
    moved = sum(a != b for a, b in zip(first_records, in_file_order, strict=True))
    assert moved > 150


# --- on every core -------------------------------------------------------------------------------


@pytest.fixture
def small_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process pool for small files, in small chunks, so that chunks are in flight together."""
    monkeypatch.setattr("blindlink.encoding.encoder.POOL_MIN_RECORDS", 10)
    monkeypatch.setattr("blindlink.encoding.encoder.CHUNK_ROWS", 50)


@pytest.mark.usefixtures("small_pool")
def test_pool_encodes_like_one_process(tmp_path: Path, schema: LinkageSchema) -> None:
    path = write_input(tmp_path, many_rows_content(600))
    out, id_map_path = output_paths(tmp_path)
    result = encode_csv(path, schema, SECRET, out, id_map_path, workers=2)

    rows = csv_rows(path)
    expected = dict(
        zip([r[0] for r in rows], records(encode_rows(rows, schema, SECRET), 128), strict=True)
    )
    ids = read_id_map(id_map_path).ids
    assert result.header.count == 600
    assert records(read_payload(out)[1], 128) == [expected[i] for i in ids]


@pytest.mark.usefixtures("small_pool")
def test_pool_reports_the_first_problem_in_file_order(
    tmp_path: Path, schema: LinkageSchema
) -> None:
    lines = many_rows_content(600).splitlines(keepends=True)
    lines[121] = ",".join(
        "1960-13-01" if i == 3 else v for i, v in enumerate(lines[121].split(","))
    )
    lines[450] = "P9999,too,few\n"  # a later problem found by the reader, not the workers
    path = write_input(tmp_path, "".join(lines))
    out, id_map = output_paths(tmp_path)
    with pytest.raises(InputError) as info:
        encode_csv(path, schema, SECRET, out, id_map, workers=2)
    assert_where(info.value, path, line=122, column=4, field="date_of_birth")
    assert sorted(p.name for p in out.parent.iterdir()) == [], "encode_csv wrote output"


# --- with the agreement's hardening --------------------------------------------------------------

SALT = [{"kind": "salt", "field": "date_of_birth", "part": "year"}]


@pytest.mark.parametrize(
    "steps", [SALT, [{"kind": "diffusion", "t": 3}]], ids=["salt", "diffusion"]
)
def test_hardened_encoding_checks_values_and_encodes_as_the_steps_say(
    tmp_path: Path, schema: LinkageSchema, steps: list
) -> None:
    path = write_input(tmp_path, many_rows_content(120))
    out, id_map_path = output_paths(tmp_path)
    encode_csv(path, schema, SECRET, out, id_map_path, workers=1, hardening=steps)
    rows = csv_rows(path)
    expected = dict(
        zip(
            [r[0] for r in rows],
            [r.tobytes() for r in encode_with_steps(rows, schema, SECRET, steps)],
            strict=True,
        )
    )
    assert records(read_payload(out)[1], 128) == [expected[i] for i in read_id_map(id_map_path).ids]

    bad = many_rows_content(120).replace("1951-02-02", "1951-02-30")
    (tmp_path / "bad").mkdir()
    err = rejected(tmp_path / "bad", write_input(tmp_path, bad, "bad.csv"), schema, steps)
    assert_where(err, tmp_path / "input" / "bad.csv", line=3, column=4, field="date_of_birth")


def test_a_blocking_key_on_an_unhashed_field_needs_its_column(
    tmp_path: Path, schema: LinkageSchema
) -> None:
    # The schema's `id` field is not hashed, so a file may lack it, unless a key uses it.
    path = write_input(tmp_path, HEADER.replace("id,", "rec_id,", 1) + row())
    out, id_map = output_paths(tmp_path)
    blocking = KeyBlocking.from_document([[{"field": "id"}]])
    with pytest.raises(InputError) as info:
        encode_csv(path, schema, SECRET, out, id_map, "rec_id", 1, blocking=blocking)
    assert_where(info.value, path, line=1, field="id")
    assert "a blocking key of the agreement uses" in info.value.reason


def test_missing_fields_and_id_column_are_named_together(
    tmp_path: Path, schema: LinkageSchema
) -> None:
    header = "rec_id,given_name,surname,date_of_birth,sex,street_address,suburb,postcode\n"
    path = write_input(tmp_path, header + row())
    err = rejected(tmp_path, path, schema)
    assert_where(err, path, line=1, field="city")
    assert "no column for this schema field: " in err.reason
    assert "; no record ID column 'id': pass --id-column" in err.reason
