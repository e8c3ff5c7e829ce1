"""The signed agreement envelope: `{"agreement": {...}, "signatures": {role: signature}}`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from blindlink.agreement.model import ROLES, Agreement, agreement_from_document, load_json
from blindlink.canonical import canonical_json
from blindlink.errors import AgreementError
from blindlink.security.keys import public_key_text, sign, verify_signature


@dataclass(frozen=True)
class SignedAgreement:
    agreement: Agreement
    signatures: dict[str, str]

    def to_bytes(self) -> bytes:
        return canonical_json({"agreement": self.agreement.document, "signatures": self.signatures})

    def problems(self) -> list[str]:
        """Why the signatures do not bind both parties to exactly these bytes; [] if they do."""
        found = []
        for role in ROLES:
            signature = self.signatures.get(role)
            if signature is None:
                found.append(f"the {role} has not signed")
            elif not verify_signature(
                self.agreement.parties[role].public_key, self.agreement.canonical_bytes, signature
            ):
                found.append(
                    f"the {role}'s signature does not match these agreement bytes "
                    f"and the {role}'s public key"
                )
        return found


def parse_signed(raw: bytes) -> SignedAgreement:
    """Parse an envelope; an unsigned agreement document is accepted with no signatures."""
    document = load_json(raw, "signed agreement")
    if isinstance(document, dict) and set(document) == {"agreement", "signatures"}:
        signatures = document["signatures"]
        if (
            not isinstance(signatures, dict)
            or not set(signatures) <= set(ROLES)
            or not all(isinstance(s, str) for s in signatures.values())
        ):
            raise AgreementError(
                "signatures must map a role (requester, custodian) to a signature string"
            )
        return SignedAgreement(agreement_from_document(document["agreement"]), dict(signatures))
    return SignedAgreement(agreement_from_document(document), {})


def sign_as(signed: SignedAgreement, role: str, key: Ed25519PrivateKey) -> SignedAgreement:
    """Add `role`'s signature; the key must be the one the agreement names for that role."""
    if role not in ROLES:
        raise AgreementError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    if public_key_text(key) != signed.agreement.parties[role].public_key:
        raise AgreementError(f"this key is not the {role}'s key named in the agreement")
    signatures: dict[str, Any] = dict(signed.signatures)
    signatures[role] = sign(key, signed.agreement.canonical_bytes)
    return SignedAgreement(signed.agreement, signatures)
