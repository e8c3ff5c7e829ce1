"""The match model of a run: from the similarity scores alone (no plaintext, no labels), how
likely each matched pair is to be the same person, and the run's estimated precision, recall
and F*.

Every requester record has a best and a runner-up candidate score. A record with no partner on
the other side has, as its best, the best of many non-matches; a record with a partner has, as
its runner-up, that same kind of score. So:
- the runner-ups of the records that look matched give B, the distribution of a record's best
  non-match score;
- the records whose best score lies in B's lower half, where true matches are rare, give how
  many records have no partner (W): W * P(B <= m) records are expected at or below a point m;
- what the best scores hold above a threshold beyond W * P(B >= threshold) is true matches.
The two steps are repeated, each record's runner-up weighted by the probability that its best
is a match, until they agree. Scores are counted in bins of `STEP`; the probability of a match
never falls as the score rises (isotonic regression).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from blindlink.matching.rules import STEP

BINS = round(1 / STEP) + 2  # bin 0: no candidate at all; bin k: [(k-1) STEP, k STEP)
# B's quantile below which a record's best score is taken as non-match evidence.
ANCHOR_QUANTILE = 0.5
ITERATIONS = 30
# Fewer records that look matched than this, and B cannot be estimated.
MIN_SUPPORT = 10
MIN_MATCHES = 5
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
    observed = counts[::-1].cumsum()[::-1]  # records whose best is in bin k or above
    weights = (scores.best > np.quantile(scores.runner_up, 0.99)).astype(np.float64)
    for _ in range(ITERATIONS):
        if weights.sum() < MIN_SUPPORT:
            raise ModelUnfit(
                f"fewer than {MIN_SUPPORT} records look matched: too few matches to model"
            )
        non_match = np.bincount(runner_bins, weights, minlength=BINS) / weights.sum()
        below = non_match.cumsum()  # P(B in bin k or lower)
        anchor = int(np.searchsorted(below, ANCHOR_QUANTILE - 1e-12))
        unmatched = min(records, _at_or_below(counts, anchor) / below[anchor])
        above = non_match[::-1].cumsum()[::-1]
        true_above = np.minimum.accumulate(np.maximum(observed - unmatched * above, 0.0))
        true_in_bin = true_above - np.r_[true_above[1:], 0.0]
        probabilities = _isotonic(
            np.divide(true_in_bin, counts, out=np.zeros(BINS), where=counts > 0), counts
        )
        probabilities[0] = 0.0
        weights = probabilities[best_bins]
    strictly_below = np.r_[0.0, below[:-1]]
    visible = strictly_below >= MIN_VISIBLE
    matched = float(
        (true_in_bin[visible] / strictly_below[visible]).sum() + true_in_bin[~visible].sum()
    )
    if matched < MIN_MATCHES:
        raise ModelUnfit(f"about {matched:.0f} matches: too few to model")
    if probabilities.max() < 0.5:
        raise ModelUnfit("no score range where matches outnumber non-matches: no separation")
    return MatchModel(probabilities, matched)


def _at_or_below(counts: np.ndarray, k: int) -> float:
    return float(counts[: k + 1].sum())


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
    return np.clip(np.repeat(means, sizes), 0.0, 1.0)
