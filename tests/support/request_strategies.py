"""Hypothesis strategies for requests to the Linkage service: well-formed messages with any
field values, raw bytes, and upload streams, mixing in the IDs of a real project and run so
that requests reach past the first checks."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

from blindlink._generated import linkage_pb2 as pb

NASTY_TEXT = (
    "",
    "../../etc/passwd",
    "/etc/passwd",
    "..",
    "%2e%2e%2f",
    "\x00",
    "a\nb\r\tc\x1b[31m",
    "\u202e\u200b\ufeff",
    "💥" * 100,
    "A" * 70_000,
)


@dataclass(frozen=True)
class Target:
    """What the strategies may aim at: a real project, its run and the agreed schema."""

    project_id: str
    run_id: str
    schema_sha256: str


@dataclass(frozen=True)
class Call:
    method: str
    role: str
    request: object  # a message, raw bytes, or a list of upload messages


def texts(*real: str) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(real + NASTY_TEXT), st.text(max_size=80))


def upload_headers(target: Target) -> st.SearchStrategy[pb.UploadHeader]:
    return st.builds(
        pb.UploadHeader,
        project_id=texts(target.project_id),
        count=st.one_of(st.integers(0, 20), st.integers(0, 2**64 - 1)),
        bit_length=st.one_of(st.just(1024), st.integers(0, 2**32 - 1)),
        schema_sha256=texts(target.schema_sha256),
        content_sha256=st.binary(max_size=40),
        threshold=st.floats(allow_nan=True, allow_infinity=True),
        offset=st.one_of(st.integers(0, 2000), st.integers(0, 2**64 - 1)),
    )


def upload_messages(target: Target) -> st.SearchStrategy[list[pb.UploadRequest]]:
    header = upload_headers(target)
    part = st.one_of(
        st.builds(pb.UploadRequest, encodings=st.binary(max_size=400)),
        st.builds(pb.UploadRequest, header=header),
    )
    return st.tuples(header, st.lists(part, max_size=4)).map(
        lambda h: [pb.UploadRequest(header=h[0]), *h[1]]
    )


def update_messages(target: Target) -> st.SearchStrategy[list[pb.UpdateRequest]]:
    rows = st.one_of(st.integers(0, 2_000), st.integers(0, 2**64 - 1))
    header = st.builds(
        pb.UpdateHeader,
        project_id=texts(target.project_id),
        append=st.one_of(st.none(), upload_headers(target)),
        remove_rows=st.lists(rows, max_size=5),
        rows=rows,
    )
    part = st.one_of(
        st.builds(pb.UpdateRequest, encodings=st.binary(max_size=400)),
        st.builds(pb.UpdateRequest, header=header),
    )
    return st.tuples(header, st.lists(part, max_size=4)).map(
        lambda h: [pb.UpdateRequest(header=h[0]), *h[1]]
    )


def calls(target: Target) -> st.SearchStrategy[Call]:
    """Any call a party might make, with any field values; DeleteProject never names the real
    project (deleting it is allowed and would change the store)."""
    ids = {"project_id": texts(target.project_id), "run_id": texts(target.run_id)}
    requests = {
        "CreateProject": st.builds(
            pb.CreateProjectRequest, signed_agreement=st.binary(max_size=300)
        ),
        "GetStatus": st.builds(pb.GetStatusRequest, project_id=ids["project_id"]),
        "WatchRun": st.builds(pb.WatchRunRequest, **ids),
        "ApproveRun": st.builds(pb.ApproveRunRequest, **ids),
        "GetRelease": st.builds(pb.GetReleaseRequest, **ids),
        "DeleteProject": st.builds(pb.DeleteProjectRequest, project_id=texts()),
        "Upload": upload_messages(target),
        "UpdateCustodian": update_messages(target),
        "GetUploadOffset": st.builds(
            pb.UploadOffsetRequest,
            project_id=ids["project_id"],
            content_sha256=st.binary(max_size=40),
        ),
    }
    roles = st.sampled_from(("requester", "custodian"))
    structured = st.one_of(
        *(st.builds(Call, st.just(m), roles, request) for m, request in requests.items())
    )
    raw = st.builds(
        Call, st.sampled_from(sorted(set(requests) - {"DeleteProject"})), roles, st.binary()
    )
    return st.one_of(structured, raw)
