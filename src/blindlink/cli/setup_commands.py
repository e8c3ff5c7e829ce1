"""Commands that prepare a linkage: test data, secrets, schemas, agreements, projects."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from blindlink.agreement.document import (
    ROLES,
    ReleaseKind,
    agreement_json_schema,
    check_values,
    default_hardening,
    load_json,
)
from blindlink.agreement.model import new_agreement_document, refuse_unusual_thresholds
from blindlink.agreement.signing import SignedAgreement, parse_signed, party_info, sign_with_files
from blindlink.cli.party import connect
from blindlink.cli.progress import bar
from blindlink.encoding.schema import LinkageSchema, default_schema_path, load_schema
from blindlink.encoding.secret import write_new_secret
from blindlink.errors import AgreementError, BlindlinkError, InputError
from blindlink.hardening.steps import output_bit_length, validate_steps
from blindlink.security.pki import read_certificates
from blindlink.synthetic import CorruptionRates, generate_batches, generate_datasets

RELEASE_CHOICES = [k.value for k in ReleaseKind]
DEFAULT_BATCH_RECORDS = 1000


def generate(args: argparse.Namespace) -> int:
    try:
        return _generate(args, CorruptionRates.scaled(args.corruption))
    except ValueError as exc:
        raise BlindlinkError(f"generate: {exc}") from None


def _generate(args: argparse.Namespace, corruption: CorruptionRates) -> int:
    if args.batches is None:
        if args.batch_records is not None:
            raise ValueError("--batch-records needs --batches")
        with bar(2 * args.records, "generating") as progress:
            files = generate_datasets(
                args.out, args.records, args.overlap, args.seed, corruption, progress.update
            )
        print(
            f"wrote {files.requester} ({files.requester_records} records), {files.custodian} "
            f"({files.custodian_records} records), {files.truth} ({files.true_matches} true pairs)"
        )
        return 0
    batch_records = args.batch_records or DEFAULT_BATCH_RECORDS
    with bar(args.records + args.batches * batch_records, "generating") as progress:
        batches = generate_batches(
            args.out,
            args.records,
            args.batches,
            batch_records,
            args.overlap,
            args.seed,
            corruption,
            progress.update,
        )
    print(
        f"wrote {batches.custodian} ({batches.custodian_records} records) and "
        f"{len(batches.requesters)} requester batches of {batches.batch_records} records in "
        f"{args.out} (requester-K.csv, truth-K.csv: {batches.true_matches_per_batch} true pairs "
        "each)"
    )
    return 0


def secret_new(args: argparse.Namespace) -> int:
    try:
        write_new_secret(args.out)
    except FileExistsError:
        raise InputError(str(args.out), "exists already; a secret is never overwritten") from None
    print(
        f"wrote a new secret to {args.out}; share it with the other party only, never with "
        "the server operator"
    )
    return 0


def schema_hash(args: argparse.Namespace) -> int:
    print(load_schema(args.schema or default_schema_path()).sha256)
    return 0


def schema_show_default(args: argparse.Namespace) -> int:
    print(default_schema_path().read_text(encoding="utf-8"), end="")
    return 0


def agreement_new(args: argparse.Namespace) -> int:
    schema = load_schema(args.schema or default_schema_path())
    hardening = _hardening_steps(args.hardening)
    document = new_agreement_document(
        reference=args.reference,
        requester=party_info(args.requester, args.requester_cert),
        custodian=party_info(args.custodian, args.custodian_cert),
        schema_sha256=schema.sha256,
        bit_length=output_bit_length(schema.bit_length, hardening),
        hardening=hardening,
        blocking=_blocking(args.blocking, schema),
        target=args.target and args.target.replace("-", "_"),
        **{name: getattr(args, name) for name in _SETTINGS},
        allow_unusual_threshold=True,  # checked below, naming this command's option
    )
    signed = SignedAgreement.unsigned(document)
    if not args.allow_unusual_threshold:
        refuse_unusual_thresholds(signed.agreement, "pass --allow-unusual-threshold")
    _write_signed(args.out, signed)
    print(
        f"wrote {args.out}; its project ID is {signed.agreement.project_id}; each party now "
        "signs it with `blindlink agreement sign`"
    )
    return 0


# Options of `agreement new` passed to new_agreement_document as given: None (left out) takes
# the agreement model's default.
_SETTINGS = (
    "threshold",
    "threshold_floor",
    "min_precision",
    "threshold_bounds",
    "fallback_threshold",
    "possible_matches",
    "possible_release",
    "custodian_duplicates",
    "requester_release",
    "custodian_release",
    "ambiguity_margin",
    "custodian_approval",
    "max_records_per_upload",
    "period_seconds",
    "max_uploads_per_period",
    "max_records_per_period",
    "valid_days",
    "delete_encodings_after_release",
    "encodings_ttl_seconds",
    "results_ttl_seconds",
    "require_purpose",
    "purpose_max_length",
    "allowed_purposes",
)


def number_pair(text: str) -> tuple[float, float]:
    """LOW,HIGH: two numbers, e.g. 0.5,0.9."""
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not two numbers LOW,HIGH like 0.5,0.9"
        ) from None
    return low, high


def _hardening_steps(text: str | None) -> list[dict[str, Any]]:
    """--hardening: a JSON list of steps, e.g. '[{"kind": "xor_fold", "folds": 1}]'; left
    out, the agreement model's default."""
    if text is None:
        return default_hardening()
    steps = _json_option(text, "--hardening")
    check_values(steps, "encoding.hardening")
    validate_steps(steps)
    return list(steps)


