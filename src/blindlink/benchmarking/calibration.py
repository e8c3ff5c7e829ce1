"""The calibrated decision measured against the truth.

Per case, the candidates a calibrated run decides among (each requester record's best few, of
all pairs or of the pairs sharing a blocking key), decided by the calibrated rule (the run's
match model chooses the threshold for the best estimated F*), give the threshold, the estimated
and the true precision, recall and F* of its released matches; the same candidates decided at
each fixed Dice threshold of the 0.50..0.99 grid give the oracle: the one with the best true F*.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from blindlink.agreement.document import (
    RECOMMENDED_HARDENING,
    recommended_thresholds,
)
from blindlink.agreement.model import default_rule
from blindlink.benchmarking.data import BENCHMARK_SECRET, EncodedPair, encoded_pair
from blindlink.benchmarking.quality import (
    FLOOR,
    covered,
    curve_of,
    in_truth,
    partners,
    released_quality,
    released_right,
    reliability,
)
from blindlink.benchmarking.record_pairs import (
    febrl_custodian_duplicates_pair,
    febrl_duplicates_pair,
    febrl_pair,
    febrl_schema_document,
)
from blindlink.benchmarking.results import timed
from blindlink.encoding.blocking_keys import DEFAULT_SCHEMA_KEYS
from blindlink.encoding.schema import parse_schema
from blindlink.hardening import encode_with_steps
from blindlink.matching import blocking, engine, kernel
from blindlink.matching.blocking import KeyBlocking
from blindlink.matching.decision import (
    ESTIMATED,
    Decisions,
    PairStatus,
    blocking_keys,
    candidates,
    decide,
    true_matches_spread,
)
from blindlink.matching.engine import Candidates, SharedEncodings
from blindlink.matching.evidence import PartyKeys
from blindlink.matching.executors import Executor
from blindlink.matching.rules import DecisionRule, FixedThreshold
from blindlink.synthetic import CorruptionRates

SIZES = (1_000, 10_000, 100_000, 1_000_000)
OVERLAPS = (0.1, 0.5, 0.9)
ALL_PAIRS_UP_TO = 10_000  # larger generated cases compare only records sharing a blocking key
CORRUPTION = {
    "default": CorruptionRates(),
    "heavy": CorruptionRates.scaled(2.0),
    # Shapes of data the model was not built on, at SHAPE_RECORDS only: a third of the
    # custodian's records moved house (address, town and postcode), or a fifth of each field
    # is blank.
    "moved": CorruptionRates(moved=0.35),
    "missing": CorruptionRates(missing=0.2),
}
SCALED = ("default", "heavy")  # the corruptions measured at every size
SHAPES = tuple(name for name in CORRUPTION if name not in SCALED)
SHAPE_RECORDS = 5000
SHAPE_OVERLAPS = (0.1, 0.5)
# Requester batches drawn from the largest generated requester file and matched against the
# whole custodian file: the verification service's case, where 1:1 solving cannot protect a
# batch record without a partner (the custodian records it resembles are free).
BATCH_RECORDS = 10_000
FEBRL_RECORDS = 5000
FEBRL_CUT = 2500  # records per party of the FEBRL4 cuts: 2 * 2500 - 0.1 * 2500 <= 5000 people
# FEBRL1-3 linked as duplicates (requester) to originals (custodian): data sets of another
# make, where nearly every requester record has a partner.
FEBRL_DUPLICATES = ("febrl1", "febrl2", "febrl3")
# FEBRL2 and FEBRL3 linked as duplicates (requester) to every other record (custodian): a
# custodian that holds people more than once (FEBRL1 has no second duplicates).
CUSTODIAN_DUPLICATES = ("febrl2-custodian", "febrl3-custodian")
SEED = 1
# More draws of the smallest runs with a tenth shared (default corruption, all pairs), whose
# estimates vary most from one draw to the next.
SEED_DRAWS = tuple(range(2, 17))
QUICK_RECORDS = 1000
QUICK_FEBRL_CUT = 500

# Targets.
F_STAR_GAP = 0.005  # calibrated F* at most this far below the oracle's
# Each case is also decided with only this many of its true pairs (a seeded draw), and with
# none: too few to model, so the fallback applies.
FEW_PARTNERS = 30
FEW_SEED = 20261203
SPARSE_RUNS = ("without_partners", "few_partners")
ESTIMATE_ERROR = 0.01  # |estimated - true| precision and recall
HARDENING_GAP = 0.01  # hardened calibrated F* at most this far below the unhardened oracle's


@dataclass(frozen=True)
class Case:
    """One measurement: a data set, unhardened or with the recommended hardening."""

    dataset: str  # "generated", "febrl4" or one of FEBRL_DUPLICATES, CUSTODIAN_DUPLICATES
    records: int  # per party (FEBRL1-3: 0, the data set's own)
    overlap: float
    corruption: str  # a CORRUPTION name, or the FEBRL data set's name
    keyed: bool  # compare only records sharing a blocking key, else all pairs
    hardened: bool
    batch: int = 0  # requester records drawn from the requester file (0: all of them)
    seed: int = SEED  # of the generated data

    @property
    def data_set(self) -> str:
        """The case's name without its hardening."""
        blocking = "keys" if self.keyed else "all-pairs"
        if self.dataset == "febrl4":
            return f"febrl4-{self.records}-{self.overlap}"
        if self.dataset in FEBRL_DUPLICATES + CUSTODIAN_DUPLICATES:
            return f"{self.dataset}-duplicates"
        batch = f"-batch{self.batch}" if self.batch else ""
        seed = f"-seed{self.seed}" if self.seed != SEED else ""
        return f"generated-{self.records}-{self.corruption}-{self.overlap}-{blocking}{batch}{seed}"

    @property
    def name(self) -> str:
        return f"{self.data_set}-{'hardened' if self.hardened else 'unhardened'}"


