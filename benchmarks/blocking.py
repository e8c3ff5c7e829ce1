"""End-to-end linkage at scale with blocking: upload to release, with ground truth.

Generates `--records` identities per party (half shared, default corruption), encodes them
with the default schema (and, with keyed blocking, the agreed blocking keys), then times,
against a `blindlink serve` process with mutual TLS: both uploads, the run (blocking from the
agreement, matching on every core, 1:1 solving) and both releases. The custodian is granted the
pair list so that pair-level precision and recall can be scored against the truth. Pair
completeness (the share of true pairs that share a blocking key or band, i.e. were compared at
all) is computed from the same keys or band positions. Peak memory is the machine's used memory
(MemTotal - MemAvailable) above its level before the server started, sampled every 0.5 s.
Prints and writes benchmarks/results/blocking.json (blocking-lsh.json with LSH, and
-hardened with hardening).

    python benchmarks/blocking.py [--records 1000000] [--method keys]
    python benchmarks/blocking.py --method lsh [--bands 300] [--bits-per-band 22]
    python benchmarks/blocking.py --hardening '[{"kind": "diffusion", "t": 3}]' --threshold 0.6

Without --threshold, runs calibrate their threshold as `agreement new` agrees by default (the
results file then ends in -calibrated), and the run's own estimates are recorded beside the
truth; with --min-precision P they aim at an estimated precision of at least P instead of the
best estimated F* (-calibrated-precision-P).
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf.json_format import MessageToDict

from blindlink.attacks.block_frequency import attackable, block_frequency_attack
from blindlink.benchmarking.data import EncodedPair, encoded_pair
from blindlink.benchmarking.parties import ROLES, Parties
from blindlink.benchmarking.results import write_result
from blindlink.encoding.blocking_keys import DEFAULT_SCHEMA_KEYS
from blindlink.encoding.id_map import read_id_map
from blindlink.encoding.schema import default_schema_path, load_schema
from blindlink.evaluation import pair_quality
from blindlink.hardening.steps import output_bit_length
from blindlink.matching.blocking import Blocking, KeyBlocking, LshBlocking, band_keys
from blindlink.server.local_process import local_server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000, help="records per party")
    parser.add_argument("--method", choices=("keys", "lsh"), default="keys")
    parser.add_argument("--bands", type=int, default=300)
    parser.add_argument("--bits-per-band", type=int, default=22)
    parser.add_argument(
        "--threshold", type=float, help="a fixed Dice threshold (default: calibrated runs)"
    )
    parser.add_argument(
        "--min-precision",
        type=float,
        help="calibrated runs aim at this estimated precision (default: the best estimated F*)",
    )
    parser.add_argument(
        "--hardening",
        default="[]",
        help='hardening steps as JSON, e.g. \'[{"kind": "diffusion", "t": 3}]\' with '
        "--threshold 0.6 (default: none)",
    )
    parser.add_argument("--workdir", type=Path, help="keep generated data here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run(args, args.workdir or Path(tmp), Path(tmp))


class MemorySampler:
    """Peak of the machine's used memory above a baseline, sampled in a thread."""

    def __init__(self) -> None:
        self.baseline = self.used()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    @staticmethod
    def used() -> int:
        fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        kib = int(fields["MemTotal"].split()[0]) - int(fields["MemAvailable"].split()[0])
        return kib * 1024

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            self.peak = max(self.peak, self.used())

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return (self.peak - self.baseline) / 2**30


