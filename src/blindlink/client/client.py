"""The server workflow from Python, as one party: create a project, upload encodings, wait for
the run, fetch the release with the party's own record IDs."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from blindlink._generated import linkage_pb2 as pb
from blindlink.agreement.signing import SignedAgreement
from blindlink.client.linkage_client import ClientTls, LinkageClient
from blindlink.encoded import Encoded
from blindlink.encoding.id_map import IdMap
from blindlink.errors import BlindlinkError
from blindlink.matching.decision import ESTIMATED, Estimates

if TYPE_CHECKING:
    import pandas as pd

KIND_NAMES = {
    pb.RELEASE_KIND_OWN_ROWS: "own_rows",
    pb.RELEASE_KIND_PAIRS: "pairs",
    pb.RELEASE_KIND_COUNT: "count",
    pb.RELEASE_KIND_NOTHING: "nothing",
}


class RunFailed(BlindlinkError):
    """The server could not complete a run; the message says why."""


@dataclass(frozen=True)
class Results:
    """What a run releases to this party, as the agreement grants: `kind` is "own_rows" (the
    party's matched IDs), "pairs" (also the other party's row reference of each), "count" or
    "nothing". Possible matches are listed where the agreement lists them. `threshold`, `rule`
    and `estimates` say how the run decided, where this party may see it."""

    run_id: str
    kind: str
    match_count: int
    withheld_count: int
    ids: tuple[str, ...]
    other_rows: tuple[int, ...]
    possible_ids: tuple[str, ...]
    possible_other_rows: tuple[int, ...]
    threshold: float | None
    rule: str
    estimates: Estimates | None
    receipt: str

    def to_pandas(self) -> pd.DataFrame:
        """Released matches and possible matches, one row each: this party's `id`, the other
        party's `other_row` (with pairs) and `status` ("match" or "possible"). Needs the `pandas`
        extra."""
        from blindlink.extras import require_pandas

        require_pandas("Results.to_pandas()")
        import pandas as pd

        frame = pd.DataFrame(
            {
                "id": [*self.ids, *self.possible_ids],
                "status": ["match"] * len(self.ids) + ["possible"] * len(self.possible_ids),
            }
        )
        if self.kind == "pairs":
            frame.insert(1, "other_row", [*self.other_rows, *self.possible_other_rows])
        return frame


class Client:
    """One party's connection to a linkage server, with mutual TLS (`tls`; None only for a
    development server without TLS). Use it as a context manager, or call `close`."""

    def __init__(self, address: str, party: str, tls: ClientTls | None) -> None:
        self._client = LinkageClient(address, party, tls)
        self.party = party

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create_project(self, agreement: SignedAgreement | bytes) -> str:
        """Create the project of a signed agreement: its ID, the agreement's `project_id`,
        which the other party uses too."""
        raw = agreement.to_bytes() if isinstance(agreement, SignedAgreement) else agreement
        return self._client.create_project(raw).project_id

    def upload(
        self,
        project_id: str,
        encoded: Encoded,
        threshold: float = 0.0,
        purpose: str | None = None,
    ) -> str:
        """Upload this party's encodings; the ID of the run a requester batch starts ("" for
        the custodian's reference data). `threshold`: a fixed-threshold agreement's requester
        may ask for another threshold, not below the agreed floor. `purpose`: the batch's
        purpose or case reference, which an agreement with batch_purpose requires of every
        requester batch (and which is refused otherwise); the batch's audit entry records it."""
        with tempfile.TemporaryDirectory(prefix="blindlink-") as scratch:
            path = Path(scratch) / "encodings.bin"
            encoded.save(path, Path(scratch) / "ids.json")
            return self._client.upload(project_id, path, threshold, purpose=purpose).run_id

    def update(
        self,
        project_id: str,
        custodian: Encoded,
        *,
        append: Encoded | None = None,
        remove: Sequence[int] = (),
    ) -> Encoded:
        """The custodian's update of its records on the server, committed at once: append the
        records `append` and remove rows `remove` (row references). `custodian` is what the
        server holds now, as uploaded or as the last update returned; the custodian's records
        after this update are returned, to pass to `results` and to the next update (appended
        rows follow the last row; removed rows keep their place, never released again). Runs
        that start after the update see it."""
        with tempfile.TemporaryDirectory(prefix="blindlink-") as scratch:
            path = None
            if append is not None:
                path = Path(scratch) / "appended.bin"
                append.save(path, Path(scratch) / "ids.json")
            self._client.update(project_id, len(custodian), path, remove)
        return custodian.extended(append)

    def wait(self, project_id: str, run_id: str) -> None:
        """Block until the run is done; raise RunFailed if it failed."""
        last = self._client.wait(project_id, run_id)
        if last.state != pb.RUN_STATE_DONE:
            raise RunFailed(last.message or "the run failed")

    def approve(self, project_id: str, run_id: str) -> None:
        """Approve a run's release (the custodian, where the agreement asks for approval)."""
        self._client.approve(project_id, run_id)

    def results(self, project_id: str, run_id: str, encoded: Encoded) -> Results:
        """Fetch the run's release; `encoded` is what this party uploaded (its record IDs)."""
        release = self._client.release(project_id, run_id)
        decision = release.decision if release.HasField("decision") else None
        estimates = decision.estimates if decision and decision.HasField("estimates") else None
        return Results(
            release.run_id,
            KIND_NAMES[release.kind],
            release.match_count,
            release.withheld_count,
            _ids(encoded, release.own_rows),
            tuple(release.other_rows),
            _ids(encoded, release.possible_own_rows),
            tuple(release.possible_other_rows),
            decision.threshold if decision else None,
            decision.rule if decision else "",
            estimates_of(estimates) if estimates else None,
            release.receipt,
        )

    def delete(self, project_id: str) -> None:
        """Delete the project's encodings and results from the server."""
        self._client.delete(project_id)


def _ids(encoded: Encoded, rows: Sequence[int]) -> tuple[str, ...]:
    """The party's own IDs of released row references."""
    return tuple(IdMap("", list(encoded.ids)).lookup(list(rows)))


def estimates_of(message: pb.Estimates) -> Estimates:
    """A run's estimates as the server sent them (intervals where it sent them)."""

    def interval(name: str) -> tuple[float, float] | None:
        if not message.HasField(f"{name}_interval"):
            return None
        field = getattr(message, f"{name}_interval")
        return (field.low, field.high)

    return Estimates(
        *(getattr(message, name) for name in ESTIMATED), *(interval(name) for name in ESTIMATED)
    )
