"""`blindlink`: the command-line entry point."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import BaseModel

from blindlink import __version__
from blindlink.agreement.document import (
    POSSIBLE_RELEASES,
    PURPOSE_MAX_LENGTH,
    VALIDITY,
    Limits,
    Release,
    Retention,
    default_hardening,
    recommended_thresholds,
)
from blindlink.cli import party, setup_commands
from blindlink.cli.admin_commands import add_admin_commands
from blindlink.cli.audit_commands import add_audit_commands
from blindlink.cli.bench_commands import add_bench_commands
from blindlink.cli.security_commands import add_security_commands
from blindlink.encoding.csv_input import ID_COLUMN
from blindlink.errors import BlindlinkError
from blindlink.extras import MissingExtra, extra_for
from blindlink.matching.rules import Target
from blindlink.server.config import add_arguments as add_server_arguments

HARDENED = recommended_thresholds(default_hardening())
PLAIN = recommended_thresholds([])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blindlink",
        description=(
            "Privacy-preserving record matching: encode identities locally, link encodings on a "
            "server that never sees plaintext, release only what the agreement grants."
        ),
    )
    parser.add_argument("--version", action="version", version=f"blindlink {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_setup_commands(commands)
    _add_party_commands(commands)
    add_security_commands(commands)
    add_audit_commands(commands)
    add_bench_commands(commands)
    serve_cmd = commands.add_parser(
        "serve",
        help="run the linkage server",
        description="Run the linkage server. Every setting can also be given in the --config "
        "file or a BLINDLINK_* environment variable (flag > environment > file > default).",
    )
    add_server_arguments(serve_cmd)
    serve_cmd.set_defaults(run=_lazy("blindlink.cli.serve", "serve"))
    add_admin_commands(commands)
    demo = commands.add_parser("demo", help="run a complete linkage on generated data")
    demo.add_argument("--records", type=int, default=10_000, help="records per party")
    demo.add_argument("--overlap", type=float, default=0.5, help="fraction of shared people")
    demo.add_argument("--seed", type=int, default=1)
    demo.add_argument(
        "--blocking",
        choices=("auto", "none", "keys"),
        default="auto",
        help="compare all pairs, or records sharing a keyed blocking key (auto: keys from "
        "200,000 records per party)",
    )
    demo.add_argument("--workdir", type=Path, help="keep all files here (default: temporary)")
    demo.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    demo.set_defaults(run=_lazy("blindlink.cli.demo", "demo"))
    return parser


def _lazy(module: str, name: str):  # type: ignore[no-untyped-def]
    """Import heavy command modules only when their command runs."""

    def run(args: argparse.Namespace) -> int:
        import importlib

        return int(getattr(importlib.import_module(module), name)(args))

    return run


def _add_setup_commands(commands: argparse._SubParsersAction) -> None:
    gen = commands.add_parser("generate", help="write synthetic party files with ground truth")
    gen.add_argument(
        "--records",
        type=int,
        required=True,
        help="records per party; with --batches, the custodian's records",
    )
    gen.add_argument(
        "--overlap",
        type=float,
        default=0.5,
        help="fraction of each requester file's people that the custodian holds",
    )
    gen.add_argument(
        "--batches",
        type=int,
        help="write this many requester batches drawn from one custodian "
        "(requester-K.csv, truth-K.csv) instead of requester.csv and truth.csv",
    )
    gen.add_argument(
        "--batch-records",
        type=int,
        help="records per requester batch, with --batches (default: "
        f"{setup_commands.DEFAULT_BATCH_RECORDS})",
    )
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument(
        "--corruption",
        type=float,
        default=1.0,
        help="multiplier on the default corruption rates (0: clean copies)",
    )
    gen.add_argument("--out", type=Path, required=True, help="output directory")
    gen.set_defaults(run=setup_commands.generate)

    secret = commands.add_parser("secret", help="the linkage secret").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    new_secret = secret.add_parser("new", help="write a fresh random secret")
    new_secret.add_argument("--out", type=Path, required=True)
    new_secret.set_defaults(run=setup_commands.secret_new)

    schema = commands.add_parser("schema", help="linkage schemas").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    hash_cmd = schema.add_parser("hash", help="print a schema's content hash")
    hash_cmd.add_argument("schema", type=Path, nargs="?", help="default: the shipped schema")
    hash_cmd.set_defaults(run=setup_commands.schema_hash)
    schema.add_parser("default", help="print the shipped default schema").set_defaults(
        run=setup_commands.schema_show_default
    )

    agreement = commands.add_parser("agreement", help="linkage agreements").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    _add_agreement_new(agreement)
    sign = agreement.add_parser("sign", help="sign an agreement as one party")
    sign.add_argument("agreement", type=Path)
    sign.add_argument("--role", required=True, choices=("requester", "custodian"))
    sign.add_argument(
        "--cert", type=Path, required=True, help="your TLS client certificate, named for ROLE"
    )
    sign.add_argument("--key", type=Path, required=True, help="its private key, which signs")
    sign.set_defaults(run=setup_commands.agreement_sign)
    verify = agreement.add_parser("verify", help="check both parties' signatures")
    verify.add_argument("agreement", type=Path)
    verify.add_argument(
        "--ca",
        type=Path,
        help="also check that each party's certificate is a client certificate this CA issued "
        "and valid now (as the server checks with its client CA)",
    )
    verify.set_defaults(run=setup_commands.agreement_verify)
    agreement.add_parser("schema", help="print the agreement's JSON Schema").set_defaults(
        run=setup_commands.agreement_schema
    )

    project = commands.add_parser("project", help="projects on a server").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    create = project.add_parser("create", help="create a project from a signed agreement")
    party.add_connection_arguments(create)
    create.add_argument("--agreement", type=Path, required=True)
    create.set_defaults(run=setup_commands.project_create)


def _add_agreement_new(agreement: argparse._SubParsersAction) -> None:
    """`agreement new`: options left out take the agreement model's defaults
    (agreement/document.py), which the help texts quote."""
    new = agreement.add_parser("new", help="write a new agreement for both parties to sign")
    new.add_argument("--reference", required=True, help="your agreement reference")
    for role in ("requester", "custodian"):
        new.add_argument(f"--{role}", required=True, help=f"the {role}'s name")
        new.add_argument(
            f"--{role}-cert",
            type=Path,
            required=True,
            help=f"the {role}'s TLS client certificate, whose key signs the agreement",
        )
        new.add_argument(
            f"--{role}-release",
            choices=setup_commands.RELEASE_CHOICES,
            help=f"what the {role} receives (default: {_default(Release, role)})",
        )
    new.add_argument("--schema", type=Path, help="linkage schema (default: shipped schema)")
    new.add_argument(
        "--hardening",
        metavar="JSON",
        help="hardening steps as JSON; '[]' for none (default: the tradeoff benchmark's "
        f"recommendation, {json.dumps(default_hardening())})",
    )
    new.add_argument(
        "--blocking",
        metavar="JSON",
        help="blocking as JSON (default: all pairs), e.g. keyed blocking keys "
        '\'{"method": "keys", "keys": [[{"field": "surname"}, {"field": "date_of_birth"}], '
        '[{"field": "given_name"}, {"field": "surname", "prefix": 3}]]}\' or LSH '
        '\'{"method": "lsh", "bands": 300, "bits_per_band": 22, "seed": 1}\'',
    )
    _add_decision_arguments(new)
    new.add_argument(
        "--ambiguity-margin",
        type=float,
        help="withhold matches with a rival within this similarity (0: off; default: "
        f"{_default(Release, 'ambiguity_margin')})",
    )
    new.add_argument(
        "--custodian-approval",
        action="store_const",
        const=True,
        help="results are released only after the custodian approves a run",
    )
    counts: list[tuple[str, type[BaseModel], str, str]] = [
        ("--max-records-per-upload", Limits, "max_records_per_upload", ""),
        ("--period-seconds", Limits, "period_seconds", "rolling period of the two limits below"),
        ("--max-uploads-per-period", Limits, "max_uploads_per_period", "per party"),
        ("--max-records-per-period", Limits, "max_records_per_period", "per party"),
        ("--encodings-ttl", Retention, "encodings_ttl_seconds", "seconds"),
        ("--results-ttl", Retention, "results_ttl_seconds", "seconds"),
    ]
    for option, section, name, words in counts:
        default = f"default: {_default(section, name)}"
        new.add_argument(option, type=int, dest=name, help=f"{words} ({default})".lstrip())
    new.add_argument("--valid-days", type=int, help=f"validity from now (default: {VALIDITY.days})")
    new.add_argument(
        "--keep-encodings-after-release",
        dest="delete_encodings_after_release",
        action="store_const",
        const=False,
        help="do not delete a batch's encodings once its release is fetched",
    )
    _add_purpose_arguments(new)
    new.add_argument("--out", type=Path, required=True)
    new.set_defaults(run=setup_commands.agreement_new)


def _add_purpose_arguments(new: argparse.ArgumentParser) -> None:
    """Whether each requester batch must declare its purpose, and in what form."""
    purpose = new.add_argument_group(
        "batch purpose",
        "Each requester batch declares its purpose or case reference (`upload --purpose`); the "
        "server refuses batches without one and records it in the batch's audit entry. By "
        "default batches carry none.",
    )
    purpose.add_argument(
        "--require-purpose",
        action="store_const",
        const=True,
        help=f"require a purpose: free text of at most {PURPOSE_MAX_LENGTH} characters unless "
        "--purpose-max-length or --allowed-purpose says otherwise",
    )
    purpose.add_argument(
        "--purpose-max-length",
        type=int,
        metavar="N",
        help="require a purpose of free text of at most N characters",
    )
    purpose.add_argument(
        "--allowed-purpose",
        dest="allowed_purposes",
        action="append",
        metavar="TEXT",
        help="require a purpose from an agreed list: this value is one (repeatable)",
    )


def _default(section: type[BaseModel], name: str) -> str:
    """The agreement model's default of a field, as a user would type it."""
    value = section.model_fields[name].get_default(call_default_factory=True)
    return str(getattr(value, "value", value))


