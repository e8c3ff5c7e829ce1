"""Commands a party runs on its own machine: encode, upload, status, approve, results,
delete."""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import grpc

from blindlink._generated import linkage_pb2 as pb
from blindlink.agreement.model import Agreement
from blindlink.agreement.signing import parse_signed
from blindlink.cli.progress import bar
from blindlink.client.client import estimates_of
from blindlink.client.linkage_client import ClientTls, LinkageClient, ServerError
from blindlink.encoding.csv_input import expected_records
from blindlink.encoding.encoder import encode_csv
from blindlink.encoding.encodings_file import import_clkhash_json, read_header
from blindlink.encoding.id_map import IdMap, read_id_map, read_row_references, write_id_map
from blindlink.encoding.schema import default_schema_path, load_schema
from blindlink.encoding.secret import read_secret
from blindlink.errors import InputError
from blindlink.security.tls import is_loopback

_STATE_NAMES = {
    v: k.removeprefix("RUN_STATE_").lower().replace("_", " ") for k, v in pb.RunState.items()
}
_KIND_NAMES = {v: k.removeprefix("RELEASE_KIND_").lower() for k, v in pb.ReleaseKind.items()}


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """How a party reaches the server: address, role and TLS material."""
    parser.add_argument("--server", default="localhost:50051", help="HOST:PORT of the server")
    parser.add_argument(
        "--party",
        required=True,
        choices=("requester", "custodian"),
        help="your role in the agreement",
    )
    parser.add_argument(
        "--tls-dir",
        type=Path,
        help="directory with ca.pem, PARTY.pem and PARTY.key (pki init layout)",
    )
    parser.add_argument("--ca", type=Path, help="CA certificate the server's certificate is from")
    parser.add_argument("--cert", type=Path, help="your client certificate")
    parser.add_argument("--key", type=Path, help="your client certificate's key")
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext, for a development server on loopback only",
    )


def add_party_arguments(parser: argparse.ArgumentParser) -> None:
    add_connection_arguments(parser)
    parser.add_argument("--project", required=True, help="project ID (the agreement hash)")


def connect(args: argparse.Namespace) -> LinkageClient:
    """A client for the party and server the arguments name."""
    return LinkageClient(args.server, args.party, client_tls(args))


def client_tls(args: argparse.Namespace) -> ClientTls | None:
    if args.insecure:
        if not is_loopback(args.server):
            raise InputError(args.server, "--insecure is only for servers on loopback")
        return None
    if args.tls_dir:
        return ClientTls.from_dir(args.tls_dir, args.party)
    if args.ca and args.cert and args.key:
        return ClientTls(args.ca, args.cert, args.key)
    raise InputError(
        args.server,
        "no TLS material: pass --tls-dir (or --ca, --cert and --key), "
        "or --insecure for a development server on loopback",
    )


def _latest_run(client: LinkageClient, project_id: str) -> str:
    runs = client.status(project_id).runs
    if not runs:
        raise InputError(
            project_id, "the project has no runs yet: the requester's upload starts one"
        )
    return runs[-1].run_id


def column_mapping(text: str) -> tuple[str, str]:
    """FIELD=CSVCOLUMN: a schema field and the CSV column it is read from."""
    field, _, column = text.partition("=")
    if not field or not column:
        raise argparse.ArgumentTypeError(f"{text!r} is not FIELD=CSVCOLUMN, like surname=last_name")
    return field, column


def _columns(pairs: Sequence[tuple[str, str]], path: Path) -> dict[str, str]:
    columns: dict[str, str] = {}
    for field, column in pairs:
        if columns.setdefault(field, column) != column:
            raise InputError(str(path), f"--column maps the field '{field}' more than once")
    return columns


def encode(args: argparse.Namespace) -> int:
    schema = load_schema(args.schema or default_schema_path())
    secret = read_secret(args.secret_file)
    id_map = args.id_map or Path(f"{args.out}.idmap.json")
    agreement = _agreement_for(args.agreement, schema.sha256) if args.agreement else None
    with bar(expected_records(args.input), "encoding") as progress:
        result = encode_csv(
            args.input,
            schema,
            secret,
            args.out,
            id_map,
            args.id_column,
            args.workers,
            progress.update,
            agreement.hardening if agreement else [],
            agreement.blocking_keys if agreement else None,
            _columns(args.columns, args.input),
        )
    keys = agreement.blocking_keys if agreement else None
    bits = f"{result.header.bit_length} bits"
    if keys:
        encoding_bits = result.header.bit_length - 64 * len(keys.keys)
        bits += f": a {encoding_bits}-bit encoding and {len(keys.keys)} blocking keys"
    print(f"encoded {result.header.count} records ({bits}) to {result.encodings_path}")
    if result.unused_columns:
        print(f"ignored CSV column(s) the schema does not use: {', '.join(result.unused_columns)}")
    print(f"local ID map (keep it; never upload it): {result.id_map_path}")
    return 0


