"""Commands that make identity material: a development PKI. A party's client certificate key
also signs its agreements, so parties need no other key."""

from __future__ import annotations

import argparse
from pathlib import Path

from blindlink.security.pki import certificate_fingerprint, init_pki

DEFAULT_PARTIES = ("requester", "custodian")
DEFAULT_SERVER_NAMES = ("localhost", "127.0.0.1")


def add_security_commands(commands: argparse._SubParsersAction) -> None:
    """Add `pki init` to the command line."""
    pki = commands.add_parser("pki", help="a development certificate authority").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    init = pki.add_parser("init", help="write a CA, a server certificate and party certificates")
    init.add_argument("--out", type=Path, required=True, help="directory to write to")
    init.add_argument(
        "--party",
        action="append",
        dest="parties",
        metavar="NAME",
        help=f"a party to certify (repeatable; default: {' '.join(DEFAULT_PARTIES)})",
    )
    init.add_argument(
        "--server-name",
        action="append",
        dest="server_names",
        metavar="NAME",
        help=f"server host name or IP (repeatable; default: {' '.join(DEFAULT_SERVER_NAMES)})",
    )
    init.add_argument("--days", type=int, default=365, help="validity of every certificate")
    init.set_defaults(run=pki_init)


def pki_init(args: argparse.Namespace) -> int:
    files = init_pki(
        args.out,
        args.parties or DEFAULT_PARTIES,
        args.server_names or DEFAULT_SERVER_NAMES,
        args.days,
    )
    print(f"CA certificate  {files.ca_cert}  (key {files.ca_key}: keep it offline)")
    print(f"server          {files.server_cert}  (key {files.server_key})")
    for party, cert in files.party_certs.items():
        fingerprint = certificate_fingerprint(cert.read_bytes())
        key = files.party_keys[party]
        print(f"party {party}  {cert}  (key {key}: TLS, signs agreements)  sha256 {fingerprint}")
    return 0
