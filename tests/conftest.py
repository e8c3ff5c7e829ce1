"""Shared fixtures: TLS material (whose keys also sign agreements), and a real linkage server on
a loopback port."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from clkhash import schema as clkhash_schema_format

from blindlink.agreement.model import PartyInfo, agreement_from_document, new_agreement_document
from blindlink.agreement.signing import SignedAgreement, sign_with_files
from blindlink.cli.main import main
from blindlink.client.linkage_client import ClientTls, LinkageClient
from blindlink.encoding.schema import LinkageSchema, default_schema_path, load_schema
from blindlink.security.pki import (
    PkiFiles,
    certificate_fingerprint,
    init_pki,
    issue_client_certificate,
)
from blindlink.server.app import RunningServer, ServerTls, start_server
from blindlink.synthetic import GeneratedFiles

ROLES = ("requester", "custodian")


@dataclass(frozen=True)
class Identities:
    """A development CA with certificates for both parties and an outsider, and a certificate
    from an unrelated CA."""

    pki: PkiFiles
    outsider: ClientTls
    foreign: ClientTls

    def tls(self, role: str) -> ClientTls:
        return ClientTls(self.pki.ca_cert, self.pki.party_certs[role], self.pki.party_keys[role])

    def party(self, role: str) -> PartyInfo:
        return PartyInfo(
            f"{role} agency", certificate_fingerprint(self.pki.party_certs[role].read_bytes())
        )

    def sign(self, signed: SignedAgreement, role: str) -> SignedAgreement:
        """`role`'s signature, made with its certificate's key."""
        return sign_with_files(signed, role, self.pki.party_certs[role], self.pki.party_keys[role])


@pytest.fixture(scope="session")
def schema() -> LinkageSchema:
    return load_schema(default_schema_path())


def clkhash_schema(schema: LinkageSchema) -> clkhash_schema_format.Schema:
    """clkhash's own reading of a schema, for tests that compare blindlink with clkhash."""
    return clkhash_schema_format.from_json_dict(copy.deepcopy(schema.document))


@pytest.fixture(scope="session")
def identities(tmp_path_factory: pytest.TempPathFactory) -> Identities:
    root = tmp_path_factory.mktemp("identities")
    pki = init_pki(root / "pki", ROLES)
    outsider_cert, outsider_key = issue_client_certificate(
        pki.ca_cert, pki.ca_key, "outsider", root / "outsider"
    )
    other = init_pki(root / "other-ca", ("requester",))
    return Identities(
        pki,
        ClientTls(pki.ca_cert, outsider_cert, outsider_key),
        ClientTls(pki.ca_cert, other.party_certs["requester"], other.party_keys["requester"]),
    )


def agreement_bytes(
    identities: Identities,
    schema: LinkageSchema,
    reference: str,
    signers: tuple[str, ...] = ROLES,
    **settings: object,
) -> bytes:
    """An agreement for the default schema signed by `signers`; `settings` are settings of
    `new_agreement_document`. Unhardened unless the settings name hardening: the tests make
    their encodings without it."""
    settings.setdefault("hardening", [])
    document = new_agreement_document(
        reference=reference,
        requester=identities.party("requester"),
        custodian=identities.party("custodian"),
        schema_sha256=schema.sha256,
        bit_length=schema.bit_length,
        **settings,
    )  # type: ignore[arg-type]
    signed = SignedAgreement(agreement_from_document(document), {})
    for role in signers:
        signed = identities.sign(signed, role)
    return signed.to_bytes()


@pytest.fixture
def make_agreement(identities: Identities, schema: LinkageSchema) -> Callable[..., bytes]:
    """agreement_bytes for this test's parties: keyword arguments are its settings, plus
    `signers` (default: both parties)."""

    def make(
        reference: str = "test agreement", signers: tuple[str, ...] = ROLES, **settings: object
    ) -> bytes:
        return agreement_bytes(identities, schema, reference, signers, **settings)

    return make


