"""`blindlink demo`: a complete linkage on generated data, with every party a separate process.

A development CA issues the server's and each party's TLS certificate; each party signs the
agreement with its certificate's key; a real server runs with mutual TLS on a free localhost
port; the requester and the custodian encode, upload and fetch their releases from their own
processes; at the end the operator exports the audit log and the parties' receipts are checked
against it. The summary scores the requester's release against the ground truth.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from blindlink._generated import linkage_pb2 as pb
from blindlink.agreement.document import default_hardening
from blindlink.agreement.model import PartyInfo, new_agreement_document
from blindlink.agreement.signing import SignedAgreement
from blindlink.audit.export import read_export
from blindlink.cli.party import describe_decision
from blindlink.client.client import estimates_of
from blindlink.client.linkage_client import ClientTls, LinkageClient
from blindlink.encoding.blocking_keys import DEFAULT_SCHEMA_KEYS
from blindlink.encoding.schema import default_schema_path, load_schema
from blindlink.encoding.secret import write_new_secret
from blindlink.errors import BlindlinkError
from blindlink.evaluation import membership_quality, read_truth
from blindlink.hardening import output_bit_length
from blindlink.security.pki import PkiFiles, certificate_fingerprint, init_pki
from blindlink.server.local_process import local_server
from blindlink.synthetic import generate_datasets

ROLES = ("requester", "custodian")
# From this many records per party, --blocking auto uses blocking keys: all pairs would take
# minutes on a small machine.
AUTO_KEYS_RECORDS = 200_000


def demo(args: argparse.Namespace) -> int:
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        return _run(args, args.workdir)
    with tempfile.TemporaryDirectory(prefix="blindlink-demo-") as tmp:
        return _run(args, Path(tmp))


def _run(args: argparse.Namespace, work: Path) -> int:
    say = (lambda *_: None) if args.json else (lambda msg: print(msg, flush=True))
    seconds: dict[str, float] = {}
    started = time.perf_counter()

    with _stage(seconds, "generate"):
        files = generate_datasets(work / "data", args.records, args.overlap, args.seed)
    say(f"generated {args.records} records per party, {files.true_matches} shared ({work})")
    dirs = {role: work / role for role in ROLES}
    for d in dirs.values():
        d.mkdir(exist_ok=True)
    inputs = {"requester": files.requester, "custodian": files.custodian}

    with _stage(seconds, "setup"):
        pki = init_pki(work / "pki", ROLES)
        write_new_secret(work / "shared-secret.txt")
        blocking = _blocking(args)
        agreement_path = _write_agreement(work, pki, blocking)
        for role in ROLES:  # in turn: each party adds its signature to the same document
            _parallel(
                [
                    _cli(
                        "agreement",
                        "sign",
                        str(agreement_path),
                        "--role",
                        role,
                        "--cert",
                        str(pki.party_certs[role]),
                        "--key",
                        str(pki.party_keys[role]),
                    )
                ]
            )
        _parallel([_cli("agreement", "verify", str(agreement_path), "--ca", str(pki.ca_cert))])
    say("development CA issued TLS certificates; both parties signed the agreement")

    with local_server(work / "server", work / "pki") as server:
        address = server.address
        say(f"linkage server listening on {address} (mutual TLS)")
        tls = {role: _tls_args(pki, role) for role in ROLES}
        project_id = _parallel(
            [
                _cli(
                    "project",
                    "create",
                    "--server",
                    address,
                    "--party",
                    "requester",
                    *tls["requester"],
                    "--agreement",
                    str(agreement_path),
                )
            ]
        )[0].strip()
        say(f"project {project_id[:16]}… created from the signed agreement")
        with _stage(seconds, "encode"):
            _parallel(
                [
                    _cli(
                        "encode",
                        str(inputs[r]),
                        "--secret-file",
                        str(work / "shared-secret.txt"),
                        "--out",
                        str(dirs[r] / "enc.bin"),
                        "--id-map",
                        str(dirs[r] / "idmap.json"),
                        "--agreement",
                        str(agreement_path),
                    )
                    for r in ROLES
                ]
            )
        say(
            "both parties encoded their records locally"
            + (", with blocking keys" if blocking else "")
        )
        with _stage(seconds, "upload"):
            _parallel(
                [
                    _cli(
                        "upload",
                        "--server",
                        address,
                        "--party",
                        r,
                        *tls[r],
                        "--project",
                        project_id,
                        str(dirs[r] / "enc.bin"),
                        "--receipt",
                        str(dirs[r] / "upload-receipt.json"),
                    )
                    for r in ROLES
                ]
            )
        say("both parties uploaded their encodings")
        with _stage(seconds, "match"):
            final = _wait_for_run(address, pki, project_id)
        if final.state != pb.RUN_STATE_DONE:
            raise BlindlinkError(f"the run did not finish: {final.message}")
        decision = _run_decision(address, pki, project_id)
        say(f"the server matched the encodings: {describe_decision(decision)}")
        with _stage(seconds, "release"):
            _parallel(
                [
                    _cli(
                        "results",
                        "--server",
                        address,
                        "--party",
                        r,
                        *tls[r],
                        "--project",
                        project_id,
                        "--id-map",
                        str(dirs[r] / "idmap.json"),
                        "--out",
                        str(dirs[r] / "matches.csv"),
                        "--receipt",
                        str(dirs[r] / "release-receipt.json"),
                    )
                    for r in ROLES
                ]
            )

    with _stage(seconds, "audit"):
        audit_entries = _verify_audit(work, dirs)
    say(f"audit log verified: {audit_entries} signed, chained entries; receipts match")
    seconds["total"] = round(time.perf_counter() - started, 3)
    summary = _summary(args, work, files.truth, files.true_matches, project_id, seconds)
    summary["decision"] = _decision_json(decision)
    summary["audit_entries_verified"] = audit_entries
    summary["blocking"] = "blocking keys" if blocking else "all pairs"
    if args.json:
        print(json.dumps(summary))
    else:
        _print_summary(summary)
    return 0


def _blocking(args: argparse.Namespace) -> dict[str, object] | None:
    """The agreement's blocking: keyed blocking keys with --blocking keys, or with auto for
    files too large to compare all pairs of quickly."""
    if args.blocking == "keys" or (args.blocking == "auto" and args.records >= AUTO_KEYS_RECORDS):
        return {"method": "keys", "keys": DEFAULT_SCHEMA_KEYS}
    return None


def _write_agreement(work: Path, pki: PkiFiles, blocking: dict[str, object] | None) -> Path:
    schema = load_schema(default_schema_path())
    parties = {
        role: PartyInfo(
            f"{role.title()} agency", certificate_fingerprint(pki.party_certs[role].read_bytes())
        )
        for role in ROLES
    }
    # The agreement `agreement new` makes by default: the recommended hardening, and runs that
    # calibrate their own threshold.
    document = new_agreement_document(
        reference=f"blindlink demo {time.strftime('%Y-%m-%dT%H:%M:%S')}",
        requester=parties["requester"],
        custodian=parties["custodian"],
        schema_sha256=schema.sha256,
        bit_length=output_bit_length(schema.bit_length, default_hardening()),
        blocking=blocking,
    )
    path = work / "agreement.json"
    signed = SignedAgreement.unsigned(document)
    path.write_text(json.dumps(signed.document(), indent=2), encoding="utf-8")
    return path


def _tls_args(pki: PkiFiles, role: str) -> list[str]:
    return [
        "--ca",
        str(pki.ca_cert),
        "--cert",
        str(pki.party_certs[role]),
        "--key",
        str(pki.party_keys[role]),
    ]


@contextmanager
def _stage(seconds: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    seconds[name] = round(time.perf_counter() - start, 3)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "blindlink", *args]


def _parallel(commands: list[list[str]]) -> list[str]:
    """Run party commands as separate processes at once; their stdout, or an error."""
    procs = [
        subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for c in commands
    ]
    outputs = []
    for command, proc in zip(commands, procs, strict=True):
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise BlindlinkError(
                f"`blindlink {' '.join(command[3:5])}` failed: {(err or out).strip()}"
            )
        outputs.append(out)
    return outputs


def _wait_for_run(address: str, pki: PkiFiles, project_id: str) -> pb.RunProgress:
    tls = ClientTls(pki.ca_cert, pki.party_certs["requester"], pki.party_keys["requester"])
    with LinkageClient(address, "requester", tls) as client:
        return client.wait(project_id, client.status(project_id).runs[-1].run_id)


def _run_decision(address: str, pki: PkiFiles, project_id: str) -> pb.RunDecision:
    """How the run decided, as the requester's status shows it."""
    tls = ClientTls(pki.ca_cert, pki.party_certs["requester"], pki.party_keys["requester"])
    with LinkageClient(address, "requester", tls) as client:
        return client.status(project_id).runs[-1].decision