def plan(sizes: list[int], datasets: list[str], quick: bool) -> list[Case]:
    """The cases to measure, unhardened before hardened for each data set."""
    if quick:
        sets = [
            Case("generated", QUICK_RECORDS, 0.5, "default", False, False),
            Case("generated", QUICK_RECORDS, 0.5, "default", True, False),
            Case("febrl4", QUICK_FEBRL_CUT, 0.5, "febrl4", False, False),
        ]
    else:
        sets = [
            Case("generated", size, overlap, corruption, size > ALL_PAIRS_UP_TO, False)
            for size in sizes
            for corruption in SCALED
            for overlap in OVERLAPS
        ]
        sets += [
            Case("generated", max(sizes), overlap, corruption, True, False, BATCH_RECORDS)
            for corruption in SCALED
            for overlap in OVERLAPS
            if max(sizes) > max(ALL_PAIRS_UP_TO, BATCH_RECORDS)
        ]
        if min(sizes) <= ALL_PAIRS_UP_TO:  # with the all-pairs sizes, their other draws
            sets += [
                Case("generated", SHAPE_RECORDS, overlap, shape, False, False)
                for shape in SHAPES
                for overlap in SHAPE_OVERLAPS
            ]
            sets += [
                Case("generated", min(sizes), 0.1, "default", False, False, seed=seed)
                for seed in SEED_DRAWS
            ]
        sets += [Case("febrl4", FEBRL_RECORDS, 1.0, "febrl4", False, False)]
        sets += [Case("febrl4", FEBRL_CUT, o, "febrl4", False, False) for o in OVERLAPS]
        sets += [
            Case(name, 0, 1.0, name, False, False)
            for name in FEBRL_DUPLICATES + CUSTODIAN_DUPLICATES
        ]
    chosen = [case for case in sets if case.dataset in datasets]
    return [Case(**{**asdict(c), "hardened": h}) for c in chosen for h in (False, True)]


@dataclass(frozen=True)
class Prepared:
    shared: SharedEncodings
    truth: set[tuple[int, int]]
    blocking: KeyBlocking | None
    pair_completeness: float  # share of true pairs that are compared at all


