"""Signatures by the key of a TLS client certificate.

A party signs agreements with the private key of the client certificate the agreement names,
so that only the holder of that certificate can sign for it. ECDSA (with SHA-256), Ed25519 and
RSA (PSS with SHA-256) certificate keys are accepted; `blindlink pki init` issues ECDSA P-256.
"""

from __future__ import annotations

import base64
import binascii
import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from blindlink.security.keys import SecurityError

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)


def load_signing_key(key_pem: bytes) -> PrivateKey:
    """A certificate's unencrypted PEM private key, of a kind that can sign."""
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise SecurityError("not an unencrypted PEM private key") from None
    if not isinstance(key, PrivateKey):
        raise SecurityError("not an ECDSA, Ed25519 or RSA private key")
    return key


def sign_with_key(key: PrivateKey, data: bytes) -> str:
    """Sign `data` with a certificate's private key; the signature is base64 text."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        raw = key.sign(data, ec.ECDSA(hashes.SHA256()))
    elif isinstance(key, rsa.RSAPrivateKey):
        raw = key.sign(data, _PSS, hashes.SHA256())
    else:
        raw = key.sign(data)
    return base64.b64encode(raw).decode("ascii")


def signed_by_certificate(cert: x509.Certificate, data: bytes, signature: str) -> bool:
    """True only if `signature` is a valid signature of `data` by the certificate's key.

    Never raises: a malformed signature or an unsupported key is not a valid signature."""
    key = cert.public_key()
    try:
        raw = base64.b64decode(signature, validate=True)
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(raw, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(raw, data, _PSS, hashes.SHA256())
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(raw, data)
        else:
            return False
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def client_certificate_problem(chain: list[x509.Certificate], roots_pem: bytes) -> str | None:
    """Why `chain` (a leaf, then any intermediates) is not a client certificate valid now and
    issued by one of the CA certificates in `roots_pem`; None when it is."""
    roots = x509.load_pem_x509_certificates(roots_pem)
    # Party certificates name no host, so unlike web certificates they need no alternative names.
    leaf_policy = ExtensionPolicy.webpki_defaults_ee().may_be_present(
        x509.SubjectAlternativeName, Criticality.AGNOSTIC, None
    )
    verifier = (
        PolicyBuilder()
        .store(Store(roots))
        .time(datetime.datetime.now(datetime.UTC))
        .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=leaf_policy)
        .build_client_verifier()
    )
    try:
        verifier.verify(chain[0], chain[1:])
    except VerificationError as exc:
        return str(exc).split(" (encountered", 1)[0]
    return None
