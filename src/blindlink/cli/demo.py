"""`blindlink demo`: a complete linkage on generated data, with every party a separate process.

A real server runs on a free localhost port; the requester and the custodian each encode and
upload from their own process and directory; each fetches only its own release; the summary
scores the requester's release against the ground truth.
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
from blindlink.agreement.model import new_agreement_document
from blindlink.canonical import canonical_json
from blindlink.client.linkage_client import LinkageClient
from blindlink.encoding.schema import default_schema_path, load_schema
from blindlink.encoding.secret import write_new_secret
from blindlink.errors import BlindlinkError
from blindlink.evaluation import membership_quality, read_truth
from blindlink.synthetic import generate_datasets

ROLES = ("requester", "custodian")
SERVER_START_TIMEOUT_S = 30


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

    secret = work / "shared-secret.txt"
    write_new_secret(secret)
    schema = load_schema(default_schema_path())
    agreement_path = work / "agreement.json"
    agreement = new_agreement_document(
        f"blindlink demo {time.strftime('%Y-%m-%dT%H:%M:%S')}",
        "Requesting agency",
        "Custodian agency",
        schema.sha256,
        schema.bit_length,
        0.8,
        "own_rows",
        "count",
    )
    agreement_path.write_text(json.dumps(agreement, indent=2), encoding="utf-8")

    with _server(work / "server") as address:
        say(f"linkage server listening on {address}")
        with LinkageClient(address, "requester") as client:
            project_id = client.create_project(canonical_json(agreement)).project_id
        say(f"project {project_id[:16]}… created from the agreement")

        for role in ROLES:
            (work / role).mkdir(exist_ok=True)
        with _stage(seconds, "encode"):
            _parallel(
                [
                    _cli(
                        "encode",
                        str(files.requester if r == "requester" else files.custodian),
                        "--secret-file",
                        str(secret),
                        "--out",
                        str(work / r / "enc.bin"),
                        "--id-map",
                        str(work / r / "idmap.json"),
                    )
                    for r in ROLES
                ]
            )
        say("both parties encoded their records locally")
        with _stage(seconds, "upload"):
            _parallel(
                [
                    _cli(
                        "upload",
                        "--server",
                        address,
                        "--party",
                        r,
                        "--project",
                        project_id,
                        str(work / r / "enc.bin"),
                    )
                    for r in ROLES
                ]
            )
        say("both parties uploaded their encodings")
        with _stage(seconds, "match"):
            final = _wait_for_run(address, project_id)
        if final.state != pb.RUN_STATE_DONE:
            raise BlindlinkError(f"the run did not finish: {final.message}")
        say("the server matched the encodings")
        with _stage(seconds, "release"):
            outputs = [
                _cli(
                    "results",
                    "--server",
                    address,
                    "--party",
                    r,
                    "--project",
                    project_id,
                    "--id-map",
                    str(work / r / "idmap.json"),
                    "--out",
                    str(work / r / "matches.csv"),
                )
                for r in ROLES
            ]
            _parallel(outputs)

    seconds["total"] = round(time.perf_counter() - started, 3)
    summary = _summary(args, work, files.truth, files.true_matches, project_id, seconds)
    if args.json:
        print(json.dumps(summary))
    else:
        _print_summary(summary)
    return 0


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
            raise BlindlinkError(f"`blindlink {' '.join(command[3:5])}` failed: {err.strip()}")
        outputs.append(out)
    return outputs


@contextmanager
def _server(data_dir: Path) -> Iterator[str]:
    """A `blindlink serve` process on a free localhost port, stopped gracefully at the end."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port_file = data_dir / "port"
    log = open(data_dir / "server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        _cli(
            "serve",
            "--data-dir",
            str(data_dir),
            "--listen",
            "127.0.0.1:0",
            "--port-file",
            str(port_file),
        ),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while not port_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BlindlinkError(f"the server did not start; see {data_dir / 'server.log'}")
            time.sleep(0.05)
        yield f"127.0.0.1:{port_file.read_text().strip()}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _wait_for_run(address: str, project_id: str) -> pb.RunProgress:
    with LinkageClient(address, "requester") as client:
        updates = list(client.watch(project_id))
    return updates[-1] if updates else pb.RunProgress()


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
    print(f"project (agreement hash)   {summary['project_id']}")
    print(f"records per party          {summary['records_per_party']}")
    print(f"true shared people         {summary['true_matches']}")
    print(f"released to requester      {summary['released_requester']} matched IDs")
    print(f"released to custodian      {summary['released_custodian']} (count only)")
    print(
        f"precision / recall         {summary['precision']:.4f} / {summary['recall']:.4f}"
        "  (requester's released IDs against the ground truth)"
    )
    print("seconds                    " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
