"""What an attack achieved, scored against the ground truth."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

LOWER_BOUND = (
    "attack-specific lower bound on re-identification risk: what this attack achieved with "
    "this knowledge, not the most any attacker could"
)


@dataclass(frozen=True)
class AttackResult:
    """Re-identifications among the `targets` records the attacker's data overlaps.

    `guesses` is how many 1:1 guesses the attack made, `correct` how many were right;
    `confident`/`confident_correct` are the subset the attack itself was confident in.
    """

    attack: str
    targets: int
    guesses: int
    correct: int
    confident: int
    confident_correct: int
    chance_rate: float  # what guessing without the encodings achieves
    label: str = LOWER_BOUND

    @property
    def reidentification_rate(self) -> float:
        return self.correct / self.targets if self.targets else 0.0

    @property
    def confident_precision(self) -> float:
        """Share of confident guesses that are right (0 when there are none)."""
        return self.confident_correct / self.confident if self.confident else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {
            "reidentification_rate": self.reidentification_rate,
            "confident_precision": self.confident_precision,
        }
