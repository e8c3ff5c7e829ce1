"""Generated, encoded benchmark data with its ground truth, made once per work directory."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from blindlink.canonical import canonical_json
from blindlink.encoding.encoder import encode_csv
from blindlink.encoding.encodings_file import read_records
from blindlink.encoding.id_map import read_id_map
from blindlink.encoding.schema import default_schema_path, load_schema
from blindlink.evaluation import read_truth
from blindlink.matching.blocking import KeyBlocking, split_records
from blindlink.synthetic import CorruptionRates, generate_datasets

BENCHMARK_SECRET = b"blindlink benchmark secret, not for real data"


@dataclass(frozen=True)
class EncodedPair:
    """Both parties' encodings and blocking keys (row order as uploaded; no columns without
    blocking keys) and the true pairs as row indices."""

    requester: np.ndarray
    custodian: np.ndarray
    requester_keys: np.ndarray
    custodian_keys: np.ndarray
    true_requester_rows: np.ndarray
    true_custodian_rows: np.ndarray
    directory: Path

    @property
    def truth_pairs(self) -> set[tuple[int, int]]:
        """(requester row, custodian row) of every true match."""
        requester, custodian = self.true_requester_rows, self.true_custodian_rows
        return set(zip(requester.tolist(), custodian.tolist(), strict=True))


def encoded_pair(
    workdir: Path,
    records: int,
    overlap: float = 0.5,
    seed: int = 1,
    blocking: KeyBlocking | None = None,
    hardening: list[dict[str, Any]] | None = None,
    corruption: CorruptionRates | None = None,
) -> EncodedPair:
    """Generate and encode `records` per party under `workdir` unless already there; with
    `hardening`, hardened by those steps; with `blocking`, each uploaded record carries those
    blocking keys; with `corruption`, the custodian's copies are corrupted at those rates
    (default: the default rates)."""
    corruption = corruption or CorruptionRates()
    name = f"encoded-{records}-{overlap}-{seed}"
    if corruption != CorruptionRates():
        name += "-corruption-" + hashlib.sha256(canonical_json(asdict(corruption))).hexdigest()[:12]
    if blocking is not None:
        name += "-keys-" + hashlib.sha256(canonical_json(blocking.document())).hexdigest()[:12]
    if hardening:
        name += "-hardened-" + hashlib.sha256(canonical_json(hardening)).hexdigest()[:12]
    directory = workdir / name
    schema = load_schema(default_schema_path())
    key_count = len(blocking.keys) if blocking else 0
    if not (directory / "custodian.bin").exists():
        files = generate_datasets(directory, records, overlap, seed, corruption)
        roles = (("requester", files.requester), ("custodian", files.custodian))
        for number, (role, csv_path) in enumerate(roles):
            encode_csv(
                csv_path,
                schema,
                BENCHMARK_SECRET,
                directory / f"{role}.bin",
                directory / f"{role}.ids.json",
                hardening=hardening,
                blocking=blocking,
                shuffle_seed=2 * seed + number,  # the same data for the same seed
            )
    arrays = {}
    keys = {}
    rows = {}
    for role in ("requester", "custodian"):
        arrays[role], keys[role] = split_records(read_records(directory / f"{role}.bin"), key_count)
        rows[role] = {v: i for i, v in enumerate(read_id_map(directory / f"{role}.ids.json").ids)}
    truth = read_truth(directory / "truth.csv")
    return EncodedPair(
        arrays["requester"],
        arrays["custodian"],
        keys["requester"],
        keys["custodian"],
        np.array([rows["requester"][r] for r, _ in truth], dtype=np.int64),
        np.array([rows["custodian"][c] for _, c in truth], dtype=np.int64),
        directory,
    )