def _decision_json(decision: pb.RunDecision) -> dict[str, object]:
    estimates = estimates_of(decision.estimates).to_dict() if decision.HasField("estimates") else {}
    return {
        "threshold": round(decision.threshold, 4),
        "rule": decision.rule,
        "possible_matches": decision.possible_count,
        **{
            f"estimated_{name}": estimates.get(name)
            for name in ("precision", "recall", "precision_interval", "recall_interval")
        },
    }


def _verify_audit(work: Path, dirs: dict[str, Path]) -> int:
    """The operator exports the log; an auditor checks it and the parties' receipts."""
    export = work / "audit.jsonl"
    _parallel([_cli("audit", "export", "--data-dir", str(work / "server"), "--out", str(export))])
    receipts = [str(p) for d in dirs.values() for p in sorted(d.glob("*-receipt.json"))]
    receipt_args = [a for r in receipts for a in ("--receipt", r)]
    _parallel(
        [
            _cli(
                "audit",
                "verify",
                str(export),
                "--server-key",
                str(work / "server" / "server-signing.pub"),
                *receipt_args,
            )
        ]
    )
    return len(read_export(export))


def _summary(
    args: argparse.Namespace,
    work: Path,
    truth_path: Path,
    true_matches: int,
    project_id: str,
    seconds: dict[str, float],
) -> dict[str, object]:
    released = {row["id"] for row in _read_csv(work / "requester" / "matches.csv")}
    custodian_count = int(_read_csv(work / "custodian" / "matches.csv")[0]["match_count"])
    quality = membership_quality(released, {r for r, _ in read_truth(truth_path)})
    return {
        "records_per_party": args.records,
        "true_matches": true_matches,
        "project_id": project_id,
        "agreement_sha256": project_id,
        "released_requester": len(released),
        "released_custodian": custodian_count,
        "precision": round(quality.precision, 4),
        "recall": round(quality.recall, 4),
        "seconds": seconds,
    }


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _print_summary(summary: dict[str, object]) -> None:
    seconds = summary["seconds"]
    assert isinstance(seconds, dict)
    print()
    print(f"agreement hash (project)   {summary['agreement_sha256']}")
    print(f"records per party          {summary['records_per_party']}")
    print(f"true shared people         {summary['true_matches']}")
    print(f"compared                   {summary['blocking']}")
    print(f"released to requester      {summary['released_requester']} matched IDs")
    print(f"released to custodian      {summary['released_custodian']} (count only)")
    print(
        f"precision / recall         {summary['precision']:.4f} / {summary['recall']:.4f}"
        "  (requester's released IDs against the ground truth)"
    )
    decision = summary["decision"]
    assert isinstance(decision, dict)
    if decision["estimated_precision"] is None:
        estimated = "no estimates: the match model could not be fitted"
    else:
        estimated = (
            f"{decision['estimated_precision']:.4f} / {decision['estimated_recall']:.4f}"
            "  (the run's own estimates, without ground truth)"
        )
    print(f"estimated by the run       {estimated}")
    intervals = decision["estimated_precision_interval"], decision["estimated_recall_interval"]
    if all(isinstance(interval, list) for interval in intervals):
        text = " / ".join(f"{low:.4f}-{high:.4f}" for low, high in intervals)  # type: ignore[union-attr]
        print(f"  their intervals          {text}  (the estimates' sampling error)")
    print(f"decision                   threshold {decision['threshold']} ({decision['rule']})")
    print(
        f"audit log                  {summary['audit_entries_verified']} entries verified "
        "(hash chain, server signatures, parties' receipts)"
    )
    print("seconds                    " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