def _add_decision_arguments(new: argparse.ArgumentParser) -> None:
    """How runs decide matches: a calibrated threshold unless --threshold fixes one."""
    decision = new.add_argument_group(
        "decision rule",
        "By default each run's match model calibrates its threshold within bounds recommended "
        "for the hardening (from the tradeoff benchmark); --threshold fixes one instead.",
    )
    decision.add_argument(
        "--threshold",
        type=float,
        metavar="X",
        help="a fixed Dice threshold for every run (no calibration)",
    )
    decision.add_argument(
        "--threshold-floor",
        type=float,
        metavar="Y",
        help="with --threshold: the lowest threshold a batch may ask for (default: --threshold)",
    )
    decision.add_argument(
        "--target",
        choices=[target.value.replace("_", "-") for target in Target],
        help="what a calibrated threshold aims for: the best estimated F* (default), or the "
        "lowest threshold whose estimated precision reaches --min-precision; either way, no "
        "pair of match probability below 0.5 is released",
    )
    decision.add_argument(
        "--min-precision",
        type=float,
        metavar="P",
        help="with --target min-precision: the estimated precision to reach, in (0, 1]",
    )
    decision.add_argument(
        "--threshold-bounds",
        type=setup_commands.number_pair,
        metavar="LOW,HIGH",
        help="the thresholds a calibrated run may choose (default: recommended for the "
        f"hardening: {_pair(HARDENED.bounds)} with the default one, {_pair(PLAIN.bounds)} "
        "without)",
    )
    decision.add_argument(
        "--fallback-threshold",
        type=float,
        metavar="F",
        help="the threshold of a run whose match model cannot be fitted, within the bounds; "
        "raised where the model finds few matches, above the scores of the run's records "
        f"without a partner (default: {HARDENED.fallback:g} with the default hardening, "
        f"{PLAIN.fallback:g} without)",
    )
    decision.add_argument(
        "--allow-unusual-threshold",
        action="store_true",
        help="accept thresholds far from those the tradeoff benchmark measured for the hardening",
    )
    decision.add_argument(
        "--possible-matches",
        type=setup_commands.number_pair,
        metavar="LOW,HIGH",
        help="pairs whose match probability lies in [LOW, HIGH) are possible matches: withheld "
        "from the matches and counted (default: no band)",
    )
    decision.add_argument(
        "--possible-release",
        choices=POSSIBLE_RELEASES,
        help="what parties receive of the possible matches: their count (default), or also "
        "the list, in the form of each party's own release",
    )
    decision.add_argument(
        "--custodian-duplicates",
        action="store_true",
        default=None,
        help="the custodian may hold a person more than once: runs set aside a record's "
        "candidates that are the same person as its best one. Only for such custodians: "
        "look-alikes of different people are set aside too",
    )


