"""Attacks on encodings, to measure what hardening protects against.

Each attack returns an `AttackResult` whose re-identification rate is a lower bound on the
risk: it says what this attack, with this knowledge, achieved, not what any attacker could.
"""

from blindlink.attacks.pattern_mining import pattern_mining_attack
from blindlink.attacks.result import AttackResult
from blindlink.attacks.similarity_graph import seeded_similarity_attack

__all__ = ["AttackResult", "pattern_mining_attack", "seeded_similarity_attack"]
