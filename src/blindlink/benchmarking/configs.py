"""What the tradeoff benchmark measures: encoding settings and hardening steps, varied one knob
at a time around the baseline (plus a few combinations), and the attacker strengths."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

BASELINE_BIT_LENGTH = 1024
BASELINE_NAME_BITS = 25  # bitsPerToken of the name fields in the default schema
SALT_YEAR = {"kind": "salt", "field": "date_of_birth", "part": "year"}


@dataclass(frozen=True)
class EncodingConfig:
    """A clkhash schema variant plus hardening steps.

    `name_bits_per_token` sets the name fields' bitsPerToken; every other field's is scaled by
    the same factor, so the fields keep their relative weights.
    """

    name: str
    knob: str
    bit_length: int = BASELINE_BIT_LENGTH
    name_bits_per_token: int = BASELINE_NAME_BITS
    q: int = 2
    hash_type: str = "blakeHash"
    hardening: list[dict[str, Any]] = field(default_factory=list)

    def schema_document(self, base: dict[str, Any]) -> dict[str, Any]:
        """`base` (a clkhash v3 schema) with this configuration's settings."""
        document = copy.deepcopy(base)
        document["clkConfig"]["l"] = self.bit_length
        scale = self.name_bits_per_token / BASELINE_NAME_BITS
        for feature in document["features"]:
            hashing = feature.get("hashing")
            if not hashing:
                continue
            strategy = hashing["strategy"]
            strategy["bitsPerToken"] = max(1, round(strategy["bitsPerToken"] * scale))
            comparison = hashing["comparison"]
            if comparison["type"] == "ngram" and not comparison.get("positional"):
                comparison["n"] = self.q
            hashing["hash"] = {"type": self.hash_type}
        return document

    @property
    def flip_probability(self) -> float:
        """Probability that randomized-response steps flip a bit (the attacker knows it from the
        agreement)."""
        keep = 1.0
        for step in self.hardening:
            if step["kind"] == "randomized_response":
                keep *= 1 - 2 * step["p"]
        return (1 - keep) / 2

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "knob": self.knob,
            "bit_length": self.bit_length,
            "name_bits_per_token": self.name_bits_per_token,
            "q": self.q,
            "hash": self.hash_type,
            "hardening": self.hardening,
        }


BASELINE = EncodingConfig("baseline", "baseline")

_STEPS: dict[str, dict[str, Any]] = {
    "xor_fold": {"kind": "xor_fold", "folds": 1},
    "balance": {"kind": "balance"},
    "rule90": {"kind": "rule90"},
    **{f"rr p={p}": {"kind": "randomized_response", "p": p} for p in (0.02, 0.05, 0.1, 0.2)},
    # t=3 is not in the list: it sits where diffusion starts to stop the seeded attack.
    **{f"diffusion t={t}": {"kind": "diffusion", "t": t} for t in (2, 3, 4, 8)},
    "salt(year)": SALT_YEAR,
}


def _hardened(
    *names: str, bit_length: int = BASELINE_BIT_LENGTH, name_bits: int = BASELINE_NAME_BITS
) -> EncodingConfig:
    settings = [f"l={bit_length}"] if bit_length != BASELINE_BIT_LENGTH else []
    settings += [f"k={name_bits}"] if name_bits != BASELINE_NAME_BITS else []
    prefix = f"{', '.join(settings)} + " if settings else ""
    knob = "combination" if len(names) > 1 or settings else "hardening"
    return EncodingConfig(
        prefix + " + ".join(names),
        knob,
        bit_length,
        name_bits,
        hardening=[_STEPS[n] for n in names],
    )


def sweep_configs(quick: bool = False) -> list[EncodingConfig]:
    """The configurations of the sweep: the baseline, each knob varied alone, combinations."""
    if quick:
        return [BASELINE, *(_hardened(n) for n in ("xor_fold", "diffusion t=4", "salt(year)"))]
    return [
        BASELINE,
        *(EncodingConfig(f"l={length}", "bit_length", length) for length in (512, 2048)),
        *(EncodingConfig(f"k={k}", "bits_per_token", name_bits_per_token=k) for k in (10, 15, 35)),
        EncodingConfig("q=3", "q", q=3),
        EncodingConfig("doubleHash", "hash", hash_type="doubleHash"),
        *(_hardened(name) for name in _STEPS),
        _hardened("salt(year)", "xor_fold"),
        _hardened("salt(year)", "diffusion t=2"),
        _hardened("xor_fold", "diffusion t=2"),
        _hardened("diffusion t=4", bit_length=2048),
        _hardened("diffusion t=8", bit_length=2048),
        # Longer encodings with proportionally more bits per token keep the baseline's density,
        # which diffusion needs to hide similarities between different people.
        _hardened("diffusion t=4", bit_length=2048, name_bits=50),
        _hardened("diffusion t=4", bit_length=4096, name_bits=100),
    ]


# Configurations measured on the whole attacker grid, not only along its two lines.
GRID_CONFIGS = frozenset(
    {
        "baseline",
        "xor_fold",
        "balance",
        "rule90",
        "rr p=0.1",
        "diffusion t=2",
        "diffusion t=3",
        "diffusion t=4",
    }
)
OVERLAPS = (0.1, 0.2, 0.5, 1.0)
SEEDS = (0, 10, 50, 200)
LINE_OVERLAP = 1.0  # re-identification vs seeds is measured at this overlap...
LINE_SEEDS = 50  # ...and re-identification vs overlap with this many seeds


def attacker_points(records: int, full_grid: bool) -> list[tuple[float, int]]:
    """(overlap, seeds) pairs to attack with: the two lines through the grid, or all of it;
    a point needs at least two overlapping people per seed, so some remain to re-identify."""
    points = {(LINE_OVERLAP, s) for s in SEEDS} | {(o, LINE_SEEDS) for o in OVERLAPS}
    if full_grid:
        points |= {(o, s) for o in OVERLAPS for s in SEEDS}
    return sorted((o, s) for o, s in points if 2 * s <= round(o * records))
