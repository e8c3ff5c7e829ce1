"""The match model on simulated runs, where the truth is exact: estimated against true precision,
and whether the estimate's interval holds the truth.

Each run: 2000 requester records, each against 2000 custodian records whose unrelated scores
are N(0.5, 0.02) (its best four kept as candidates), and `--matched` of them with a partner
scoring from one of two draws (well separated: 1 - 0.25 Beta(1, 6); overlapping: N(0.66,
0.06)); seeds 1 to `--seeds`. Decided by a calibrated rule (best estimated F*, bounds 0.5-0.95,
fallback 0.8) with the decision pipeline the server uses. Prints one line per group and
writes simulated.json (default: benchmarks/results/).

    python benchmarks/simulated.py [--seeds 16] [--matched 200,800] [--out DIR]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from blindlink.benchmarking.calibration import ESTIMATE_ERROR as TOLERANCE
from blindlink.benchmarking.results import results_dir, write_result
from blindlink.benchmarking.simulated import DRAWS, RULE, measure

NAME = "simulated"
RECORDS = 2000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument(
        "--matched", default="200,800", help="records with a partner, comma-separated"
    )
    parser.add_argument("--out", type=Path, help="results directory")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    matched_counts = [int(m) for m in args.matched.split(",")]
    runs = [
        measure(seed, RECORDS, matched, draw)
        for matched in matched_counts
        for draw in DRAWS
        for seed in range(1, args.seeds + 1)
    ]
    groups = [summary(runs, matched, draw) for matched in matched_counts for draw in DRAWS]
    for group in groups:
        print(line(group))
    path = write_result(
        NAME,
        {
            "how": __doc__.split("\n\n")[1].replace("\n", " "),
            "rule": asdict(RULE.threshold),
            "groups": groups,
            "runs": runs,
            "seconds": time.perf_counter() - started,
        },
        args.out or results_dir(),
    )
    print(f"-> {path}")
    return 0


def summary(runs: list[dict[str, Any]], matched: int, draw: str) -> dict[str, Any]:
    """A group's fitted runs, how many estimate precision within TOLERANCE, how many overstate or
    understate it by more, the largest overstatement, and how many intervals hold the truth."""
    group = [r for r in runs if r["matched"] == matched and r["draw"] == draw]
    fitted = [r for r in group if r["estimated"] is not None]
    errors = [r["precision_error"] for r in fitted]
    return {
        "matched": matched,
        "draw": draw,
        "runs": len(group),
        "fitted": len(fitted),
        "precision_within": sum(abs(e) <= TOLERANCE for e in errors),
        "precision_overstated": sum(e > TOLERANCE for e in errors),
        "precision_understated": sum(e < -TOLERANCE for e in errors),
        "largest_overstatement": max(errors, default=None),
        "interval_holds_truth": sum(bool(r["covered"]["precision"]) for r in fitted),
    }


def line(group: dict[str, Any]) -> str:
    head = f"{group['matched']:4d} of {RECORDS} matched, {group['draw']:<15}"
    if not group["fitted"]:
        return f"{head} none of {group['runs']} fitted"
    return (
        f"{head} fitted {group['fitted']}/{group['runs']}; precision within {TOLERANCE}: "
        f"{group['precision_within']}, overstated beyond: {group['precision_overstated']} "
        f"(largest {group['largest_overstatement']:+.3f}), understated beyond: "
        f"{group['precision_understated']}; interval holds the truth: "
        f"{group['interval_holds_truth']}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
