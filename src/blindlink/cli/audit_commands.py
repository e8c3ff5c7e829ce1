"""`blindlink audit`: export the server's audit log and verify an export and receipts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from blindlink.audit.chain import AuditEntry, AuditFormatError
from blindlink.audit.checkpoint import checkpoint_problems, read_checkpoint
from blindlink.audit.export import export_log, read_export
from blindlink.audit.verify import check_receipts_in_log, verify_entries, verify_receipt
from blindlink.errors import InputError
from blindlink.security.keys import PUBLIC_KEY_PREFIX, load_public_key_text, parse_public_key


def add_audit_commands(commands: argparse._SubParsersAction) -> None:
    audit = commands.add_parser("audit", help="the server's tamper-evident audit log")
    actions = audit.add_subparsers(dest="action", required=True, metavar="ACTION")

    export = actions.add_parser("export", help="write the server's audit log as JSON Lines")
    export.add_argument("--data-dir", type=Path, required=True, help="the server's data directory")
    export.add_argument("--out", type=Path, required=True, help="the export to write")
    export.add_argument("--project", help="only this project's entries")
    export.set_defaults(run=audit_export)

    verify = actions.add_parser("verify", help="check an export against the server's key")
    verify.add_argument("export", type=Path, help="an audit log export (JSON Lines)")
    verify.add_argument(
        "--server-key",
        required=True,
        help="the server's public key: a file holding it, or its 'ed25519:...' text",
    )
    verify.add_argument(
        "--receipt",
        type=Path,
        action="append",
        default=[],
        help="a receipt (JSON object, or array of them) to find in the log; repeatable",
    )
    verify.add_argument(
        "--partial",
        action="store_true",
        help="the export holds one project's entries (audit export --project)",
    )
    verify.add_argument(
        "--checkpoint",
        type=Path,
        help="the server's audit checkpoint (DATA_DIR/audit-checkpoint.json, or a copy kept "
        "elsewhere): every entry it names must be in the export",
    )
    verify.set_defaults(run=audit_verify)


def audit_export(args: argparse.Namespace) -> int:
    count = export_log(args.data_dir / "blindlink.db", args.out, args.project)
    print(f"wrote {count} audit entries to {args.out}")
    return 0


def audit_verify(args: argparse.Namespace) -> int:
    """Print one line per problem and return 1, or confirm the log and return 0."""
    key = _server_key(args.server_key)
    entries = read_export(args.export)
    report = verify_entries(entries, key, partial=args.partial)
    lines = [f"entry at line {p.position + 1} (seq {p.seq}): {p.reason}" for p in report.problems]
    if args.checkpoint is not None:
        lines += [
            f"checkpoint {args.checkpoint}: {reason}"
            for reason in _checkpoint_problems(args.checkpoint, entries, key, args.partial)
        ]
    for path in args.receipt:
        lines += [f"receipt {path}: {reason}" for reason in _receipt_problems(path, entries, key)]
    if lines:
        print("\n".join(lines))
        return 1
    of_project = f" of project {entries[0].project_id}" if args.partial and entries else ""
    print(f"audit log OK: {report.entries} entries{of_project}")
    return 0


def _checkpoint_problems(
    path: Path, entries: list[AuditEntry], key: str, partial: bool
) -> list[str]:
    """Entries the checkpoint names that the export lacks: the log's newest, or in a partial
    export its project's newest."""
    try:
        checkpoint = read_checkpoint(path, key)
    except AuditFormatError as exc:
        return [str(exc)]
    project = entries[0].project_id if partial and entries else None
    if partial and project is None:
        return ["an empty partial export names no project to check"]
    hashes = {entry.seq: entry.entry_hash for entry in entries}
    return checkpoint_problems(checkpoint, hashes.get, project)


def _server_key(value: str) -> str:
    """The key text given directly, or read from the file named."""
    if value.startswith(PUBLIC_KEY_PREFIX):
        parse_public_key(value)
        return value
    return load_public_key_text(Path(value))


def _receipt_problems(path: Path, entries: list[AuditEntry], key: str) -> list[str]:
    """Receipts in the file not signed by the server, or absent from or different in the log."""
    receipts = _read_receipts(path)
    signed = [verify_receipt(receipt, key) for receipt in receipts]
    problems = [
        f"receipt {number} is not validly signed by the server key"
        for number, ok in enumerate(signed, 1)
        if not ok
    ]
    valid = [receipt for receipt, ok in zip(receipts, signed, strict=True) if ok]
    return problems + check_receipts_in_log(valid, entries)


def _read_receipts(path: Path) -> list[Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(str(path), "receipt file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InputError(str(path), "a receipt file must hold JSON") from None
    if isinstance(document, dict):
        return [document]
    if isinstance(document, list):
        return document
    raise InputError(str(path), "a receipt file holds a receipt (object) or an array of them")
