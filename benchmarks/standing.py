"""A standing custodian index: requester batches against a large custodian, upload to release.

For each custodian size (`--small-records`, then `--records`), generates a custodian and
requester batches drawn from it (`generate_batches`: overlap 0.5, default corruption), encodes
them with the default schema and its blocking keys, and drives a `blindlink serve` process
with mutual TLS: the custodian's upload, then the standing index the server builds from it
(upload + build = from the upload's start until the index's manifest is on disk), then
requester batches one at a time, each timed from the start of its upload until the requester
has fetched its release (calibrated runs, as agreed by default), with the run's own time and
comparisons from the server's log. Against the large custodian:
20 batches of 1,000 records, 5 of 10,000 and one of 100,000; against the small one, 5 of
10,000, for the ratio of the 10,000-record batch's median latency between the two sizes
(measured in the same run). Precision and recall score the custodian's released pair lists
against the truth, per batch size and pooled; pair completeness is the share of true pairs
sharing a blocking key. The first batch's release is checked against the same batch decided in
this process against the whole custodian (the path before the index). Server memory is the
resident set of the server process and its children (pool workers), sampled every 0.2 s while
batches are served. Then a custodian update appends `--append` records to the large custodian
(copies of the 100,000-record batch's first rows, as new people of the custodian's), timed from
the start of the update's call until its receipt (the appended records streamed, the index's
next version built, the update committed: from then on every run that starts sees them), and a
1,000-record batch of those people follows, each of which must be paired with its appended copy;
then an update removing 1,000 rows. Prints and writes benchmarks/results/standing.json
(standing-RECORDS.json for other sizes).

    python benchmarks/standing.py [--records 1000000] [--small-records 100000] [--workdir DIR]
        [--append 100000]
    python benchmarks/standing.py --records 10000000 --small-records 1000000  # national scale
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from blindlink.agreement.model import Agreement
from blindlink.agreement.signing import parse_signed
from blindlink.benchmarking.data import BENCHMARK_SECRET
from blindlink.benchmarking.parties import ROLES, Parties
from blindlink.benchmarking.results import write_result
from blindlink.client.linkage_client import LinkageClient
from blindlink.encoding.blocking_keys import DEFAULT_SCHEMA_KEYS
from blindlink.encoding.encoder import encode_csv
from blindlink.encoding.encodings_file import read_header, read_records, write_encodings
from blindlink.encoding.id_map import read_id_map
from blindlink.encoding.schema import default_schema_path, load_schema
from blindlink.evaluation import pair_quality, read_truth
from blindlink.index.layout import MANIFEST
from blindlink.matching.blocking import KeyBlocking, split_records
from blindlink.matching.decision import PairStatus, link
from blindlink.matching.engine import SharedEncodings
from blindlink.matching.executors import SerialExecutor
from blindlink.server.local_process import local_server
from blindlink.store.directory import INDEX_DIR
from blindlink.synthetic import generate_batches

BLOCKING = KeyBlocking.from_document(DEFAULT_SCHEMA_KEYS)
SEED = 1  # of the generated people, and of the encoded rows' order
SMALL_BATCHES, SMALL_RECORDS = 20, 1_000
MEDIUM_BATCHES, MEDIUM_RECORDS = 5, 10_000
LARGE_RECORDS = 100_000
DEFAULT_RECORDS, DEFAULT_SMALL_RECORDS = 1_000_000, 100_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=DEFAULT_RECORDS, help="large custodian")
    parser.add_argument(
        "--small-records", type=int, default=DEFAULT_SMALL_RECORDS, help="small custodian"
    )
    parser.add_argument("--workdir", type=Path, help="keep generated and encoded data here")
    parser.add_argument(
        "--append",
        type=int,
        default=LARGE_RECORDS,
        help=f"custodian records to append in an update (at most {LARGE_RECORDS:,}; 0: none)",
    )
    args = parser.parse_args()
    if not 0 <= args.append <= LARGE_RECORDS:
        parser.error(f"--append: 0 to {LARGE_RECORDS:,} records")
    with tempfile.TemporaryDirectory() as tmp:
        run(args, args.workdir or Path(tmp), Path(tmp))


@dataclass(frozen=True)
class Batch:
    """An encodings file to upload, its records' IDs and its true (requester, custodian) IDs."""

    path: Path
    ids: list[str]
    truth: set[tuple[str, str]]
    keys: np.ndarray


