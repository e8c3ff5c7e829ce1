"""The one decision pipeline: candidates -> (a custodian's other records of one person set
aside, kin.py) -> 1:1 solving -> match model -> threshold -> possible match band -> ambiguity
rule. The server, the demo, the benchmarks and the tests all decide matches here.

A rule is a fixed threshold (as agreed), or a calibrated one: the match model, fitted to the
run's own scores, chooses the threshold within agreed bounds that meets the agreed target
(best estimated F*, or the lowest threshold whose estimated precision reaches a minimum). When
the model cannot be fitted, a calibrated rule falls back to its agreed fallback threshold and
the decision says why; where the model found few matches, the fallback is raised (up to the
agreed upper bound) above the scores the run's records without a partner are expected to reach
(match_model.non_match_ceiling), and where the model was refused because it takes too many
pairs for matches, to the threshold it chose.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import Any

import numpy as np

from blindlink.matching.blocking import Blocking, KeyBlocking
from blindlink.matching.blocking_loss import missed_share
from blindlink.matching.engine import (
    DEFAULT_LIMITS,
    Candidates,
    MatchingLimits,
    Progress,
    SharedEncodings,
    find_candidates,
)
from blindlink.matching.evidence import (
    FellegiSunter,
    PairEvidence,
    PartyKeys,
    fit_fellegi_sunter,
)
from blindlink.matching.executors import Executor
from blindlink.matching.kin import KIN_CANDIDATES, EncodingsOf, without_kin
from blindlink.matching.linkage import Matches, ambiguous, pair_values, solve_one_to_one
from blindlink.matching.match_model import (
    OUTCOME_SEED,
    RANKED,
    MatchModel,
    ModelUnfit,
    RecordScores,
    fit_match_model,
    non_match_ceiling,
    resampled_models,
)
from blindlink.matching.rules import (
    STEP,
    CalibratedThreshold,
    DecisionRule,
    FixedThreshold,
    Target,
)

# The model with blocking-key evidence is used only where it and the Dice model agree this
# closely on how many requester records have a partner. Measured on generated data with keyed
# blocking at 100k per party: at most 0.8% apart with half or more of the records matched,
# where the blocking-key model gains F* 0.003 to 0.057 over the best fixed Dice threshold and
# its precision estimates err by at most 0.001; 10% to 21% apart with a tenth matched, where
# it would overstate precision by 0.012 to 0.032 (its score's runner-ups are then too few to
# show the tail of the many records without a partner).
MODELS_AGREE = 0.05
# The blocking-key model's log-odds become a score in [0, 1] linearly, +-LOG_ODDS_SPAN at the
# ends: 0.3 of log-odds per bin of the match model.
LOG_ODDS_SPAN = 30.0
# A calibrated threshold never releases a pair whose match probability is below this: a pair
# the model deems more likely not the same person, however it would raise the estimated F*.
# Measured on generated runs of 1000 records per party with a tenth shared (16 seeds each):
# unhardened, the best estimated F* twice released 38% and 44% wrong pairs (estimated 22% and
# 30%), F* 0.35 below the best fixed threshold's; with this floor, at most 0.041 below it.
LEAST_PROBABILITY = 0.5


class PairStatus(IntEnum):
    """What became of a solved pair that a party may hear about."""

    MATCH = 0
    WITHHELD = 1  # a match withheld by the ambiguity rule
    POSSIBLE = 2  # in the possible-match band


# The estimates' intervals hold this central share of the resampled models' estimates.
INTERVAL = 0.9

Interval = tuple[float, float]
ESTIMATED = ("precision", "recall", "f_star")  # what Estimates holds, each with an interval


@dataclass(frozen=True)
class Estimates:
    """The model's estimates for the released matches of a run, each with an interval: the
    central INTERVAL of the estimates of the model refitted to resamplings of the run's
    records (match_model.resampled_models). An interval shows how far the estimate moves with
    which records happened to be in the run, not the model's own bias (the limits in
    match_model's docstring). Decisions recorded before intervals existed have none."""

    precision: float
    recall: float
    f_star: float
    precision_interval: Interval | None = None
    recall_interval: Interval | None = None
    f_star_interval: Interval | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            name: None if value is None else _rounded(value) for name, value in vars(self).items()
        }

    def interval(self, name: str) -> Interval | None:
        """The interval of the estimate `name` (one of ESTIMATED)."""
        interval: Interval | None = getattr(self, f"{name}_interval")
        return interval

    def text(self) -> str:
        """ "precision 0.990 (0.985-0.994), recall ...": each estimate and its interval."""
        parts = []
        for label, name in zip(("precision", "recall", "F*"), ESTIMATED, strict=True):
            value, interval = getattr(self, name), self.interval(name)
            bounds = "" if interval is None else f" ({interval[0]:.3f}-{interval[1]:.3f})"
            parts.append(f"{label} {value:.3f}{bounds}")
        return ", ".join(parts)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Estimates:
        intervals = (_interval(data.get(f"{name}_interval")) for name in ESTIMATED)
        return cls(*(data[name] for name in ESTIMATED), *intervals)