def run(args: argparse.Namespace, workdir: Path, scratch: Path) -> None:
    started = time.perf_counter()
    hardening = args.hardening_steps = json.loads(args.hardening)
    blocking: Blocking
    if args.method == "keys":
        blocking = KeyBlocking.from_document(DEFAULT_SCHEMA_KEYS)
        data = encoded_pair(workdir, args.records, blocking=blocking, hardening=hardening)
    else:
        blocking = LshBlocking(args.bands, args.bits_per_band, seed=1)
        data = encoded_pair(workdir, args.records, hardening=hardening)
    prepare_seconds = time.perf_counter() - started
    print(f"data ready: {args.records} records per party ({prepare_seconds:.0f} s)", flush=True)
    completeness = pair_completeness(data, blocking)
    print(f"pair completeness of the blocking: {completeness:.4f}", flush=True)

    parties = Parties.create(scratch)
    memory = MemorySampler()
    with local_server(scratch / "server", parties.tls_dir) as server:
        stages, pairs, decision = link(server.address, parties, data, args, blocking)
    peak_gib = memory.stop()
    log = server.log.read_text()
    run_line = next((line for line in log.splitlines() if " done on " in line), "")
    truth = data.truth_pairs
    quality = pair_quality(pairs, truth)
    privacy = key_attacks(data, blocking) if isinstance(blocking, KeyBlocking) else {}
    result = {
        "method": (
            f"{args.records} x {args.records} generated identities (overlap 0.5, "
            f"default corruption), default schema, hardening {json.dumps(hardening)}; "
            f"{describe(blocking)}, "
            f"{'threshold ' + str(args.threshold) if args.threshold else 'calibrated runs'}"
            f"{target_text(args)}; "
            "one run of upload -> match -> release against a "
            "`blindlink serve` process with mutual TLS on this machine; precision and "
            "recall of the custodian's released pair list against the truth; peak "
            "memory = machine used memory above the pre-server level, sampled every "
            "0.5 s"
        ),
        "records_per_party": args.records,
        "blocking": blocking_section(blocking),
        "seconds": stages,
        "end_to_end_seconds": sum(stages.values()),
        "data_preparation_seconds": prepare_seconds,
        "pair_completeness": completeness,
        "server_run_log": run_line.split(" INFO ", 1)[-1],
        "released_pairs": len(pairs),
        "true_pairs": len(truth),
        "precision": quality.precision,
        "recall": quality.recall,
        "decision": decision,
        "peak_memory_gib": peak_gib,
    }
    if privacy:
        result["privacy"] = privacy
    name = (
        "blocking"
        + ("-lsh" if args.method == "lsh" else "")
        + ("-hardened" if hardening else "")
        + ("" if args.threshold else "-calibrated")
        + (f"-precision-{args.min_precision:g}" if args.min_precision else "")
    )
    path = write_result(name, result)
    print(f"end to end (upload to release): {result['end_to_end_seconds']:.0f} s  {stages}")
    print(
        f"pair completeness {completeness:.4f}, precision {quality.precision:.4f}, "
        f"recall {quality.recall:.4f}, peak memory {peak_gib:.1f} GiB"
    )
    print(f"the run's decision: {json.dumps(decision)}")
    for name, attack in privacy.items():
        if isinstance(attack, str):
            print(f"block frequency attack on {name}: {attack}")
        else:
            print(
                f"block frequency attack on {name}: {attack['correct']} of {attack['targets']} "
                f"custodian records re-identified ({attack['reidentification_rate']:.4%}; "
                f"guessing the commonest name: {attack['chance_rate']:.4%})"
            )
    print(f"server: {result['server_run_log']}")
    print(f"-> {path}")


def target_text(args: argparse.Namespace) -> str:
    if not args.min_precision:
        return ""
    return f" (target: estimated precision >= {args.min_precision})"


def describe(blocking: Blocking) -> str:
    if isinstance(blocking, LshBlocking):
        return f"LSH bit-sampling blocking ({blocking.bands} bands x {blocking.bits_per_band} bits)"
    keys = [" + ".join(p.field for p in key) for key in blocking.keys]
    return f"keyed blocking keys ({'; '.join(keys)})"


def blocking_section(blocking: Blocking) -> dict[str, Any]:
    """The agreement's matching.blocking for `blocking`."""
    if isinstance(blocking, KeyBlocking):
        return {"method": "keys", "keys": blocking.document()}
    return {
        "method": "lsh",
        "bands": blocking.bands,
        "bits_per_band": blocking.bits_per_band,
        "seed": blocking.seed,
    }


