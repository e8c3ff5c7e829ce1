"""Upload throughput over loopback gRPC with mutual TLS.

A `blindlink serve` process with a development CA; the custodian uploads an encodings file
(generated random encodings of the agreed length) with the blindlink client, `--runs` times,
each to a fresh project. Throughput is payload megabytes (10^6 bytes) per second of the
whole upload call, including the server verifying and committing the file.
Prints and writes benchmarks/results/upload.json.

    python benchmarks/upload.py [--records 1000000] [--runs 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from blindlink.agreement.model import PartyInfo, agreement_from_document, new_agreement_document
from blindlink.agreement.signing import SignedAgreement, sign_as
from blindlink.benchmarking.results import summary, timed, write_result
from blindlink.client.linkage_client import ClientTls, LinkageClient
from blindlink.encoding.encodings_file import write_encodings
from blindlink.encoding.schema import default_schema_path, load_schema
from blindlink.security.keys import generate_signing_key, load_private_key, public_key_text
from blindlink.security.pki import certificate_fingerprint, init_pki


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run(args, Path(tmp))


def run(args: argparse.Namespace, work: Path) -> None:
    schema = load_schema(default_schema_path())
    pki = init_pki(work / "pki")
    keys = {}
    for role in ("requester", "custodian"):
        keys[role] = load_private_key(generate_signing_key(work / role)[0])
    rows = np.random.default_rng(0).integers(
        0, 256, (args.records, schema.bit_length // 8), dtype=np.uint8
    )
    encodings = work / "enc.bin"
    write_encodings(encodings, schema.bit_length, schema.sha256, [rows.tobytes()])
    megabytes = rows.nbytes / 1e6
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "blindlink",
            "serve",
            "--data-dir",
            str(work / "server"),
            "--listen",
            "127.0.0.1:0",
            "--port-file",
            str(work / "port"),
            "--tls-dir",
            str(work / "pki"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while not (work / "port").exists():
            time.sleep(0.05)
        address = f"127.0.0.1:{(work / 'port').read_text().strip()}"
        tls = ClientTls(pki.ca_cert, pki.party_certs["custodian"], pki.party_keys["custodian"])
        times = []
        with LinkageClient(address, "custodian", tls) as client:
            for i in range(args.runs):
                signed = SignedAgreement(
                    agreement_from_document(
                        new_agreement_document(
                            reference=f"upload benchmark {i}",
                            requester=_party(pki.party_certs["requester"], keys["requester"]),
                            custodian=_party(pki.party_certs["custodian"], keys["custodian"]),
                            schema_sha256=schema.sha256,
                            bit_length=schema.bit_length,
                            max_records_per_upload=args.records,
                        )
                    ),
                    {},
                )
                for role in keys:
                    signed = sign_as(signed, role, keys[role])
                project = client.create_project(signed.to_bytes()).project_id
                seconds, _ = timed(lambda p=project: client.upload(p, encodings))
                times.append(seconds)
                print(f"run {i + 1}/{args.runs}: {megabytes / seconds:.0f} MB/s", flush=True)
    finally:
        server.terminate()
        server.wait()
    rate = megabytes / summary(times)["median"]
    result = {
        "method": (
            f"{args.records} encodings of {schema.bit_length} bits ({megabytes:.0f} MB) "
            "uploaded by the blindlink client to a `blindlink serve` process over "
            "loopback with mutual TLS; wall time of the whole Upload call including the "
            "server's hash check and atomic commit; median of the runs"
        ),
        "records": args.records,
        "megabytes": megabytes,
        "seconds": summary(times),
        "megabytes_per_second": rate,
    }
    path = write_result("upload", result)
    print(f"upload {rate:.0f} MB/s (median of {args.runs})   -> {path}")


def _party(cert: Path, key: object) -> PartyInfo:
    return PartyInfo(
        "benchmark party",
        public_key_text(key),  # type: ignore[arg-type]
        certificate_fingerprint(cert.read_bytes()),
    )


if __name__ == "__main__":
    main()