@pytest.fixture
def server(tmp_path: Path, identities: Identities) -> Iterator[RunningServer]:
    pki = identities.pki
    running = start_server(
        tmp_path / "server-data",
        "127.0.0.1:0",
        ServerTls(pki.server_cert, pki.server_key, pki.ca_cert),
        purge_interval=0.2,
    )
    yield running
    running.stop(grace=1)


@pytest.fixture
def address(server: RunningServer) -> str:
    return f"127.0.0.1:{server.port}"


@pytest.fixture
def requester(address: str, identities: Identities) -> Iterator[LinkageClient]:
    with LinkageClient(address, "requester", identities.tls("requester")) as client:
        yield client


@pytest.fixture
def custodian(address: str, identities: Identities) -> Iterator[LinkageClient]:
    with LinkageClient(address, "custodian", identities.tls("custodian")) as client:
        yield client


# --- the command line, as the parties run it -----------------------------------------------------


def run(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(list(args)) == 0, capsys.readouterr()
    return capsys.readouterr().out


def tls_args(identities: Identities, role: str) -> list[str]:
    tls = identities.tls(role)
    return ["--ca", str(tls.ca), "--cert", str(tls.cert), "--key", str(tls.key)]


def party_args(identities: Identities) -> list[str]:
    """`agreement new` arguments naming both parties by their certificates from the test CA."""
    return [
        "--requester", "A",
        "--requester-cert", str(identities.pki.party_certs["requester"]),
        "--custodian", "B",
        "--custodian-cert", str(identities.pki.party_certs["custodian"]),
    ]  # fmt: skip


def sign_args(identities: Identities, role: str) -> list[str]:
    """`agreement sign` arguments: the role and its certificate and key, which signs."""
    pki = identities.pki
    return [
        "--role",
        role,
        "--cert",
        str(pki.party_certs[role]),
        "--key",
        str(pki.party_keys[role]),
    ]


@dataclass(frozen=True)
class Cli:
    """The blindlink command as both parties run it against the test server."""

    capsys: pytest.CaptureFixture[str]
    identities: Identities
    address: str
    workdir: Path

    def __call__(self, *args: str) -> str:
        return run(self.capsys, *args)

    def party(self, role: str, *args: str) -> str:
        """A party command, with the server address and the party's TLS material."""
        tls = tls_args(self.identities, role)
        return self(*args, "--server", self.address, "--party", role, *tls)

    def signed_agreement(self, reference: str, *options: str) -> Path:
        """`agreement new` with `options`, signed by both parties."""
        path = self.workdir / f"{reference}.json"
        parties = party_args(self.identities)
        self("agreement", "new", "--reference", reference, *parties, *options, "--out", str(path))
        for role in ("requester", "custodian"):
            self("agreement", "sign", str(path), *sign_args(self.identities, role))
        return path

    def link(self, agreement: Path, files: GeneratedFiles) -> tuple[str, dict[str, str]]:
        """Create the project, encode with the agreement and upload both sides (as
        workdir/ROLE.bin, ID maps workdir/ROLE.json), wait for the run: the project ID and
        what `encode` printed per party."""
        project = self.party("requester", "project", "create", "--agreement", str(agreement))
        project = project.strip()
        secret = self.workdir / "secret"
        self("secret", "new", "--out", str(secret))
        printed = {}
        for role, source in (("custodian", files.custodian), ("requester", files.requester)):
            out, ids = self.workdir / f"{role}.bin", self.workdir / f"{role}.json"
            printed[role] = self(
                "encode", str(source), "--secret-file", str(secret), "--agreement",
                str(agreement), "--out", str(out), "--id-map", str(ids),
            )  # fmt: skip
            self.party(role, "upload", "--project", project, str(out))
        assert "done" in self.party("requester", "status", "--project", project, "--watch")
        return project, printed


@pytest.fixture
def cli(
    capsys: pytest.CaptureFixture[str], identities: Identities, address: str, tmp_path: Path
) -> Cli:
    return Cli(capsys, identities, address, tmp_path)