def _agreement_for(path: Path, schema_sha256: str) -> Agreement:
    """A (signed) agreement, after checking it names this schema: its hardening steps and
    blocking keys say how to encode."""
    try:
        agreement = parse_signed(Path(path).read_bytes()).agreement
    except FileNotFoundError:
        raise InputError(str(path), "agreement file not found") from None
    if agreement.schema_sha256 != schema_sha256:
        raise InputError(
            str(path),
            "the agreement names a different linkage schema than the "
            "one given to encode with (see `blindlink schema hash`)",
        )
    return agreement


def upload(args: argparse.Namespace) -> int:
    path = Path(args.encodings)
    with tempfile.TemporaryDirectory() as tmp:
        if _looks_like_json(path):
            if not args.schema:
                raise InputError(
                    str(path),
                    "clkhash JSON output carries no schema hash; pass "
                    "--schema with the linkage schema it was made with",
                )
            converted = Path(tmp) / "encodings.bin"
            import_clkhash_json(path, converted, load_schema(args.schema).sha256)
            path = converted
        header = read_header(path)
        with connect(args) as client, bar(header.payload_bytes, "uploading", unit="B") as bar_:
            receipt = client.upload(
                args.project,
                path,
                args.threshold,
                bar_.update,
                purpose=args.purpose,
                restart=args.restart,
            )
    if json.loads(receipt.receipt)["kind"] == "upload_repeated":
        print(
            f"this batch was uploaded before (upload {receipt.upload_id}); nothing new was "
            "stored and its run stands"
        )
    else:
        print(
            f"uploaded {receipt.count} encodings as {receipt.party}; content SHA-256 "
            f"{receipt.content_sha256.hex()}"
        )
    if receipt.run_id:
        print(f"run {receipt.run_id} matches this batch")
    if args.receipt:
        args.receipt.write_text(receipt.receipt + "\n", encoding="utf-8")
    return 0


def update(args: argparse.Namespace) -> int:
    """The custodian's update: append an encodings file's records, remove rows, in one commit;
    then the local ID map is extended by the appended file's map."""
    if args.append is None and args.remove is None:
        raise InputError("update", "give --append, --remove or both")
    id_map = read_id_map(args.id_map)
    removed = read_row_references(args.remove) if args.remove else []
    appended_map = None
    if args.append is not None:
        appended_map = read_id_map(args.append_id_map or Path(f"{args.append}.idmap.json"))
        header = read_header(args.append)
        if appended_map.content_sha256 != header.content_sha256.hex():
            raise InputError(
                str(args.append_id_map or f"{args.append}.idmap.json"),
                f"this ID map is not the map of {args.append} (another content hash)",
            )
    size = read_header(args.append).payload_bytes if args.append else 0
    with connect(args) as client, bar(size, "appending", unit="B") as bar_:
        receipt = client.update(
            args.project, len(id_map.ids), args.append, removed, bar_.update, restart=args.restart
        )
    if appended_map is not None:
        write_id_map(args.id_map, id_map.extended(appended_map))
    print(
        f"update committed: version {receipt.version}; {receipt.appended} records appended as "
        f"rows {receipt.first_row} to {receipt.first_row + receipt.appended - 1}, "
        f"{receipt.removed} removed; {receipt.records} records now"
        if receipt.appended
        else f"update committed: version {receipt.version}; {receipt.removed} records removed; "
        f"{receipt.records} records now"
    )
    if appended_map is not None:
        print(f"local ID map extended: {args.id_map} (keep it; never upload it)")
    if args.receipt:
        args.receipt.write_text(receipt.receipt + "\n", encoding="utf-8")
    return 0


