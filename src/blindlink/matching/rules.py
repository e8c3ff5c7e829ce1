"""Decision rules as the agreement states them: a fixed Dice threshold, or a threshold the
run's match model calibrates within agreed bounds towards an agreed target; an optional band of
match probabilities whose pairs are possible matches; the ambiguity margin."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

# Resolution of calibrated thresholds and of the match model's score bins.
STEP = 0.005


class Target(StrEnum):
    """What a calibrated threshold aims for."""

    BEST_F_STAR = "best_f_star"
    MIN_PRECISION = "min_precision"


@dataclass(frozen=True)
class FixedThreshold:
    threshold: float


@dataclass(frozen=True)
class CalibratedThreshold:
    target: Target
    bounds: tuple[float, float]
    fallback_threshold: float
    min_precision: float = 0.0


@dataclass(frozen=True)
class DecisionRule:
    """How a run turns candidate pairs into matches, as the agreement says."""

    threshold: FixedThreshold | CalibratedThreshold
    # Pairs whose match probability lies in [low, high) are possible matches, not matches.
    possible_band: tuple[float, float] | None = None
    ambiguity_margin: float = 0.0
    # The custodian may hold a person more than once: kin are set aside (kin.py).
    custodian_duplicates: bool = False

    @property
    def candidate_threshold(self) -> float:
        """Pairs at or above this are all candidates (above 1: only each record's best few)."""
        if isinstance(self.threshold, FixedThreshold):
            return self.threshold.threshold
        return 1.0 + STEP
