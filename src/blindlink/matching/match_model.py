"""The match model of a run: from the similarity scores alone (no plaintext, no labels), how
likely each solved pair is to be the same person, and the run's estimated precision, recall
and F*.

Decisions are made on the pairs of the 1:1 solution, so the model describes them. Greedy 1:1
solving gives each requester record the first of its candidates (best first) whose custodian
record is still free when solving reaches it: its *available* candidates. Every requester
record has a first available candidate (its solved pair) and a next one, its runner-up. A record
with no partner on the other side has, as its solved pair, the best available of many
non-matches; a record with a partner has, as its runner-up, that same kind of score. So:
- the runner-ups of the records that look matched give B, the distribution of a record's best
  available non-match score (its upper tail a generalised Pareto distribution fitted to the
  highest of them);
- the records whose solved score lies in B's lower part, where true matches are rare, give how
  many records have no partner: W, since W * P(B in that part) of them are expected there;
- in each score bin, the share of solved scores beyond the W * P(B in the bin) expected from
  non-matches is the probability that a solved pair there is a match. It never falls as the
  score rises (isotonic regression).
The steps are repeated, each runner-up weighted by the probability that its record's solved
pair is a match, and each time the probabilities move half way to the new ones (taken whole, they
can cycle between two fits: measured at 1M per party with a tenth shared, the estimated number
of partners swung by up to 6% from one step to the next, so the result hung on where the steps
stopped). The records with a partner are estimated as the expected matches over all bins.

Only the runner-ups of records whose solved score lies above B's ANCHOR_QUANTILE describe B.
Below it the records are mostly without a partner, and what few small probabilities they get
weight their runner-ups, the second best of their non-matches, which lie lower than a best one:
summed over many such records, they pulled B down, which raised the probabilities that had let
them in (measured at 10k per party, a tenth shared, unhardened: 27% and 54% more partners
estimated than there were, recall estimates 0.20 and 0.31 low; with the cut, 0.03 and 0.02).

Only each record's first RANKED candidates count, and its solved pair only if among its first
RANKED - 1: then a matched record's runner-up and an unmatched record's solved pair are each the
best available of the same number of non-matches. A record with none available has no score.

All of this takes the records with a partner to be like the others in their non-matches. Where
they are not (the records with a partner are the worse kept ones, whose non-match scores lie
lower), their runner-ups put B too low and the model takes the others' best non-matches for
matches; the fit is then refused (_check_like_non_matches).

Precision estimates are the firmest. The recall estimate is the weakest: it rests on W, known
only as well as B's lower part is sampled, and partners that score like non-matches are counted
as records without one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from blindlink.matching.linkage import Matches
from blindlink.matching.rules import STEP

try:
    from blindlink.matching._isotonic import (  # type: ignore[import-not-found]
        isotonic as _native_isotonic,
    )
except ImportError:  # not compiled (no C compiler at install): the same results in Python
    _native_isotonic = None

# Each requester record's candidates the model sees (the decision pipeline finds this many).
RANKED = 4
BINS = round(1 / STEP) + 2  # bin 0: no candidate at all; bin k: [(k-1) STEP, k STEP)
_BIN_INDEX = np.arange(BINS)
_CENTRES = (_BIN_INDEX - 0.5) * STEP  # the middle of bin k's scores
_LOWER_EDGES = (np.arange(BINS + 1) - 1) * STEP  # bin k's lowest score; the last, the top's end
# B's quantile below which a record's best score is taken as non-match evidence.
ANCHOR_QUANTILE = 0.8
ANCHOR_ERROR = 0.01
ITERATIONS = 30
# Fewer records that look matched than this, and B cannot be estimated.
MIN_SUPPORT = 10
MIN_MATCHES = 5
# The records that look matched must beat their runner-ups by SEPARATION times the margin of
# the others (medians); where they are the majority, of those below UNLIKELY. The best of many
# non-matches beats the second best by little, the highest such bests by more: measured on the
# calibration cases with their true pairs removed, 2.6 to 7.9 times the typical margin, except
# the generated 10k runs with the recommended hardening, 17 to 21 times (a handful of
# look-alikes, which UNSEEN refuses). True matches: 10 to 600 times on the calibration cases.
SEPARATION = 8.0
# Where most records look matched, the others are mostly partners that score low, whose best
# candidate stands further above the next than a non-match's. Measured on FEBRL2 and FEBRL3
# linked duplicates to originals, unhardened: 5.9 and 7.2 times the others' margin, refused;
# 8.4 and 10.6 times that of the records below UNLIKELY. Runs without partners never have a
# majority that looks matched (measured: at most 1.1% of records), nor do runs with a few:
# there, records below UNLIKELY alone can be too few to show a non-match's margin (500
# records with 3 partners were then fitted and released at an estimated precision of 0.2).
UNLIKELY = 0.1
# Runs with a partner for few of many records: the expected number of records without a
# partner whose best non-match lies above every runner-up (where the model sees none) must be
# at most UNSEEN times the matches. Measured: at most 0.035 on the calibration cases; 10 to
# 33 on the same runs without their true pairs, where the generated 10k hardened runs (17 to
# 21 times the others' margin, so separated) were fitted on 17 to 31 look-alikes and
# estimated a precision of 1.000 for releases that were all wrong.
UNSEEN = 0.25
# Runs with a partner for few of a few thousand records or fewer: the runner-ups describe the best
# non-match poorly, the number of records without a partner comes out low, and the excess spreads
# over the whole range of non-match scores as a small match probability. The share of the estimated
# matches from records below a match probability of 0.5 must be at most DOUBTFUL. Measured: at most
# 0.23 on the calibration cases (FEBRL4's 2500-record cut with a tenth shared, hardened), except
# their 16 draws of 1000 records with a tenth shared: up to 0.44 (decision.LEAST_PROBABILITY
# keeps such fits from releasing their doubtful pairs); up to 0.96
# on FEBRL4 with 30 true pairs kept, which were fitted on look-alikes and released at true
# precisions of 0.22 to 0.64. On generated runs (seed 3) of 100 to 10,000 records with 2% to 10%
# shared (these before MIN_TAIL_SAMPLES, with B's tail from 120 runner-ups only): above 0.5 where
# the released precision fell to 0.03 to 0.83, which the fallback and its non-match ceiling raise to
# 0.82 to 1.00, and in one run at 1.00 (0.501; it then releases at 0.96 with recall 0.93 instead of
# 0.89); 0.40 to 0.49 where it was 0.79 to 1.00.
DOUBTFUL = 0.5
# Runs whose records with a partner are unlike the others: where the best non-matches of the
# records that look matched lie lower than the others' by LIKE_Z standard errors or more, the
# fit is refused if B that much higher lowers the precision of the records it deems matched by
# more than LIKE_PRECISION, the tolerance the estimates aim for (_check_like_non_matches).
# Measured (two secrets per pairing): on the anonlink entity service's tutorial files, whose
# records with a partner carry the typos and the blanks, z 4.1 to 15.6 (at probability 0.9:
# 6.2 to 16.7) and drops of 0.047 to 0.363 in the 15 runs fitted without the check (precision
# estimated 0.08 to 0.20 too high), all refused; on its alice, bob and charlie files z 2.7 to
# 9.9 (2.4 to 10.6; precision estimated 0.04 to 0.12 too high), 11 of 12 refused. Of the 116
# calibration cases, none below a million custodian records reaches z 3 (at most 2.1); against
# a million, 11 of 24 do (at 1M x 1M z up to 24.8, with drops of 0.008 at most), and two are
# refused, batches of 10k, unhardened (drops of 0.011 and 0.015; they release at their model's
# threshold or the agreed fallback).
LIKE_Z = 3.0
LIKE_PRECISION = 0.01
# The records that look matched, at either match probability: at 0.5, all the model takes for
# matches; at 0.9, those least mixed with look-alikes. Where the model takes many look-alikes
# for matches, their second candidates lie high (as their best ones do) and hide the
# difference in the first group (simulated: records with a partner 0.003 lower in their
# non-matches, z 2.1, released at precision 0.615, estimated 0.810).
LOOKS_MATCHED = (0.5, 0.9)
MAX_SHIFT = 0.1  # the largest shift between the two that the check measures
SHIFT_STEPS = 20  # bisection steps of that shift: MAX_SHIFT / 2**20 apart at the end
# The runner-ups that fit the upper tail of the best non-match distribution: this
# share of them (measured on the calibration benchmark's 10k cases: 0.2 against 0.05 and 0.5),
# and at least TAIL_SAMPLES. 60 rather than 30 changes only runs with fewer than 300 runner-ups:
# on the FEBRL4 cuts with 250 partners the precision estimates then err high by 0.007 and 0.029
# instead of 0.042 and 0.044.
TAIL_SHARE = 0.2
TAIL_SAMPLES = 60.0
# With fewer than 2 TAIL_SAMPLES runner-ups, the tail is the top half of them, from
# MIN_TAIL_SAMPLES up (below, the histogram alone: every score above the highest runner-up
# then looks certainly matched). Measured on the 1k calibration cases with a tenth shared
# (about 60 runner-ups), where the histogram alone had estimated precision 1.000 against a
# true 0.933 to 0.950: errors of -0.029 to +0.025, and F* up to 0.044 higher; on generated
# runs of 100 to 10,000 records (seed 3, 2% to 100% shared), released precision rose in 22 of
# 120 (by up to 0.45) and fell in 5 (by 0.02 to 0.05), and the mean precision error of the
# fitted runs fell from 0.045 to 0.026.
MIN_TAIL_SAMPLES = 20.0
# The tail is a generalised Pareto distribution whose shape is estimated from at least
# SHAPE_SAMPLES runner-ups, else exponential. Measured on the calibration cases at 10k and
# 100k per party, FEBRL4, and 1M with a tenth matched: precision estimates within 0.01 in 31
# of 33 cases against 28 with an exponential tail (1M: -0.007 against -0.053); with a
# shape estimated from the 60 of FEBRL4's 2500-record cuts, they erred by up to +0.12; with
# the shape bounded at -0.25 rather than -0.5, F* fell 0.034 at 1M.
# The estimate is raised by one standard error (1 / sqrt(n) at shape 0), towards the heavier
# tail, so that from fewer samples the tail errs long and precision low. Measured on the 74
# calibration cases, with 100 rather than 200 samples: F* within 0.005 of the oracle in 56
# against 55, precision estimates within 0.01 in 63 against 61, none newly missed (the runs
# with a tenth shared at 10k per party and in 10k batches against 1M, with 100 to 200
# runner-ups in their tail: precision errors -0.001 to -0.030 against -0.006 to -0.060). On
# simulated runs whose non-match tail is exponential (test_decision's overlapping scores, 800
# of 2000 matched, seeds 1 to 5), 100 samples without the raise overstated precision by up to
# 0.015; with it, by at most 0.009.
SHAPE_SAMPLES = 100.0
MIN_SHAPE = -0.5
# The estimates' intervals: the model refitted to this many resamplings of the records, and
# one draw of each refit's outcome; the two come from independent streams of one fixed seed.
REPLICATES = 50
RESAMPLING_SEED, OUTCOME_SEED = np.random.SeedSequence(20261202).spawn(2)


# Where the model finds few matches, a run's best scores are nearly all non-matches, and the
# fallback releases only what lies above the score that fewer than CEILING_EXPECTED of its
# records are expected to reach with their best non-match (non_match_ceiling). Of the N records
# with a score, the tail is the CEILING_TAIL * sqrt(N) best (at least TAIL_SAMPLES) below that
# score, first guessed above the CEILING_TRIM * sqrt(N) best: a run refused for few matches has
# fewer partners than about that (UNSEEN), and the repetitions keep them out of the tail.
# Measured on the calibration cases with every true pair removed: the agreed fallback released
# 118 to 260 records at 10k per party, 80,000 to 112,000 at 1M; this ceiling, 4 to 6 and 19 to
# 20. With the tail the top tenth and the first guess the top 1% instead: the same at 10k,
# 28 to 568 at 1M (the tail's shape, fitted far below the scores that matter, ended too soon).
CEILING_EXPECTED = 0.5
CEILING_TAIL = 10.0
CEILING_TRIM = 2.0


class ModelUnfit(Exception):
    """The run's scores do not support a model; the message says why. `few_matches`: the
    reason is that the model found few matches (not that they lack separation). `bold`: the
    model, where it was refused because it takes too many pairs for matches; a release should
    go no lower than the threshold it would choose."""

    def __init__(
        self, reason: str, few_matches: bool = False, bold: MatchModel | None = None
    ) -> None:
        super().__init__(reason)
        self.few_matches = few_matches
        self.bold = bold


@dataclass(frozen=True)
class RecordScores:
    """Per requester record, its solved and its runner-up score, and its best and second best
    candidate's score whether free or not (each -1 where absent)."""

    best: np.ndarray
    runner_up: np.ndarray
    top: np.ndarray
    second: np.ndarray

    @classmethod
    def after_solving(
        cls,
        similarities: np.ndarray,
        requester_rows: np.ndarray,
        custodian_rows: np.ndarray,
        solved: Matches,
        requester_records: int,
    ) -> RecordScores:
        """The scores of each requester record's first two available candidates among its
        first RANKED (the first only if among its first RANKED - 1). The candidates are in
        solving order (best first, ties by requester row then custodian row) and `solved` is
        their greedy 1:1 solution."""
        best = np.full(requester_records, -1.0)
        runner_up = np.full(requester_records, -1.0)
        order = np.argsort(requester_rows, kind="stable")  # solving order within each record
        rows = requester_rows[order]
        starts = np.r_[True, rows[1:] != rows[:-1]] if len(rows) else np.zeros(0, dtype=bool)
        group = np.flatnonzero(starts)
        rank = np.arange(len(rows)) - np.repeat(group, np.diff(np.r_[group, len(rows)]))
        ranked = similarities[order]
        top = np.full(requester_records, -1.0)
        top[rows[rank == 0]] = ranked[rank == 0]
        second = np.full(requester_records, -1.0)
        second[rows[rank == 1]] = ranked[rank == 1]
        seen = (rank < RANKED) & _available(requester_rows, custodian_rows, solved)[order]
        rows, sims, rank = rows[seen], ranked[seen], rank[seen]
        starts = np.r_[True, rows[1:] != rows[:-1]] if len(rows) else np.zeros(0, dtype=bool)
        first = starts & (rank < RANKED - 1)
        after = np.r_[False, first[:-1]] & ~starts
        best[rows[first]] = sims[first]
        runner_up[rows[after]] = sims[after]
        return cls(best, runner_up, top, second)


