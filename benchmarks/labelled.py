"""The calibrated decision on labelled files of your own or public ones: estimated against true
precision and recall, and calibrated against the best fixed threshold's F*.

The two CSV files are linked with the linkage schema as `bl.link` links them under a new
agreement's default decision, unhardened and with the recommended hardening, with --secrets
fixed shared secrets each. The truth is --truth (a CSV file with requester_id and custodian_id
columns) or, without it, the records whose ID (--id-column) appears on both sides. Prints a line
per linkage and writes labelled-NAME.json (default: benchmarks/results/).

    python benchmarks/labelled.py REQUESTER.csv CUSTODIAN.csv --schema SCHEMA.json
        [--id-column id] [--truth TRUTH.csv] [--secrets 2] [--name NAME] [--source TEXT]
        [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from blindlink.benchmarking.labelled import (
    LabelledFiles,
    measure,
    same_ids,
    truth_file,
)
from blindlink.benchmarking.results import results_dir, write_result
from blindlink.encoding.schema import load_schema
from blindlink.errors import BlindlinkError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("requester", type=Path)
    parser.add_argument("custodian", type=Path)
    parser.add_argument("--schema", type=Path, required=True)
    parser.add_argument("--id-column", default="id")
    parser.add_argument("--truth", type=Path, help="requester_id,custodian_id pairs")
    parser.add_argument("--secrets", type=int, default=2, help="linkages per hardening")
    parser.add_argument("--name", help="results name (default: the requester file's stem)")
    parser.add_argument("--source", default="", help="where the files come from, for the record")
    parser.add_argument("--out", type=Path, help="results directory")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    truth = (
        truth_file(args.truth)
        if args.truth
        else same_ids(args.requester, args.custodian, args.id_column)
    )
    files = LabelledFiles(
        args.requester, args.custodian, load_schema(args.schema), args.id_column, truth
    )
    linkages = []
    for hardened in (False, True):
        for index in range(args.secrets):
            linkages.append(measure(files, hardened, index))
            print(row(linkages[-1]), flush=True)
    name = f"labelled-{args.name or args.requester.stem}"
    document = {
        "how": (
            "bl.link under a new agreement's default decision (calibrated: best estimated F*), "
            "unhardened and with the recommended hardening, one fixed secret per linkage; the "
            "oracle is the fixed Dice threshold (grid of 0.01 from 0.5) with the best true F*"
        ),
        "files": {
            "source": args.source,
            "requester": args.requester.name,
            "custodian": args.custodian.name,
            "schema_sha256": files.schema.sha256,
            "truth": args.truth.name if args.truth else f"equal {args.id_column!r} on both sides",
        },
        "linkages": linkages,
        "seconds": time.perf_counter() - started,
    }
    path = write_result(name, document, args.out or results_dir())
    print(f"-> {path}")
    return 0


def row(linkage: dict[str, Any]) -> str:
    """One linkage as a line: calibrated threshold, true and estimated quality, the oracle."""
    calibrated, oracle = linkage["calibrated"], linkage["oracle"]
    true, estimated = calibrated["true"], calibrated["estimated"]
    guess = (
        f"estimated P {estimated['precision']:.3f} R {estimated['recall']:.3f}"
        if estimated
        else "no estimates"
    )
    return (
        f"{'hardened' if linkage['hardened'] else 'unhardened':10s} secret {linkage['secret']}: "
        f"threshold {calibrated['threshold']:.3f}, {calibrated['released']} released, "
        f"P {true['precision']:.3f} R {true['recall']:.3f} F* {true['f_star']:.3f}; {guess}; "
        f"best fixed {oracle['threshold']:.2f}: F* {oracle['f_star']:.3f} | {calibrated['rule']}"
    )


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except BlindlinkError as exc:  # a file, column or schema the linkage cannot use
        print(f"labelled.py: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
