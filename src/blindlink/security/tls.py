"""gRPC TLS credentials (mutual authentication) and the identity of the calling party."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import grpc

from blindlink.security.pki import certificate_fingerprint, read_certificates, read_key_pair

PEER_CERT_KEY = "x509_pem_cert"


def server_credentials(cert: Path, key: Path, client_ca: Path) -> grpc.ServerCredentials:
    """TLS server credentials that require a client certificate signed by `client_ca`."""
    cert_pem, key_pem = read_key_pair(cert, key, "server")
    return grpc.ssl_server_credentials(
        [(key_pem, cert_pem)],
        root_certificates=read_certificates(client_ca, "client CA certificate"),
        require_client_auth=True,
    )


def channel_credentials(ca: Path, cert: Path, key: Path) -> grpc.ChannelCredentials:
    """Client credentials: trust `ca` for the server, present cert/key as the client identity."""
    cert_pem, key_pem = read_key_pair(cert, key, "client")
    return grpc.ssl_channel_credentials(
        root_certificates=read_certificates(ca, "CA certificate"),
        private_key=key_pem,
        certificate_chain=cert_pem,
    )


def peer_fingerprint(context: grpc.ServicerContext) -> str | None:
    """SHA-256 hex of the calling client's certificate, or None if it presented none."""
    # grpc-stubs types the values as bytes; grpc gives each key a list of values.
    certs: list[bytes] | None = context.auth_context().get(PEER_CERT_KEY)  # type: ignore[assignment]
    return certificate_fingerprint(certs[0]) if certs else None


def is_loopback(address: str) -> bool:
    """True if a HOST:PORT address is on loopback only (127.0.0.0/8, [::1], localhost)."""
    host = _host(address)
    if host.lower() == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _host(address: str) -> str:
    """The host part of HOST:PORT, [IPV6]:PORT, or a bare host."""
    if address.startswith("["):
        return address[1 : address.find("]")] if "]" in address else ""
    if address.count(":") == 1:
        return address.partition(":")[0]
    return address
