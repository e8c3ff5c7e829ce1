"""From raw sweep results to per-configuration medians, the Pareto frontier and a
recommendation."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from blindlink.benchmarking.results import summary as samples_summary
from blindlink.hardening import output_bit_length

# The target: a configuration at least this good at linking...
TARGET_F_STAR = 0.95
# ...whose worst re-identification over both attacks is at most this.
TARGET_REIDENTIFICATION = 0.05
# F* differences smaller than this count as ties when recommending: runs of one configuration
# spread by more than that.
F_STAR_TIE = 0.01


def _median(values: list[float]) -> float:
    return float(np.median(values)) if values else float("nan")


def _spread(values: list[float]) -> dict[str, Any]:
    """Runs, median, min, max and the samples, as every blindlink benchmark reports them."""
    return samples_summary([float(v) for v in values])


def summarise(sweep: dict[str, Any]) -> list[dict[str, Any]]:
    """One summary per configuration, in sweep order, with `pareto` marking the frontier of
    (calibrated F*, worst re-identification)."""
    by_config: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
    for result in sweep["results"]:
        by_config[result["config"]].append(result)
    summaries = [
        _summarise_config(config, by_config[config["name"]]) for config in sweep["configs"]
    ]
    for summary in summaries:
        summary["pareto"] = not any(_dominates(other, summary) for other in summaries)
    return summaries


def _summarise_config(config: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {"config": config, "name": config["name"], "runs": len(results)}
    for dataset in ("generated", "febrl"):
        if all(dataset in r for r in results):
            summary[dataset] = {
                setting: {
                    key: _spread([r[dataset][setting][key] for r in results])
                    for key in ("threshold", "precision", "recall", "f_star")
                }
                for setting in ("policy", "calibrated")
            }
    if all("febrl" in r for r in results):
        summary["febrl"]["seeded"] = _spread(
            [r["febrl"]["seeded"]["reidentification_rate"] for r in results]
        )
    points: defaultdict[tuple[float, int], list[dict[str, Any]]] = defaultdict(list)
    for result in results:
        for attack in result["seeded"]:
            points[(attack["overlap"], attack["seeds"])].append(attack)
    summary["seeded"] = [
        {
            "overlap": overlap,
            "seeds": seeds,
            "reidentification_rate": _spread([a["reidentification_rate"] for a in attacks]),
            "confident_precision": _median([a["confident_precision"] for a in attacks]),
            "guesses": _median([a["guesses"] for a in attacks]),
            "confident": _median([a["confident"] for a in attacks]),
            "targets": _median([a["targets"] for a in attacks]),
        }
        for (overlap, seeds), attacks in sorted(points.items())
    ]
    mining = [r["pattern_mining"] for r in results]
    summary["pattern_mining"] = {
        "reidentification_rate": _spread([m["reidentification_rate"] for m in mining]),
        "confident_precision": _median([m["confident_precision"] for m in mining]),
        "guesses": _median([m["guesses"] for m in mining]),
        "confident": _median([m["confident"] for m in mining]),
        "targets": _median([m["targets"] for m in mining]),
        "chance_rate": _median([m["chance_rate"] for m in mining]),
    }
    worst = [
        (
            p["reidentification_rate"]["median"],
            f"seeded, overlap {p['overlap']}, {p['seeds']} seeds",
        )
        for p in summary["seeded"]
    ]
    worst.append((summary["pattern_mining"]["reidentification_rate"]["median"], "pattern mining"))
    summary["worst_reidentification"], summary["worst_attack"] = max(worst)
    summary["seconds"] = _median([r["seconds"]["total"] for r in results])
    return summary


def f_star(summary: dict[str, Any]) -> float:
    """The F* a configuration is judged by: generated data, calibrated threshold, median."""
    return float(summary["generated"]["calibrated"]["f_star"]["median"])


def _dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
    better_or_equal = (
        f_star(a) >= f_star(b) and a["worst_reidentification"] <= b["worst_reidentification"]
    )
    strictly = f_star(a) > f_star(b) or a["worst_reidentification"] < b["worst_reidentification"]
    return better_or_equal and strictly


def meets_target(summary: dict[str, Any]) -> bool:
    return (
        f_star(summary) >= TARGET_F_STAR
        and summary["worst_reidentification"] <= TARGET_REIDENTIFICATION
    )


def recommend(summaries: list[dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """The configuration to recommend and whether it meets the target.

    Among those that meet it: the best F*, ties (within F_STAR_TIE) going to the shorter
    encoding (storage and matching time grow with it), then to the lower re-identification.
    If none meets it: the one closest to the target.
    """
    passing = [s for s in summaries if meets_target(s)]
    if not passing:
        return min(summaries, key=distance_to_target), False
    best = max(f_star(s) for s in passing)
    tied = [s for s in passing if f_star(s) >= best - F_STAR_TIE]
    return min(tied, key=lambda s: (encoded_bits(s), s["worst_reidentification"])), True


def encoded_bits(summary: dict[str, Any]) -> int:
    """Length of the encodings the server stores and compares."""
    config = summary["config"]
    return output_bit_length(config["bit_length"], config["hardening"])


def distance_to_target(summary: dict[str, Any]) -> float:
    return (
        max(0.0, TARGET_F_STAR - f_star(summary)) / (1 - TARGET_F_STAR)
        + max(0.0, summary["worst_reidentification"] - TARGET_REIDENTIFICATION)
        / TARGET_REIDENTIFICATION
    )