def key_attacks(data: EncodedPair, blocking: KeyBlocking) -> dict[str, Any]:
    """What the server could learn from the custodian's blocking keys: the block frequency
    attack on every key the public name tables describe, scored against the custodian's file."""
    with open(data.directory / "custodian.csv", newline="", encoding="utf-8") as f:
        people = {row["id"]: row for row in csv.DictReader(f)}
    ids = read_id_map(data.directory / "custodian.ids.json").ids
    found: dict[str, Any] = {}
    for column, key in enumerate(blocking.keys):
        name = " + ".join(part.field for part in key)
        if not attackable(key):
            found[name] = "not attacked: no public frequency list describes this key"
            continue
        truth = [
            tuple(" ".join(people[i][part.field].casefold().split()) for part in key) for i in ids
        ]
        found[name] = block_frequency_attack(data.custodian_keys[:, column], truth, key).to_dict()
    return found


def pair_completeness(data: EncodedPair, blocking: Blocking) -> float:
    """Share of true pairs that share a blocking key, or whose sampled bits agree in at least
    one band."""
    if isinstance(blocking, KeyBlocking):
        keys_a = data.requester_keys[data.true_requester_rows]
        keys_b = data.custodian_keys[data.true_custodian_rows]
        return float(((keys_a == keys_b) & (keys_a != 0)).any(axis=1).mean())
    columns_a = np.ascontiguousarray(data.requester.T)
    columns_b = np.ascontiguousarray(data.custodian.T)
    compared = np.zeros(len(data.true_requester_rows), dtype=bool)
    for positions in blocking.positions(data.requester.shape[1] * 8):
        keys_a, keys_b = band_keys(columns_a, positions), band_keys(columns_b, positions)
        compared |= keys_a[data.true_requester_rows] == keys_b[data.true_custodian_rows]
    return float(compared.mean())


def link(
    address: str,
    parties: Parties,
    data: EncodedPair,
    args: argparse.Namespace,
    blocking: Blocking,
) -> tuple[dict[str, float], set[tuple[int, int]], dict[str, Any]]:
    """Both uploads, the run, both releases: seconds per stage, the custodian's released
    (requester row, custodian row) pairs, and how the run decided."""
    schema = load_schema(default_schema_path())
    agreement = parties.agreement(
        "blocking benchmark",
        schema,
        bit_length=output_bit_length(schema.bit_length, args.hardening_steps),
        hardening=args.hardening_steps,
        **({"threshold": args.threshold} if args.threshold else {}),
        **(
            {"target": "min_precision", "min_precision": args.min_precision}
            if args.min_precision
            else {}
        ),
        blocking=blocking_section(blocking),
        custodian_release="pairs",
        max_records_per_upload=args.records,
    )
    clients = {role: parties.client(address, role) for role in ROLES}
    stages: dict[str, float] = {}
    try:
        project = clients["requester"].create_project(agreement).project_id
        clock = time.perf_counter()
        clients["custodian"].upload(project, data.directory / "custodian.bin")
        run_id = clients["requester"].upload(project, data.directory / "requester.bin").run_id
        stages["upload"] = time.perf_counter() - clock
        clock = time.perf_counter()
        final = clients["requester"].wait(project, run_id)
        stages["match"] = time.perf_counter() - clock
        if final.message and "failed" in final.message:
            raise SystemExit(f"the run failed: {final.message}")
        clock = time.perf_counter()
        clients["requester"].release(project, run_id)
        release = clients["custodian"].release(project, run_id)
        stages["release"] = time.perf_counter() - clock
    finally:
        for client in clients.values():
            client.close()
    pairs = set(zip(release.other_rows, release.own_rows, strict=True))
    return stages, pairs, MessageToDict(release.decision, preserving_proto_field_name=True)


if __name__ == "__main__":
    main()