def _available(
    requester_rows: np.ndarray, custodian_rows: np.ndarray, solved: Matches
) -> np.ndarray:
    """Per candidate (in solving order): whether its custodian record was still free when
    solving reached it, i.e. not taken by an earlier candidate. A requester record's first
    available candidate is its solved pair."""
    custodians = int(custodian_rows.max()) + 1 if len(custodian_rows) else 0
    keys = requester_rows.astype(np.int64) * custodians + custodian_rows
    by_key = np.argsort(keys)
    solved_keys = solved.requester_rows * custodians + solved.custodian_rows
    taken_at = np.full(custodians, len(keys))
    taken_at[solved.custodian_rows] = by_key[np.searchsorted(keys[by_key], solved_keys)]
    return taken_at[custodian_rows] >= np.arange(len(keys))


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

    def lowest_score(self, probability: float) -> float:
        """The lowest score whose match probability reaches `probability` (above 1: none)."""
        reaching = np.flatnonzero(self.probabilities[1:] >= probability)
        return float(reaching[0]) * STEP if len(reaching) else 1.0 + STEP


def fit_match_model(scores: RecordScores, raw_runner_ups: bool = True) -> MatchModel:
    """Fit the model to one run's scores; raises ModelUnfit when they cannot support one.
    `raw_runner_ups`: the runner-ups are the records' next candidates as scored, so that a
    matched record's second candidate is its best non-match as the runner-ups show it, and the
    fit is refused where those lie lower than the other records' (_check_like_non_matches).
    Not so for runner-ups rescored as if their record's partner were absent (the blocking-key
    score: before that, a partner counts among the records that share a key with the second
    candidate, which then looks weaker than another record's best non-match)."""
    joint = _joint_histogram(scores)
    start = _start_bin(scores)
    model = _fit(joint, start)
    _check_doubtful(joint, model)
    _check_unseen(joint, model)
    _check_separation(scores, model.probabilities[score_bins(scores.top)], model.matched_records)
    if raw_runner_ups:
        _check_like_non_matches(scores, joint, start, model)
    return model


