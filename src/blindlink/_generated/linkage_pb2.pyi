from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RunState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATE_UNSPECIFIED: _ClassVar[RunState]
    RUN_STATE_WAITING_FOR_UPLOADS: _ClassVar[RunState]
    RUN_STATE_QUEUED: _ClassVar[RunState]
    RUN_STATE_RUNNING: _ClassVar[RunState]
    RUN_STATE_DONE: _ClassVar[RunState]
    RUN_STATE_FAILED: _ClassVar[RunState]

class ReleaseKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RELEASE_KIND_UNSPECIFIED: _ClassVar[ReleaseKind]
    RELEASE_KIND_OWN_ROWS: _ClassVar[ReleaseKind]
    RELEASE_KIND_PAIRS: _ClassVar[ReleaseKind]
    RELEASE_KIND_COUNT: _ClassVar[ReleaseKind]
    RELEASE_KIND_NOTHING: _ClassVar[ReleaseKind]
RUN_STATE_UNSPECIFIED: RunState
RUN_STATE_WAITING_FOR_UPLOADS: RunState
RUN_STATE_QUEUED: RunState
RUN_STATE_RUNNING: RunState
RUN_STATE_DONE: RunState
RUN_STATE_FAILED: RunState
RELEASE_KIND_UNSPECIFIED: ReleaseKind
RELEASE_KIND_OWN_ROWS: ReleaseKind
RELEASE_KIND_PAIRS: ReleaseKind
RELEASE_KIND_COUNT: ReleaseKind
RELEASE_KIND_NOTHING: ReleaseKind

class CreateProjectRequest(_message.Message):
    __slots__ = ("signed_agreement",)
    SIGNED_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    signed_agreement: bytes
    def __init__(self, signed_agreement: _Optional[bytes] = ...) -> None: ...

class Project(_message.Message):
    __slots__ = ("project_id", "agreement", "server_public_key", "receipt")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    SERVER_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    agreement: bytes
    server_public_key: str
    receipt: str
    def __init__(self, project_id: _Optional[str] = ..., agreement: _Optional[bytes] = ..., server_public_key: _Optional[str] = ..., receipt: _Optional[str] = ...) -> None: ...

class UploadHeader(_message.Message):
    __slots__ = ("project_id", "count", "bit_length", "schema_sha256", "content_sha256", "threshold", "purpose", "offset")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    BIT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_SHA256_FIELD_NUMBER: _ClassVar[int]
    CONTENT_SHA256_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    count: int
    bit_length: int
    schema_sha256: str
    content_sha256: bytes
    threshold: float
    purpose: str
    offset: int
    def __init__(self, project_id: _Optional[str] = ..., count: _Optional[int] = ..., bit_length: _Optional[int] = ..., schema_sha256: _Optional[str] = ..., content_sha256: _Optional[bytes] = ..., threshold: _Optional[float] = ..., purpose: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class UploadRequest(_message.Message):
    __slots__ = ("header", "encodings")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    ENCODINGS_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    encodings: bytes
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ..., encodings: _Optional[bytes] = ...) -> None: ...

class UploadReceipt(_message.Message):
    __slots__ = ("project_id", "party", "count", "content_sha256", "upload_id", "run_id", "receipt")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    PARTY_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    CONTENT_SHA256_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    party: str
    count: int
    content_sha256: bytes
    upload_id: str
    run_id: str
    receipt: str
    def __init__(self, project_id: _Optional[str] = ..., party: _Optional[str] = ..., count: _Optional[int] = ..., content_sha256: _Optional[bytes] = ..., upload_id: _Optional[str] = ..., run_id: _Optional[str] = ..., receipt: _Optional[str] = ...) -> None: ...

class UploadOffsetRequest(_message.Message):
    __slots__ = ("project_id", "content_sha256")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_SHA256_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    content_sha256: bytes
    def __init__(self, project_id: _Optional[str] = ..., content_sha256: _Optional[bytes] = ...) -> None: ...

class UploadOffset(_message.Message):
    __slots__ = ("offset",)
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    offset: int
    def __init__(self, offset: _Optional[int] = ...) -> None: ...

