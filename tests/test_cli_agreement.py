"""`blindlink agreement new`: the decision rule it writes, and the thresholds it refuses."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from conftest import Identities, party_args, run

import blindlink as bl
from blindlink.agreement import document
from blindlink.agreement.document import default_hardening
from blindlink.agreement.model import agreement_from_document
from blindlink.cli.main import build_parser, main
from blindlink.encoding.schema import default_schema_path, load_schema
from blindlink.hardening.steps import output_bit_length
from blindlink.matching.rules import CalibratedThreshold, DecisionRule, FixedThreshold, Target

README = Path(__file__).parent.parent / "README.md"
OVERRIDE = "--allow-unusual-threshold"


@pytest.fixture
def parties(identities: Identities) -> list[str]:
    """`agreement new` arguments naming both parties."""
    return party_args(identities)


def new_agreement(
    capsys: pytest.CaptureFixture[str], parties: list[str], out: Path, *options: str
) -> tuple[int, dict[str, Any], str]:
    """Run `agreement new`: its exit code, the agreement it wrote (or {}), and its stderr."""
    code = main(["agreement", "new", "--reference", "cli", *parties, *options, "--out", str(out)])
    written = json.loads(out.read_text())["agreement"] if out.exists() else {}
    return code, written, capsys.readouterr().err


def decision(document: dict[str, Any]) -> DecisionRule:
    return agreement_from_document(document).decision


def test_defaults_to_a_calibrated_threshold_with_the_recommended_hardening(
    parties: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, written, _ = new_agreement(capsys, parties, tmp_path / "a.json")
    assert code == 0
    assert written["encoding"]["hardening"] == [{"kind": "diffusion", "t": 3}]
    assert written["matching"]["decision"] == {
        "rule": "calibrated",
        "target": "best_f_star",
        "bounds": [0.5, 0.9],
        "fallback_threshold": 0.6,
    }
    assert "possible_matches" not in written["matching"]
    assert "custodian_duplicates" not in written["matching"]
    assert written["release"]["possible_matches"] == "count"
    assert not decision(written).custodian_duplicates


# options -> the decision rule written
RULES = [
    (["--hardening", "[]"], CalibratedThreshold(Target.BEST_F_STAR, (0.6, 0.95), 0.8)),
    (
        ["--target", "min-precision", "--min-precision", "0.99"],
        CalibratedThreshold(Target.MIN_PRECISION, (0.5, 0.9), 0.6, 0.99),
    ),
    (
        ["--threshold-bounds", "0.55,0.7", "--fallback-threshold", "0.58"],
        CalibratedThreshold(Target.BEST_F_STAR, (0.55, 0.7), 0.58),
    ),
    (["--threshold", "0.6"], FixedThreshold(0.6)),
    (["--threshold", "0.85", "--hardening", "[]"], FixedThreshold(0.85)),
]


@pytest.mark.parametrize(("options", "expected"), RULES, ids=[" ".join(o) for o, _ in RULES])
def test_decision_options(
    parties: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    options: list[str],
    expected: Any,
) -> None:
    code, written, err = new_agreement(capsys, parties, tmp_path / "a.json", *options)
    assert code == 0, err
    assert decision(written) == DecisionRule(expected)


def test_fixed_threshold_with_a_floor_and_a_possible_match_band(
    parties: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    options = ["--threshold", "0.62", "--threshold-floor", "0.55"]
    band = ["--possible-matches", "0.3,0.9", "--possible-release", "list"]
    code, written, err = new_agreement(capsys, parties, tmp_path / "a.json", *options, *band)
    assert code == 0, err
    assert written["matching"]["decision"] == {
        "rule": "fixed",
        "threshold": 0.62,
        "threshold_floor": 0.55,
    }
    agreement = agreement_from_document(written)
    assert agreement.decision == DecisionRule(FixedThreshold(0.62), (0.3, 0.9))
    assert (agreement.threshold_floor, agreement.possible_release) == (0.55, "list")


def test_a_custodian_that_may_hold_people_repeatedly_is_stated_and_agreed(
    parties: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, written, err = new_agreement(
        capsys, parties, tmp_path / "a.json", "--custodian-duplicates"
    )
    assert code == 0, err
    assert written["matching"]["custodian_duplicates"] is True
    agreement = agreement_from_document(written)
    assert agreement.decision.custodian_duplicates
    stated_false = {**written, "matching": {**written["matching"], "custodian_duplicates": False}}
    assert not agreement_from_document(stated_false).decision.custodian_duplicates


# options -> words of the refusal
UNUSUAL = [
    (["--threshold", "0.8"], "the threshold 0.8 lies more than 0.1 outside the range 0.54-0.64"),
    (["--threshold", "0.4"], "(this agreement's hardening: diffusion t=3)"),
    (["--threshold", "0.5", "--hardening", "[]"], "outside the range 0.68-0.89"),
    (["--threshold-bounds", "0.7,0.9"], "the threshold bounds [0.7, 0.9] do not overlap"),
    (["--fallback-threshold", "0.85"], "the fallback threshold 0.85 lies more than 0.1"),
]


@pytest.mark.parametrize(("options", "words"), UNUSUAL, ids=[" ".join(o) for o, _ in UNUSUAL])
def test_unusual_threshold_is_refused_unless_allowed(
    parties: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    options: list[str],
    words: str,
) -> None:
    out = tmp_path / "a.json"
    code, written, err = new_agreement(capsys, parties, out, *options)
    assert (code, written) == (2, {})
    assert err.startswith("blindlink: error: ") and err.count("\n") == 1
    assert words in err
    assert "the tradeoff benchmark measured" in err and OVERRIDE in err
    code, written, err = new_agreement(capsys, parties, out, *options, OVERRIDE)
    assert code == 0, err
    assert agreement_from_document(written)


# options -> words of the refusal
REFUSED = [
    (["--threshold", "0.6", "--target", "best-f-star"], "matching.decision: give either a fixed"),
    (["--threshold", "0.6", "--threshold-bounds", "0.5,0.9"], "(threshold_bounds), not both"),
    (["--threshold-floor", "0.5"], "matching.decision.threshold_floor: only a fixed threshold"),
    (["--target", "min-precision"], "the target min_precision needs the minimum"),
    (["--min-precision", "0.9"], "only the target min_precision takes a minimum precision"),
    (["--fallback-threshold", "0.95"], "0.95 is outside the bounds [0.5, 0.9]"),
    (["--threshold-bounds", "0.9,0.5"], "the lower bound 0.9 exceeds the upper bound 0.5"),
    (["--possible-matches", "0.9,0.5"], "matching.possible_matches: the band [0.9, 0.5) is"),
    (["--possible-release", "list"], "release.possible_matches: 'list' releases possible"),
]


@pytest.mark.parametrize(("options", "words"), REFUSED, ids=[" ".join(o) for o, _ in REFUSED])
def test_inconsistent_decision_options_are_refused(
    parties: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    options: list[str],
    words: str,
) -> None:
    code, written, err = new_agreement(capsys, parties, tmp_path / "a.json", *options)
    assert (code, written) == (2, {})
    assert words in err, err


@pytest.mark.parametrize("value", ["0.5", "0.5,0.6,0.7", "low,high", ""])
def test_a_pair_option_must_be_two_numbers(
    parties: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["agreement", "new", "--reference", "x", *parties, "--threshold-bounds", value])
    assert exit_.value.code == 2
    assert "is not two numbers LOW,HIGH like 0.5,0.9" in capsys.readouterr().err


def readme_agreement_command() -> list[str]:
    """The README's `blindlink agreement new` example, as arguments."""
    text = README.read_text(encoding="utf-8")
    command = re.search(r"^blindlink agreement new .*?[^\\]$", text, re.MULTILINE | re.DOTALL)
    assert command is not None
    return shlex.split(command.group(0).replace("\\\n", " "))[1:]