def prepare(case: Case, workdir: Path) -> Prepared:
    """The case's encodings (generated ones cached under `workdir`) and truth."""
    steps = _hardening(case.hardened)
    if case.dataset.startswith("febrl"):
        number = int(case.dataset[5])
        if case.dataset == "febrl4":
            pair = febrl_pair(case.records, case.overlap, SEED)
        elif case.dataset in CUSTODIAN_DUPLICATES:
            pair = febrl_custodian_duplicates_pair(number)
        else:
            pair = febrl_duplicates_pair(number)
        schema = parse_schema(febrl_schema_document())
        shared = SharedEncodings.of(
            encode_with_steps(pair.requester, schema, BENCHMARK_SECRET, steps),
            encode_with_steps(pair.custodian, schema, BENCHMARK_SECRET, steps),
        )
        return Prepared(shared, pair.truth_pairs, None, 1.0)
    blocking = KeyBlocking.from_document(DEFAULT_SCHEMA_KEYS) if case.keyed else None
    data = encoded_pair(
        workdir,
        case.records,
        case.overlap,
        case.seed,
        blocking,
        steps,
        CORRUPTION[case.corruption],
    )
    if case.batch:
        data = _batch_of(data, case.batch)
    truth = data.truth_pairs
    if blocking is None:
        return Prepared(SharedEncodings.of(data.requester, data.custodian), truth, None, 1.0)
    keys_a = data.requester_keys[data.true_requester_rows]
    keys_b = data.custodian_keys[data.true_custodian_rows]
    completeness = float(((keys_a == keys_b) & (keys_a != 0)).any(axis=1).mean())
    shared = SharedEncodings.of(
        data.requester, data.custodian, data.requester_keys, data.custodian_keys
    )
    return Prepared(shared, truth, blocking, completeness)


def _batch_of(data: EncodedPair, records: int) -> EncodedPair:
    """A requester batch of `records` drawn at random from the requester's file (in file
    order), with the true pairs of its records."""
    rows = np.sort(np.random.default_rng(SEED).choice(len(data.requester), records, replace=False))
    position = np.full(len(data.requester), -1)
    position[rows] = np.arange(records)
    drawn = position[data.true_requester_rows] >= 0
    return replace(
        data,
        requester=data.requester[rows],
        requester_keys=data.requester_keys[rows],
        true_requester_rows=position[data.true_requester_rows[drawn]],
        true_custodian_rows=data.true_custodian_rows[drawn],
    )


def _hardening(hardened: bool) -> list[dict[str, Any]]:
    return RECOMMENDED_HARDENING if hardened else []


def calibrated_rule(hardened: bool, custodian_duplicates: bool = False) -> DecisionRule:
    """The rule `agreement new` agrees by default for the hardening (with
    --custodian-duplicates where the custodian may hold people repeatedly)."""
    return default_rule(_hardening(hardened), custodian_duplicates)


