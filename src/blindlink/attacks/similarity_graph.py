"""Seeded similarity-profile attack: a linkage server colluding with one party.

The attacker holds the encodings (the server's view), plaintext records of people some of
whom are encoded, the linkage schema, and `s` known (plaintext, encoding) pairs: the anchors.
Each encoding is described by its Dice similarities to the anchor encodings, each plaintext
record by its similarities (Dice of the same weighted q-grams) to the anchor plaintexts. Where
encodings preserve similarity, a person's two profiles correlate; profiles are matched 1:1
(Hungarian assignment), the most confident matches become new anchors, and the round repeats.
This is the anchor-based core of the graph-matching attacks of Culnane, Rubinstein and Teague
(arXiv 1712.00871), Vidanage et al. (CIKM 2020) and Schäfer et al. (ACSAC 2024).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from blindlink.attacks.plaintext import Tokens, weighted_dice
from blindlink.attacks.result import AttackResult

ROUNDS = 6


@dataclass(frozen=True)
class Guesses:
    """1:1 guesses: encoding target_rows[i] is plaintext record plaintext_rows[i]."""

    target_rows: np.ndarray
    plaintext_rows: np.ndarray
    confident: np.ndarray  # bool: promoted to anchor, or a mutual best match


def bit_dice(bits: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Dice similarity of every row of `bits` with every row of `others` (0/1 float32)."""
    shared = bits @ others.T
    total = bits.sum(1)[:, None] + others.sum(1)[None, :]
    return np.divide(2 * shared, total, out=np.zeros_like(shared), where=total > 0)


def _profiles(similarities: np.ndarray) -> np.ndarray:
    """Rows standardised per anchor, then centred and scaled to unit length: the dot product
    of two rows is their Pearson correlation across anchors."""
    z = (similarities - similarities.mean(0)) / (similarities.std(0) + 1e-9)
    z -= z.mean(1, keepdims=True)
    return z / (np.linalg.norm(z, axis=1, keepdims=True) + 1e-9)


def link_by_profiles(
    bits: np.ndarray, plaintext: Tokens, anchors: list[tuple[int, int]], rounds: int = ROUNDS
) -> Guesses:
    """Match encodings (0/1 float32 rows) to plaintext records from (encoding row, plaintext
    row) anchors; each round promotes up to as many confident matches as there are anchors."""
    anchors = list(anchors)
    promoted: list[tuple[int, int]] = []
    all_plaintext = np.arange(len(plaintext))
    for round_ in range(rounds + 1):
        target_anchor = np.array([a for a, _ in anchors])
        plain_anchor = np.array([b for _, b in anchors])
        scores = (
            _profiles(bit_dice(bits, bits[target_anchor]))
            @ _profiles(weighted_dice(plaintext, all_plaintext, plain_anchor)).T
        )
        free_t = np.setdiff1d(np.arange(len(bits)), target_anchor)
        free_p = np.setdiff1d(all_plaintext, plain_anchor)
        sub = scores[np.ix_(free_t, free_p)]
        rows, cols = linear_sum_assignment(sub, maximize=True)
        if not sub.size:  # every record on one side is an anchor already
            mutual = np.zeros(0, dtype=bool)
            break
        mutual = (sub.argmax(1)[rows] == cols) & (sub.argmax(0)[cols] == rows)
        if round_ == rounds:
            break
        runner_up = np.sort(sub, axis=1)[:, -2] if sub.shape[1] > 1 else np.zeros(len(sub))
        margin = sub[rows, cols] - runner_up[rows]
        best = [i for i in np.argsort(-margin) if mutual[i]][: len(anchors)]
        if not best:
            break
        new = [(int(free_t[rows[i]]), int(free_p[cols[i]])) for i in best]
        anchors += new
        promoted += new
    target_rows = np.concatenate([free_t[rows], [a for a, _ in promoted]]).astype(np.int64)
    plain_rows = np.concatenate([free_p[cols], [b for _, b in promoted]]).astype(np.int64)
    confident = np.concatenate([mutual, np.ones(len(promoted), dtype=bool)])
    return Guesses(target_rows, plain_rows, confident)


def seeded_similarity_attack(
    encodings: np.ndarray,
    plaintext: Tokens,
    truth: Mapping[int, int],
    seeds: int,
    rng: np.random.Generator,
    rounds: int = ROUNDS,
) -> AttackResult:
    """Run the attack with `seeds` anchors drawn from `truth` (encoding row -> plaintext row of
    the same person) and score it on the other overlapping records.

    `encodings` are packed uint8 rows as the server stores them. With no seeds the attack has
    nothing to start from and makes no guesses.
    """
    people = np.array(sorted(truth), dtype=np.int64)
    seeds = min(seeds, len(people))
    chosen = rng.permutation(people)[:seeds]
    chance = 1 / len(plaintext) if len(plaintext) else 0.0
    if seeds == 0:
        return AttackResult("seeded_similarity", len(people), 0, 0, 0, 0, chance)
    bits = np.unpackbits(encodings, axis=1).astype(np.float32)
    guesses = link_by_profiles(bits, plaintext, [(int(t), truth[int(t)]) for t in chosen], rounds)
    pairs = zip(guesses.target_rows.tolist(), guesses.plaintext_rows.tolist(), strict=True)
    right = np.array([truth.get(t) == p for t, p in pairs], dtype=bool)
    return AttackResult(
        attack="seeded_similarity",
        targets=len(people) - seeds,
        guesses=len(right),
        correct=int(right.sum()),
        confident=int(guesses.confident.sum()),
        confident_correct=int((right & guesses.confident).sum()),
        chance_rate=chance,
    )
