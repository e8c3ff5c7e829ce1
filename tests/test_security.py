"""Signing keys, the development PKI and mutual TLS over a real loopback socket."""

from __future__ import annotations

import argparse
import base64
import ipaddress
import stat
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from blindlink.cli.security_commands import add_security_commands
from blindlink.errors import InputError
from blindlink.security.keys import (
    PUBLIC_KEY_PREFIX,
    SecurityError,
    generate_signing_key,
    load_private_key,
    load_public_key_text,
    parse_public_key,
    public_key_text,
    sign,
    verify_signature,
)
from blindlink.security.pki import (
    PkiFiles,
    certificate_fingerprint,
    init_pki,
    issue_client_certificate,
)
from blindlink.security.tls import (
    channel_credentials,
    is_loopback,
    peer_fingerprint,
    server_credentials,
)

WHOAMI = "/blindlink.test.Identity/WhoAmI"
TIMEOUT = 3.0


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def fingerprint(path: Path) -> str:
    return certificate_fingerprint(path.read_bytes())


# --- signing keys ---


@pytest.fixture
def key_files(tmp_path: Path) -> tuple[Path, Path]:
    return generate_signing_key(tmp_path / "keys")


def test_sign_and_verify_round_trip(key_files: tuple[Path, Path]) -> None:
    key_path, pub_path = key_files
    key = load_private_key(key_path)
    public = load_public_key_text(pub_path)
    assert public == public_key_text(key) == public_key_text(key.public_key())
    assert verify_signature(public, b"agreement bytes", sign(key, b"agreement bytes"))


def test_verify_rejects_modified_data_other_key_and_garbage(key_files: tuple[Path, Path]) -> None:
    key = load_private_key(key_files[0])
    public = public_key_text(key)
    signature = sign(key, b"agreement bytes")
    other = load_private_key(generate_signing_key(key_files[0].parent, "other")[0])
    assert not verify_signature(public, b"agreement bytez", signature)
    assert not verify_signature(public, b"agreement bytes", sign(other, b"agreement bytes"))
    assert not verify_signature(public, b"agreement bytes", "not base64!")
    assert not verify_signature(public, b"agreement bytes", base64.b64encode(b"short").decode())
    assert not verify_signature("ed25519:garbage", b"agreement bytes", signature)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rsa:AAAA", "must start with 'ed25519:'"),
        (PUBLIC_KEY_PREFIX + "not base64!", "must be base64"),
        (PUBLIC_KEY_PREFIX + base64.b64encode(bytes(31)).decode(), "32 bytes, this one is 31"),
    ],
)
def test_parse_public_key_errors(text: str, message: str) -> None:
    with pytest.raises(SecurityError, match=message):
        parse_public_key(text)


def test_signing_key_files_are_private_and_never_overwritten(
    key_files: tuple[Path, Path],
) -> None:
    key_path, pub_path = key_files
    assert mode(key_path) == 0o600
    assert pub_path.read_text().startswith(PUBLIC_KEY_PREFIX)
    before = key_path.read_bytes()
    with pytest.raises(InputError, match="exists already") as raised:
        generate_signing_key(key_path.parent)
    assert raised.value.path == str(key_path)
    assert key_path.read_bytes() == before


def test_loading_bad_key_files_names_the_file(tmp_path: Path, pki: PkiFiles) -> None:
    with pytest.raises(InputError, match="not found") as raised:
        load_private_key(tmp_path / "missing.key")
    assert raised.value.path == str(tmp_path / "missing.key")
    with pytest.raises(InputError, match="not an Ed25519 private key"):
        load_private_key(pki.party_keys["requester"])
    bad_pub = tmp_path / "bad.pub"
    bad_pub.write_text("ed25519:AAAA\n")
    with pytest.raises(InputError, match="32 bytes"):
        load_public_key_text(bad_pub)


# --- the development PKI ---


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiFiles:
    return init_pki(tmp_path_factory.mktemp("pki"))


def test_init_pki_writes_every_file_with_private_keys(pki: PkiFiles) -> None:
    assert set(pki.party_certs) == set(pki.party_keys) == {"requester", "custodian"}
    keys = [pki.ca_key, pki.server_key, *pki.party_keys.values()]
    certs = [pki.ca_cert, pki.server_cert, *pki.party_certs.values()]
    assert all(mode(k) == 0o600 for k in keys)
    assert {p.name for p in keys + certs} == {
        f"{n}.{ext}" for n in ("ca", "server", "requester", "custodian") for ext in ("pem", "key")
    }
    fingerprints = [fingerprint(c) for c in certs]
    assert len(set(fingerprints)) == 4
    assert all(len(f) == 64 and set(f) <= set("0123456789abcdef") for f in fingerprints)


