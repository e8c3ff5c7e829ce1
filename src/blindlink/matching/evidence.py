"""More evidence than one Dice score: which agreed blocking keys a candidate pair shares, and
how common each shared key is, combined with its Dice score in a Fellegi-Sunter model fitted
to the run's own candidates without labels.

The server holds these already: each record's keyed blocking keys (HMAC values it cannot read)
tell it which records share a combination of fields, and how many custodian records share
each one. Sharing a key that thousands of records share is weak evidence; sharing a rare one
is strong. The model treats the Dice band and each key's agreement level as independent given
match status (the Fellegi-Sunter assumption), and fits the match and non-match frequencies of
every level by expectation maximisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from blindlink.matching.blocking import custodian_key_counts

# Dice bands of the model: below the first edge, then one band per edge.
DICE_EDGES = np.round(np.arange(0.3, 1.0, 0.025), 3)
# Agreement levels of a key: 0 a record lacks it, 1 different, 2.. shared by a custodian
# population of at most these sizes, then more.
SHARED_BY = (1, 4, 19, 99)
ITERATIONS = 100
TOLERANCE = 1e-7
SMOOTHING = 1e-3  # pseudo-count per level, so that no level is impossible in either class


@dataclass(frozen=True)
class PartyKeys:
    """Both parties' blocking keys ((records, keys), 0 where a record has none) and, per
    requester record and key, how many custodian records have its value
    (blocking.custodian_key_counts)."""

    requester: np.ndarray
    custodian: np.ndarray
    counts: np.ndarray

    @classmethod
    def counted(cls, requester: np.ndarray, custodian: np.ndarray) -> PartyKeys:
        """The keys, with the counts counted among the custodian's keys given."""
        return cls(requester, custodian, custodian_key_counts(requester, custodian))


@dataclass(frozen=True)
class PairEvidence:
    """Per candidate pair, the level of each feature: its Dice band, then each key's
    agreement level."""

    levels: np.ndarray  # (pairs, 1 + keys), small integers
    sizes: tuple[int, ...]  # levels per feature

    @classmethod
    def of(
        cls,
        similarities: np.ndarray,
        requester_rows: np.ndarray,
        custodian_rows: np.ndarray,
        keys: PartyKeys,
        absent: np.ndarray | None = None,
    ) -> PairEvidence:
        """The evidence of each pair; with `absent` (a custodian row per pair, -1 for none), as
        if that record were not in the custodian's population."""
        columns = [np.digitize(similarities, DICE_EDGES)]
        for k in range(keys.requester.shape[1]):
            ours = keys.requester[requester_rows, k]
            shared_by = keys.counts[requester_rows, k]
            if absent is not None:
                theirs = keys.custodian[np.maximum(absent, 0), k]
                shared_by = shared_by - ((theirs == ours) & (ours != 0) & (absent >= 0))
            columns.append(_key_levels(ours, keys.custodian[custodian_rows, k], shared_by))
        sizes = (len(DICE_EDGES) + 1,) + (2 + len(SHARED_BY) + 1,) * keys.requester.shape[1]
        return cls(np.stack(columns, axis=1), sizes)


def _key_levels(ours: np.ndarray, theirs: np.ndarray, shared_by: np.ndarray) -> np.ndarray:
    """One key's agreement level for each pair, by how many custodian records share it."""
    return np.where(
        (ours == 0) | (theirs == 0),
        0,
        np.where(ours != theirs, 1, 2 + np.searchsorted(SHARED_BY, shared_by)),
    )


@dataclass(frozen=True)
class FellegiSunter:
    """Fitted match and non-match frequencies of every level, and the share of matches."""

    match_share: float
    m: list[np.ndarray]
    u: list[np.ndarray]

    def log_odds(self, evidence: PairEvidence) -> np.ndarray:
        """log P(match | evidence) / P(non-match | evidence) of each pair."""
        total = np.full(len(evidence.levels), np.log(self.match_share / (1 - self.match_share)))
        for feature, (m, u) in enumerate(zip(self.m, self.u, strict=True)):
            total += np.log(m / u)[evidence.levels[:, feature]]
        return total


def fit_fellegi_sunter(evidence: PairEvidence, start: np.ndarray) -> FellegiSunter | None:
    """Fit the model by expectation maximisation from `start`, each pair's probability of
    being a match by its Dice score alone; None when the pairs do not support a model (too
    few, or the fitted match class is not the one with the higher Dice scores). Pairs with
    the same levels share one probability, so the work is per distinct pattern of levels."""
    if len(evidence.levels) < 2:
        return None
    radix = np.cumprod((1, *evidence.sizes[:-1]))
    codes, which, counts = np.unique(
        evidence.levels @ radix, return_inverse=True, return_counts=True
    )
    patterns = (codes[:, None] // radix) % np.asarray(evidence.sizes)
    distinct = PairEvidence(patterns, evidence.sizes)
    matched = np.bincount(which, start.astype(np.float64), len(patterns)) / counts
    share = 0.0
    model = None
    for _ in range(ITERATIONS):
        share_before = share
        share = float(np.clip((matched @ counts) / counts.sum(), 1e-6, 1 - 1e-6))
        m = [
            _frequencies(patterns[:, f], matched * counts, n) for f, n in enumerate(distinct.sizes)
        ]
        u = [
            _frequencies(patterns[:, f], (1 - matched) * counts, n)
            for f, n in enumerate(distinct.sizes)
        ]
        model = FellegiSunter(share, m, u)
        matched = 1.0 / (1.0 + np.exp(-model.log_odds(distinct)))
        if abs(share - share_before) < TOLERANCE:
            break
    assert model is not None
    bands = np.arange(evidence.sizes[0])
    if float(bands @ model.m[0]) <= float(bands @ model.u[0]):
        return None
    return model


def _frequencies(levels: np.ndarray, weights: np.ndarray, size: int) -> np.ndarray:
    counts = np.bincount(levels, weights, minlength=size) + SMOOTHING
    return counts / counts.sum()
