"""`blindlink admin`: the operator's commands on a server's data directory.

`projects`, `run`, `key-groups` and `verify` only read (safe while the server runs); `purge`
changes the store and needs the server stopped.
"""

from __future__ import annotations

import argparse
import json
from contextlib import closing
from pathlib import Path
from typing import Any

from blindlink.audit.checkpoint import CHECKPOINT_NAME
from blindlink.errors import InputError
from blindlink.matching.blocking import describe_key_loads
from blindlink.matching.decision import Estimates
from blindlink.security.keys import load_private_key, load_public_key_text
from blindlink.server.config import read_config_file
from blindlink.store.directory import SIGNING_KEY_NAME, data_dir_in_use
from blindlink.store.integrity import verify_data_dir
from blindlink.store.reports import (
    ProjectSummary,
    RunReport,
    key_group_reports,
    open_read_only,
    project_summaries,
    run_report,
)


def add_admin_commands(commands: argparse._SubParsersAction) -> None:
    admin = commands.add_parser("admin", help="inspect and maintain a server's data directory")
    actions = admin.add_subparsers(dest="action", required=True, metavar="ACTION")

    projects = actions.add_parser(
        "projects", help="list projects: metadata and counts only, never encodings"
    )
    _add_data_dir(projects)
    projects.add_argument("--json", action="store_true", help="one JSON object per project")
    projects.set_defaults(run=admin_projects)

    run = actions.add_parser("run", help="one run's state, counts and audit entries")
    _add_data_dir(run)
    run.add_argument("project", help="project ID")
    run.add_argument("run_id", metavar="run", help="run ID")
    run.add_argument("--json", action="store_true", help="print one JSON object")
    run.set_defaults(run=admin_run)

    groups = actions.add_parser(
        "key-groups",
        help="per run of a project with blocking keys: each key's comparisons and largest "
        "groups of records sharing one key value (sizes only, never the keys)",
    )
    _add_data_dir(groups)
    groups.add_argument("project", help="project ID")
    groups.add_argument("--top", type=int, default=3, help="groups to show per key")
    groups.add_argument("--json", action="store_true", help="one JSON object per run")
    groups.set_defaults(run=admin_key_groups)

    purge = actions.add_parser(
        "purge", help="apply the agreements' retention rules now (the server must be stopped)"
    )
    _add_data_dir(purge)
    purge.set_defaults(run=admin_purge)

    verify = actions.add_parser(
        "verify",
        help="check encodings files against their hashes, the database and the audit log",
    )
    _add_data_dir(verify)
    verify.add_argument(
        "--server-key",
        type=Path,
        help=f"the server's public key file (default: DATA_DIR/{SIGNING_KEY_NAME}.pub)",
    )
    verify.add_argument(
        "--checkpoint",
        type=Path,
        help="the audit checkpoint to check the log against, e.g. a copy kept elsewhere "
        f"(default: DATA_DIR/{CHECKPOINT_NAME})",
    )
    verify.set_defaults(run=admin_verify)