def test_readme_example_writes_and_signs_a_sensible_agreement(
    tmp_path: Path,
    identities: Identities,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copytree(identities.pki.ca_cert.parent, tmp_path / "pki")
    run(capsys, *readme_agreement_command())
    agreement = agreement_from_document(json.loads(Path("agreement.json").read_text())["agreement"])
    assert agreement.hardening == [{"kind": "diffusion", "t": 3}]
    assert agreement.decision == DecisionRule(
        CalibratedThreshold(Target.BEST_F_STAR, (0.5, 0.9), 0.6), None, 0.02
    )
    assert (agreement.threshold_floor, agreement.possible_release) == (None, "count")
    assert agreement.custodian_approval and agreement.max_records_per_upload == 50_000
    text = README.read_text(encoding="utf-8")
    commands = re.findall(r"^blindlink agreement (?:sign|verify) .*$", text, re.MULTILINE)
    printed = [run(capsys, *shlex.split(command, comments=True)[1:]) for command in commands]
    assert len(printed) == 3
    assert "signed by the holders of both named certificates" in printed[-1]


# --- one model: the command line and the Python API write the same agreement ----------------


class FrozenNow(datetime):
    """A clock that stands still, so that both writers start the validity window alike."""

    @classmethod
    def now(cls, tz: tzinfo | None = None) -> FrozenNow:
        return cls(2026, 3, 1, 12, 0, 0, 250_000, tzinfo=tz)


LSH = {"method": "lsh", "bands": 20, "bits_per_band": 16, "seed": 7}
# (`agreement new` options, the same settings of new_agreement_document)
SAME_INPUTS: list[tuple[list[str], dict[str, Any]]] = [
    ([], {}),
    (
        ["--target", "min-precision", "--min-precision", "0.99", "--threshold-bounds", "0.55,0.7"],
        {"target": "min_precision", "min_precision": 0.99, "threshold_bounds": (0.55, 0.7)},
    ),
    (
        [
            "--hardening",
            "[]",
            "--blocking",
            json.dumps(LSH),
            "--threshold",
            "0.85",
            "--threshold-floor",
            "0.8",
            "--possible-matches",
            "0.3,0.9",
            "--possible-release",
            "list",
            "--requester-release",
            "pairs",
            "--custodian-release",
            "nothing",
            "--ambiguity-margin",
            "0.02",
            "--custodian-approval",
            "--custodian-duplicates",
            "--max-records-per-upload",
            "500",
            "--period-seconds",
            "3600",
            "--max-uploads-per-period",
            "3",
            "--max-records-per-period",
            "900",
            "--valid-days",
            "10",
            "--keep-encodings-after-release",
            "--encodings-ttl",
            "60",
            "--results-ttl",
            "120",
        ],  # fmt: skip
        {
            "hardening": [],
            "blocking": LSH,
            "threshold": 0.85,
            "threshold_floor": 0.8,
            "possible_matches": (0.3, 0.9),
            "possible_release": "list",
            "requester_release": "pairs",
            "custodian_release": "nothing",
            "ambiguity_margin": 0.02,
            "custodian_approval": True,
            "custodian_duplicates": True,
            "max_records_per_upload": 500,
            "period_seconds": 3600,
            "max_uploads_per_period": 3,
            "max_records_per_period": 900,
            "valid_days": 10,
            "delete_encodings_after_release": False,
            "encodings_ttl_seconds": 60,
            "results_ttl_seconds": 120,
        },
    ),
]


SAME_INPUTS += [
    (["--require-purpose"], {"require_purpose": True}),
    (["--purpose-max-length", "40"], {"purpose_max_length": 40}),
    (
        ["--allowed-purpose", "audit", "--allowed-purpose", "fraud"],
        {"allowed_purposes": ["audit", "fraud"]},
    ),
]


@pytest.mark.parametrize(
    ("options", "settings"),
    SAME_INPUTS,
    ids=["defaults", "calibrated", "every option", "purpose", "purpose length", "purposes"],
)
def test_the_command_line_and_the_api_write_byte_identical_agreements(
    identities: Identities,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    options: list[str],
    settings: dict[str, Any],
) -> None:
    monkeypatch.setattr(document, "datetime", FrozenNow)
    pki = identities.pki
    code, written, err = new_agreement(
        capsys, party_args(identities), tmp_path / "a.json", *options, OVERRIDE
    )
    assert code == 0, err
    schema = load_schema(default_schema_path())
    hardening = settings.get("hardening", default_hardening())
    api = bl.new_agreement_document(
        reference="cli",
        requester=bl.party_info("A", pki.party_certs["requester"]),
        custodian=bl.party_info("B", pki.party_certs["custodian"]),
        schema_sha256=schema.sha256,
        bit_length=output_bit_length(schema.bit_length, hardening),
        **settings,
    )
    assert rfc8785.dumps(written) == rfc8785.dumps(api)
    assert written == api
    assert agreement_from_document(written).project_id == agreement_from_document(api).project_id


def test_agreement_new_carries_no_defaults_of_its_own() -> None:
    """Every agreement setting left out is None, for the agreement model to fill."""
    required = ["--reference", "x", "--out", "o"]
    for role in ("requester", "custodian"):
        required += [f"--{role}", role, f"--{role}-cert", "c.pem"]
    args = vars(build_parser().parse_args(["agreement", "new", *required]))
    given = {"command", "action", "run", "reference", "out", "allow_unusual_threshold"}
    given |= {f"{role}{suffix}" for role in ("requester", "custodian") for suffix in ("", "_cert")}
    assert args.keys() - given
    assert {key: value for key, value in args.items() if key not in given} == dict.fromkeys(
        args.keys() - given
    )


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (["--threshold", "nan"], "matching.decision.threshold: NaN is not a JSON number"),
        (["--ambiguity-margin", "inf"], "release.ambiguity_margin: Infinity is not a JSON"),
        (["--threshold-bounds", "0.5,nan"], "matching.decision.bounds[1]: NaN is not a JSON"),
        (
            ["--hardening", '[{"kind": "diffusion", "t": -Infinity}]'],
            "encoding.hardening[0].t: -Infinity is not a JSON number",
        ),
        (["--reference", "case \udcff"], "reference: the text holds a lone surrogate"),
    ],
)
def test_nan_infinities_and_lone_surrogates_are_refused_naming_the_key(
    parties: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    options: list[str],
    words: str,
) -> None:
    code, written, err = new_agreement(capsys, parties, tmp_path / "a.json", *options, OVERRIDE)
    assert (code, written) == (2, {})
    assert words in err, err


def test_the_readme_recomputes_a_project_id_with_a_standard_jcs_library(
    parties: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, written, err = new_agreement(capsys, parties, tmp_path / "agreement.json")
    assert code == 0, err
    block = r"```python\n(import hashlib, json, rfc8785\n.*?)```"
    snippet = re.search(block, README.read_text(encoding="utf-8"), re.DOTALL)
    assert snippet is not None
    done = subprocess.run(
        [sys.executable, "-c", snippet.group(1)], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == agreement_from_document(written).project_id