def _pair(numbers: tuple[float, float]) -> str:
    return ",".join(f"{n:g}" for n in numbers)


def _add_party_commands(commands: argparse._SubParsersAction) -> None:
    enc = commands.add_parser(
        "encode", help="validate a CSV and encode it into CLKs (as clkhash does)"
    )
    enc.add_argument("input", type=Path, help="the party's CSV file")
    enc.add_argument("--schema", type=Path, help="linkage schema (default: shipped schema)")
    enc.add_argument("--secret-file", type=Path, required=True)
    enc.add_argument("--out", type=Path, required=True, help="encodings file to write")
    enc.add_argument("--id-map", type=Path, help="local ID map (default: OUT.idmap.json)")
    enc.add_argument(
        "--id-column",
        default=ID_COLUMN,
        metavar="NAME",
        help=f"the CSV column holding each record's ID (default: {ID_COLUMN}); also a schema field "
        "mapped with --column",
    )
    enc.add_argument(
        "--column",
        dest="columns",
        action="append",
        type=party.column_mapping,
        default=[],
        metavar="FIELD=CSVCOLUMN",
        help="read schema field FIELD from the CSV column CSVCOLUMN (repeatable). Columns are "
        "matched by header name, in any order; columns the schema does not use are ignored, "
        "and so are ignored (unhashed) schema fields the file lacks",
    )
    enc.add_argument("--workers", type=int, help="processes (default: every core)")
    enc.add_argument(
        "--agreement",
        type=Path,
        help="apply this agreement's hardening steps and blocking keys (and check its schema)",
    )
    enc.set_defaults(run=party.encode)

    up = commands.add_parser("upload", help="upload encodings to a project")
    party.add_party_arguments(up)
    up.add_argument(
        "encodings", type=Path, help="a blindlink encodings file or clkhash JSON output"
    )
    up.add_argument("--schema", type=Path, help="schema of clkhash JSON input")
    up.add_argument(
        "--threshold",
        type=float,
        default=0.0,
        help="requester batches: the run's threshold (default: the agreement's)",
    )
    up.add_argument(
        "--purpose",
        metavar="TEXT",
        help="requester batches: the batch's purpose or case reference, where the agreement "
        "requires one (batch_purpose); recorded in the batch's audit entry",
    )
    up.add_argument("--receipt", type=Path, help="write the server's signed receipt here")
    up.add_argument(
        "--restart",
        action="store_true",
        help="start afresh rather than continue an interrupted upload of the same file that "
        "the server kept",
    )
    up.set_defaults(run=party.upload)

    upd = commands.add_parser(
        "update",
        help="custodian: append records to your encodings on the server and remove records",
    )
    party.add_party_arguments(upd)
    upd.add_argument(
        "--id-map",
        type=Path,
        required=True,
        help="your local ID map of the records on the server; extended by the appended rows",
    )
    upd.add_argument(
        "--append",
        type=Path,
        metavar="ENCODINGS",
        help="encodings file of the records to append (`blindlink encode --agreement`)",
    )
    upd.add_argument(
        "--append-id-map",
        type=Path,
        help="the appended file's ID map (default: ENCODINGS.idmap.json)",
    )
    upd.add_argument(
        "--remove",
        type=Path,
        metavar="ROWS",
        help="text file of the row references to remove, one a line",
    )
    upd.add_argument("--receipt", type=Path, help="write the server's signed receipt here")
    upd.add_argument(
        "--restart",
        action="store_true",
        help="start the appended records' stream afresh rather than continue an interrupted one",
    )
    upd.set_defaults(run=party.update)

    status = commands.add_parser("status", help="show a project's status")
    party.add_party_arguments(status)
    status.add_argument("--watch", action="store_true", help="follow a run until it ends")
    status.add_argument("--run", dest="run_id", help="the run to watch (default: the latest)")
    status.set_defaults(run=party.status)

    res = commands.add_parser("results", help="fetch your release and map it to your IDs")
    party.add_party_arguments(res)
    res.add_argument("--id-map", type=Path, required=True, help="your local ID map")
    res.add_argument("--out", type=Path, required=True, help="CSV of your matched IDs")
    res.add_argument("--run", dest="run_id", help="the run (default: the latest)")
    res.add_argument("--receipt", type=Path, help="write the server's signed receipt here")

    approve = commands.add_parser("approve", help="custodian: approve a run's results")
    party.add_party_arguments(approve)
    approve.add_argument("--run", dest="run_id", required=True)
    approve.set_defaults(run=party.approve)
    res.set_defaults(run=party.results)

    delete = commands.add_parser("delete", help="delete a project's data from the server")
    party.add_party_arguments(delete)
    delete.set_defaults(run=party.delete)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        try:
            return int(args.run(args))
        except ModuleNotFoundError as exc:
            extra = extra_for(exc)
            if extra is None:
                raise
            raise MissingExtra(extra) from None
    except BlindlinkError as exc:
        print(f"blindlink: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
