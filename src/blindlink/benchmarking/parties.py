"""The two parties of a benchmark: TLS material from a development CA, signing keys, signed
agreements and clients."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from blindlink.agreement.model import PartyInfo, agreement_from_document, new_agreement_document
from blindlink.agreement.signing import SignedAgreement, sign_as
from blindlink.client.linkage_client import ClientTls, LinkageClient
from blindlink.encoding.schema import LinkageSchema
from blindlink.security.keys import generate_signing_key, load_private_key, public_key_text
from blindlink.security.pki import PkiFiles, certificate_fingerprint, init_pki

ROLES = ("requester", "custodian")


@dataclass(frozen=True)
class Parties:
    pki: PkiFiles  # its directory is the server's --tls-dir
    keys: dict[str, Ed25519PrivateKey]

    @classmethod
    def create(cls, work: Path) -> Parties:
        """A development CA under work/pki, and a signing key per party under work/ROLE."""
        pki = init_pki(work / "pki")
        keys = {role: load_private_key(generate_signing_key(work / role)[0]) for role in ROLES}
        return cls(pki, keys)

    @property
    def tls_dir(self) -> Path:
        return self.pki.ca_cert.parent

    def agreement(self, reference: str, schema: LinkageSchema, **settings: Any) -> bytes:
        """A new agreement on `schema` (bit length and other settings as given), signed by
        both parties."""
        parties = {
            role: PartyInfo(
                role,
                public_key_text(self.keys[role]),
                certificate_fingerprint(self.pki.party_certs[role].read_bytes()),
            )
            for role in ROLES
        }
        settings.setdefault("bit_length", schema.bit_length)
        document = new_agreement_document(
            reference=reference,
            requester=parties["requester"],
            custodian=parties["custodian"],
            schema_sha256=schema.sha256,
            **settings,
        )
        signed = SignedAgreement(agreement_from_document(document), {})
        for role in ROLES:
            signed = sign_as(signed, role, self.keys[role])
        return signed.to_bytes()

    def client(self, address: str, role: str) -> LinkageClient:
        tls = ClientTls(self.pki.ca_cert, self.pki.party_certs[role], self.pki.party_keys[role])
        return LinkageClient(address, role, tls)
