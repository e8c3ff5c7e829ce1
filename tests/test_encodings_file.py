"""The binary encodings file: writing, reading, integrity checks and clkhash JSON import."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from pathlib import Path

import pytest
from bitarray import bitarray
from clkhash.clk import generate_clk_from_csv
from clkhash.serialization import serialize_bitarray
from conftest import clkhash_schema

from blindlink.encoding.encodings_file import (
    HEADER_SIZE,
    MAGIC,
    EncodingsHeader,
    import_clkhash_json,
    read_header,
    read_payload,
    write_encodings,
)
from blindlink.encoding.schema import LinkageSchema
from blindlink.errors import EncodingsFileError

DATA = Path(__file__).parent / "data"
SCHEMA_HASH = hashlib.sha256(b"a linkage schema").hexdigest()
# The `schema` fixture (tests/conftest.py) is the shipped default schema.


@pytest.fixture(scope="module")
def reference_clks(schema: LinkageSchema) -> list[bitarray]:
    """clkhash's own encodings of tests/data/clkhash_reference.csv."""
    text = (DATA / "clkhash_reference.csv").read_text(encoding="utf-8")
    return generate_clk_from_csv(
        io.StringIO(text),
        "any secret will do here",
        clkhash_schema(schema),
        progress_bar=False,
        max_workers=1,
    )


def payload_of(count: int, record_bytes: int) -> bytes:
    return bytes((7 * i + 3) % 256 for i in range(count * record_bytes))


def write_sample(path: Path, count: int = 5, bit_length: int = 64) -> bytes:
    """An encodings file of `count` distinct records written in uneven chunks; its payload."""
    payload = payload_of(count, bit_length // 8)
    write_encodings(path, bit_length, SCHEMA_HASH, [payload[:3], payload[3:11], payload[11:]])
    return payload


def file_error(function: object, path: Path) -> str:
    with pytest.raises(EncodingsFileError) as info:
        function(path)  # type: ignore[operator]
    return str(info.value)


def write_clks_json(path: Path, clks: list[str], **extra: object) -> Path:
    path.write_text(json.dumps({"clks": clks, **extra}), encoding="utf-8")
    return path


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --- round trip ----------------------------------------------------------------------------------


def test_write_then_read_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "e.enc"
    payload = write_sample(path, count=5, bit_length=64)

    header = read_header(path)
    assert header == EncodingsHeader(64, 5, SCHEMA_HASH, hashlib.sha256(payload).digest())
    assert header.record_bytes == 8
    assert header.payload_bytes == 40
    assert read_payload(path) == (header, payload)
    assert path.stat().st_size == HEADER_SIZE + 40
    assert path.read_bytes().startswith(MAGIC)
    assert list(tmp_path.iterdir()) == [path]


def test_write_returns_the_header_it_wrote(tmp_path: Path) -> None:
    path = tmp_path / "e.enc"
    payload = payload_of(3, 128)
    written = write_encodings(path, 1024, SCHEMA_HASH, [payload])
    assert written == read_header(path)
    assert written.content_sha256 == hashlib.sha256(payload).digest()


def test_empty_payload_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "e.enc"
    write_encodings(path, 1024, SCHEMA_HASH, [])
    header, payload = read_payload(path)
    assert (header.count, payload) == (0, b"")


def test_write_refuses_partial_records_and_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "e.enc"
    with pytest.raises(EncodingsFileError, match="not a whole number of 64-bit encodings"):
        write_encodings(path, 64, SCHEMA_HASH, [b"\x01" * 12])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bits", [0, -8, 12])
def test_write_refuses_bad_bit_length(tmp_path: Path, bits: int) -> None:
    with pytest.raises(EncodingsFileError, match="positive multiple of 8"):
        write_encodings(tmp_path / "e.enc", bits, SCHEMA_HASH, [])
    assert list(tmp_path.iterdir()) == []


# --- corrupt files -------------------------------------------------------------------------------


def test_truncated_payload(tmp_path: Path) -> None:
    path = tmp_path / "e.enc"
    write_sample(path)
    path.write_bytes(path.read_bytes()[:-1])
    for read in (read_header, read_payload):
        assert file_error(read, path) == (
            f"{path}: truncated or padded: header promises 5 encodings (40 bytes), file holds 39"
        )


def test_truncated_inside_the_header(tmp_path: Path) -> None:
    path = tmp_path / "e.enc"
    write_sample(path)
    path.write_bytes(path.read_bytes()[: HEADER_SIZE - 1])
    assert file_error(read_header, path) == f"{path}: not a blindlink encodings file"


def test_extra_bytes(tmp_path: Path) -> None:
    path = tmp_path / "e.enc"
    write_sample(path)
    with open(path, "ab") as f:
        f.write(b"\0" * 8)
    for read in (read_header, read_payload):
        assert file_error(read, path) == (
            f"{path}: truncated or padded: header promises 5 encodings (40 bytes), file holds 48"
        )


@pytest.mark.parametrize("position", [0, 17, 39])
def test_flipped_payload_byte(tmp_path: Path, position: int) -> None:
    path = tmp_path / "e.enc"
    write_sample(path)
    data = bytearray(path.read_bytes())
    data[HEADER_SIZE + position] ^= 0x01
    path.write_bytes(bytes(data))
    read_header(path)  # the header alone cannot tell
    assert file_error(read_payload, path) == f"{path}: content hash mismatch; the file is corrupt"


def test_flipped_content_hash_byte(tmp_path: Path) -> None:
    path = tmp_path / "e.enc"
    write_sample(path)
    data = bytearray(path.read_bytes())
    data[HEADER_SIZE - 1] ^= 0x80
    path.write_bytes(bytes(data))
    assert file_error(read_payload, path) == f"{path}: content hash mismatch; the file is corrupt"


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"id,given_name,surname\nA1,Alice,Smith\n" * 10,
        b"\x89PNG\r\n\x1a\n" + b"\0" * 200,
        b"BLNKENC2" + b"\0" * 200,
        b'{"clks": []}',
    ],
    ids=["empty", "csv", "png", "other-magic", "json"],
)
def test_not_a_blindlink_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "e.enc"
    path.write_bytes(content)
    for read in (read_header, read_payload):
        assert file_error(read, path) == f"{path}: not a blindlink encodings file"


