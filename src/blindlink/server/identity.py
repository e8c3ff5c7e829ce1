"""Who is calling: the party that the transport vouches for; and who signed an agreement.

With TLS (the default) the caller is the party whose client-certificate fingerprint the
project's agreement names, and each party's signature must be made with the key of a client
certificate the client CA issued. Without TLS (`serve --insecure`, loopback only, for
development) the caller's role is taken on trust from the `blindlink-party` metadata entry, and
the certificates in a signed agreement are not checked against a CA (there is none).
"""

from __future__ import annotations

import threading

import grpc

from blindlink.agreement.document import ROLES
from blindlink.agreement.model import Agreement, parse_agreement
from blindlink.agreement.signing import SignedAgreement
from blindlink.security.tls import peer_fingerprint
from blindlink.server.status import ServiceError

PARTY_METADATA_KEY = "blindlink-party"


class PartyCertificates:
    """The client-certificate fingerprints that some project's agreement names: the callers
    that are parties, not outsiders. Thread-safe."""

    def __init__(self) -> None:
        self._known: set[str] = set()
        self._lock = threading.Lock()

    def add(self, agreement: Agreement) -> None:
        with self._lock:
            self._known.update(party.certificate_sha256 for party in agreement.parties.values())

    def load(self, agreements: list[bytes]) -> None:
        """Add the parties of stored agreements (canonical bytes)."""
        for raw in agreements:
            self.add(parse_agreement(raw))

    def __contains__(self, fingerprint: object) -> bool:
        with self._lock:
            return fingerprint in self._known


class PartyResolver:
    def __init__(self, client_ca: bytes | None, parties: PartyCertificates) -> None:
        """`client_ca`: the PEM CA certificates whose client certificates the server accepts;
        None without TLS. `parties`: the certificates that projects' agreements name, which
        gains those of each project created."""
        self.client_ca = client_ca
        self.tls = client_ca is not None
        self.parties = parties

    def signature_problems(self, signed: SignedAgreement) -> list[str]:
        """Why `signed` does not show that the holders of both named certificates agreed."""
        return signed.problems(self.client_ca)

    def role(self, context: grpc.ServicerContext, agreement: Agreement) -> str:
        """The caller's role in `agreement`; PERMISSION_DENIED if it is not a party to it."""
        role = (
            agreement.role_for_certificate(peer_fingerprint(context))
            if self.tls
            else _claimed_role(context)
        )
        if role is None:
            raise ServiceError(
                grpc.StatusCode.PERMISSION_DENIED,
                "parties: your client certificate is not one the agreement names for this project",
            )
        return role


def _claimed_role(context: grpc.ServicerContext) -> str:
    values = [v for k, v in context.invocation_metadata() if k == PARTY_METADATA_KEY]
    if len(values) != 1 or values[0] not in ROLES:
        raise ServiceError(
            grpc.StatusCode.UNAUTHENTICATED,
            f"the call must name exactly one party role ({', '.join(ROLES)}) in "
            f"'{PARTY_METADATA_KEY}' metadata",
        )
    return str(values[0])
