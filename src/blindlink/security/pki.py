"""A development certificate authority: CA, server and party certificates for mutual TLS."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from blindlink.errors import InputError
from blindlink.security.keys import (
    SecurityError,
    check_name,
    read_file,
    refuse_existing,
    write_new_file,
)

CA_NAME = "blindlink development CA"
_RESERVED_NAMES = ("ca", "server")
_CLOCK_SKEW = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class PkiFiles:
    """Where `init_pki` wrote each certificate (.pem) and private key (.key)."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    party_certs: dict[str, Path]
    party_keys: dict[str, Path]


@dataclass(frozen=True)
class _Issuer:
    """A CA certificate and the key that signs with it."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class _Profile:
    """What distinguishes a leaf certificate: its subject, purpose and alternative names."""

    common_name: str
    usage: x509.ObjectIdentifier
    alt_names: tuple[x509.GeneralName, ...] = ()


def init_pki(
    out_dir: Path,
    parties: Sequence[str] = ("requester", "custodian"),
    server_names: Sequence[str] = ("localhost", "127.0.0.1"),
    days: int = 365,
) -> PkiFiles:
    """Write ca, server and one certificate per party (NAME.pem, NAME.key) to out_dir.

    ECDSA P-256 with SHA-256; keys are written 0600; no existing file is overwritten."""
    out_dir = Path(out_dir)
    _check_parties(parties)
    _check_days(days)
    if not server_names:
        raise InputError(str(out_dir), "at least one server name is needed")
    names = ["ca", "server", *parties]
    refuse_existing([out_dir / f"{n}{suffix}" for n in names for suffix in (".pem", ".key")])
    ca_key = _new_key()
    issuer = _Issuer(_ca_certificate(ca_key, days), ca_key)
    ca_paths = _write_pair(out_dir, "ca", issuer.cert, ca_key)
    server_paths = _write_issued(out_dir, "server", issuer, _server_profile(server_names), days)
    party_paths = {p: _write_issued(out_dir, p, issuer, _client_profile(p), days) for p in parties}
    return PkiFiles(
        ca_cert=ca_paths[0],
        ca_key=ca_paths[1],
        server_cert=server_paths[0],
        server_key=server_paths[1],
        party_certs={p: paths[0] for p, paths in party_paths.items()},
        party_keys={p: paths[1] for p, paths in party_paths.items()},
    )


def issue_client_certificate(
    ca_cert: Path, ca_key: Path, name: str, out_dir: Path, days: int = 365
) -> tuple[Path, Path]:
    """Write out_dir/NAME.pem and NAME.key: a further party certificate signed by an existing CA."""
    check_name(name, "party name")
    _check_days(days)
    out_dir = Path(out_dir)
    refuse_existing([out_dir / f"{name}.pem", out_dir / f"{name}.key"])
    issuer = _load_issuer(ca_cert, ca_key)
    return _write_issued(out_dir, name, issuer, _client_profile(name), days)


def certificate_fingerprint(pem: bytes) -> str:
    """SHA-256 (lowercase hex) of a PEM certificate's DER bytes."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise SecurityError("not a PEM certificate") from None
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def read_certificates(path: Path, what: str) -> bytes:
    """Read a file of one or more PEM certificates, checking that it holds them."""
    pem = read_file(path, what)
    try:
        x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise InputError(str(path), f"not a PEM {what}") from None
    return pem


def read_key_pair(cert: Path, key: Path, what: str) -> tuple[bytes, bytes]:
    """Read a PEM certificate (chain) and the unencrypted PEM private key of its first one."""
    cert_pem = read_certificates(cert, f"{what} certificate")
    key_pem = read_file(key, f"{what} key")
    try:
        private_key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise InputError(str(key), "not an unencrypted PEM private key") from None
    if private_key.public_key() != x509.load_pem_x509_certificate(cert_pem).public_key():
        raise InputError(str(key), f"does not belong to the certificate in {cert}")
    return cert_pem, key_pem


def _check_parties(parties: Sequence[str]) -> None:
    for name in parties:
        check_name(name, "party name")
        if name in _RESERVED_NAMES:
            raise InputError(name, "is reserved for the CA or server files; choose another name")
    if len(set(parties)) != len(parties):
        raise InputError(", ".join(parties), "party names must be distinct")


def _check_days(days: int) -> None:
    if days < 1:
        raise InputError(str(days), "certificates must be valid for at least one day")


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(
    subject: str, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, days: int
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _ca_certificate(key: ec.EllipticCurvePrivateKey, days: int) -> x509.Certificate:
    builder = (
        _builder(CA_NAME, _name(CA_NAME), key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
    )
    return builder.sign(key, hashes.SHA256())


def _server_profile(server_names: Sequence[str]) -> _Profile:
    return _Profile(server_names[0], ExtendedKeyUsageOID.SERVER_AUTH, _alt_names(server_names))


def _client_profile(party: str) -> _Profile:
    return _Profile(party, ExtendedKeyUsageOID.CLIENT_AUTH)


def _alt_names(server_names: Sequence[str]) -> tuple[x509.GeneralName, ...]:
    """IP addresses as IPAddress entries, anything else as DNSName."""
    alt_names: list[x509.GeneralName] = []
    for name in server_names:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt_names.append(x509.DNSName(name))
    return tuple(alt_names)


def _leaf_certificate(
    issuer: _Issuer, key: ec.EllipticCurvePrivateKey, profile: _Profile, days: int
) -> x509.Certificate:
    builder = (
        _builder(profile.common_name, issuer.cert.subject, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([profile.usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    )
    if profile.alt_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(list(profile.alt_names)), critical=False
        )
    return builder.sign(issuer.key, hashes.SHA256())


def _write_issued(
    out_dir: Path, name: str, issuer: _Issuer, profile: _Profile, days: int
) -> tuple[Path, Path]:
    key = _new_key()
    return _write_pair(out_dir, name, _leaf_certificate(issuer, key, profile, days), key)


def _write_pair(
    out_dir: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> tuple[Path, Path]:
    """Write NAME.pem and NAME.key (0600) and return their paths."""
    cert_path, key_path = out_dir / f"{name}.pem", out_dir / f"{name}.key"
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_new_file(key_path, key_pem, private=True)
    write_new_file(cert_path, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return cert_path, key_path


def _load_issuer(ca_cert: Path, ca_key: Path) -> _Issuer:
    cert_pem, key_pem = read_key_pair(ca_cert, ca_key, "CA")
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InputError(str(ca_key), "not an ECDSA private key")
    return _Issuer(x509.load_pem_x509_certificate(cert_pem), key)