def _check_doubtful(joint: np.ndarray, model: MatchModel) -> None:
    """Refuse a fit whose estimated matches come mostly (more than DOUBTFUL) from records it
    gives a match probability below 0.5: a thin excess over the whole range of non-match
    scores, from too few runner-ups to place it, rather than matches."""
    counts = joint.sum(axis=1)
    doubtful = model.probabilities < 0.5
    share = float(counts[doubtful] @ model.probabilities[doubtful]) / max(
        model.matched_records, 1e-12
    )
    if share > DOUBTFUL:
        raise ModelUnfit(
            f"about {model.matched_records:.0f} matches, {share:.0%} of them from records more "
            "likely not matched: an excess spread over the non-match scores, not matches",
            few_matches=True,
        )


def _check_unseen(joint: np.ndarray, model: MatchModel) -> None:
    """Refuse a fit whose runner-ups (each weighted by its record's match probability) are
    too few to describe the best non-match of the records without a partner: of those W
    records, about W / (runner-ups + 1) score above every runner-up, where the model sees no
    non-match, and they must be fewer than UNSEEN times the matches."""
    runner_ups = float((model.probabilities @ joint).sum())
    unseen = (joint.sum() - model.matched_records) / (runner_ups + 1.0)
    if unseen > UNSEEN * model.matched_records:
        raise ModelUnfit(
            f"about {model.matched_records:.0f} matches, too few to show the best non-match "
            f"of the other records: about {unseen:.0f} of those would score above every "
            "runner-up, unseen",
            few_matches=True,
        )