def measure(
    case: Case, workdir: Path, executor: Executor, workers: int, reuse_candidates: bool = False
) -> dict[str, Any]:
    """One case: the calibrated run against the truth and against the oracle. With
    `reuse_candidates`, the case's candidates are kept under `workdir` and read back by later
    measurements of the same candidate generation (cached_candidates)."""
    data_seconds, data = timed(lambda: prepare(case, workdir))
    rule = calibrated_rule(case.hardened, case.dataset in CUSTODIAN_DUPLICATES)
    records = len(data.shared.requester)
    keys = blocking_keys(data.shared)

    def generate() -> Candidates:
        return candidates(data.shared, rule, executor, workers, data.blocking)

    cache = workdir / CANDIDATES_DIR if reuse_candidates else None
    candidates_seconds, (found, reused) = timed(
        lambda: cached_candidates(case, rule, generate, cache)
    )
    custodian = data.shared.custodian.__getitem__
    decide_seconds, calibrated = timed(
        lambda: decide(found, records, rule, keys, data.blocking, custodian)
    )
    # The oracle: the same candidates, decided at every fixed Dice threshold of the grid.
    fixed = decide(found, records, DecisionRule(FixedThreshold(FLOOR)))
    curve = curve_of(fixed, data.truth)
    oracle = curve.at(curve.best_threshold())
    # At the grid's floor, a lower threshold might have done better still.
    oracle["at_floor"] = oracle["threshold"] == FLOOR
    true = released_quality(calibrated, data.truth)
    # The same run had few or nobody been shared: too little to model, so the model should
    # refuse rather than take look-alikes for matches, and the fallback should not release them.
    agreed = recommended_thresholds(_hardening(case.hardened)).fallback
    fallback = DecisionRule(FixedThreshold(agreed))
    sparse = {
        name: _sparse_run(found, records, (rule, fallback), keys, data, kept)
        for name, kept in zip(SPARSE_RUNS, (set(), _few(data.truth)), strict=True)
    }
    estimated = None if calibrated.estimates is None else asdict(calibrated.estimates)
    errors = _errors(estimated, true)
    return {
        "name": case.name,
        "data_set": case.data_set,
        **asdict(case),
        "blocking": "keys" if case.keyed else "all pairs",
        "hardening": _hardening(case.hardened),
        "true_pairs": len(data.truth),
        "pair_completeness": data.pair_completeness,
        "partners_unseen": partners_unseen(found, data.truth, data.pair_completeness),
        "calibrated": {
            "threshold": calibrated.threshold,
            "note": calibrated.note,
            "released": calibrated.count(PairStatus.MATCH),
            "estimated": estimated,
            "true": true,
        },
        "oracle": oracle,
        "reliability": reliability(calibrated, data.truth),
        **sparse,
        "gaps": {"f_star": true["f_star"] - oracle["f_star"], **errors},
        "covered": covered(calibrated.estimates, true),
        "precision_by_chance": precision_by_chance(calibrated),
        "met": {
            "f_star": oracle["f_star"] - true["f_star"] <= F_STAR_GAP,
            "precision": _within(errors["precision_error"]),
            "recall": _within(errors["recall_error"]),
        },
        "seconds": {
            "data": data_seconds,
            "candidates": candidates_seconds,
            "decision": decide_seconds,
        },
        "candidates_reused": reused,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


CANDIDATES_DIR = "candidates"
# What candidate generation depends on beyond the case's data: these modules' sources.
CANDIDATE_SOURCES = (
    Path(engine.__file__),
    Path(kernel.__file__),
    Path(kernel.__file__).with_name("_dice.c"),
    Path(blocking.__file__),
)


def cached_candidates(
    case: Case,
    rule: DecisionRule,
    generate: Callable[[], Candidates],
    directory: Path | None,
) -> tuple[Candidates, bool]:
    """The case's candidates, and whether they were read back from `directory` rather than
    generated (never without a directory). They are kept under a name that changes with the
    case, the rule's candidate settings and the sources of candidate generation
    (CANDIDATE_SOURCES), so that a changed engine never reuses them."""
    if directory is None:
        return generate(), False
    digest = hashlib.sha256(
        repr((asdict(case), rule.candidate_threshold, rule.custodian_duplicates)).encode()
    )
    for source in CANDIDATE_SOURCES:
        digest.update(source.read_bytes())
    path = directory / f"{case.name}-{digest.hexdigest()[:16]}.npz"
    if path.exists():
        with np.load(path) as kept:
            comparisons, all_pairs = (int(count) for count in kept["counts"])
            read = Candidates(
                kept["similarities"],
                kept["requester_rows"],
                kept["custodian_rows"],
                comparisons,
                all_pairs,
            )
        return read, True
    found = generate()
    directory.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npz")
    np.savez(
        partial,
        similarities=found.similarities,
        requester_rows=found.requester_rows,
        custodian_rows=found.custodian_rows,
        counts=np.array([found.comparisons, found.all_pairs]),
    )
    partial.replace(path)
    return found, False


def partners_unseen(
    found: Candidates, truth: set[tuple[int, int]], compared: float
) -> dict[str, float]:
    """Of the requester records with a partner, the shares whose partner a model of the scores
    cannot see: compared (a `compared` share of them is) but not among the record's
    candidates, its score below theirs, all non-matches; and among them, but below the
    record's best candidate, a non-match. A record's partner is its best-scoring true pair. The
    recall estimate counts both as records without a partner."""
    with_partner = partners(truth)
    if not with_partner:
        return {"not_candidates": 0.0, "below_a_non_match": 0.0}
    rows = int(max(found.requester_rows.max(initial=0), max(r for r, _ in truth))) + 1
    top = np.full(rows, -np.inf)
    np.maximum.at(top, found.requester_rows, found.similarities)
    true = in_truth(found.requester_rows, found.custodian_rows, truth)
    partner = np.full(rows, -np.inf)
    np.maximum.at(partner, found.requester_rows[true], found.similarities[true])
    seen = partner > -np.inf
    outside = 1.0 - int(seen.sum()) / with_partner
    below = int((partner[seen] < top[seen]).sum()) / with_partner
    return {"not_candidates": max(outside - (1.0 - compared), 0.0), "below_a_non_match": below}


def _few(truth: set[tuple[int, int]]) -> set[tuple[int, int]]:
    """FEW_PARTNERS of the true pairs, drawn with a fixed seed."""
    pairs = sorted(truth)
    drawn = np.random.default_rng(FEW_SEED).permutation(len(pairs))[:FEW_PARTNERS]
    return {pairs[i] for i in drawn.tolist()}


def _sparse_run(
    found: Candidates,
    records: int,
    rules: tuple[DecisionRule, DecisionRule],
    keys: PartyKeys | None,
    data: Prepared,
    kept: set[tuple[int, int]],
) -> dict[str, Any]:
    """The run with only the `kept` true pairs among its candidates, decided by the calibrated
    rule and by its agreed fallback threshold alone (`rules`): whether the model was fitted,
    and how many pairs each released, and how many of those are kept true pairs."""
    sparse = _without_pairs(found, data.truth - kept)
    calibrated, fallback = rules
    decided = decide(
        sparse, records, calibrated, keys, data.blocking, data.shared.custodian.__getitem__
    )
    agreed = decide(sparse, records, fallback)
    return {
        "partners": len(kept),
        "modelled": decided.estimates is not None,
        "threshold": decided.threshold,
        "note": decided.note,
        **_released(decided, kept),
        "agreed_fallback": _released(agreed, kept),
    }


def _released(decisions: Decisions, truth: set[tuple[int, int]]) -> dict[str, int]:
    return {
        "released": decisions.count(PairStatus.MATCH),
        "true_released": released_right(decisions, truth),
    }


def _without_pairs(found: Candidates, truth: set[tuple[int, int]]) -> Candidates:
    """`found` without the `truth` pairs."""
    if not truth:
        return found
    keep = ~in_truth(found.requester_rows, found.custodian_rows, truth)
    return Candidates(
        found.similarities[keep],
        found.requester_rows[keep],
        found.custodian_rows[keep],
        found.comparisons,
        found.all_pairs,
    )


def _errors(estimated: dict[str, float] | None, true: dict[str, float]) -> dict[str, Any]:
    """Estimated minus true precision and recall (None without estimates)."""
    if estimated is None:
        return {"precision_error": None, "recall_error": None}
    return {
        "precision_error": estimated["precision"] - true["precision"],
        "recall_error": estimated["recall"] - true["recall"],
    }


def _within(error: float | None) -> bool:
    return error is not None and abs(error) <= ESTIMATE_ERROR


def precision_by_chance(decisions: Decisions) -> dict[str, float] | None:
    """How far the true precision of the released matches strays from its estimate by chance
    alone, were every match probability exact (each match true, independently, with its
    probability): the standard deviation of that precision, and the probability that it lies
    within ESTIMATE_ERROR of the estimate (normal approximation). So even a model that knew
    the true match probability of every score would miss the target in about 1 - `within`
    of such runs. None without a model."""
    if decisions.estimates is None:
        return None
    probabilities = decisions.probabilities[decisions.status == PairStatus.MATCH]
    released = len(probabilities)
    spread = true_matches_spread(probabilities)
    if not released or spread == 0.0:
        return {"sd": 0.0, "within": 1.0}
    allowed = ESTIMATE_ERROR * released  # true pairs off the expected number
    return {"sd": spread / released, "within": math.erf(allowed / (spread * math.sqrt(2.0)))}


def hardening_gaps(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per data set with both: hardened calibrated F* minus unhardened oracle F*."""
    by_name = {c["name"]: c for c in cases}
    gaps = []
    for data_set in dict.fromkeys(c["data_set"] for c in cases):
        plain = by_name.get(f"{data_set}-unhardened")
        hardened = by_name.get(f"{data_set}-hardened")
        if plain is None or hardened is None:
            continue
        gap = hardened["calibrated"]["true"]["f_star"] - plain["oracle"]["f_star"]
        gaps.append(
            {
                "data_set": data_set,
                "hardened_calibrated_f_star": hardened["calibrated"]["true"]["f_star"],
                "unhardened_oracle_f_star": plain["oracle"]["f_star"],
                "gap": gap,
                "met": -gap <= HARDENING_GAP,
            }
        )
    return gaps


def summary(cases: list[dict[str, Any]], gaps: list[dict[str, Any]]) -> dict[str, Any]:
    """Per target, how many cases (or data sets) met it, and which missed it."""
    per_target = {
        target: [c["name"] for c in cases if not c["met"][target]]
        for target in ("f_star", "precision", "recall")
    }
    per_target["hardening"] = [g["data_set"] for g in gaps if not g["met"]]
    counts = {"f_star": len(cases), "precision": len(cases), "recall": len(cases)}
    counts["hardening"] = len(gaps)
    result = {
        target: {
            "met": counts[target] - len(missed),
            "of": counts[target],
            "missed": missed,
        }
        for target, missed in per_target.items()
    }
    bias = {key: _bias(cases, key) for key in ("precision_error", "recall_error", "f_star")}
    return {
        **result,
        "all_met": not any(per_target.values()),
        "bias": bias,
        "intervals_hold_truth": _coverage(cases),
        "precision_by_chance": _by_chance(cases),
        "reliability": {
            blocking: _pooled_reliability([c for c in cases if c["blocking"] == blocking])
            for blocking in ("all pairs", "keys")
        },
        "sparse_runs": {name: _sparse_summary(cases, name) for name in SPARSE_RUNS},
        "recall_misses": _recall_misses(cases),
    }


def _recall_misses(cases: list[dict[str, Any]]) -> dict[str, int]:
    """The recall estimates more than ESTIMATE_ERROR too high and too low, and how many of the
    too high have more than that share of their partners unseen by the scores."""
    errors = [(c["gaps"]["recall_error"], c.get("partners_unseen")) for c in cases]
    high = [unseen for error, unseen in errors if error is not None and error > ESTIMATE_ERROR]
    return {
        "too_high": len(high),
        "too_high_with_partners_unseen": sum(
            unseen is not None and sum(unseen.values()) > ESTIMATE_ERROR for unseen in high
        ),
        "too_low": sum(error is not None and error < -ESTIMATE_ERROR for error, _ in errors),
    }


def _pooled_reliability(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The cases' reliability bands added up: released matches, expected and truly true."""
    pooled: dict[tuple[float, float], dict[str, Any]] = {}
    for case in cases:
        for band in case.get("reliability", []):  # older results lack them
            total = pooled.setdefault(
                tuple(band["band"]),
                {"band": band["band"], "released": 0, "expected_true": 0.0, "true": 0},
            )
            for key in ("released", "expected_true", "true"):
                total[key] += band[key]
    return list(pooled.values())


def _sparse_summary(cases: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """Over the cases' `name` runs: which were modelled, and the pairs released in all (and
    how many were true) by the calibrated rule and by the agreed fallback alone."""
    runs = [c[name] for c in cases if "partners" in c.get(name, {})]  # older results lack them

    def total(key: str, of: str = "") -> int:
        return sum((run[of] if of else run)[key] for run in runs)

    return {
        "runs": len(runs),
        "partners": total("partners"),
        "modelled": [c["name"] for c in cases if c.get(name, {}).get("modelled")],
        "released": total("released"),
        "true_released": total("true_released"),
        "agreed_fallback": {
            "released": total("released", "agreed_fallback"),
            "true_released": total("true_released", "agreed_fallback"),
        },
    }


def _by_chance(cases: list[dict[str, Any]]) -> dict[str, float]:
    """Over the fitted cases: in how many the precision target is expected to be met by chance
    alone were every match probability exact, and the probability that it is met in all."""
    within = [c["precision_by_chance"]["within"] for c in cases if c.get("precision_by_chance")]
    return {
        "fitted": len(within),
        "expected_met": float(sum(within)),
        "all_met": float(np.prod(within)),
    }


def _coverage(cases: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per estimate, in how many of the cases with an interval it held the true value."""
    result = {}
    for name in ESTIMATED:
        known = [c["covered"][name] for c in cases if c.get("covered", {}).get(name) is not None]
        result[name] = {"held": sum(known), "of": len(known)}
    return result


def _bias(cases: list[dict[str, Any]], key: str) -> dict[str, float | None]:
    """Mean, median and extremes of a signed gap over the cases that have it."""
    values = np.array([c["gaps"][key] for c in cases if c["gaps"][key] is not None])
    if not len(values):
        return {"mean": None, "median": None, "min": None, "max": None}
    return {
        "mean": float(values.mean()),
        "median": float(np.median(values)),
        "min": float(values.min()),
        "max": float(values.max()),
    }
