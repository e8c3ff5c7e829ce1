"""The signed agreement envelope:
`{"agreement": {...}, "signatures": {role: signature}, "certificates": {role: PEM}}`.

Each party signs the agreement's canonical bytes with the private key of the client certificate
the agreement names for it, and adds that certificate: only the holder of a named certificate
can sign for its role.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from blindlink.agreement.document import ROLES, load_json
from blindlink.agreement.model import Agreement, PartyInfo, agreement_from_document
from blindlink.canonical import canonical_json
from blindlink.errors import AgreementError, InputError
from blindlink.security.certificate_signing import (
    PrivateKey,
    client_certificate_problem,
    load_signing_key,
    sign_with_key,
    signed_by_certificate,
)
from blindlink.security.keys import SecurityError
from blindlink.security.pki import certificate_fingerprint, read_certificates, read_key_pair

# What a party signs starts with this, so that no signature made by a certificate key for
# another purpose (a TLS handshake) can pass for an agreement signature, nor the reverse.
SIGNING_CONTEXT = b"blindlink agreement signature\n"
_ENVELOPE = {"agreement", "signatures", "certificates"}


@dataclass(frozen=True)
class SignedAgreement:
    agreement: Agreement
    signatures: dict[str, str]
    certificates: dict[str, str] = field(default_factory=dict)

    @classmethod
    def unsigned(cls, document: dict[str, Any]) -> SignedAgreement:
        """A new agreement document (`new_agreement_document`), validated, with no signatures
        yet."""
        return cls(agreement_from_document(document), {})

    def to_bytes(self) -> bytes:
        return canonical_json(self.document())

    def document(self) -> dict[str, Any]:
        return {
            "agreement": self.agreement.document,
            "signatures": self.signatures,
            "certificates": self.certificates,
        }

    @property
    def signed_bytes(self) -> bytes:
        """What each party signs: the context, then the agreement's canonical bytes."""
        return SIGNING_CONTEXT + self.agreement.canonical_bytes

    def problems(self, client_ca: bytes | None = None) -> list[str]:
        """Why the signatures do not show that the holders of both named certificates signed
        exactly these bytes; [] if they do. With `client_ca` (PEM), each certificate must also
        be a client certificate valid now and issued by that CA."""
        found = [problem for role in ROLES if (problem := self._problem(role, client_ca))]
        if any(party.public_key is not None for party in self.agreement.parties.values()):
            found.append(
                "agreements that name separate signing keys, as they did before parties signed "
                "with their certificate's key, create no new projects: write a new agreement and "
                "sign it with each party's certificate key"
            )
        return found

    def _problem(self, role: str, client_ca: bytes | None) -> str | None:
        party = self.agreement.parties[role]
        if party.public_key is not None:
            return (
                f"the {role}'s signing key (parties.{role}.public_key) is not bound to the "
                f"{role}'s certificate"
            )
        signature, pem = self.signatures.get(role), self.certificates.get(role)
        if signature is None:
            return f"the {role} has not signed"
        if pem is None:
            return f"the {role}'s certificate is missing (the {role} adds it when signing)"
        try:
            chain = x509.load_pem_x509_certificates(pem.encode("utf-8"))
        except (ValueError, UnicodeEncodeError):
            return f"the {role}'s certificate is not a PEM certificate"
        if certificate_fingerprint(pem.encode("utf-8")) != party.certificate_sha256:
            return f"the {role}'s certificate is not the one the agreement names for the {role}"
        if client_ca is not None and (reason := client_certificate_problem(chain, client_ca)):
            return f"the {role}'s certificate is not a client certificate of this CA: {reason}"
        if not signed_by_certificate(chain[0], self.signed_bytes, signature):
            return (
                f"the {role}'s signature is not made with the key of the {role}'s certificate "
                "over these agreement bytes"
            )
        return None


def parse_signed(raw: bytes) -> SignedAgreement:
    """Parse an envelope; an unsigned agreement document is accepted with no signatures."""
    document = load_json(raw, "signed agreement")
    if not (isinstance(document, dict) and {"agreement", "signatures"} <= set(document)):
        return SignedAgreement(agreement_from_document(document), {})
    if not set(document) <= _ENVELOPE:
        raise AgreementError(
            "a signed agreement has only the keys agreement, signatures and certificates"
        )
    signatures = _by_role(document["signatures"], "signatures", "a signature string")
    certificates = _by_role(document.get("certificates", {}), "certificates", "a PEM string")
    return SignedAgreement(agreement_from_document(document["agreement"]), signatures, certificates)


def _by_role(value: Any, key: str, what: str) -> dict[str, str]:
    if (
        not isinstance(value, dict)
        or not set(value) <= set(ROLES)
        or not all(isinstance(v, str) for v in value.values())
    ):
        raise AgreementError(f"{key} must map a role (requester, custodian) to {what}")
    return dict(value)


def sign_as(
    signed: SignedAgreement, role: str, cert_pem: bytes, key: PrivateKey
) -> SignedAgreement:
    """Add `role`'s signature and certificate; the certificate must be the one the agreement
    names for that role, and `key` its private key."""
    if role not in ROLES:
        raise AgreementError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    party = signed.agreement.parties[role]
    if party.public_key is not None:
        raise AgreementError(
            f"this agreement names a separate signing key for the {role}, as agreements did "
            "before parties signed with their certificate's key; write a new agreement"
        )
    try:
        fingerprint = certificate_fingerprint(cert_pem)
    except SecurityError as exc:
        raise AgreementError(str(exc)) from None
    if fingerprint != party.certificate_sha256:
        raise AgreementError(
            f"this certificate is not the {role}'s certificate named in the agreement"
        )
    chain = x509.load_pem_x509_certificates(cert_pem)
    if key.public_key() != chain[0].public_key():
        raise AgreementError("this key is not the private key of this certificate")
    # Only the certificates: a PEM file may hold other text (such as a bag's attributes).
    pem = b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in chain)
    signatures = {**signed.signatures, role: sign_with_key(key, signed.signed_bytes)}
    certificates = {**signed.certificates, role: pem.decode("ascii")}
    return SignedAgreement(signed.agreement, signatures, certificates)


def sign_with_files(signed: SignedAgreement, role: str, cert: Path, key: Path) -> SignedAgreement:
    """`sign_as` with a certificate file and the file of its private key."""
    cert_pem, key_pem = read_key_pair(cert, key, "your")
    try:
        private_key = load_signing_key(key_pem)
    except SecurityError as exc:
        raise InputError(str(key), str(exc)) from None
    return sign_as(signed, role, cert_pem, private_key)


def load_agreement(path: Path) -> SignedAgreement:
    """A signed agreement file (or an unsigned agreement document), parsed and validated;
    `.problems()` checks its signatures."""
    try:
        return parse_signed(Path(path).read_bytes())
    except FileNotFoundError:
        raise InputError(str(path), "agreement file not found") from None


def party_info(name: str, certificate: Path) -> PartyInfo:
    """A party as an agreement names it: its name and its TLS client certificate's hash."""
    pem = read_certificates(Path(certificate), "certificate")
    return PartyInfo(name, certificate_fingerprint(pem))
