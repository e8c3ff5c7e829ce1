"""Accuracy vs privacy of encodings: `python benchmarks/tradeoff.py [--quick] [--out DIR]`.

The same as `blindlink bench tradeoff`: sweeps encoding settings and hardening steps, measures
linkage quality and two attacks on each, writes tradeoff.json, tradeoff.csv, tradeoff.md and
PNG figures (default: benchmarks/results/) and prints one line per configuration. The full
sweep takes about 10-15 minutes on 2 cores; --quick about half a minute.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from blindlink.cli.bench_commands import bench_tradeoff

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few configurations, small data")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    return bench_tradeoff(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
