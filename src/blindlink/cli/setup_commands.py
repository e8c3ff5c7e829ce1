"""Commands that prepare a linkage: test data, secrets, schemas, agreements, projects."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from blindlink.agreement.model import ReleaseKind, new_agreement_document, parse_agreement
from blindlink.canonical import canonical_json
from blindlink.cli.progress import bar
from blindlink.client.linkage_client import LinkageClient
from blindlink.encoding.schema import default_schema_path, load_schema
from blindlink.encoding.secret import write_new_secret
from blindlink.errors import InputError
from blindlink.synthetic import CorruptionRates, generate_datasets

RELEASE_CHOICES = [k.value for k in ReleaseKind]


def generate(args: argparse.Namespace) -> int:
    with bar(2 * args.records, "generating") as progress:
        files = generate_datasets(
            args.out,
            args.records,
            args.overlap,
            args.seed,
            CorruptionRates.scaled(args.corruption),
            progress.update,
        )
    print(
        f"wrote {files.requester} ({files.requester_records} records), {files.custodian} "
        f"({files.custodian_records} records), {files.truth} ({files.true_matches} true pairs)"
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
    document = new_agreement_document(
        args.reference,
        args.requester,
        args.custodian,
        schema.sha256,
        schema.bit_length,
        args.threshold,
        args.requester_release,
        args.custodian_release,
        args.max_records,
    )
    Path(args.out).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    project_id = parse_agreement(canonical_json(document)).project_id
    print(f"wrote {args.out}; its project ID is {project_id}")
    return 0


def project_create(args: argparse.Namespace) -> int:
    try:
        raw = Path(args.agreement).read_bytes()
    except FileNotFoundError:
        raise InputError(str(args.agreement), "agreement file not found") from None
    with LinkageClient(args.server, args.party) as client:
        project = client.create_project(raw)
    print(project.project_id)
    return 0