def resampled_models(scores: RecordScores, replicates: int = REPLICATES) -> list[MatchModel]:
    """The model refitted to `replicates` resamplings of the requester records (drawn with
    replacement, as many as there are; a fixed seed, so deterministic), leaving out those that
    cannot be fitted: how much the model's estimates owe to which records happened to be in
    the run. The resamplings keep the run's own separation check: they are the same run."""
    joint = _joint_histogram(scores)
    start = _start_bin(scores)
    total = joint.sum()
    draws = np.random.default_rng(RESAMPLING_SEED).multinomial(
        int(total), joint.ravel() / total, size=replicates
    )
    models = []
    for draw in draws:
        try:
            models.append(_fit(draw.reshape(BINS, BINS).astype(np.float64), start))
        except ModelUnfit:
            continue
    return models


def _joint_histogram(scores: RecordScores) -> np.ndarray:
    """Records per (best bin, runner-up bin). A record's weight depends only on its best
    score's bin, so the fit works on this histogram, whatever the number of records."""
    best_bins, runner_bins = score_bins(scores.best), score_bins(scores.runner_up)
    joint = np.bincount(best_bins * BINS + runner_bins, minlength=BINS * BINS)
    return joint.reshape(BINS, BINS).astype(np.float64)


def _start_bin(scores: RecordScores) -> int:
    """The fit starts from the records whose best score lies above this bin: above nearly all
    runner-ups, and never above the records that agree exactly. With few fields (FEBRL4 on
    given name and surname alone, every record with a partner), more than 1% of runner-ups
    agree exactly with their record: people who share a name. Starting above them, the fit
    started from no records and was refused, and the fallback released at F* 0.46 where the
    model, started from the exact agreements, releases at 0.69 (the best fixed threshold's)."""
    above_runner_ups = int(score_bins(np.array([np.quantile(scores.runner_up, 0.99)]))[0])
    return min(above_runner_ups, BINS - 2)


