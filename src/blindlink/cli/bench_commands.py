"""`blindlink bench`: benchmarks of the encodings."""

from __future__ import annotations

import argparse
from pathlib import Path

from blindlink.benchmarking.results import results_dir


def add_bench_commands(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser("bench", help="benchmarks of the encodings")
    actions = bench.add_subparsers(dest="action", required=True, metavar="ACTION")
    tradeoff = actions.add_parser(
        "tradeoff", help="linkage quality against re-identification by attacks, per encoding"
    )
    tradeoff.add_argument(
        "--quick", action="store_true", help="a few configurations on small data (about a minute)"
    )
    tradeoff.add_argument(
        "--out",
        type=Path,
        help="directory for tradeoff.json, .csv, .md and the figures (default: "
        "benchmarks/results in a checkout, under the current directory when installed)",
    )
    tradeoff.set_defaults(run=bench_tradeoff)


def bench_tradeoff(args: argparse.Namespace) -> int:
    # Imported here: the benchmark pulls in matplotlib and scipy (the `bench` extra).
    from blindlink.benchmarking.tradeoff import tradeoff_benchmark

    result = tradeoff_benchmark(args.out or results_dir(), quick=args.quick, progress=print)
    print(
        f"median of {result.repeats} run(s) per configuration; F* on generated data at the "
        "calibrated threshold; worst re-identification over both attacks and all attacker "
        "strengths"
    )
    for c in result.configurations:
        print(f"{c.name:<34} F* {c.f_star:.3f}  worst {c.worst_reidentification:.1%}")
    print(f"wall time {result.wall_seconds:.0f} s; results in {result.out}")
    return 0