@dataclass(frozen=True)
class Custodian:
    path: Path
    records: int
    ids: list[str]
    rows: dict[str, int]  # by ID
    keys: np.ndarray
    batches: dict[int, list[Batch]]  # by batch size


def prepare(workdir: Path, records: int, sizes: dict[int, int]) -> Custodian:
    """A custodian of `records` and batches (`sizes`: records per batch -> how many), encoded
    once per work directory: one generated batch, its rows cut into the batches in turn."""
    directory = workdir / f"custodian-{records}-seed-{SEED}"
    generated = directory / "-".join(f"batches-{size}x{count}" for size, count in sizes.items())
    schema = load_schema(default_schema_path())
    if not (generated / "requester.bin").exists():
        total = sum(size * count for size, count in sizes.items())
        made = generate_batches(generated, records, 1, total, 0.5, seed=SEED)
        encode_csv(
            made.requesters[0],
            schema,
            BENCHMARK_SECRET,
            generated / "requester.bin",
            generated / "requester.ids.json",
            blocking=BLOCKING,
            shuffle_seed=SEED,  # the same rows for the same seed, so the same decisions
        )
        if not (directory / "custodian.bin").exists():
            encode_csv(
                made.custodian,
                schema,
                BENCHMARK_SECRET,
                directory / "custodian.bin",
                directory / "custodian.ids.json",
                blocking=BLOCKING,
                shuffle_seed=SEED + 1,
            )
        made.custodian.unlink()  # the same custodian for every batch plan (the seed's)
    keys = split_records(read_records(directory / "custodian.bin"), len(BLOCKING.keys))[1]
    ids = read_id_map(directory / "custodian.ids.json").ids
    rows = {i: r for r, i in enumerate(ids)}
    return Custodian(directory / "custodian.bin", records, ids, rows, keys, cut(generated, sizes))


def cut(generated: Path, sizes: dict[int, int]) -> dict[int, list[Batch]]:
    """The generated batch's encoded rows cut into batches of each size, in turn."""
    header = read_header(generated / "requester.bin")
    rows = read_records(generated / "requester.bin")
    ids = read_id_map(generated / "requester.ids.json").ids
    truth = dict(read_truth(generated / "truth-1.csv"))
    batches: dict[int, list[Batch]] = {}
    start = 0
    for size, count in sizes.items():
        batches[size] = []
        for k in range(count):
            part = slice(start, start + size)
            start += size
            path = generated / f"batch-{size}-{k}.bin"
            if not path.exists():
                records = rows[part].tobytes()
                write_encodings(path, header.bit_length, header.schema_sha256, [records])
            keys = split_records(rows[part], len(BLOCKING.keys))[1]
            pairs = {(i, truth[i]) for i in ids[part] if i in truth}
            batches[size].append(Batch(path, ids[part], pairs, keys))
    return batches


