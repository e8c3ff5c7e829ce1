"""Who may do what: transport identity (mutual TLS), membership of the agreement, signatures,
isolation between the two parties, signed receipts, and the loopback-only insecure mode."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import Identities
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.calls import run_project
from support.encodings import encodings_file, random_rows
from support.server_state import assert_unchanged, audit, state

from blindlink._generated import linkage_pb2 as pb
from blindlink._generated import linkage_pb2_grpc as pb_grpc
from blindlink.agreement.model import PartyInfo, agreement_from_document, new_agreement_document
from blindlink.agreement.signing import SignedAgreement, parse_signed, sign_with_files
from blindlink.audit.chain import AuditEntry
from blindlink.audit.verify import verify_receipt
from blindlink.canonical import canonical_json
from blindlink.client.linkage_client import LinkageClient, ServerError
from blindlink.encoding.encodings_file import read_header
from blindlink.encoding.schema import LinkageSchema
from blindlink.errors import AgreementError, BlindlinkError
from blindlink.security.certificate_signing import load_signing_key, sign_with_key
from blindlink.security.keys import public_key_text, sign
from blindlink.security.pki import certificate_fingerprint
from blindlink.server.app import RunningServer, start_server
from blindlink.server.identity import PARTY_METADATA_KEY
from blindlink.server.refusals import BURST, WINDOW, RefusalLimiter

Agreements = Callable[..., bytes]
DENIED = grpc.StatusCode.PERMISSION_DENIED
TIMEOUT = 5.0
OTHER_KEY = public_key_text(Ed25519PrivateKey.from_private_bytes(b"\x07" * 32))


def encodings(tmp_path: Path, name: str, rows: np.ndarray, schema: LinkageSchema) -> Path:
    return encodings_file(tmp_path / f"{name}.bin", rows, schema.sha256)


def uploads_by_party(status: pb.ProjectStatus) -> dict[str, list[pb.PartyUpload]]:
    found: dict[str, list[pb.PartyUpload]] = {"requester": [], "custodian": []}
    for entry in status.uploads:
        found[entry.party].append(entry)
    return found


@pytest.fixture
def outsider(address: str, identities: Identities) -> Iterator[LinkageClient]:
    with LinkageClient(address, "requester", identities.outsider) as client:
        yield client


@pytest.fixture
def project(requester: LinkageClient, make_agreement: Agreements) -> str:
    return requester.create_project(make_agreement()).project_id


# --- transport: mutual TLS with the project's CA ---------------------------------------------


def _status_over(channel: grpc.Channel, project: str) -> None:
    pb_grpc.LinkageStub(channel).GetStatus(pb.GetStatusRequest(project_id=project), timeout=TIMEOUT)


def test_client_without_a_certificate_cannot_connect(
    address: str, identities: Identities, server: RunningServer, project: str
) -> None:
    logged = len(audit(server))
    credentials = grpc.ssl_channel_credentials(
        root_certificates=identities.pki.ca_cert.read_bytes()
    )
    with grpc.secure_channel(address, credentials) as channel, pytest.raises(grpc.RpcError) as err:
        _status_over(channel, project)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(audit(server)) == logged


def test_client_with_a_certificate_from_another_ca_cannot_connect(
    address: str, identities: Identities, server: RunningServer, project: str
) -> None:
    logged = len(audit(server))
    with (
        LinkageClient(address, "requester", identities.foreign) as foreign,
        pytest.raises(ServerError) as err,
    ):
        foreign.status(project)
    assert err.value.code == grpc.StatusCode.UNAVAILABLE
    assert len(audit(server)) == logged


def test_plaintext_client_cannot_connect(address: str, server: RunningServer, project: str) -> None:
    logged = len(audit(server))
    with LinkageClient(address, "requester", None) as plaintext, pytest.raises(ServerError) as err:
        plaintext.status(project)
    assert err.value.code == grpc.StatusCode.UNAVAILABLE
    assert len(audit(server)) == logged


def test_both_parties_connect_with_their_certificates(
    requester: LinkageClient, custodian: LinkageClient, project: str
) -> None:
    assert requester.status(project).project_id == project
    assert custodian.status(project).project_id == project


# --- membership: only the two parties the agreement names ------------------------------------


def test_outsider_cannot_create_a_project_it_is_not_named_in(
    outsider: LinkageClient, server: RunningServer, make_agreement: Agreements
) -> None:
    before = state(server)
    with pytest.raises(ServerError) as err:
        outsider.create_project(make_agreement())
    assert err.value.code == DENIED
    assert err.value.details.startswith("parties:")
    assert_unchanged(before, state(server))
    assert server.store.project_ids() == []


OUTSIDER_CALLS: dict[str, Callable[[LinkageClient, str, str, Path], object]] = {
    "GetStatus": lambda c, p, r, f: c.status(p),
    "Upload": lambda c, p, r, f: c.upload(p, f, restart=True),
    "GetUploadOffset": lambda c, p, r, f: c.upload_offset(p, read_header(f).content_sha256),
    "WatchRun": lambda c, p, r, f: list(c.watch(p, r)),
    "GetRelease": lambda c, p, r, f: c.release(p, r),
    "ApproveRun": lambda c, p, r, f: c.approve(p, r),
    "DeleteProject": lambda c, p, r, f: c.delete(p),
}


@pytest.mark.parametrize("method", OUTSIDER_CALLS)
def test_outsider_is_refused_on_an_existing_project(
    identities: Identities,
    requester: LinkageClient,
    custodian: LinkageClient,
    outsider: LinkageClient,
    server: RunningServer,
    make_agreement: Agreements,
    schema: LinkageSchema,
    tmp_path: Path,
    method: str,
) -> None:
    project, run_id = run_project(
        requester, custodian, make_agreement(custodian_approval=True), schema, tmp_path
    )
    path = encodings(tmp_path, "outsider", random_rows(5, 70), schema)
    logged = len(audit(server, project))
    before = state(server)
    with pytest.raises(ServerError) as err:
        OUTSIDER_CALLS[method](outsider, project, run_id, path)
    assert err.value.code == DENIED
    assert err.value.details.startswith("parties:")
    new = audit(server, project)[logged:]
    # Who tried is recorded by their certificate's fingerprint, and nothing more.
    tried = certificate_fingerprint(identities.outsider.cert.read_bytes())
    assert [(e.kind, e.party, e.details) for e in new] == [
        ("request_refused", "", {"rule": "parties", "method": method, "certificate_sha256": tried})
    ]
    assert_unchanged(before, state(server))
    # The parties are unaffected.
    assert [r.run_id for r in requester.status(project).runs] == [run_id]
    assert not requester.status(project).runs[0].approved


# --- CreateProject: both parties' signatures over exactly these bytes ------------------------


@pytest.mark.parametrize(
    ("signers", "missing"),
    [
        (("requester",), ["custodian"]),
        (("custodian",), ["requester"]),
        ((), ["requester", "custodian"]),
    ],
)
def test_create_project_needs_both_signatures(
    requester: LinkageClient,
    custodian: LinkageClient,
    server: RunningServer,
    make_agreement: Agreements,
    signers: tuple[str, ...],
    missing: list[str],
) -> None:
    before = state(server)
    for client in (requester, custodian):
        with pytest.raises(ServerError) as err:
            client.create_project(make_agreement(signers=signers))
        assert err.value.code == DENIED
        assert err.value.details.startswith("signatures:")
        for role in missing:
            assert f"the {role} has not signed" in err.value.details
    assert_unchanged(before, state(server))
    assert custodian.create_project(make_agreement()).project_id


def test_create_project_refuses_signatures_over_other_bytes(
    requester: LinkageClient, server: RunningServer, make_agreement: Agreements
) -> None:
    signed = parse_signed(make_agreement(reference="what was signed"))
    other = parse_signed(make_agreement(reference="what is submitted")).agreement
    forged = SignedAgreement(other, signed.signatures, signed.certificates).to_bytes()
    before = state(server)
    with pytest.raises(ServerError) as err:
        requester.create_project(forged)
    assert err.value.code == DENIED
    assert err.value.details.startswith("signatures:")
    for role in ("requester", "custodian"):
        assert f"the {role}'s signature is not made with the key of the {role}'s certificate" in (
            err.value.details
        )
    assert_unchanged(before, state(server))


# --- CreateProject: only the holder of a named certificate signs for it -----------------------


def mallorys_agreement(identities: Identities, schema: LinkageSchema) -> SignedAgreement:
    """Mallory (a client certificate from the operator's CA that no agreement names) writes an
    agreement naming herself as the requester and Agency B's certificate as the custodian."""
    outsider = identities.outsider.cert.read_bytes()
    document = new_agreement_document(
        reference="mallory's linkage",
        requester=PartyInfo("Mallory", certificate_fingerprint(outsider)),
        custodian=identities.party("custodian"),
        schema_sha256=schema.sha256,
        bit_length=schema.bit_length,
    )
    unsigned = SignedAgreement(agreement_from_document(document), {})
    return sign_with_files(unsigned, "requester", identities.outsider.cert, identities.outsider.key)


def forged_custodian(signed: SignedAgreement, identities: Identities, forgery: str) -> bytes:
    """`signed` with a custodian signature Mallory made: with a key she generated, beside
    Agency B's certificate; or with her own certificate's key, beside her certificate."""
    certificate = identities.pki.party_certs["custodian"].read_text()
    key = ec.generate_private_key(ec.SECP256R1())
    if forgery == "her own certificate":
        certificate = identities.outsider.cert.read_text()
        key = load_signing_key(identities.outsider.key.read_bytes())
    signatures = {**signed.signatures, "custodian": sign_with_key(key, signed.signed_bytes)}
    certificates = {**signed.certificates, "custodian": certificate}
    return SignedAgreement(signed.agreement, signatures, certificates).to_bytes()


@pytest.mark.parametrize("forgery", ["a key she generated", "her own certificate"])
def test_a_certificate_holder_cannot_sign_for_a_certificate_she_does_not_hold(
    address: str,
    identities: Identities,
    server: RunningServer,
    schema: LinkageSchema,
    forgery: str,
) -> None:
    forged = forged_custodian(mallorys_agreement(identities, schema), identities, forgery)
    before = state(server)
    with (
        LinkageClient(address, "requester", identities.outsider) as mallory,
        pytest.raises(ServerError) as err,
    ):
        mallory.create_project(forged)
    assert err.value.code == DENIED
    assert err.value.details.startswith("signatures:")
    assert "the custodian's" in err.value.details
    assert "the requester's" not in err.value.details
    assert_unchanged(before, state(server))


def test_agreements_with_separate_signing_keys_create_no_projects(
    address: str, identities: Identities, server: RunningServer, schema: LinkageSchema
) -> None:
    """The attack as agreements allowed it before signatures were bound to certificates:
    Mallory names Ed25519 keys she generated beside the certificates, and signs with both."""
    keys = {role: Ed25519PrivateKey.generate() for role in ("requester", "custodian")}
    document = {**mallorys_agreement(identities, schema).agreement.document}
    document["blindlink_agreement"] = 1  # the format that had separate signing keys
    for role, key in keys.items():
        document["parties"][role]["public_key"] = public_key_text(key)
    signed_bytes = canonical_json(document)
    signatures = {role: sign(key, signed_bytes) for role, key in keys.items()}
    forged = canonical_json({"agreement": document, "signatures": signatures})
    before = state(server)
    with (
        LinkageClient(address, "requester", identities.outsider) as mallory,
        pytest.raises(ServerError) as err,
    ):
        mallory.create_project(forged)
    assert err.value.code == DENIED
    for role in ("requester", "custodian"):
        assert (
            f"the {role}'s signing key (parties.{role}.public_key) is not bound to the {role}'s "
            "certificate"
        ) in err.value.details
    assert "write a new agreement" in err.value.details
    assert_unchanged(before, state(server))


def test_one_party_cannot_sign_for_the_other(
    requester: LinkageClient,
    server: RunningServer,
    identities: Identities,
    make_agreement: Agreements,
) -> None:
    """The requester holds a certificate the agreement names, but not the custodian's."""
    pki = identities.pki
    genuine = parse_signed(make_agreement(signers=("requester",)))
    key = load_signing_key(pki.party_keys["requester"].read_bytes())
    signatures = {**genuine.signatures, "custodian": sign_with_key(key, genuine.signed_bytes)}
    before = state(server)
    # Beside the custodian's certificate, or its own in the custodian's place.
    for certificate in (pki.party_certs["custodian"], pki.party_certs["requester"]):
        certificates = {**genuine.certificates, "custodian": certificate.read_text()}
        forged = SignedAgreement(genuine.agreement, signatures, certificates)
        with pytest.raises(ServerError) as err:
            requester.create_project(forged.to_bytes())
        assert err.value.code == DENIED
        assert "the custodian's" in err.value.details
        assert "the requester's" not in err.value.details
    assert_unchanged(before, state(server))
    with pytest.raises(AgreementError, match="not the custodian's certificate"):
        sign_with_files(
            genuine, "custodian", pki.party_certs["requester"], pki.party_keys["requester"]
        )


def test_certificates_must_come_from_the_servers_client_ca(
    requester: LinkageClient,
    server: RunningServer,
    identities: Identities,
    schema: LinkageSchema,
) -> None:
    """A certificate from another CA, named for the custodian and signed with its key."""
    foreign = identities.foreign
    document = new_agreement_document(
        reference="a custodian from another CA",
        requester=identities.party("requester"),
        custodian=PartyInfo("elsewhere", certificate_fingerprint(foreign.cert.read_bytes())),
        schema_sha256=schema.sha256,
        bit_length=schema.bit_length,
    )
    signed = identities.sign(SignedAgreement(agreement_from_document(document), {}), "requester")
    signed = sign_with_files(signed, "custodian", foreign.cert, foreign.key)
    assert signed.problems() == []  # bound to its certificate, but the CA did not issue it
    before = state(server)
    with pytest.raises(ServerError) as err:
        requester.create_project(signed.to_bytes())
    assert err.value.code == DENIED
    assert "the custodian's certificate is not a client certificate of this CA" in (
        err.value.details
    )
    assert "the requester's" not in err.value.details
    assert_unchanged(before, state(server))


def test_projects_of_agreements_with_separate_signing_keys_keep_working(
    requester: LinkageClient, server: RunningServer, make_agreement: Agreements
) -> None:
    """A project created before signatures were bound to certificates stays usable."""
    legacy = json.loads(make_agreement(signers=()))["agreement"]
    legacy["blindlink_agreement"] = 1  # the format that had separate signing keys
    for role, letter in (("requester", "A"), ("custodian", "B")):
        legacy["parties"][role]["public_key"] = f"ed25519:{letter * 43}="
    agreement = agreement_from_document(legacy)
    server.store.create_project(agreement.project_id, agreement.canonical_bytes, {}, "requester")
    assert requester.status(agreement.project_id).project_id == agreement.project_id


# --- isolation between the parties -----------------------------------------------------------


def test_requester_cannot_read_the_custodians_release_view(
    requester: LinkageClient,
    custodian: LinkageClient,
    make_agreement: Agreements,
    schema: LinkageSchema,
    tmp_path: Path,
) -> None:
    agreement = make_agreement(requester_release="count", custodian_release="own_rows")
    project, run_id = run_project(requester, custodian, agreement, schema, tmp_path)
    theirs = custodian.release(project, run_id)
    assert list(theirs.own_rows) == list(range(10, 20))
    mine = requester.release(project, run_id)
    assert (mine.party, mine.kind, mine.match_count) == ("requester", pb.RELEASE_KIND_COUNT, 10)
    assert (list(mine.own_rows), list(mine.other_rows)) == ([], [])
    assert json.loads(mine.receipt)["details"]["rows"] == 0


def test_requester_uploads_are_always_requester_batches(
    requester: LinkageClient,
    custodian: LinkageClient,
    server: RunningServer,
    project: str,
    schema: LinkageSchema,
    tmp_path: Path,
) -> None:
    rows = random_rows(6, 71)
    receipts = [
        requester.upload(project, encodings(tmp_path, f"r{i}", random_rows(6, 72 + i), schema))
        for i in range(2)
    ]
    assert [(r.party, bool(r.run_id)) for r in receipts] == [("requester", True)] * 2
    for client in (requester, custodian):
        assert [u.uploaded for u in uploads_by_party(client.status(project))["custodian"]] == [
            False
        ]
    assert server.store.live_custodian_upload(project) is None
    assert [u.party for u in server.store.uploads(project)] == ["requester", "requester"]
    # The custodian's slot is still free, and only the custodian fills it.
    receipt = custodian.upload(project, encodings(tmp_path, "c", rows, schema))
    assert (receipt.party, receipt.run_id) == ("custodian", "")


def test_status_never_shows_the_other_partys_counts_or_upload_ids(
    requester: LinkageClient,
    custodian: LinkageClient,
    project: str,
    schema: LinkageSchema,
    tmp_path: Path,
) -> None:
    batches = [
        requester.upload(project, encodings(tmp_path, f"r{n}", random_rows(n, n), schema))
        for n in (7, 9)
    ]
    reference = custodian.upload(project, encodings(tmp_path, "c", random_rows(13, 72), schema))
    for batch in batches:
        assert requester.wait(project, batch.run_id).state == pb.RUN_STATE_DONE

    mine = uploads_by_party(requester.status(project))
    assert [(u.uploaded, u.count, u.upload_id) for u in mine["requester"]] == [
        (True, b.count, b.upload_id) for b in batches
    ]
    assert [(u.uploaded, u.count, u.upload_id) for u in mine["custodian"]] == [(True, 0, "")]
    assert reference.upload_id not in str(requester.status(project))

    # Runs have IDs of their own: the custodian sees the runs, never the batches' upload IDs.
    custodian_view = str(custodian.status(project))
    assert all(b.run_id in custodian_view and b.upload_id not in custodian_view for b in batches)
    theirs = uploads_by_party(custodian.status(project))
    assert [(u.uploaded, u.count, u.upload_id) for u in theirs["custodian"]] == [
        (True, 13, reference.upload_id)
    ]
    assert [(u.uploaded, u.count, u.upload_id) for u in theirs["requester"]] == [(True, 0, "")]


# --- receipts --------------------------------------------------------------------------------


def test_receipts_verify_and_are_in_the_audit_log(
    requester: LinkageClient,
    custodian: LinkageClient,
    server: RunningServer,
    make_agreement: Agreements,
    schema: LinkageSchema,
    tmp_path: Path,
) -> None:
    created = requester.create_project(make_agreement())
    project = created.project_id
    assert created.server_public_key == server.public_key
    uploaded = [
        custodian.upload(project, encodings(tmp_path, "c", random_rows(8, 73), schema)),
        requester.upload(project, encodings(tmp_path, "r", random_rows(5, 74), schema)),
    ]
    run_id = uploaded[1].run_id
    assert requester.wait(project, run_id).state == pb.RUN_STATE_DONE
    released = [requester.release(project, run_id), custodian.release(project, run_id)]
    receipts = (
        [json.loads(created.receipt)]
        + [json.loads(u.receipt) for u in uploaded]
        + [json.loads(r.receipt) for r in released]
    )
    assert [(r["kind"], r["party"]) for r in receipts] == [
        ("project_created", "requester"),
        ("upload_committed", "custodian"),
        ("upload_committed", "requester"),
        ("release_fetched", "requester"),
        ("release_fetched", "custodian"),
    ]
    logged = {e.seq: e for e in audit(server, project)}
    for receipt in receipts:
        assert verify_receipt(receipt, created.server_public_key), receipt["kind"]
        assert logged[receipt["seq"]] == AuditEntry.from_json(receipt)
        assert receipt["project_id"] == project
    altered = {**receipts[1], "details": {**receipts[1]["details"], "count": 80}}
    assert not verify_receipt(altered, created.server_public_key)
    assert not verify_receipt(receipts[1], OTHER_KEY)


# --- insecure (plaintext) mode ---------------------------------------------------------------


@pytest.mark.parametrize("listen", ["0.0.0.0:0", "[::]:0", "192.0.2.1:0", "example.org:0"])
def test_insecure_server_refuses_to_listen_beyond_loopback(tmp_path: Path, listen: str) -> None:
    with pytest.raises(BlindlinkError, match="TLS"):
        start_server(tmp_path / "data", listen, None)
    assert not (tmp_path / "data").exists()


def test_insecure_server_on_loopback_identifies_parties_by_metadata(
    tmp_path: Path, make_agreement: Agreements, schema: LinkageSchema
) -> None:
    running = start_server(tmp_path / "data", "127.0.0.1:0", None, purge_interval=0.2)
    address = f"127.0.0.1:{running.port}"
    try:
        with (
            LinkageClient(address, "requester", None) as requester,
            LinkageClient(address, "custodian", None) as custodian,
        ):
            project, run_id = run_project(requester, custodian, make_agreement(), schema, tmp_path)
            mine, theirs = requester.release(project, run_id), custodian.release(project, run_id)
            assert (mine.party, list(mine.own_rows)) == ("requester", list(range(10)))
            assert (theirs.party, theirs.kind, theirs.match_count) == (
                "custodian",
                pb.RELEASE_KIND_COUNT,
                10,
            )
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.LinkageStub(channel)
            request = pb.GetStatusRequest(project_id=project)
            claims: list[tuple[str, ...]] = [(), ("operator",), ("requester", "custodian")]
            for claimed in claims:
                metadata = tuple((PARTY_METADATA_KEY, role) for role in claimed)
                with pytest.raises(grpc.RpcError) as err:
                    stub.GetStatus(request, metadata=metadata, timeout=TIMEOUT)
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert PARTY_METADATA_KEY in err.value.details()
            reply = stub.GetStatus(
                request, metadata=((PARTY_METADATA_KEY, "custodian"),), timeout=TIMEOUT
            )
            assert reply.runs[0].match_count == 10
    finally:
        running.stop(grace=1)


def test_a_flood_of_refusals_does_not_grow_the_audit_log_without_limit(
    identities: Identities, outsider: LinkageClient, server: RunningServer, project: str
) -> None:
    logged = len(audit(server, project))
    for _ in range(3 * BURST):
        with pytest.raises(ServerError):
            outsider.status(project)
    new = audit(server, project)[logged:]
    tried = certificate_fingerprint(identities.outsider.cert.read_bytes())
    assert len(new) == BURST
    assert {e.details["certificate_sha256"] for e in new} == {tried}


def test_refusals_left_out_of_the_log_are_counted_in_the_next_logged_one() -> None:
    now = [0.0]
    limiter = RefusalLimiter(clock=lambda: now[0])
    assert [limiter.admit("mallory") for _ in range(BURST)] == [0] * BURST
    assert [limiter.admit("mallory") for _ in range(25)] == [None] * 25
    assert limiter.admit("a party") == 0  # others are not held back
    now[0] = WINDOW
    assert limiter.admit("mallory") == 25
    assert limiter.admit("mallory") == 0