def _fit(joint: np.ndarray, start: int, shift: float = 0.0) -> MatchModel:
    """The model of a (best bin, runner-up bin) histogram, iterated from the records whose
    best score lies above bin `start`; the best non-match distribution taken `shift` higher
    than the runner-ups show (to measure how much the model owes to their level)."""
    counts = joint.sum(axis=1)
    records = float(counts.sum())
    weights = (start < _BIN_INDEX).astype(np.float64)  # per best bin
    describe_b = np.ones(BINS, dtype=bool)  # the best bins whose runner-ups describe B
    for _ in range(ITERATIONS):
        runner_ups = (weights * describe_b) @ joint  # the weighted runner-ups' histogram
        support = runner_ups.sum()
        if support < MIN_SUPPORT:
            raise ModelUnfit(
                f"fewer than {MIN_SUPPORT} records look matched: too few matches to model",
                few_matches=True,
            )
        non_match = _shifted(_non_match_distribution(runner_ups), shift)
        below = non_match.cumsum()  # P(B in bin k or lower)
        anchor = int(np.searchsorted(below, _anchor_quantile(support) - 1e-12))
        describe_b = np.searchsorted(below, ANCHOR_QUANTILE - 1e-12) < _BIN_INDEX
        unmatched = min(records, float(counts[: anchor + 1].sum()) / below[anchor])
        # Per bin, the share of best scores beyond what `unmatched` records' best non-matches
        # put there; noisy, so made non-decreasing before it is clipped to a probability.
        excess = 1.0 - np.divide(unmatched * non_match, counts, out=np.ones(BINS), where=counts > 0)
        fitted = np.clip(_isotonic(excess, counts), 0.0, 1.0)
        fitted[0] = 0.0
        weights = (weights + fitted) / 2
    return MatchModel(weights, float(counts @ weights))


