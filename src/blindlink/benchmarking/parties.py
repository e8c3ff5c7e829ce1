"""The two parties of a benchmark: TLS material from a development CA (whose client certificate
keys sign agreements), signed agreements and clients."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blindlink.agreement.model import PartyInfo, agreement_from_document, new_agreement_document
from blindlink.agreement.signing import SignedAgreement, sign_with_files
from blindlink.client.linkage_client import ClientTls, LinkageClient
from blindlink.encoding.schema import LinkageSchema
from blindlink.security.pki import PkiFiles, certificate_fingerprint, init_pki

ROLES = ("requester", "custodian")


@dataclass(frozen=True)
class Parties:
    pki: PkiFiles  # its directory is the server's --tls-dir

    @classmethod
    def create(cls, work: Path) -> Parties:
        """A development CA under work/pki."""
        return cls(init_pki(work / "pki"))

    @property
    def tls_dir(self) -> Path:
        return self.pki.ca_cert.parent

    def agreement(self, reference: str, schema: LinkageSchema, **settings: Any) -> bytes:
        """A new agreement on `schema` (bit length and other settings as given), signed by
        both parties."""
        parties = {
            role: PartyInfo(role, certificate_fingerprint(self.pki.party_certs[role].read_bytes()))
            for role in ROLES
        }
        settings.setdefault("bit_length", schema.bit_length)
        # The benchmarks upload encodings without hardening unless they agree on some.
        settings.setdefault("hardening", [])
        document = new_agreement_document(
            reference=reference,
            requester=parties["requester"],
            custodian=parties["custodian"],
            schema_sha256=schema.sha256,
            **settings,
        )
        signed = SignedAgreement(agreement_from_document(document), {})
        for role in ROLES:
            signed = sign_with_files(
                signed, role, self.pki.party_certs[role], self.pki.party_keys[role]
            )
        return signed.to_bytes()

    def client(self, address: str, role: str) -> LinkageClient:
        tls = ClientTls(self.pki.ca_cert, self.pki.party_certs[role], self.pki.party_keys[role])
        return LinkageClient(address, role, tls)
