"""The tradeoff figures, as PNG files."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
from matplotlib.rcsetup import cycler  # noqa: E402

from blindlink.benchmarking.configs import LINE_OVERLAP, LINE_SEEDS  # noqa: E402
from blindlink.benchmarking.summary import (  # noqa: E402
    TARGET_F_STAR,
    TARGET_REIDENTIFICATION,
    f_star,
)

FIGURES = {
    "pareto": "tradeoff_pareto.png",
    "seeds": "reid_vs_seeds.png",
    "overlap": "reid_vs_overlap.png",
    "pr": "pr_curves.png",
}
# Enough distinct colours (and dashes after the first 10) for every configuration of a panel.
_LINES = cycler(linestyle=["-", "--"]) * cycler(color=matplotlib.color_sequences["tab10"])


def write_figures(summaries: list[dict[str, Any]], sweep: dict[str, Any], out: Path) -> list[Path]:
    """Write every figure into `out`; the paths written."""
    with plt.rc_context({"axes.prop_cycle": _LINES}):
        paths = [
            _pareto(summaries, out / FIGURES["pareto"]),
            _attack_line(summaries, out / FIGURES["seeds"], "seeds"),
            _attack_line(summaries, out / FIGURES["overlap"], "overlap"),
            _pr_curves(summaries, sweep, out / FIGURES["pr"]),
        ]
    plt.close("all")
    return paths


def _pareto(summaries: list[dict[str, Any]], path: Path) -> Path:
    """Both axes' ranges on the left, the target corner enlarged on the right; points are
    numbered, the key on the right names them."""
    fig, (whole, corner) = plt.subplots(1, 2, figsize=(15, 7), width_ratios=(1, 1))
    frontier = sorted(
        (s for s in summaries if s["pareto"]), key=lambda s: s["worst_reidentification"]
    )
    lowest = min(f_star(s) for s in summaries)
    for ax in (whole, corner):
        ax.axhline(TARGET_F_STAR, color="tab:green", lw=0.8, ls="--")
        ax.axvline(TARGET_REIDENTIFICATION, color="tab:green", lw=0.8, ls="--")
        ax.fill_between(
            [0, TARGET_REIDENTIFICATION], TARGET_F_STAR, 1, color="tab:green", alpha=0.1
        )
        ax.plot(
            [s["worst_reidentification"] for s in frontier],
            [f_star(s) for s in frontier],
            color="tab:red",
            lw=1,
            label="Pareto frontier",
        )
        for number, s in enumerate(summaries, start=1):
            x, y = s["worst_reidentification"], f_star(s)
            ax.scatter(x, y, s=30, color="tab:red" if s["pareto"] else "tab:gray", zorder=3)
            ax.annotate(str(number), (x, y), fontsize=8, xytext=(3, 3), textcoords="offset points")
        ax.grid(alpha=0.3)
        ax.set_xlabel("worst re-identification rate (both attacks, all attacker strengths)")
    whole.set_xlim(-0.02, 1.02)
    whole.set_ylim(lowest - 0.01, 1.0)
    whole.set_ylabel("F* = TP/(TP+FP+FN), generated data, calibrated threshold")
    whole.set_title("all configurations")
    whole.legend(loc="lower left")
    corner.set_xlim(-0.005, 0.3)
    corner.set_ylim(max(lowest - 0.01, TARGET_F_STAR - 0.06), 1.0)
    corner.set_title("enlarged: re-identification up to 30%; target region shaded")
    key = "\n".join(f"{n:>2}  {s['name']}" for n, s in enumerate(summaries, start=1))
    fig.text(0.83, 0.5, key, fontsize=8, family="monospace", va="center")
    fig.suptitle(
        f"Accuracy vs privacy, median of {summaries[0]['runs']} run(s) per configuration; "
        f"target F* >= {TARGET_F_STAR}, re-identification <= {TARGET_REIDENTIFICATION:.0%}"
    )
    fig.subplots_adjust(left=0.05, right=0.82, wspace=0.15)
    fig.savefig(path, dpi=110)
    return path


def _attack_line(summaries: list[dict[str, Any]], path: Path, along: str) -> Path:
    fixed_key, fixed = ("overlap", LINE_OVERLAP) if along == "seeds" else ("seeds", LINE_SEEDS)
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for s in summaries:
        line = sorted(
            (p[along], p["reidentification_rate"]["median"])
            for p in s["seeded"]
            if p[fixed_key] == fixed
        )
        if len(line) >= 2 and s["config"]["knob"] in ("baseline", "hardening"):
            ax.plot(*zip(*line, strict=True), marker="o", label=s["name"])
    ax.set_xlabel("known (plaintext, encoding) pairs" if along == "seeds" else "overlap")
    ax.set_ylabel(f"re-identification rate (median of {summaries[0]['runs']} runs)")
    ax.set_title(
        f"Seeded similarity-profile attack vs {along} ({fixed_key} = {fixed}); "
        "attack-specific lower bound"
    )
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, ncol=2, loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _pr_curves(summaries: list[dict[str, Any]], sweep: dict[str, Any], path: Path) -> Path:
    # The baseline is drawn in every panel, for reference.
    knobs = [k for k in dict.fromkeys(s["config"]["knob"] for s in summaries) if k != "baseline"]
    columns = min(3, len(knobs))
    rows = math.ceil(len(knobs) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 4.2 * rows), squeeze=False)
    first: dict[str, Any] = {}
    for result in sweep["results"]:
        first.setdefault(result["config"], result["generated"]["curve"])
    for ax, knob in zip(axes.flat, knobs, strict=False):
        for s in summaries:
            if s["config"]["knob"] in (knob, "baseline"):
                curve = first[s["name"]]
                ax.plot(curve["recall"], curve["precision"], label=s["name"], lw=1.2)
        ax.set_title(knob, fontsize=10)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0.5, 1.005)
        ax.set_ylim(0.8, 1.005)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    for ax in list(axes.flat)[len(knobs) :]:
        ax.set_visible(False)
    fig.suptitle(
        "Precision-recall over Dice thresholds 0.50-0.99, generated data, first run of each "
        "configuration"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