def _add_data_dir(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--data-dir", type=Path, help="the server's data directory")
    where.add_argument("--config", type=Path, help="the server's config file naming data_dir")


def data_dir(args: argparse.Namespace) -> Path:
    if args.data_dir is not None:
        return Path(args.data_dir)
    configured = read_config_file(args.config).get("data_dir")
    if configured is None:
        raise InputError(str(args.config), "the config file does not set data_dir")
    return Path(configured)


def admin_projects(args: argparse.Namespace) -> int:
    with closing(open_read_only(data_dir(args))) as conn:
        summaries = project_summaries(conn)
    if args.json:
        for summary in summaries:
            print(json.dumps(summary.to_json(), sort_keys=True))
        return 0
    if not summaries:
        print("no projects")
    for summary in summaries:
        print(_project_line(summary))
    return 0


def _project_line(s: ProjectSummary) -> str:
    runs = ", ".join(f"{n} {state}" for state, n in s.runs.items()) or "no runs"
    return (
        f"{s.project_id}  {s.reference!r}  created {s.created}  "
        f"uploads requester {s.uploads['requester']} ({s.records['requester']} records), "
        f"custodian {s.uploads['custodian']} ({s.records['custodian']} records), "
        f"{s.stored_encodings} stored  runs: {runs}"
    )


def admin_run(args: argparse.Namespace) -> int:
    with closing(open_read_only(data_dir(args))) as conn:
        report = run_report(conn, args.project, args.run_id)
    if report is None:
        raise InputError(str(data_dir(args)), f"no run {args.run_id} in project {args.project}")
    if args.json:
        print(json.dumps(report.to_json(), sort_keys=True))
    else:
        print(_run_text(report))
    return 0


def _run_text(r: RunReport) -> str:
    fields: list[tuple[str, Any]] = [
        ("project", r.project_id),
        ("run", r.run_id),
        ("state", r.state + (f" ({r.message})" if r.message else "")),
        ("threshold", r.threshold),
        ("matches", f"{r.match_count} released, {r.withheld_count} withheld"),
        ("decision", _decision_text(r.decision)),
        ("approved", "yes" if r.approved else "no"),
        ("created", r.created),
        ("finished", r.finished or "-"),
        ("fetched by", ", ".join(r.fetched_by) or "nobody"),
        ("results", "deleted" if r.results_deleted else "kept"),
    ]
    lines = [f"{name:<11}{value}" for name, value in fields]
    lines.append("audit entries")
    lines += [
        f"  {e['seq']:>6}  {e['time']}  {e['kind']:<17} {e['party'] or '-':<10} "
        f"{json.dumps(e['details'], sort_keys=True)}"
        for e in r.events
    ]
    return "\n".join(lines)


def _decision_text(decision: dict[str, Any] | None) -> str:
    if decision is None:
        return "-"
    estimates = decision["estimates"]
    quality = (
        "no estimates"
        if estimates is None
        else "estimated " + Estimates.from_dict(estimates).text()
    )
    return (
        f"threshold {decision['threshold']} ({decision['rule']}); {decision['possible']} "
        f"possible matches; {quality}"
    )


def admin_key_groups(args: argparse.Namespace) -> int:
    directory = data_dir(args)
    with closing(open_read_only(directory)) as conn:
        reports = key_group_reports(conn, directory, args.project, args.top)
    if not reports:
        print("no runs")
    for report in reports:
        if args.json:
            print(json.dumps(report.to_json(), sort_keys=True))
        elif report.loads is None:
            print(f"{report.run_id}  {report.state}  encodings deleted")
        else:
            print(f"{report.run_id}  {report.state}  {describe_key_loads(report.loads)}")
    return 0


def admin_purge(args: argparse.Namespace) -> int:
    # The store and retention modules load the matching stack; only this command needs them.
    from blindlink.server.retention import purge_expired
    from blindlink.store.sqlite import Store

    directory = data_dir(args)
    key = directory / f"{SIGNING_KEY_NAME}.key"
    if not key.is_file():
        raise InputError(str(key), "the server's signing key is missing; is this a data dir?")
    store = Store(directory, load_private_key(key))
    try:
        deleted = purge_expired(store)
    finally:
        store.close()
    for line in deleted:
        print(f"deleted {line}")
    print(f"retention applied: {len(deleted)} deletion(s)")
    return 0


def admin_verify(args: argparse.Namespace) -> int:
    """Print one line per problem and return 1, or a summary and return 0."""
    directory = data_dir(args)
    key = load_public_key_text(args.server_key or directory / f"{SIGNING_KEY_NAME}.pub")
    report = verify_data_dir(directory, key, data_dir_in_use(directory), args.checkpoint)
    if report.problems:
        print("\n".join(report.problems))
        return 1
    print(
        f"data directory OK: {report.projects} projects, {report.files} encodings files "
        f"(content hashes match), {report.runs} runs, {report.audit_entries} audit entries "
        "(chain, signatures, checkpoint and the state they commit to verified)"
    )
    return 0