def test_invalid_bit_length_in_header(tmp_path: Path) -> None:
    path = tmp_path / "e.enc"
    write_sample(path)
    data = bytearray(path.read_bytes())
    data[len(MAGIC)] = 65  # bit_length 64 -> 65
    path.write_bytes(bytes(data))
    assert file_error(read_header, path) == f"{path}: invalid bit length 65"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.enc"
    for read in (read_header, read_payload):
        assert file_error(read, path) == f"{path}: file not found"


# --- clkhash JSON import -------------------------------------------------------------------------


def test_import_clkhash_json(
    tmp_path: Path, schema: LinkageSchema, reference_clks: list[bitarray]
) -> None:
    assert len(reference_clks) == 5
    assert len({c.tobytes() for c in reference_clks}) == 5
    source = write_clks_json(
        tmp_path / "clks.json", [serialize_bitarray(c) for c in reference_clks]
    )
    out = tmp_path / "e.enc"

    header = import_clkhash_json(source, out, schema.sha256)

    assert header == read_header(out)
    assert (header.count, header.bit_length, header.schema_sha256) == (5, 1024, schema.sha256)
    assert read_payload(out)[1] == b"".join(c.tobytes() for c in reference_clks)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clks.json", "e.enc"]


def test_import_ignores_other_keys_of_clkhash_output(tmp_path: Path) -> None:
    records = [payload_of(1, 16), payload_of(2, 16)[16:]]
    source = write_clks_json(tmp_path / "clks.json", [b64(r) for r in records], meta={"x": 1})
    out = tmp_path / "e.enc"
    import_clkhash_json(source, out, SCHEMA_HASH)
    assert read_payload(out)[1] == b"".join(records)


def import_error(tmp_path: Path, source: Path) -> str:
    out = tmp_path / "out" / "e.enc"
    out.parent.mkdir()
    with pytest.raises(EncodingsFileError) as info:
        import_clkhash_json(source, out, SCHEMA_HASH)
    assert list(out.parent.iterdir()) == []
    return str(info.value)


@pytest.mark.parametrize(
    "content", [b'{"clks": ["AAAA"', b"clks: [AAAA]", b'{"clks": ["\xff"]}'], ids=str
)
def test_import_bad_json(tmp_path: Path, content: bytes) -> None:
    source = tmp_path / "clks.json"
    source.write_bytes(content)
    assert import_error(tmp_path, source).startswith(f"{source}: not a readable JSON file (")


def test_import_missing_file(tmp_path: Path) -> None:
    source = tmp_path / "nowhere.json"
    assert import_error(tmp_path, source).startswith(f"{source}: not a readable JSON file (")


@pytest.mark.parametrize(
    "document",
    [{}, {"clk": ["AAAA"]}, {"clks": []}, {"clks": "AAAA"}, ["AAAA"], None],
    ids=["empty-object", "misspelt", "no-encodings", "string", "array", "null"],
)
def test_import_without_clks_list(tmp_path: Path, document: object) -> None:
    source = tmp_path / "clks.json"
    source.write_text(json.dumps(document), encoding="utf-8")
    assert import_error(tmp_path, source) == (
        f'{source}: expected a JSON object {{"clks": [...]}} with at least one encoding'
    )


@pytest.mark.parametrize("bad", ["not base64!", "AAA", "AA==AA==", 17, None, ["AAAA"]])
def test_import_invalid_base64(tmp_path: Path, bad: object) -> None:
    source = write_clks_json(tmp_path / "clks.json", [b64(b"\1" * 16), bad])  # type: ignore[list-item]
    assert import_error(tmp_path, source) == f"{source}: clks[1] is not valid base64"


def test_import_mixed_lengths(tmp_path: Path) -> None:
    clks = [b64(b"\1" * 128), b64(b"\2" * 128), b64(b"\3" * 64)]
    source = write_clks_json(tmp_path / "clks.json", clks)
    assert import_error(tmp_path, source) == (
        f"{source}: encodings have different lengths ([512, 1024] bits)"
    )