class ServerMemory:
    """Peak resident memory of a process and its descendants, sampled every 0.2 s while on."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self.samples: list[int] = []
        self._on = threading.Event()
        self._stop = threading.Event()
        threading.Thread(target=self._loop, daemon=True).start()

    def rss(self, pid: int | None = None) -> int:
        """Resident bytes of `pid` (default: the server) and its descendants, from /proc."""
        pid = self.pid if pid is None else pid
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            children = [
                int(child)
                for task in Path(f"/proc/{pid}/task").iterdir()
                for child in (task / "children").read_text().split()
            ]
        except (FileNotFoundError, ProcessLookupError):
            return 0  # ended meanwhile
        rss = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
        return int(rss.split()[1]) * 1024 + sum(self.rss(child) for child in children)

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            if self._on.is_set():
                rss = self.rss()
                self.samples.append(rss)
                self.peak = max(self.peak, rss)

    def serving(self, on: bool) -> None:
        (self._on.set if on else self._on.clear)()

    def stop(self) -> None:
        self._stop.set()


def run(args: argparse.Namespace, workdir: Path, scratch: Path) -> None:
    started = time.perf_counter()
    large_sizes = {SMALL_RECORDS: SMALL_BATCHES, MEDIUM_RECORDS: MEDIUM_BATCHES, LARGE_RECORDS: 1}
    custodians = [
        prepare(workdir, args.small_records, {MEDIUM_RECORDS: MEDIUM_BATCHES}),
        prepare(workdir, args.records, large_sizes),
    ]
    print(f"data ready ({time.perf_counter() - started:.0f} s)", flush=True)
    parties = Parties.create(scratch)
    data_dir = scratch / "server"
    load_before = os.getloadavg()
    measured: dict[int, dict[str, Any]] = {}
    with local_server(data_dir, parties.tls_dir) as server:
        memory = ServerMemory(server.process.pid)
        clients = {role: parties.client(server.address, role) for role in ROLES}
        try:
            for custodian in custodians:
                append = args.append if custodian is custodians[-1] else 0
                measured[custodian.records] = serve_custodian(
                    clients, parties, custodian, data_dir, memory, append, scratch
                )
        finally:
            for client in clients.values():
                client.close()
            memory.stop()
    small, large = (measured[c.records] for c in custodians)
    ratio = large["batches"][MEDIUM_RECORDS]["p50_s"] / small["batches"][MEDIUM_RECORDS]["p50_s"]
    result = {
        "method": (
            "generated custodians (generate_batches, overlap 0.5, default corruption, seed 1) "
            "and requester batches cut from one generated batch per size, their encoded rows in "
            "the order of shuffle seeds 1 (batch) and 2 (custodian), default schema with "
            "its four keyed blocking keys, calibrated runs; one `blindlink serve` process with "
            "mutual TLS on this machine, batches uploaded one at a time; latency = start of "
            "the requester's upload to its fetched release (wall clock in the client); upload + "
            "index build = start of the custodian's upload until the index manifest exists; "
            "server RSS = the server process and its children, sampled every 0.2 s while "
            "batches are served (includes the index pages it has mapped); precision/recall = "
            "the custodian's released pair lists of the large custodian's batches, pooled, "
            "against the truth; pair completeness = true pairs sharing a blocking key; update = "
            "the large custodian's update appending copies of the 100,000-record batch's first "
            "`appended` rows as new custodian records, from the start of the custodian's update "
            "call to its receipt (streaming, the index's next version, the commit: runs that "
            "start after it see the records), then a 1,000-record batch of those people (upload "
            "to fetched release), counting those paired with their appended copy and those "
            "paired with their original record (identical to the copy where the batch's record "
            "was not corrupted: an exact tie goes to the lower row), then an update removing "
            "1,000 rows"
        ),
        "custodians": measured,
        # Other work shares this machine: its load (1, 5, 15 min) before and after serving.
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "batch_10000_p50_ratio_large_to_small_custodian": ratio,
        "custodian_ratio_large_to_small": args.records / args.small_records,
        "targets": {
            "upload_and_index_build_10m_s": 300,
            "server_rss_gib": 4,
            "batch_1000_p50_s": 1,
            "batch_1000_p95_s": 2,
            "batch_10000_p50_s": 3,
            "batch_100000_s": 20,
            "batch_10000_ratio_10m_to_1m": 2,
            "append_100000_until_visible_s": 30,
        },
    }
    default = args.records == DEFAULT_RECORDS and args.small_records == DEFAULT_SMALL_RECORDS
    path = write_result("standing" + ("" if default else f"-{args.records}"), result)
    for records, found in measured.items():
        batches = "; ".join(
            f"{size:,}: p50 {b['p50_s']:.2f} s, p95 {b['p95_s']:.2f} s ({b['count']} batches)"
            for size, b in found["batches"].items()
        )
        print(
            f"custodian {records:,}: upload {found['custodian_upload_s']:.1f} s + index build "
            f"{found['index_build_s']:.1f} s; batches {batches}; server RSS peak "
            f"{found['server_rss_peak_gib']:.2f} GiB"
        )
        print(
            f"  pair completeness {found['pair_completeness']:.4f}, precision "
            f"{found['precision']:.4f}, recall {found['recall']:.4f} (all batches pooled)"
        )
    update = large.get("update")
    if update:
        print(
            f"update appending {update['appended']:,} records to {args.records:,}: "
            f"{update['append_until_visible_s']:.1f} s until visible; the next 1,000-record "
            f"batch {update['next_batch_s']:.2f} s, {update['next_batch_pairs_to_appended']:,} "
            f"of its people paired with their appended copies, "
            f"{update['next_batch_pairs_to_original_rows']:,} with original rows; removing 1,000 "
            "rows "
            f"{update['remove_1000_s']:.1f} s"
        )
    print(
        f"10,000-record batch, median latency: {ratio:.2f}x with a "
        f"{args.records / args.small_records:.0f}x larger custodian"
    )
    print(f"-> {path}")


def serve_custodian(
    clients: dict[str, LinkageClient],
    parties: Parties,
    custodian: Custodian,
    data_dir: Path,
    memory: ServerMemory,
    append: int,
    scratch: Path,
) -> dict[str, Any]:
    """A project for `custodian`: its upload and index, then its batches, then (`append`) an
    update appending records and one removing rows; what was measured."""
    schema = load_schema(default_schema_path())
    agreement = parties.agreement(
        f"standing index benchmark, {custodian.records} records",
        schema,
        blocking={"method": "keys", "keys": BLOCKING.document()},
        custodian_release="pairs",
        max_records_per_upload=custodian.records,
        max_uploads_per_period=1_000,
        max_records_per_period=10 * custodian.records,
    )
    project = clients["requester"].create_project(agreement).project_id
    clock = time.perf_counter()
    upload_id = clients["custodian"].upload(project, custodian.path).upload_id
    uploaded = time.perf_counter() - clock
    manifest = data_dir / INDEX_DIR / upload_id / MANIFEST
    while not manifest.exists():
        time.sleep(0.01)
    built = time.perf_counter() - clock
    print(
        f"custodian {custodian.records:,}: uploaded in {uploaded:.1f} s, indexed "
        f"{built - uploaded:.1f} s later",
        flush=True,
    )
    memory.serving(True)
    batches: dict[int, dict[str, Any]] = {}
    released: set[tuple[str, str]] = set()
    truth: set[tuple[str, str]] = set()
    compared = true_pairs = 0
    first_released: set[tuple[str, str]] = set()
    for size, group in custodian.batches.items():
        seconds = []
        run_ids = []
        found: set[tuple[str, str]] = set()
        for batch in group:
            took, pairs, run_id = link_batch(clients, project, batch, custodian)
            first_released = first_released or pairs
            seconds.append(took)
            run_ids.append(run_id)
            found |= pairs
            shared, total = completeness(batch, custodian)
            compared, true_pairs = compared + shared, true_pairs + total
        true = set().union(*(batch.truth for batch in group))
        quality = pair_quality(found, true)
        released, truth = released | found, truth | true
        log = (data_dir / "server.log").read_text()
        server_seconds, comparisons = zip(*(server_side(log, r) for r in run_ids), strict=True)
        batches[size] = {
            "server_run_s": list(server_seconds),
            "comparisons": list(comparisons),
            "count": len(seconds),
            "p50_s": statistics.median(seconds),
            "p95_s": float(np.percentile(seconds, 95)),
            "max_s": max(seconds),
            "seconds": seconds,
            "precision": quality.precision,
            "recall": quality.recall,
        }
        print(
            f"  batches of {size:,}: {[round(s, 2) for s in seconds]} s (in the server "
            f"{list(server_seconds)} s, {statistics.median(comparisons):,.0f} comparisons); "
            f"precision {quality.precision:.4f}, recall {quality.recall:.4f}",
            flush=True,
        )
    memory.serving(False)
    quality = pair_quality(released, truth)
    first = next(iter(custodian.batches.values()))[0]
    same = first_released == without_index(parse_signed(agreement).agreement, first, custodian)
    print(f"  first batch's release identical to a run over the whole custodian: {same}")
    update = update_custodian(clients, project, custodian, append, scratch) if append else None
    return {
        "update": update,
        "first_batch_identical_to_whole_custodian_run": same,
        "custodian_upload_s": uploaded,
        "index_build_s": built - uploaded,
        "custodian_upload_and_index_s": built,
        "batches": batches,
        "server_rss_peak_gib": memory.peak / 2**30,
        "server_rss_median_gib": statistics.median(memory.samples) / 2**30,
        "pair_completeness": compared / max(true_pairs, 1),
        "precision": quality.precision,
        "recall": quality.recall,
        "released_pairs": len(released),
        "true_pairs": len(truth),
    }


def update_custodian(
    clients: dict[str, LinkageClient],
    project: str,
    custodian: Custodian,
    count: int,
    scratch: Path,
) -> dict[str, Any]:
    """Append the first `count` records of the 100,000-record batch to the custodian, as new
    people of its own; then a batch of 1,000 of them, and an update removing 1,000 rows."""
    source = custodian.batches[LARGE_RECORDS][0].path
    header = read_header(source)
    rows = read_records(source)
    appended, batch = scratch / "appended.bin", scratch / "after-update.bin"
    write_encodings(appended, header.bit_length, header.schema_sha256, [rows[:count].tobytes()])
    write_encodings(batch, header.bit_length, header.schema_sha256, [rows[:1_000].tobytes()])
    clock = time.perf_counter()
    receipt = clients["custodian"].update(project, custodian.records, appended)
    visible = time.perf_counter() - clock
    clock = time.perf_counter()
    run_id = clients["requester"].upload(project, batch).run_id
    final = clients["requester"].wait(project, run_id)
    if "failed" in final.message:
        raise SystemExit(f"the run after the update failed: {final.message}")
    clients["requester"].release(project, run_id)
    next_batch = time.perf_counter() - clock
    release = clients["custodian"].release(project, run_id)
    pairs = list(zip(release.other_rows, release.own_rows, strict=True))
    to_copies = sum(c == receipt.first_row + r for r, c in pairs)
    to_originals = sum(c < receipt.first_row for _, c in pairs)
    clock = time.perf_counter()
    rows_now = custodian.records + count
    clients["custodian"].update(project, rows_now, remove=range(0, rows_now, rows_now // 1_000))
    removed = time.perf_counter() - clock
    print(
        f"  update appending {count:,} records: visible after {visible:.1f} s; the next "
        f"1,000-record batch {next_batch:.2f} s, {to_copies} paired with their appended copies, "
        f"{to_originals} with original rows, {release.withheld_count} withheld as ambiguous; "
        f"removing 1,000 rows: {removed:.1f} s",
        flush=True,
    )
    return {
        "appended": count,
        "append_until_visible_s": visible,
        "next_batch_s": next_batch,
        "next_batch_pairs_to_appended": to_copies,
        "next_batch_pairs_to_original_rows": to_originals,
        "next_batch_withheld": release.withheld_count,
        "remove_1000_s": removed,
    }


def link_batch(
    clients: dict[str, LinkageClient], project: str, batch: Batch, custodian: Custodian
) -> tuple[float, set[tuple[str, str]], str]:
    """Seconds from the batch's upload until the requester has its release; the custodian's
    released pairs as (requester ID, custodian ID); the run's ID."""
    clock = time.perf_counter()
    run_id = clients["requester"].upload(project, batch.path).run_id
    final = clients["requester"].wait(project, run_id)
    if "failed" in final.message:
        raise SystemExit(f"the run failed: {final.message}")
    clients["requester"].release(project, run_id)
    took = time.perf_counter() - clock
    release = clients["custodian"].release(project, run_id)
    pairs = {
        (batch.ids[r], custodian.ids[c])
        for r, c in zip(release.other_rows, release.own_rows, strict=True)
    }
    return took, pairs, run_id


