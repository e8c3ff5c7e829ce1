"""The public Python API (`import blindlink as bl`): encoding from files, DataFrames and rows,
local linking that decides exactly as a server run does, the README's example, one version."""

from __future__ import annotations

import csv
import inspect
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import Identities

import blindlink as bl
from blindlink.agreement.document import RECOMMENDED_HARDENING
from blindlink.agreement.model import default_rule
from blindlink.agreement.signing import parse_signed
from blindlink.encoding.schema import LinkageSchema, default_schema_path
from blindlink.evaluation import pair_quality, read_truth
from blindlink.extras import EXTRA_OF_MODULE
from blindlink.synthetic import GeneratedFiles, generate_datasets

SECRET = b"python api test secret"
README = Path(__file__).parents[1] / "README.md"
# What a core-only install lacks: clkhash is a test dependency, the rest belong to extras.
ABSENT = ["clkhash", *EXTRA_OF_MODULE]
KEYS = {
    "method": "keys",
    "keys": [
        [{"field": "given_name"}, {"field": "surname"}],
        [{"field": "surname", "prefix": 3}, {"field": "date_of_birth"}],
    ],
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> GeneratedFiles:
    """600 generated people per party, half of them on both sides."""
    return generate_datasets(tmp_path_factory.mktemp("data"), 600, 0.5, seed=8)


def _by_id(encoded: bl.Encoded) -> dict[str, bytes]:
    return {i: row.tobytes() for i, row in zip(encoded.ids, encoded.records, strict=True)}


def _server_matches(
    address: str, identities: Identities, signed: bytes, ours: bl.Encoded, theirs: bl.Encoded
) -> bl.Results:
    """What a server run releases to the requester, through `bl.Client`."""
    with (
        bl.Client(address, "requester", identities.tls("requester")) as requester,
        bl.Client(address, "custodian", identities.tls("custodian")) as custodian,
    ):
        project = requester.create_project(signed)
        assert project == parse_signed(signed).agreement.project_id
        assert custodian.upload(project, theirs) == ""
        run_id = requester.upload(project, ours)
        requester.wait(project, run_id)
        return requester.results(project, run_id, ours)


@pytest.mark.parametrize(
    "settings",
    [
        {"hardening": []},  # a calibrated threshold, all pairs
        {"threshold": 0.8, "blocking": KEYS},  # the recommended hardening, blocking keys
    ],
    ids=["calibrated", "fixed-hardened-keys"],
)
def test_link_gives_exactly_the_server_matches_for_the_same_agreement(
    address: str,
    identities: Identities,
    make_agreement: Callable[..., bytes],
    schema: LinkageSchema,
    files: GeneratedFiles,
    tmp_path: Path,
    settings: dict[str, Any],
) -> None:
    signed = make_agreement(requester_release="pairs", **settings)
    agreement = parse_signed(signed).agreement
    ours = bl.encode(files.requester, schema, SECRET, agreement=agreement)
    theirs = bl.encode(files.custodian, schema, SECRET, agreement=agreement)
    served = _server_matches(address, identities, signed, ours, theirs)

    local = bl.link(ours, theirs, agreement=agreement)

    server_pairs = {(i, theirs.ids[r]) for i, r in zip(served.ids, served.other_rows, strict=True)}
    assert set(local.matches()) == server_pairs
    assert len(local.matches()) == served.match_count > 250
    assert served.threshold is not None
    assert round(local.threshold, 6) == pytest.approx(served.threshold)
    assert (local.rule, local.estimates is None) == (served.rule, served.estimates is None)
    frame = local.to_pandas()
    assert list(frame.columns) == ["requester_id", "custodian_id", "dice", "probability", "status"]
    assert (frame["status"] == "match").sum() == served.match_count
    released = served.to_pandas()
    assert list(released.columns) == ["id", "other_row", "status"]
    assert set(released["id"]) == set(served.ids)


@pytest.mark.parametrize("hardening", [[], RECOMMENDED_HARDENING], ids=["unhardened", "hardened"])
def test_a_new_agreement_decides_by_the_default_rule(
    make_agreement: Callable[..., bytes], hardening: list[dict[str, Any]]
) -> None:
    agreement = parse_signed(make_agreement(hardening=hardening)).agreement
    assert agreement.decision == default_rule(hardening)


def test_link_without_an_agreement_or_threshold_calibrates_as_a_new_agreement_would(
    make_agreement: Callable[..., bytes], schema: LinkageSchema, files: GeneratedFiles
) -> None:
    ours = bl.encode(files.requester, schema, SECRET)
    theirs = bl.encode(files.custodian, schema, SECRET)
    agreement = parse_signed(make_agreement(hardening=[])).agreement

    result = bl.link(ours, theirs)

    agreed = bl.link(ours, theirs, agreement=agreement)
    assert result.matches() == agreed.matches()
    assert (result.threshold, result.rule, result.estimates) == (
        agreed.threshold,
        agreed.rule,
        agreed.estimates,
    )
    assert result.rule.startswith("calibrated")
    assert result.estimates is not None
    true = pair_quality(set(result.matches()), set(read_truth(files.truth)))
    assert true.precision > 0.95 and true.recall > 0.9
    assert result.estimates.precision == pytest.approx(true.precision, abs=0.03)
    assert result.estimates.recall == pytest.approx(true.recall, abs=0.05)
    fixed = bl.link(ours, theirs, threshold=0.95)
    assert fixed.threshold == 0.95 and not fixed.rule.startswith("calibrated")
    assert len(fixed.matches()) < len(result.matches())


def test_a_dataframe_and_rows_encode_as_their_csv_file(
    schema: LinkageSchema, files: GeneratedFiles
) -> None:
    from_file = bl.encode(files.requester, schema, SECRET)
    frame = pd.read_csv(files.requester, dtype=str, keep_default_na=False)
    with open(files.requester, encoding="utf-8", newline="") as f:
        mappings = list(csv.DictReader(f))
    sequences = [[row[c] for c in schema.columns] for row in mappings]
    expected = _by_id(from_file)
    for data in (frame, mappings, sequences):
        encoded = bl.encode(data, schema, SECRET)
        assert encoded.key_count == 0 and encoded.blocking_keys is None
        assert _by_id(encoded) == expected
    assert from_file.encodings.shape == (600, schema.bit_length // 8)


def test_columns_are_mapped_and_extra_ones_ignored_without_editing_the_data(
    schema: LinkageSchema, files: GeneratedFiles, tmp_path: Path
) -> None:
    expected = _by_id(bl.encode(files.requester, schema, SECRET))
    frame = pd.read_csv(files.requester, dtype=str, keep_default_na=False)
    renamed = {"id": "rec_id", "surname": "family_name"}
    theirs = frame.rename(columns=renamed).assign(notes="not part of the schema")
    mapping = {"surname": "family_name"}
    from_frame = bl.encode(theirs, schema, SECRET, id_column="rec_id", columns=mapping)
    assert _by_id(from_frame) == expected
    rows = theirs.to_dict("records")
    assert _by_id(bl.encode(rows, schema, SECRET, id_column="rec_id", columns=mapping)) == expected
    theirs.to_csv(tmp_path / "theirs.csv", index=False)
    from_file = bl.encode(
        tmp_path / "theirs.csv", schema, SECRET, id_column="rec_id", columns=mapping
    )
    assert _by_id(from_file) == expected
    with pytest.raises(bl.InputError, match="field .surname.: the columns: .* columns=\\{"):
        bl.encode(theirs, schema, SECRET, id_column="rec_id")


def test_encoding_with_blocking_keys_splits_them_from_the_encodings(
    make_agreement: Callable[..., bytes], schema: LinkageSchema, files: GeneratedFiles
) -> None:
    agreement = parse_signed(make_agreement(hardening=[], blocking=KEYS)).agreement
    encoded = bl.encode(files.requester, schema, SECRET, agreement=agreement)
    keys = encoded.blocking_keys
    assert keys is not None and keys.shape == (600, 2) and keys.dtype == np.uint64
    assert encoded.encodings.shape == (600, schema.bit_length // 8)
    assert encoded.origin == agreement.encodings_id


def test_a_problem_in_rows_names_the_row_not_a_temporary_file(schema: LinkageSchema) -> None:
    row = {c: "" for c in schema.columns} | {"id": "1"}
    duplicate = r"^records, field 'id': row 2: duplicate record ID \(first seen on row 1\)"
    with pytest.raises(bl.InputError, match=duplicate):
        bl.encode([row, row], schema, SECRET)
    with pytest.raises(
        bl.InputError,
        match=r"^records: the columns: no column for schema .*"
        r"map it with columns=\{FIELD: COLUMN\}; no record ID column 'id': "
        r"pass id_column= naming",
    ):
        bl.encode([{"surname": "Lee"}], schema, SECRET)


def test_link_refuses_encodings_not_made_as_the_agreement_says(
    make_agreement: Callable[..., bytes], schema: LinkageSchema, files: GeneratedFiles
) -> None:
    agreement = parse_signed(make_agreement(blocking=KEYS)).agreement
    plain = bl.encode(files.requester, schema, SECRET)
    with pytest.raises(bl.InputError, match="not encoded as the agreement says"):
        bl.link(plain, plain, agreement=agreement)


def test_the_readme_example_runs(files: GeneratedFiles, tmp_path: Path) -> None:
    section = README.read_text(encoding="utf-8").split("## Use from Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert code is not None
    shutil.copy(files.requester, tmp_path / "ours.csv")
    shutil.copy(files.custodian, tmp_path / "theirs.csv")
    shutil.copy(default_schema_path(), tmp_path / "schema.json")
    done = subprocess.run(
        [sys.executable, "-c", code.group(1)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "matches at threshold" in done.stdout and "calibrated" in done.stdout
    assert "estimated precision" in done.stdout


def test_import_is_light_and_every_public_name_resolves() -> None:
    script = (
        "import sys, blindlink as bl\n"
        "heavy = {'pandas', 'numpy', 'grpc', 'matplotlib', 'scipy', 'anonlink'}\n"
        "assert not heavy & {m.split('.')[0] for m in sys.modules}, sorted(sys.modules)\n"
        "missing = [n for n in bl.__all__ if getattr(bl, n, None) is None]\n"
        "assert not missing, missing\n"
    )
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    with pytest.raises(AttributeError):
        _ = bl.not_a_public_name  # type: ignore[attr-defined]


def test_the_api_works_without_extras_and_names_the_one_a_call_needs(
    files: GeneratedFiles,
) -> None:
    script = (
        "import sys\n"
        f"for name in {ABSENT!r}:\n"
        "    sys.modules[name] = None  # an import of it raises ModuleNotFoundError\n"
        "import blindlink as bl\n"
        "from blindlink.encoding.schema import default_schema_path\n"
        "schema = bl.load_schema(default_schema_path())\n"
        f"ours = bl.encode({str(files.requester)!r}, schema, b'secret', workers=1)\n"
        "result = bl.link(ours, ours, threshold=0.9)\n"
        "assert len(result.matches()) == len(ours) == 600\n"
        "for call in (result.to_pandas, lambda: bl.tradeoff('out', quick=True)):\n"
        "    try:\n"
        "        call()\n"
        "    except bl.BlindlinkError as exc:\n"
        "        print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "LinkResult.to_pandas() needs the `pandas` extra: pip install 'blindlink[pandas]'",
        "blindlink.tradeoff needs the `bench` extra: pip install 'blindlink[bench]'",
    ]


def test_version_comes_from_the_installed_distribution() -> None:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "blindlink"), "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bl.__version__ == version("blindlink")
    assert done.stdout.strip() == f"blindlink {version('blindlink')}", done.stderr


def test_an_agreement_is_built_signed_and_verified_through_the_api(
    identities: Identities, schema: LinkageSchema, tmp_path: Path
) -> None:
    pki = identities.pki
    document = bl.new_agreement_document(
        reference="from python",
        requester=bl.party_info("A", pki.party_certs["requester"]),
        custodian=bl.party_info("B", pki.party_certs["custodian"]),
        schema_sha256=schema.sha256,
        bit_length=schema.bit_length,
    )
    signed = bl.SignedAgreement.unsigned(document)
    assert signed.problems() == ["the requester has not signed", "the custodian has not signed"]
    for role in ("requester", "custodian"):
        signed = bl.sign_agreement(signed, role, pki.party_certs[role], pki.party_keys[role])
    (tmp_path / "agreement.json").write_bytes(signed.to_bytes())
    loaded = bl.load_agreement(tmp_path / "agreement.json")
    assert loaded.problems(pki.ca_cert.read_bytes()) == []
    assert loaded.agreement.project_id == signed.agreement.project_id


# The API's own callables and result types; agreements and schemas carry their JSON documents
# as dict[str, Any].
TYPED = ["Client", "Encoded", "LinkResult", "Results", "TradeoffResult", "ConfigurationResult"]
TYPED += ["encode", "link", "load_agreement", "party_info", "tradeoff"]


def _annotations(obj: object) -> list[str]:
    if inspect.isclass(obj):
        members = [m for n, m in vars(obj).items() if not n.startswith("_") or n == "__init__"]
        found = [str(a) for a in getattr(obj, "__annotations__", {}).values()]
        return found + [a for m in members if callable(m) for a in _annotations(m)]
    signature = inspect.signature(obj)  # type: ignore[arg-type]
    params = [p for p in signature.parameters.values() if p.name not in ("self", "cls")]
    found = [str(p.annotation) for p in params]
    return [*found, str(signature.return_annotation)]


def test_the_public_surface_is_all_typed_and_only_all() -> None:
    assert sorted(dir(bl)) == sorted(bl.__all__)
    for name in TYPED:
        annotations = _annotations(getattr(bl, name))
        assert annotations, name
        assert not [a for a in annotations if "Any" in a or a == "<class 'inspect._empty'>"], name