def _rounded(value: float | Interval) -> float | list[float]:
    if isinstance(value, tuple):
        return [round(v, 4) for v in value]
    return round(value, 4)


def _interval(value: list[float] | None) -> Interval | None:
    return None if value is None else (float(value[0]), float(value[1]))


@dataclass(frozen=True)
class Decisions:
    """Solved pairs that are matches, withheld matches or possible matches, and how the run
    decided: the threshold, the model's estimates (None when it could not be fitted) and a
    note saying which rule applied."""

    requester_rows: np.ndarray
    custodian_rows: np.ndarray
    similarities: np.ndarray
    probabilities: np.ndarray  # NaN where no model was fitted
    status: np.ndarray  # PairStatus values
    threshold: float
    estimates: Estimates | None
    note: str

    def count(self, status: PairStatus) -> int:
        return int((self.status == status).sum())

    def summary(self) -> DecisionSummary:
        return DecisionSummary(
            round(self.threshold, 6),
            self.note,
            self.count(PairStatus.MATCH),
            self.count(PairStatus.WITHHELD),
            self.count(PairStatus.POSSIBLE),
            self.estimates,
        )


@dataclass(frozen=True)
class DecisionSummary:
    """How a run decided, in aggregates only: what its audit entry records and what a party
    whose counts are visible may see."""

    threshold: float
    rule: str
    matches: int
    withheld: int
    possible: int
    estimates: Estimates | None

    def to_dict(self) -> dict[str, Any]:
        estimates = self.estimates
        return {
            "threshold": self.threshold,
            "rule": self.rule,
            "matches": self.matches,
            "withheld": self.withheld,
            "possible": self.possible,
            "estimates": None if estimates is None else estimates.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DecisionSummary:
        estimates = data["estimates"]
        return cls(
            data["threshold"],
            data["rule"],
            data["matches"],
            data["withheld"],
            data["possible"],
            None if estimates is None else Estimates.from_dict(estimates),
        )


def link(
    shared: SharedEncodings,
    rule: DecisionRule,
    executor: Executor,
    workers: int,
    blocking: Blocking | None = None,
    limits: MatchingLimits = DEFAULT_LIMITS,
    progress: Progress = lambda done, total: None,
    custodian: EncodingsOf | None = None,
    deciding: Callable[[], None] = lambda: None,
) -> Decisions:
    """Candidates for the rule, then decisions. `custodian`: the custodian's encodings of given
    rows of `shared`, where `shared` holds none (an index partitioned across workers).
    `deciding` is called between the two, when the candidates are found."""
    found = candidates(shared, rule, executor, workers, blocking, limits, progress)
    deciding()
    encodings = custodian or (lambda rows: shared.custodian[rows])
    return decide(found, len(shared.requester), rule, blocking_keys(shared), blocking, encodings)


def candidates(
    shared: SharedEncodings,
    rule: DecisionRule,
    executor: Executor,
    workers: int,
    blocking: Blocking | None = None,
    limits: MatchingLimits = DEFAULT_LIMITS,
    progress: Progress = lambda done, total: None,
) -> Candidates:
    """The pairs a rule decides among: at or above a fixed threshold, and each requester
    record's RANKED best (the match model's), KIN_CANDIDATES where the custodian may hold people
    repeatedly."""
    return find_candidates(
        shared,
        rule.candidate_threshold,
        executor,
        workers,
        blocking,
        limits,
        progress,
        best=KIN_CANDIDATES if rule.custodian_duplicates else RANKED,
    )


def blocking_keys(shared: SharedEncodings) -> PartyKeys | None:
    """Both parties' blocking keys and the custodian's counts of the requester's key values, if
    the encodings carry keys."""
    if shared.requester_keys is None or shared.custodian_keys is None:
        return None
    return PartyKeys(shared.requester_keys, shared.custodian_keys, shared.key_counts)


def decide(
    candidates: Candidates,
    requester_records: int,
    rule: DecisionRule,
    keys: PartyKeys | None = None,
    blocking: Blocking | None = None,
    custodian: EncodingsOf | None = None,
) -> Decisions:
    """Score and solve 1:1, choose the threshold, apply the band and the ambiguity rule.

    Where the rule says the custodian may hold people repeatedly, the kin of each requester
    record's best candidate are first set aside (kin.py), which needs the `custodian`'s
    encodings of the candidates' rows.

    With a calibrated rule and the parties' blocking keys (`keys`), pairs are also scored by
    a Fellegi-Sunter model of their Dice score and the keys they share, and the run decides
    on that score where the match model expects its threshold to meet the target better
    than Dice's (measured on 10,000-record batches against a million heavily corrupted
    records, a tenth with a partner: the keys' model, fitted on few matches, would have
    released at an estimated F* of 0.65 against Dice's 0.81, true 0.57 against 0.72);
    otherwise the threshold applies to Dice. With keyed `blocking`, the estimated number of
    requester records with a partner includes the partners that share no key (never
    compared), where the keys determine how many there are (blocking_loss.py)."""
    kin_note = ""
    if rule.custodian_duplicates:
        if custodian is None:
            raise ValueError("setting kin aside needs the custodian's encodings")
        candidates, cut = without_kin(candidates, custodian, requester_records, rule)
        kin_note = f"; candidates within Dice {cut:.3f} of a record's best one set aside as its kin"
    sim, rows0, rows1 = (
        candidates.similarities,
        candidates.requester_rows,
        candidates.custodian_rows,
    )
    solved_all = solve_one_to_one(sim, rows0, rows1)
    dice_scores = RecordScores.after_solving(sim, rows0, rows1, solved_all, requester_records)
    by_dice, unfit = _fitted(dice_scores)
    uncompared = _uncompared(solved_all, keys, blocking, by_dice)
    scored = _scored_by_dice(solved_all, rule, by_dice, unfit, dice_scores)
    scored = scored.with_uncompared(uncompared)
    choice = _threshold(rule, scored)
    if keys is not None and by_dice is not None and isinstance(rule.threshold, CalibratedThreshold):
        with_keys = _scored_with_keys(candidates, keys, by_dice, rule.threshold.bounds[0])
        if with_keys is not None:
            with_keys = with_keys.with_uncompared(uncompared)
            keyed_choice = _threshold(rule, with_keys)
            if keyed_choice.objective > choice.objective:
                scored, choice = with_keys, keyed_choice
    solved, probabilities = scored.solved, scored.probabilities
    threshold, note = choice.threshold, choice.note + kin_note
    if uncompared is not None and scored.fitted:
        note += f"; partners sharing no blocking key, never compared: about {uncompared:.1%}"
    matched = (scored.scores >= threshold) & scored.eligible
    possible = np.zeros(len(solved), dtype=bool)
    if rule.possible_band is not None and scored.fitted:
        low, high = rule.possible_band
        possible = (probabilities >= low) & ~(matched & (probabilities >= high))
        matched &= probabilities >= high
    # Rivals are the candidates whose Dice reaches the threshold (or, where the threshold is
    # on match probability, the lowest Dice of a match).
    floor = threshold if scored.scale == DICE else _lowest(solved.similarities[matched])
    rivals = sim >= floor
    withheld = np.zeros(len(solved), dtype=bool)
    withheld[matched] = ambiguous(
        sim[rivals], rows0[rivals], rows1[rivals], solved.subset(matched), rule.ambiguity_margin
    )
    status = np.full(len(solved), -1, dtype=np.int8)
    status[possible] = PairStatus.POSSIBLE
    status[matched] = PairStatus.MATCH
    status[withheld] = PairStatus.WITHHELD
    released = status == PairStatus.MATCH
    estimates = _estimates(scored, released) if scored.fitted else None
    keep = status >= 0
    return Decisions(
        solved.requester_rows[keep],
        solved.custodian_rows[keep],
        solved.similarities[keep],
        probabilities[keep],
        status[keep],
        threshold,
        estimates,
        note,
    )


DICE = "Dice"


def _lowest(values: np.ndarray) -> float:
    return float(values.min()) if len(values) else np.inf


@dataclass(frozen=True)
class _Scored:
    """Solved pairs (with their Dice scores), the score thresholds apply to, the model's match
    probabilities (NaN if unfitted) and estimated number of requester records with a partner,
    and which pairs may be matches at all."""

    solved: Matches
    scores: np.ndarray
    probabilities: np.ndarray
    matched_records: float
    eligible: np.ndarray
    scale: str  # what the threshold applies to
    unfit: str  # why no model was fitted, "" if one was
    fitted_to: RecordScores | None = None  # what the model was fitted to
    uncompared: float = 0.0  # the estimated share of partners never compared
    # Unfitted, the score the fallback is raised to (0 for none), and why that score.
    ceiling: float = 0.0
    ceiling_reason: str = ""

    @property
    def fitted(self) -> bool:
        return not self.unfit

    def with_uncompared(self, share: float | None) -> _Scored:
        """The records with a partner counted again, if a `share` of them was never compared."""
        if share is None or not self.fitted:
            return self
        return replace(self, matched_records=self.matched_records / (1.0 - share), uncompared=share)


def _uncompared(
    solved: Matches,
    keys: PartyKeys | None,
    blocking: Blocking | None,
    model: MatchModel | None,
) -> float | None:
    """The estimated share of matches that keyed blocking never compared (None if unknown):
    from the keys the solved pairs share, weighted by their Dice match probabilities."""
    if keys is None or model is None or not isinstance(blocking, KeyBlocking):
        return None
    mine, theirs = keys.requester[solved.requester_rows], keys.custodian[solved.custodian_rows]
    shared = (mine == theirs) & (mine != 0)
    return missed_share(blocking, shared, model.probability(solved.similarities))


def _fitted(
    scores: RecordScores, raw_runner_ups: bool = True
) -> tuple[MatchModel | None, ModelUnfit | None]:
    """The match model of `scores`, or None and why it cannot be fitted."""
    try:
        return fit_match_model(scores, raw_runner_ups), None
    except ModelUnfit as reason:
        return None, reason


def _scored_by_dice(
    solved_all: Matches,
    rule: DecisionRule,
    model: MatchModel | None,
    unfit: ModelUnfit | None,
    fitted_to: RecordScores,
) -> _Scored:
    """Solved pairs scored by Dice, with the model's probabilities (NaN without a model), at
    or above the lowest Dice score the rule could release or call possible. Without a model,
    a calibrated rule's scores carry the score its fallback is raised to: the model's threshold
    where it was refused because it takes too many pairs for matches, the run's non-match
    ceiling where it found few matches."""
    bold = None if unfit is None else unfit.bold
    solved = solved_all.subset(
        solved_all.similarities >= _solve_floor(rule, model if bold is None else bold)
    )
    everyone = np.ones(len(solved), dtype=bool)
    if model is None:
        unfitted = _Scored(
            solved,
            solved.similarities,
            np.full(len(solved), np.nan),
            0.0,
            everyone,
            DICE,
            str(unfit),
        )
        if not isinstance(rule.threshold, CalibratedThreshold) or unfit is None:
            return unfitted
        if bold is not None:
            bound = _threshold(rule, _by_model(solved, bold, fitted_to)).threshold
            return replace(unfitted, ceiling=bound, ceiling_reason=BOLD)
        if unfit.few_matches:
            return replace(
                unfitted, ceiling=non_match_ceiling(fitted_to.top), ceiling_reason=NON_MATCHES
            )
        return unfitted
    return _by_model(solved, model, fitted_to)


# Why a fallback was raised: the run's non-match ceiling, or the refused model's threshold.
NON_MATCHES = "where fewer than half a record without a partner is expected to score"
BOLD = "the threshold the model chose, which takes too many pairs for matches"


def _by_model(solved: Matches, model: MatchModel, fitted_to: RecordScores) -> _Scored:
    """Solved pairs scored by Dice with `model`'s match probabilities."""
    everyone = np.ones(len(solved), dtype=bool)
    probabilities = model.probability(solved.similarities)
    return _Scored(
        solved,
        solved.similarities,
        probabilities,
        model.matched_records,
        everyone,
        DICE,
        "",
        fitted_to,
    )


def _solve_floor(rule: DecisionRule, model: MatchModel | None) -> float:
    """The lowest Dice score a pair released or called possible under `rule` can have."""
    chosen = rule.threshold
    if isinstance(chosen, FixedThreshold):
        floor = chosen.threshold
    else:
        floor = min(chosen.bounds[0], chosen.fallback_threshold)
    if rule.possible_band is not None and model is not None:
        floor = min(floor, model.lowest_score(rule.possible_band[0]))
    return floor


def _scored_with_keys(
    candidates: Candidates,
    keys: PartyKeys,
    by_dice: MatchModel,
    dice_floor: float,
) -> _Scored | None:
    """Pairs scored by a Fellegi-Sunter model of their Dice score and shared keys, fitted from
    the Dice model's probabilities, solved 1:1 by that score, and given match probabilities by
    the match model of the solved scores; None if either cannot be fitted or the two models
    disagree on how many records have a partner. A pair whose Dice is below `dice_floor` is
    never a match, whatever its keys say.

    The Fellegi-Sunter score ranks pairs better than Dice alone, but its own probabilities
    are not calibrated: it takes the keys as independent evidence, while one corrupted field
    breaks every key that holds it (measured at 100k per party, 90% matched: solved pairs it
    gave 0.6% were 85% true matches, and it withheld 1.2% of all matches). The match model of
    the solved scores and runner-ups calibrates them as it does Dice scores."""
    sim, rows0, rows1 = (
        candidates.similarities,
        candidates.requester_rows,
        candidates.custodian_rows,
    )
    evidence = PairEvidence.of(sim, rows0, rows1, keys)
    model = fit_fellegi_sunter(evidence, by_dice.probability(sim))
    if model is None:
        return None
    score = _as_score(model.log_odds(evidence))
    order = np.lexsort((rows1, rows0, -sim, -score))
    score, rows0, rows1, sim = score[order], rows0[order], rows1[order], sim[order]
    by_score = solve_one_to_one(score, rows0, rows1)
    scores = RecordScores.after_solving(score, rows0, rows1, by_score, len(keys.requester))
    scores = _without_partners(scores, (sim, rows0, rows1), by_score, keys, model)
    fitted, _ = _fitted(scores, raw_runner_ups=False)
    if fitted is None or abs(fitted.matched_records / by_dice.matched_records - 1.0) > MODELS_AGREE:
        return None
    dice = pair_values(sim, rows0, rows1, by_score.requester_rows, by_score.custodian_rows)
    solved = Matches(by_score.requester_rows, by_score.custodian_rows, dice)
    probabilities = fitted.probability(by_score.similarities)
    return _Scored(
        solved,
        by_score.similarities,
        probabilities,
        fitted.matched_records,
        dice >= dice_floor,
        "match score from Dice and shared blocking keys",
        "",
        scores,
    )


def _without_partners(
    scores: RecordScores,
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray],
    solved: Matches,
    keys: PartyKeys,
    model: FellegiSunter,
) -> RecordScores:
    """`scores` with each runner-up scored as if its record's solved partner were not among
    the custodian's records, as for a record without a partner, and as the best of all the
    record's other candidates, free or taken.

    Without the partner set aside, the partner counts among the records sharing a key with the
    runner-up, and runner-ups look like sharing commoner keys than the best non-matches of
    records without a partner do (measured at 30k per party: the runner-up shares a given name
    and surname no other custodian record has in 12% of records with a partner; the best
    candidate of a record without one, in 61%).

    The first free candidate describes well what a record with a partner would get were its
    partner absent (measured at 100k per party, half shared, by removing the true pairs of 5% of
    them and solving again: the 0.8 quantile of the score, 0.378 against their runner-ups'
    0.378), but records without a partner reach higher (0.403; their best non-matches more often
    lack a key), and the match model, which takes the one for the other, overstated the
    probabilities of its pairs (those between 0.5 and 0.9 were true in 556 of 1,000 where it
    expected 686). The best of all other candidates reaches 0.403: on the calibration cases
    with keyed blocking, the surest released pairs (0.99 and above) held 3,950 wrong pairs where
    2,009 were expected, against 24,164 and 4,362 with the first free candidate, and the
    precision estimates of the 1M runs with doubled corruption, half shared, went from 0.009
    and 0.008 too high to 0.003 and 0.007 too low."""
    sim, rows0, rows1 = pairs
    partner = np.full(len(scores.best), -1)
    partner[solved.requester_rows] = solved.custodian_rows
    has_runner_up = scores.runner_up >= 0
    others = np.flatnonzero(has_runner_up[rows0] & (rows1 != partner[rows0]))
    owners = rows0[others]
    evidence = PairEvidence.of(sim[others], owners, rows1[others], keys, absent=partner[owners])
    runner_up = scores.runner_up.copy()
    runner_up[owners] = -1.0
    np.maximum.at(runner_up, owners, _as_score(model.log_odds(evidence)))
    return replace(scores, runner_up=runner_up)


