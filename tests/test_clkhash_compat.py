"""clkhash under blindlink's dependency overrides encodes exactly as with the versions it pins.

tests/data/clkhash_reference.json was written by scripts/clkhash_reference.py in an environment
with clkhash 0.18.3, cryptography 40.0.2 and bitarray 2.9.3 (clkhash's own pins).
"""

import csv
import io
import json
from importlib.metadata import version
from pathlib import Path

from clkhash import clk
from conftest import clkhash_schema

from blindlink.encoding.encoder import encode_rows
from blindlink.encoding.schema import LinkageSchema

DATA = Path(__file__).parent / "data"


def _reference() -> dict:
    return json.loads((DATA / "clkhash_reference.json").read_text())


def test_reference_was_made_with_clkhash_pins() -> None:
    versions = _reference()["versions"]
    assert versions["clkhash"] == version("clkhash")
    assert int(versions["cryptography"].split(".")[0]) < 41
    assert int(versions["bitarray"].split(".")[0]) < 3
    # ...and this environment really runs the overridden, newer releases.
    assert int(version("cryptography").split(".")[0]) >= 41
    assert int(version("bitarray").split(".")[0]) >= 3


def test_clkhash_encodes_identically(schema: LinkageSchema) -> None:
    reference = _reference()
    text = (DATA / "clkhash_reference.csv").read_text(encoding="utf-8")
    clks = clk.generate_clk_from_csv(
        io.StringIO(text),
        reference["secret"],
        clkhash_schema(schema),
        progress_bar=False,
        max_workers=1,
    )
    assert [c.tobytes().hex() for c in clks] == reference["clks_hex"]


def test_blindlink_encoder_matches_reference(schema: LinkageSchema) -> None:
    reference = _reference()
    with open(DATA / "clkhash_reference.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))[1:]
    encoded = encode_rows(rows, schema, reference["secret"].encode())
    assert encoded.hex() == "".join(reference["clks_hex"])