class UpdateHeader(_message.Message):
    __slots__ = ("project_id", "append", "remove_rows", "rows")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    APPEND_FIELD_NUMBER: _ClassVar[int]
    REMOVE_ROWS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    append: UploadHeader
    remove_rows: _containers.RepeatedScalarFieldContainer[int]
    rows: int
    def __init__(self, project_id: _Optional[str] = ..., append: _Optional[_Union[UploadHeader, _Mapping]] = ..., remove_rows: _Optional[_Iterable[int]] = ..., rows: _Optional[int] = ...) -> None: ...

class UpdateRequest(_message.Message):
    __slots__ = ("header", "encodings")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    ENCODINGS_FIELD_NUMBER: _ClassVar[int]
    header: UpdateHeader
    encodings: bytes
    def __init__(self, header: _Optional[_Union[UpdateHeader, _Mapping]] = ..., encodings: _Optional[bytes] = ...) -> None: ...

class UpdateReceipt(_message.Message):
    __slots__ = ("project_id", "version", "appended", "removed", "first_row", "records", "receipt")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    APPENDED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    FIRST_ROW_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    version: int
    appended: int
    removed: int
    first_row: int
    records: int
    receipt: str
    def __init__(self, project_id: _Optional[str] = ..., version: _Optional[int] = ..., appended: _Optional[int] = ..., removed: _Optional[int] = ..., first_row: _Optional[int] = ..., records: _Optional[int] = ..., receipt: _Optional[str] = ...) -> None: ...

class WatchRunRequest(_message.Message):
    __slots__ = ("project_id", "run_id")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    run_id: str
    def __init__(self, project_id: _Optional[str] = ..., run_id: _Optional[str] = ...) -> None: ...

class RunProgress(_message.Message):
    __slots__ = ("state", "stage", "done", "total", "message", "run_id")
    STATE_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    state: RunState
    stage: str
    done: int
    total: int
    message: str
    run_id: str
    def __init__(self, state: _Optional[_Union[RunState, str]] = ..., stage: _Optional[str] = ..., done: _Optional[int] = ..., total: _Optional[int] = ..., message: _Optional[str] = ..., run_id: _Optional[str] = ...) -> None: ...

class ApproveRunRequest(_message.Message):
    __slots__ = ("project_id", "run_id")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    run_id: str
    def __init__(self, project_id: _Optional[str] = ..., run_id: _Optional[str] = ...) -> None: ...

class RunSummary(_message.Message):
    __slots__ = ("run_id", "state", "threshold", "approved", "counts_visible", "match_count", "withheld_count", "message", "decision")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    APPROVED_FIELD_NUMBER: _ClassVar[int]
    COUNTS_VISIBLE_FIELD_NUMBER: _ClassVar[int]
    MATCH_COUNT_FIELD_NUMBER: _ClassVar[int]
    WITHHELD_COUNT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    state: RunState
    threshold: float
    approved: bool
    counts_visible: bool
    match_count: int
    withheld_count: int
    message: str
    decision: RunDecision
    def __init__(self, run_id: _Optional[str] = ..., state: _Optional[_Union[RunState, str]] = ..., threshold: _Optional[float] = ..., approved: _Optional[bool] = ..., counts_visible: _Optional[bool] = ..., match_count: _Optional[int] = ..., withheld_count: _Optional[int] = ..., message: _Optional[str] = ..., decision: _Optional[_Union[RunDecision, _Mapping]] = ...) -> None: ...

class RunDecision(_message.Message):
    __slots__ = ("threshold", "rule", "possible_count", "estimates")
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    POSSIBLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    ESTIMATES_FIELD_NUMBER: _ClassVar[int]
    threshold: float
    rule: str
    possible_count: int
    estimates: Estimates
    def __init__(self, threshold: _Optional[float] = ..., rule: _Optional[str] = ..., possible_count: _Optional[int] = ..., estimates: _Optional[_Union[Estimates, _Mapping]] = ...) -> None: ...