def _as_score(log_odds: np.ndarray) -> np.ndarray:
    """Fellegi-Sunter log-odds as a score in [0, 1], linearly."""
    return np.clip(0.5 + log_odds / (2 * LOG_ODDS_SPAN), 0.0, 1.0)


@dataclass(frozen=True)
class _Choice:
    """A run's threshold, a note on how it was chosen, and how well the model expects it to
    meet the rule's target (estimated F*, or estimated recall at the minimum precision; -inf
    where the target is not met or nothing was estimated)."""

    threshold: float
    note: str
    objective: float = -np.inf


def _threshold(rule: DecisionRule, scored: _Scored) -> _Choice:
    """The run's threshold on `scored`'s scale, and how it was chosen."""
    chosen = rule.threshold
    if isinstance(chosen, FixedThreshold):
        note = "fixed threshold" + (f"; no estimates: {scored.unfit}" if scored.unfit else "")
        return _Choice(chosen.threshold, note)
    if scored.unfit:
        return _fallback(chosen, scored)
    scores = np.where(scored.eligible, scored.scores, -np.inf)
    if scored.scale == DICE:
        low, high = chosen.bounds
    else:
        low, high = 0.0, 1.0
    grid = np.round(np.arange(low, high + STEP / 2, STEP), 6)
    order = np.argsort(-scores, kind="stable")
    ranked, probabilities = scores[order], scored.probabilities[order]
    released = np.searchsorted(-ranked, -grid, side="right")
    last = np.maximum(released - 1, 0)
    true = np.where(released > 0, np.cumsum(probabilities)[last], 0.0)
    precision = np.divide(true, released, out=np.ones(len(grid)), where=released > 0)
    least = np.minimum.accumulate(probabilities)  # of the pairs each threshold releases
    sure = (released == 0) | (least[last] >= LEAST_PROBABILITY)
    on = f"calibrated on {scored.scale}"
    if chosen.target is Target.MIN_PRECISION:
        meets = np.flatnonzero((precision >= chosen.min_precision) & sure)
        if not len(meets):
            return _Choice(
                float(high),
                f"{on}: no threshold within the bounds reaches estimated precision "
                f"{chosen.min_precision} with no pair below match probability "
                f"{LEAST_PROBABILITY}; the upper bound applies",
            )
        recall = float(true[meets[0]]) / max(scored.matched_records, 1e-12)
        return _Choice(
            float(grid[meets[0]]), f"{on}: estimated precision >= {chosen.min_precision}", recall
        )
    if not sure.any():
        return _Choice(
            float(high),
            f"{on}: every threshold within the bounds releases pairs of match probability "
            f"below {LEAST_PROBABILITY}; the upper bound applies",
        )
    f_star = true / np.maximum(released + scored.matched_records - true, 1e-12)
    note = f"{on}: best estimated F*"
    if not sure[np.argmax(f_star)]:
        note += f" without a pair below match probability {LEAST_PROBABILITY}"
    f_star[~sure] = -1.0
    # Thresholds that release the same pairs tie; the middle of the best run of them lies
    # furthest from the scores on either side.
    best = np.flatnonzero(f_star >= f_star.max() - 1e-12)
    same = best[released[best] == released[best[0]]]
    return _Choice(float(grid[same[len(same) // 2]]), note, float(f_star.max()))


def _fallback(chosen: CalibratedThreshold, scored: _Scored) -> _Choice:
    """The agreed fallback threshold, raised to the run's ceiling where it has one (never
    above the agreed upper bound)."""
    note = f"fallback threshold: {scored.unfit}"
    raised = min(max(chosen.fallback_threshold, scored.ceiling), chosen.bounds[1])
    if raised > chosen.fallback_threshold:
        note += (
            f"; raised from {chosen.fallback_threshold:g} to {raised:.3f}, {scored.ceiling_reason}"
        )
    return _Choice(raised, note)


def _estimates(scored: _Scored, released: np.ndarray) -> Estimates:
    """The estimates for the `released` of `scored`'s pairs, and their intervals: per model
    refitted to resampled records, the estimates of one draw of which released pairs are
    matches (each with its probability), so that they hold the run's realised quality."""
    point = _quality(scored.probabilities[released], scored.matched_records)
    if scored.fitted_to is None:
        return Estimates(*point)
    models = resampled_models(scored.fitted_to)
    draws = np.random.default_rng(OUTCOME_SEED).standard_normal(len(models))
    replicas = np.array(
        [
            _quality(
                model.probability(scored.scores[released]),
                model.matched_records / (1.0 - scored.uncompared),
                draw,
            )
            for model, draw in zip(models, draws, strict=True)
        ]
    ).reshape(-1, 3)
    if not len(replicas):
        return Estimates(*point)
    tail = (1.0 - INTERVAL) / 2
    low, high = np.quantile(replicas, [tail, 1.0 - tail], axis=0)
    intervals = [(float(lo), float(hi)) for lo, hi in zip(low, high, strict=True)]
    return Estimates(*point, *intervals)


def true_matches_spread(probabilities: np.ndarray) -> float:
    """The standard deviation of the number of true matches among pairs each true,
    independently, with its match probability."""
    return float(np.sqrt((probabilities * (1.0 - probabilities)).sum()))


def _quality(
    probabilities: np.ndarray, matched_records: float, draw: float = 0.0
) -> tuple[float, float, float]:
    """Estimated precision, recall and F* of released pairs with these match probabilities,
    when `matched_records` requester records have a partner. With `draw` (a standard normal
    value), the number of true matches among them is that draw of its distribution (normal
    approximation) rather than its expectation, never more than `matched_records`."""
    released = len(probabilities)
    spread = true_matches_spread(probabilities)
    true = float(np.clip(probabilities.sum() + draw * spread, 0.0, min(released, matched_records)))
    precision = true / released if released else 1.0
    recall = min(true / matched_records, 1.0) if matched_records > 0 else 1.0
    denominator = released + matched_records - true
    return precision, recall, true / denominator if denominator > 0 else 1.0
