"""The match model of a run: from the similarity scores alone (no plaintext, no labels), how
likely each matched pair is to be the same person, and the run's estimated precision, recall
and F*.

Every requester record has a best and a runner-up candidate score. A record with no partner on
the other side has, as its best, the best of many non-matches; a record with a partner has, as
its runner-up, that same kind of score. So:
- the runner-ups of the records that look matched give B, the distribution of a record's best
  non-match score;
- the records whose best score lies in B's lower part (below its ANCHOR_QUANTILE), where true
  matches are rare, give how many records have no partner: W, since W * P(B in that part) of
  them are expected there;
- in each score bin, the share of best scores beyond the W * P(B in the bin) expected from
  non-matches is the probability that a best score there is a match. It never falls as the
  score rises (isotonic regression).
The two steps are repeated, each runner-up weighted by the probability that its record's best
is a match. Partners whose score fell below their record's best non-match are counted by
inverse probability weighting: a match at score s beats its best non-match with P(B < s).

The recall estimate is the weakest: it rests on W, which the lower part of the score
distribution gives only to a few percent, and on partners that score like non-matches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from blindlink.matching.rules import STEP

BINS = round(1 / STEP) + 2  # bin 0: no candidate at all; bin k: [(k-1) STEP, k STEP)
# B's quantile below which a record's best score is taken as non-match evidence.
ANCHOR_QUANTILE = 0.8
ITERATIONS = 30
# Fewer records that look matched than this, and B cannot be estimated.
MIN_SUPPORT = 10
MIN_MATCHES = 5
# The records that look matched must beat their runner-ups by SEPARATION times the others'
# margin (medians). The best of many non-matches beats the second best by little; the highest
# such bests by up to about 5 times the typical margin (measured with no matches at all),
# true matches by 12 to 120 times (generated, FEBRL, hardened or not, blocked or not).
SEPARATION = 8.0
# Matches hidden below the best non-match are estimated only where P(B < score) is at least this.
MIN_VISIBLE = 0.05


class ModelUnfit(Exception):
    """The run's scores do not support a model; the message says why."""


@dataclass(frozen=True)
class RecordScores:
    """Per requester record, the best and the runner-up candidate score (-1 where absent)."""

    best: np.ndarray
    runner_up: np.ndarray

    @classmethod
    def of(
        cls, similarities: np.ndarray, requester_rows: np.ndarray, requester_records: int
    ) -> RecordScores:
        best = np.full(requester_records, -1.0)
        runner_up = np.full(requester_records, -1.0)
        if len(similarities):
            order = np.lexsort((-similarities, requester_rows))
            rows, sims = requester_rows[order], similarities[order]
            first = np.r_[True, rows[1:] != rows[:-1]]
            second = np.r_[False, ~first[1:] & first[:-1]]
            best[rows[first]] = sims[first]
            runner_up[rows[second]] = sims[second]
        return cls(best, runner_up)


def score_bins(scores: np.ndarray) -> np.ndarray:
    """The bin of each score: 0 for none (negative), else 1 + floor(score / STEP)."""
    return np.where(
        scores < 0, 0, np.minimum(np.floor(scores / STEP + 1e-9).astype(np.int64) + 1, BINS - 1)
    )


@dataclass(frozen=True)
class MatchModel:
    """A fitted model: per score bin, the probability that a best candidate is the same person,
    and the estimated number of requester records that have a partner."""

    probabilities: np.ndarray  # per bin
    matched_records: float

    def probability(self, scores: np.ndarray) -> np.ndarray:
        return self.probabilities[score_bins(scores)]


def fit_match_model(scores: RecordScores) -> MatchModel:
    """Fit the model to one run's scores; raises ModelUnfit when they cannot support one."""
    best_bins, runner_bins = score_bins(scores.best), score_bins(scores.runner_up)
    records = len(best_bins)
    counts = np.bincount(best_bins, minlength=BINS).astype(np.float64)
    weights = (scores.best > np.quantile(scores.runner_up, 0.99)).astype(np.float64)
    for _ in range(ITERATIONS):
        if weights.sum() < MIN_SUPPORT:
            raise ModelUnfit(
                f"fewer than {MIN_SUPPORT} records look matched: too few matches to model"
            )
        non_match = np.bincount(runner_bins, weights, minlength=BINS) / weights.sum()
        below = non_match.cumsum()  # P(B in bin k or lower)
        anchor = int(np.searchsorted(below, ANCHOR_QUANTILE - 1e-12))
        unmatched = min(records, float(counts[: anchor + 1].sum()) / below[anchor])
        # Per bin, the share of best scores beyond what `unmatched` records' best non-matches
        # put there; noisy, so made non-decreasing before it is clipped to a probability.
        excess = 1.0 - np.divide(unmatched * non_match, counts, out=np.ones(BINS), where=counts > 0)
        probabilities = np.clip(_isotonic(excess, counts), 0.0, 1.0)
        probabilities[0] = 0.0
        weights = probabilities[best_bins]
    true_in_bin = counts * probabilities
    strictly_below = np.r_[0.0, below[:-1]]
    visible = strictly_below >= MIN_VISIBLE
    matched = float(
        (true_in_bin[visible] / strictly_below[visible]).sum() + true_in_bin[~visible].sum()
    )
    _check_separation(scores, probabilities[best_bins] >= 0.5, matched)
    return MatchModel(probabilities, matched)


def _check_separation(scores: RecordScores, likely: np.ndarray, matched: float) -> None:
    """Refuse a fit whose matches are not told apart from the rest: a true match's best score
    stands well above its runner-up, a non-match's best barely above its runner-up."""
    if matched < MIN_MATCHES or likely.sum() < MIN_MATCHES:
        raise ModelUnfit(f"about {matched:.0f} matches: too few to model")
    compared = scores.runner_up >= 0
    gap = scores.best - scores.runner_up
    ours, theirs = gap[likely & compared], gap[~likely & compared]
    if len(ours) and len(theirs) and np.median(ours) <= SEPARATION * np.median(theirs):
        raise ModelUnfit(
            "the records that look matched stand no further above their runner-ups than the "
            "rest: no separation between matches and non-matches"
        )


def _isotonic(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The non-decreasing sequence closest to `values` in weighted least squares (pool
    adjacent violators)."""
    means: list[float] = []
    totals: list[float] = []
    sizes: list[int] = []
    for value, weight in zip(values.tolist(), weights.tolist(), strict=True):
        means.append(value)
        totals.append(weight)
        sizes.append(1)
        while len(means) > 1 and means[-2] > means[-1]:
            mean, total, size = means.pop(), totals.pop(), sizes.pop()
            pooled = totals[-1] + total
            means[-1] = (
                (means[-1] * totals[-1] + mean * total) / pooled
                if pooled > 0
                else max(means[-1], mean)
            )
            totals[-1] = pooled
            sizes[-1] += size
    return np.repeat(means, sizes)