def _json_option(text: str, option: str) -> Any:
    try:
        return load_json(text.encode("utf-8", "surrogatepass"), option)
    except AgreementError as exc:
        raise InputError(option, str(exc).removeprefix(f"{option} is ")) from None


def _blocking(text: str | None, schema: LinkageSchema) -> dict[str, Any] | None:
    """--blocking: a JSON object; blocking keys must name columns of the schema."""
    if text is None:
        return None
    section = _json_option(text, "--blocking")
    if isinstance(section, dict) and section.get("method") == "keys":
        for number, key in enumerate(section.get("keys") or [], start=1):
            for part in key if isinstance(key, list) else []:
                name = part.get("field") if isinstance(part, dict) else None
                if name not in schema.columns:
                    raise InputError(
                        "--blocking",
                        f"blocking key {number} names the field {name!r}, which the linkage "
                        f"schema does not have (its columns: {', '.join(schema.columns)})",
                    )
    return section


def _read_signed(path: Path) -> SignedAgreement:
    try:
        return parse_signed(Path(path).read_bytes())
    except FileNotFoundError:
        raise InputError(str(path), "agreement file not found") from None
    except AgreementError as exc:
        raise AgreementError(f"{path}: {exc}") from None


def _write_signed(path: Path, signed: SignedAgreement) -> None:
    tmp = Path(f"{path}.partial")
    tmp.write_text(json.dumps(signed.document(), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def agreement_sign(args: argparse.Namespace) -> int:
    signed = sign_with_files(_read_signed(args.agreement), args.role, args.cert, args.key)
    _write_signed(args.agreement, signed)
    missing = [role for role in ROLES if role not in signed.signatures]
    print(
        f"signed {args.agreement} as the {args.role}"
        + (f"; still to sign: {', '.join(missing)}" if missing else "; both parties signed")
    )
    return 0


def agreement_verify(args: argparse.Namespace) -> int:
    signed = _read_signed(args.agreement)
    problems = signed.problems(read_certificates(args.ca, "CA certificate") if args.ca else None)
    for problem in problems:
        print(f"{args.agreement}: {problem}")
    if problems:
        return 1
    issued = f", certificates issued by {args.ca}" if args.ca else ""
    print(
        f"{args.agreement}: signed by the holders of both named certificates{issued}; "
        f"project ID {signed.agreement.project_id}"
    )
    return 0


def agreement_schema(args: argparse.Namespace) -> int:
    print(json.dumps(agreement_json_schema(), indent=2))
    return 0


def project_create(args: argparse.Namespace) -> int:
    signed = _read_signed(args.agreement)
    with connect(args) as client:
        project = client.create_project(signed.to_bytes())
    print(project.project_id)
    return 0