def _check_separation(scores: RecordScores, top_probabilities: np.ndarray, matched: float) -> None:
    """Refuse a fit whose matches are not told apart from the rest: a true match's best
    candidate stands well above its second best, a non-match's barely. `top_probabilities`:
    per record, the match probability of its best candidate's score. The margins are taken
    before solving: after it, a record's next free candidate may lie far below its solved one
    whether or not that is a match (measured: no-match runs up to 13 times the others' median
    margin after solving, real runs as low as 4.6)."""
    likely = top_probabilities >= 0.5
    if matched < MIN_MATCHES or likely.sum() < MIN_MATCHES:
        raise ModelUnfit(f"about {matched:.0f} matches: too few to model", few_matches=True)
    compared = scores.second >= 0
    margin = scores.top - scores.second
    others = ~likely if likely.sum() <= len(likely) / 2 else top_probabilities < UNLIKELY
    ours, theirs = margin[likely & compared], margin[others & compared]
    if len(ours) and len(theirs) and np.median(ours) <= SEPARATION * np.median(theirs):
        raise ModelUnfit(
            "the records that look matched stand no further above their runner-ups than the "
            "rest: no separation between matches and non-matches"
        )


def _check_like_non_matches(
    scores: RecordScores, joint: np.ndarray, start: int, model: MatchModel
) -> None:
    """Refuse a fit that rests on the records that look matched having best non-matches like
    the other records': their runner-ups stand for the others' best non-match. Before
    solving, a matched record's second candidate and another record's first are each its
    best non-match; below B's ANCHOR_QUANTILE (few matches there) the two must be alike. Where
    the matched records' (at either of LOOKS_MATCHED) lie significantly lower (LIKE_Z), the
    model is refitted with B that much higher, and the fit is refused if the precision of the
    records it deems matched falls by more than LIKE_PRECISION."""
    probabilities = model.probability(scores.best)
    counts = joint.sum(axis=1) * (model.probabilities >= 0.5)
    released = max(float(counts.sum()), 1.0)
    precision = float(counts @ model.probabilities) / released
    for looks_matched in LOOKS_MATCHED:
        shift = _non_match_shift(scores, probabilities >= looks_matched, probabilities < 0.5)
        if not shift:
            continue
        lowered = float(counts @ _fit(joint, start, shift).probabilities) / released
        if precision - lowered > LIKE_PRECISION:
            raise ModelUnfit(
                "the records that look matched score lower with their best non-matches than "
                f"the other records do (by {shift:.3f}), so their runner-ups understate the "
                f"others' best non-match: precision would be estimated {precision:.3f} where B "
                f"{shift:.3f} higher gives {lowered:.3f}",
                bold=model,
            )


def _non_match_shift(scores: RecordScores, ours: np.ndarray, theirs: np.ndarray) -> float:
    """How much lower the best non-matches before solving of the records `ours` (their second
    candidates) lie than those of the records `theirs` (their first), below the former's
    ANCHOR_QUANTILE; 0 unless by LIKE_Z standard errors or more."""
    second = np.sort(scores.second[ours & (scores.second >= 0)])
    if len(second) < MIN_SUPPORT:
        return 0.0
    cut = float(np.quantile(second, ANCHOR_QUANTILE))
    first = scores.top[theirs & (scores.top >= 0) & (scores.top <= cut)]
    if len(first) < MIN_SUPPORT or _rank_sum_z(first, second[second <= cut]) < LIKE_Z:
        return 0.0
    return _truncated_shift(second, float(np.median(first)), cut)