def server_side(log: str, run_id: str) -> tuple[float, int]:
    """A run's seconds in the server (the operator's log line, to 0.1 s) and its comparisons
    (the sum over keys of its key groups' comparisons)."""
    done = re.search(rf"run {run_id[:12]} done on .* in ([\d.]+) s", log)
    groups = re.search(rf"run {run_id[:12]} blocking key groups: (.*)", log)
    if done is None or groups is None:
        raise SystemExit(f"run {run_id} is not in the server's log")
    found = re.findall(r"([\d,]+) comparisons", groups.group(1))
    return float(done.group(1)), sum(int(n.replace(",", "")) for n in found)


def without_index(agreement: Agreement, batch: Batch, custodian: Custodian) -> set[tuple[str, str]]:
    """The matches of `batch` decided in this process against the whole custodian, as runs
    did before the standing index."""
    shared = SharedEncodings.from_rows(
        read_records(batch.path), read_records(custodian.path), len(BLOCKING.keys)
    )
    decisions = link(shared, agreement.rule_for_run(0.0), SerialExecutor(), 1, BLOCKING)
    matched = decisions.status == PairStatus.MATCH
    return {
        (batch.ids[r], custodian.ids[c])
        for r, c in zip(
            decisions.requester_rows[matched].tolist(),
            decisions.custodian_rows[matched].tolist(),
            strict=True,
        )
    }


def completeness(batch: Batch, custodian: Custodian) -> tuple[int, int]:
    """(true pairs sharing a blocking key, true pairs) of a batch."""
    rows = {i: r for r, i in enumerate(batch.ids)}
    pairs = [(rows[a], custodian.rows[b]) for a, b in batch.truth]
    if not pairs:
        return 0, 0
    mine, theirs = (np.array(side) for side in zip(*pairs, strict=True))
    keys_a, keys_b = batch.keys[mine], custodian.keys[theirs]
    return int(((keys_a == keys_b) & (keys_a != 0)).any(axis=1).sum()), len(pairs)


if __name__ == "__main__":
    main()