def _looks_like_json(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(64).lstrip()[:1] == b"{"
    except FileNotFoundError:
        raise InputError(str(path), "file not found") from None


def status(args: argparse.Namespace) -> int:
    with connect(args) as client:
        if args.watch:
            return _watch(client, args.project, args.run_id or _latest_run(client, args.project))
        reply = client.status(args.project)
    for upload_status in reply.uploads:
        if upload_status.upload_id:
            print(
                f"{upload_status.party}: upload {upload_status.upload_id} "
                f"({upload_status.count} records)"
            )
        else:
            print(
                f"{upload_status.party}: {'uploaded' if upload_status.uploaded else 'not uploaded'}"
            )
    for run in reply.runs:
        print(f"run {run.run_id}: {describe_summary(run)}")
    return 0


def describe_summary(run: pb.RunSummary) -> str:
    text = f"{_STATE_NAMES[run.state]}, threshold {run.threshold:g}"
    if run.counts_visible:
        text += f", {run.match_count} matches, {run.withheld_count} withheld as ambiguous"
        if run.HasField("decision"):
            text += f"; {describe_decision(run.decision)}"
    if run.approved:
        text += ", approved by the custodian"
    if run.message:
        text += f" ({run.message})"
    return text


def describe_decision(decision: pb.RunDecision) -> str:
    """How a run decided: its threshold and rule, possible matches, the model's estimates."""
    text = f"threshold {decision.threshold:g} ({decision.rule})"
    if decision.possible_count:
        text += f", {decision.possible_count} possible matches withheld"
    if decision.HasField("estimates"):
        text += "; estimated " + estimates_of(decision.estimates).text()
    return text


def _watch(client: LinkageClient, project_id: str, run_id: str) -> int:
    update = pb.RunProgress()
    try:
        with bar(0, "matching (thousandths)", unit="", unit_scale=False) as progress:
            for update in client.watch(project_id, run_id):
                if update.total:
                    progress.total = update.total
                    progress.update(update.done - progress.n)
                progress.set_postfix_str(describe_progress(update))
    except ServerError as exc:
        if exc.code != grpc.StatusCode.RESOURCE_EXHAUSTED:
            raise
        print("the server is busy with other watchers; checking the run's status every second")
        update = client.poll(project_id, run_id)
    print(f"run {run_id}: {describe_progress(update)}")
    return 0 if update.state == pb.RUN_STATE_DONE else 1


def describe_progress(progress: pb.RunProgress) -> str:
    text = _STATE_NAMES[progress.state]
    if progress.stage:
        text += f", {progress.stage}"
    if progress.total:
        text += f" {progress.done}/{progress.total}"
    if progress.message:
        text += f" ({progress.message})"
    return text


def results(args: argparse.Namespace) -> int:
    id_map = read_id_map(args.id_map)
    with connect(args) as client:
        release = client.release(args.project, args.run_id or _latest_run(client, args.project))
    if args.receipt:
        args.receipt.write_text(release.receipt + "\n", encoding="utf-8")
    kind = _KIND_NAMES[release.kind]
    if release.kind == pb.RELEASE_KIND_NOTHING:
        print("release (nothing): the agreement grants this party nothing")
        return 0
    if release.kind == pb.RELEASE_KIND_COUNT:
        _write_csv(args.out, ["match_count"], [[release.match_count]])
        where = f"written to {args.out}"
    else:
        _write_ids(args.out, release, id_map, release.own_rows, release.other_rows)
        where = f"IDs written to {args.out}"
    if release.possible_own_rows:
        possible = args.out.with_name(f"{args.out.stem}.possible{args.out.suffix}")
        _write_ids(
            possible, release, id_map, release.possible_own_rows, release.possible_other_rows
        )
        where += f", possible matches' IDs to {possible}"
    print(
        f"release ({kind}) of run {release.run_id}: {release.match_count} matches"
        f"{_withheld(release)}; {where}"
    )
    if release.HasField("decision"):
        print(describe_decision(release.decision))
    return 0


def _write_ids(
    path: Path, release: pb.Release, id_map: IdMap, own: Sequence[int], other: Sequence[int]
) -> None:
    """The party's own IDs of released rows, with the other party's rows for pairs."""
    ids = id_map.lookup(list(own))
    if release.kind == pb.RELEASE_KIND_OWN_ROWS:
        _write_csv(path, ["id"], [[i] for i in ids])
    else:
        _write_csv(path, ["id", "other_row"], [[i, r] for i, r in zip(ids, other, strict=True)])


def _withheld(release: pb.Release) -> str:
    return f" ({release.withheld_count} withheld as ambiguous)" if release.withheld_count else ""


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    tmp = Path(f"{path}.partial")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(tmp, path)


def approve(args: argparse.Namespace) -> int:
    with connect(args) as client:
        summary = client.approve(args.project, args.run_id)
    print(f"run {summary.run_id}: {describe_summary(summary)}")
    return 0


def delete(args: argparse.Namespace) -> int:
    with connect(args) as client:
        client.delete(args.project)
    print(f"deleted project {args.project}")
    return 0