def test_certificate_attributes(pki: PkiFiles) -> None:
    ca, server = certificate(pki.ca_cert), certificate(pki.server_cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    for party, path in pki.party_certs.items():
        cert = certificate(path)
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == party
        assert cert.issuer == ca.subject
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
        cert.verify_directly_issued_by(ca)


def test_init_pki_refuses_to_overwrite(tmp_path: Path) -> None:
    (tmp_path / "custodian.key").write_text("precious")
    with pytest.raises(InputError, match="exists already") as raised:
        init_pki(tmp_path)
    assert raised.value.path == str(tmp_path / "custodian.key")
    assert [p.name for p in tmp_path.iterdir()] == ["custodian.key"]


@pytest.mark.parametrize("name", ["a b", "../up", "", "x" * 65, "ca", "server"])
def test_init_pki_rejects_bad_party_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(InputError):
        init_pki(tmp_path, parties=("requester", name))
    assert list(tmp_path.iterdir()) == []


def test_issue_client_certificate_uses_the_existing_ca(pki: PkiFiles, tmp_path: Path) -> None:
    cert_path, key_path = issue_client_certificate(
        pki.ca_cert, pki.ca_key, "auditor", tmp_path, days=2
    )
    cert = certificate(cert_path)
    cert.verify_directly_issued_by(certificate(pki.ca_cert))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "auditor"
    assert mode(key_path) == 0o600
    with pytest.raises(InputError, match="does not belong"):
        issue_client_certificate(pki.ca_cert, pki.server_key, "other", tmp_path)


def test_certificate_fingerprint_rejects_non_pem() -> None:
    with pytest.raises(SecurityError, match="not a PEM certificate"):
        certificate_fingerprint(b"-----BEGIN CERTIFICATE-----\nnope\n")


# --- mutual TLS over loopback ---


@dataclass
class TlsServer:
    address: str
    pki: PkiFiles


def _who_am_i(request: bytes, context: grpc.ServicerContext) -> bytes:
    return (peer_fingerprint(context) or "none").encode()


@pytest.fixture(scope="module")
def tls_server(pki: PkiFiles) -> Iterator[TlsServer]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "blindlink.test.Identity",
                {"WhoAmI": grpc.unary_unary_rpc_method_handler(_who_am_i)},
            )
        ]
    )
    credentials = server_credentials(pki.server_cert, pki.server_key, pki.ca_cert)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    yield TlsServer(f"127.0.0.1:{port}", pki)
    server.stop(grace=None)


def _health_check(channel: grpc.Channel) -> None:
    with channel:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)


def _assert_unavailable(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        _health_check(channel)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("party", ["requester", "custodian"])
def test_server_sees_the_party_certificate(tls_server: TlsServer, party: str) -> None:
    pki = tls_server.pki
    creds = channel_credentials(pki.ca_cert, pki.party_certs[party], pki.party_keys[party])
    with grpc.secure_channel(tls_server.address, creds) as channel:
        grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
        seen = channel.unary_unary(WHOAMI)(b"", timeout=TIMEOUT).decode()
    assert seen == fingerprint(pki.party_certs[party])


def test_client_with_a_new_certificate_from_the_ca_connects(
    tls_server: TlsServer, tmp_path: Path
) -> None:
    pki = tls_server.pki
    cert, key = issue_client_certificate(pki.ca_cert, pki.ca_key, "third", tmp_path)
    _health_check(
        grpc.secure_channel(tls_server.address, channel_credentials(pki.ca_cert, cert, key))
    )


def test_client_without_a_certificate_is_refused(tls_server: TlsServer) -> None:
    creds = grpc.ssl_channel_credentials(root_certificates=tls_server.pki.ca_cert.read_bytes())
    _assert_unavailable(grpc.secure_channel(tls_server.address, creds))


def test_client_certificate_from_another_ca_is_refused(
    tls_server: TlsServer, tmp_path: Path
) -> None:
    other = init_pki(tmp_path, parties=("requester",))
    creds = channel_credentials(
        tls_server.pki.ca_cert, other.party_certs["requester"], other.party_keys["requester"]
    )
    _assert_unavailable(grpc.secure_channel(tls_server.address, creds))


def test_server_not_signed_by_the_trusted_ca_is_refused(
    tls_server: TlsServer, tmp_path: Path
) -> None:
    other = init_pki(tmp_path, parties=("requester",))
    creds = channel_credentials(
        other.ca_cert, other.party_certs["requester"], other.party_keys["requester"]
    )
    _assert_unavailable(grpc.secure_channel(tls_server.address, creds))


def test_insecure_client_is_refused(tls_server: TlsServer) -> None:
    _assert_unavailable(grpc.insecure_channel(tls_server.address))


def test_credentials_report_bad_files(pki: PkiFiles, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        server_credentials(tmp_path / "none.pem", pki.server_key, pki.ca_cert)
    with pytest.raises(InputError, match="does not belong") as raised:
        server_credentials(pki.server_cert, pki.party_keys["requester"], pki.ca_cert)
    assert raised.value.path == str(pki.party_keys["requester"])
    with pytest.raises(InputError, match="not a PEM CA certificate"):
        channel_credentials(pki.ca_key, pki.party_certs["requester"], pki.party_keys["requester"])


# --- loopback addresses ---


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:50051", True),
        ("127.8.9.10:0", True),
        ("localhost:50051", True),
        ("LOCALHOST:1", True),
        ("[::1]:50051", True),
        ("0.0.0.0:50051", False),
        ("[::]:50051", False),
        ("192.168.1.4:50051", False),
        ("linkage.example:50051", False),
        ("[2001:db8::1]:50051", False),
        ("localhost.evil.example:1", False),
        (":50051", False),
    ],
)
def test_is_loopback(address: str, expected: bool) -> None:
    assert is_loopback(address) is expected


# --- command line ---


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_security_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.run(args))


def test_cli_pki_init(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parties = ["--party", "alpha", "--party", "beta"]
    options = ["--server-name", "linkage.example", "--days", "30"]
    assert run_cli("pki", "init", "--out", str(tmp_path), *parties, *options) == 0
    out = capsys.readouterr().out
    for party in ("alpha", "beta"):
        assert f"sha256 {fingerprint(tmp_path / f'{party}.pem')}" in out
    assert not (tmp_path / "requester.pem").exists()
    server = certificate(tmp_path / "server.pem")
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["linkage.example"]
    lifetime = server.not_valid_after_utc - server.not_valid_before_utc
    assert 30 <= lifetime.days <= 31


def test_cli_pki_init_defaults(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("pki", "init", "--out", str(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "party requester" in out and "party custodian" in out
    assert (tmp_path / "custodian.key").exists()