class Estimates(_message.Message):
    __slots__ = ("precision", "recall", "f_star", "precision_interval", "recall_interval", "f_star_interval")
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    RECALL_FIELD_NUMBER: _ClassVar[int]
    F_STAR_FIELD_NUMBER: _ClassVar[int]
    PRECISION_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    RECALL_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    F_STAR_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    precision: float
    recall: float
    f_star: float
    precision_interval: Interval
    recall_interval: Interval
    f_star_interval: Interval
    def __init__(self, precision: _Optional[float] = ..., recall: _Optional[float] = ..., f_star: _Optional[float] = ..., precision_interval: _Optional[_Union[Interval, _Mapping]] = ..., recall_interval: _Optional[_Union[Interval, _Mapping]] = ..., f_star_interval: _Optional[_Union[Interval, _Mapping]] = ...) -> None: ...

class Interval(_message.Message):
    __slots__ = ("low", "high")
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    low: float
    high: float
    def __init__(self, low: _Optional[float] = ..., high: _Optional[float] = ...) -> None: ...

class GetReleaseRequest(_message.Message):
    __slots__ = ("project_id", "run_id")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    run_id: str
    def __init__(self, project_id: _Optional[str] = ..., run_id: _Optional[str] = ...) -> None: ...

class Release(_message.Message):
    __slots__ = ("project_id", "party", "kind", "match_count", "own_rows", "other_rows", "run_id", "withheld_count", "receipt", "decision", "possible_own_rows", "possible_other_rows")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    PARTY_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MATCH_COUNT_FIELD_NUMBER: _ClassVar[int]
    OWN_ROWS_FIELD_NUMBER: _ClassVar[int]
    OTHER_ROWS_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    WITHHELD_COUNT_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    POSSIBLE_OWN_ROWS_FIELD_NUMBER: _ClassVar[int]
    POSSIBLE_OTHER_ROWS_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    party: str
    kind: ReleaseKind
    match_count: int
    own_rows: _containers.RepeatedScalarFieldContainer[int]
    other_rows: _containers.RepeatedScalarFieldContainer[int]
    run_id: str
    withheld_count: int
    receipt: str
    decision: RunDecision
    possible_own_rows: _containers.RepeatedScalarFieldContainer[int]
    possible_other_rows: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, project_id: _Optional[str] = ..., party: _Optional[str] = ..., kind: _Optional[_Union[ReleaseKind, str]] = ..., match_count: _Optional[int] = ..., own_rows: _Optional[_Iterable[int]] = ..., other_rows: _Optional[_Iterable[int]] = ..., run_id: _Optional[str] = ..., withheld_count: _Optional[int] = ..., receipt: _Optional[str] = ..., decision: _Optional[_Union[RunDecision, _Mapping]] = ..., possible_own_rows: _Optional[_Iterable[int]] = ..., possible_other_rows: _Optional[_Iterable[int]] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ("project_id",)
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    def __init__(self, project_id: _Optional[str] = ...) -> None: ...

class PartyUpload(_message.Message):
    __slots__ = ("party", "uploaded", "count", "upload_id")
    PARTY_FIELD_NUMBER: _ClassVar[int]
    UPLOADED_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    party: str
    uploaded: bool
    count: int
    upload_id: str
    def __init__(self, party: _Optional[str] = ..., uploaded: _Optional[bool] = ..., count: _Optional[int] = ..., upload_id: _Optional[str] = ...) -> None: ...

class ProjectStatus(_message.Message):
    __slots__ = ("project_id", "uploads", "runs")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    UPLOADS_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    uploads: _containers.RepeatedCompositeFieldContainer[PartyUpload]
    runs: _containers.RepeatedCompositeFieldContainer[RunSummary]
    def __init__(self, project_id: _Optional[str] = ..., uploads: _Optional[_Iterable[_Union[PartyUpload, _Mapping]]] = ..., runs: _Optional[_Iterable[_Union[RunSummary, _Mapping]]] = ...) -> None: ...

class DeleteProjectRequest(_message.Message):
    __slots__ = ("project_id",)
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    def __init__(self, project_id: _Optional[str] = ...) -> None: ...

class DeleteProjectResponse(_message.Message):
    __slots__ = ("receipt",)
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    receipt: str
    def __init__(self, receipt: _Optional[str] = ...) -> None: ...