def _truncated_shift(ours: np.ndarray, their_median: float, cut: float) -> float:
    """How much higher `ours` (sorted) must lie for the median of those of them then at or
    below `cut` to be `their_median`, the median of a sample seen only up to `cut` (by
    bisection, up to MAX_SHIFT; 0 if none). Comparing the two medians below the cut directly
    understates a shift, since the cut keeps more of the lower sample."""

    def below_median(shift: float) -> float:
        kept = ours[: np.searchsorted(ours, cut - shift, side="right")]
        return float(np.median(kept)) + shift if len(kept) else cut

    low, high = 0.0, MAX_SHIFT
    if below_median(low) >= their_median:
        return 0.0
    for _ in range(SHIFT_STEPS):
        middle = (low + high) / 2
        low, high = (middle, high) if below_median(middle) < their_median else (low, middle)
    return low


def _rank_sum_z(higher: np.ndarray, lower: np.ndarray) -> float:
    """The Mann-Whitney statistic of `higher` scoring above `lower`, in standard errors (ties
    at their mean rank)."""
    values = np.concatenate([higher, lower])
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    mean_rank = np.cumsum(counts) - (counts - 1) / 2
    ranks = mean_rank[inverse]
    first, second = len(higher), len(lower)
    u = float(ranks[:first].sum()) - first * (first + 1) / 2
    return (u - first * second / 2) / float(np.sqrt(first * second * (first + second + 1) / 12))


def _shifted(distribution: np.ndarray, shift: float) -> np.ndarray:
    """A score distribution (per bin, bin 0 no score) moved `shift` higher, what passes the
    top bin kept in it; bin 0 unchanged."""
    if shift == 0.0:
        return distribution
    edges = np.arange(BINS) * STEP  # upper edges of bins 0..BINS-1 (bin 0: no score)
    below = np.r_[0.0, distribution[1:].cumsum()]
    moved = np.interp(edges - shift, edges, below)
    moved[-1] = below[-1]
    return np.r_[distribution[0], np.diff(moved)]


def _non_match_distribution(runner_ups: np.ndarray) -> np.ndarray:
    """Per bin, the share of best non-match scores: the weighted runner-ups' histogram, with
    its upper tail (the top TAIL_SHARE of the runner-ups, at least TAIL_SAMPLES of them or, if
    they are fewer than twice that, half of them) a generalised Pareto distribution fitted to
    them (the tail of a maximum). Fewer runner-ups than records without a partner would
    otherwise leave the highest of those records' scores in bins the sample never reached, and
    the histogram's noise where matches and non-matches overlap would move the threshold."""
    total = runner_ups.sum()
    scored = runner_ups[1:].sum()  # runner-ups that exist
    if scored < MIN_TAIL_SAMPLES:
        return runner_ups / total
    start = _tail_start(runner_ups, max(min(TAIL_SAMPLES, scored / 2), TAIL_SHARE * scored))
    tail = runner_ups[start:]
    origin = (start - 1) * STEP
    edges = np.maximum(_LOWER_EDGES, origin)
    edges[-1] = np.inf  # the last bin holds everything above
    survival = _tail_survival(_CENTRES[start:] - origin, tail, edges - origin)
    body = runner_ups.copy()
    body[start:] = 0.0
    return (body + tail.sum() * (survival[:-1] - survival[1:])) / total


def _tail_survival(excess: np.ndarray, tail: np.ndarray, at: np.ndarray) -> np.ndarray:
    """P(excess > `at`) under a generalised Pareto distribution fitted by moments to the tail
    histogram (`tail` samples at each `excess` over the tail's origin). Dice is bounded, so
    the maximum of many non-match scores has a bounded tail (shape below 0, down to -0.5),
    estimated one standard error long; with fewer than SHAPE_SAMPLES samples the shape is not
    estimated and the tail is exponential (shape 0)."""
    samples = float(tail.sum())
    mean = max(float(excess @ tail / samples), STEP / 10)
    spread = max(float((excess - mean) ** 2 @ tail / samples), 1e-12)
    shape = 0.0
    if samples >= SHAPE_SAMPLES:
        shape = 0.5 * (1 - mean**2 / spread) + 1 / np.sqrt(samples)
    shape = min(0.0, max(MIN_SHAPE, shape))
    if shape == 0.0:
        return np.exp(-at / mean)
    scale = 0.5 * mean * (mean**2 / spread + 1)
    return np.maximum(1 + shape * at / scale, 0.0) ** (-1 / shape)


def non_match_ceiling(top: np.ndarray) -> float:
    """The lowest score that fewer than CEILING_EXPECTED records are expected to reach with
    their best non-match, each record's best candidate score (`top`, negative for none) taken
    as a non-match's: for runs where the model finds few matches. The tail is fitted to the
    scores below the ceiling, found by repetition from a first guess above which the few
    partners lie, so that they do not lift it. Above 1 where no score is low enough."""
    histogram = np.bincount(score_bins(top), minlength=BINS).astype(np.float64)
    histogram[0] = 0.0  # records without a candidate
    scored = np.sort(top[top >= 0])
    if not len(scored):
        return 1.0 + STEP
    root = np.sqrt(len(scored))
    first_guess = scored[max(len(scored) - 1 - int(CEILING_TRIM * root), 0)]
    ceiling = int(score_bins(np.array([first_guess]))[0])
    tail_mass = max(TAIL_SAMPLES, CEILING_TAIL * root)
    for _ in range(ITERATIONS):
        below = np.r_[histogram[:ceiling], np.zeros(BINS - ceiling)]
        lifted = _ceiling_bin(below, tail_mass) if below.sum() else ceiling
        if lifted == ceiling:
            break
        ceiling = lifted
    return (ceiling - 1) * STEP


def _ceiling_bin(histogram: np.ndarray, tail_mass: float) -> int:
    """The first bin that fewer than CEILING_EXPECTED of `histogram`'s scores are expected to
    reach (BINS if none), from a generalised Pareto tail fitted to its `tail_mass` highest."""
    start = _tail_start(histogram, tail_mass)
    tail = histogram[start:]
    origin = (start - 1) * STEP
    centres = (np.arange(start, BINS) - 0.5) * STEP
    expected = tail.sum() * _tail_survival(centres - origin, tail, centres - STEP / 2 - origin)
    reaching = np.flatnonzero(expected < CEILING_EXPECTED)
    return start + int(reaching[0]) if len(reaching) else BINS


def _tail_start(histogram: np.ndarray, mass: float) -> int:
    """The bin at which `histogram`'s highest `mass` scores begin (all its scores if fewer);
    never bin 0, the records without a score."""
    at_or_above = histogram[::-1].cumsum()[::-1]
    return max(int(np.flatnonzero(at_or_above >= min(mass, at_or_above[1]))[-1]), 1)


def _anchor_quantile(samples: float) -> float:
    """The quantile of B below which best scores count the records without a partner: the
    lowest, from ANCHOR_QUANTILE up, at which B's share there, estimated from `samples`
    runner-ups, has a relative error of at most ANCHOR_ERROR (binomial). Higher quantiles
    count more of the partners that score like non-matches as records without one."""
    return max(ANCHOR_QUANTILE, 1.0 / (1.0 + ANCHOR_ERROR**2 * samples))


def _isotonic(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The non-decreasing sequence closest to `values` in weighted least squares, natively
    where the extension was compiled (the decision's intervals run it 1,500 times a run)."""
    if _native_isotonic is None:
        return _isotonic_python(values, weights)
    out = np.empty(len(values))
    _native_isotonic(
        np.ascontiguousarray(values, dtype=np.float64),
        np.ascontiguousarray(weights, dtype=np.float64),
        out,
    )
    return out


def _isotonic_python(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """_isotonic by pool adjacent violators (as _isotonic.c, with the same arithmetic): a stack
    of pooled blocks, each with its mean, weight and first index; an incoming value pools with
    the blocks above it while they exceed it, into their weighted mean (the larger mean where
    both weigh nothing)."""
    size = len(values)
    means, totals, starts = [0.0] * size, [0.0] * size, [0] * size
    top = -1
    for index, (mean, total) in enumerate(zip(values.tolist(), weights.tolist(), strict=True)):
        start = index
        while top >= 0 and means[top] > mean:
            pooled = totals[top] + total
            mean = (means[top] * totals[top] + mean * total) / pooled if pooled > 0 else means[top]
            total, start = pooled, starts[top]
            top -= 1
        top += 1
        means[top], totals[top], starts[top] = mean, total, start
    return np.repeat(means[: top + 1], np.diff([*starts[: top + 1], size]))
