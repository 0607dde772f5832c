from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ErrorKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_KIND_UNSPECIFIED: _ClassVar[ErrorKind]
    ERROR_KIND_UNKNOWN_TENANT: _ClassVar[ErrorKind]
    ERROR_KIND_BAD_PROOF: _ClassVar[ErrorKind]
    ERROR_KIND_BAD_CHALLENGE: _ClassVar[ErrorKind]
    ERROR_KIND_RETIRED_SECRET: _ClassVar[ErrorKind]
    ERROR_KIND_SESSION: _ClassVar[ErrorKind]
    ERROR_KIND_BAD_MAC: _ClassVar[ErrorKind]
    ERROR_KIND_WRONG_TENANT: _ClassVar[ErrorKind]
    ERROR_KIND_RATE_LIMITED: _ClassVar[ErrorKind]
    ERROR_KIND_PERMISSION: _ClassVar[ErrorKind]
    ERROR_KIND_INVALID: _ClassVar[ErrorKind]
    ERROR_KIND_NOT_FOUND: _ClassVar[ErrorKind]
    ERROR_KIND_CONSTRAINT: _ClassVar[ErrorKind]
    ERROR_KIND_CONFLICT: _ClassVar[ErrorKind]
    ERROR_KIND_UNAVAILABLE: _ClassVar[ErrorKind]
    ERROR_KIND_LAGGING: _ClassVar[ErrorKind]
    ERROR_KIND_UNKNOWN: _ClassVar[ErrorKind]

class WriteKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WRITE_KIND_UNSPECIFIED: _ClassVar[WriteKind]
    UPSERT: _ClassVar[WriteKind]
    UPDATE: _ClassVar[WriteKind]
    DELETE: _ClassVar[WriteKind]

class FrameKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FRAME_KIND_UNSPECIFIED: _ClassVar[FrameKind]
    CHANGES: _ClassVar[FrameKind]
    RESET: _ClassVar[FrameKind]
    HEARTBEAT: _ClassVar[FrameKind]
ERROR_KIND_UNSPECIFIED: ErrorKind
ERROR_KIND_UNKNOWN_TENANT: ErrorKind
ERROR_KIND_BAD_PROOF: ErrorKind
ERROR_KIND_BAD_CHALLENGE: ErrorKind
ERROR_KIND_RETIRED_SECRET: ErrorKind
ERROR_KIND_SESSION: ErrorKind
ERROR_KIND_BAD_MAC: ErrorKind
ERROR_KIND_WRONG_TENANT: ErrorKind
ERROR_KIND_RATE_LIMITED: ErrorKind
ERROR_KIND_PERMISSION: ErrorKind
ERROR_KIND_INVALID: ErrorKind
ERROR_KIND_NOT_FOUND: ErrorKind
ERROR_KIND_CONSTRAINT: ErrorKind
ERROR_KIND_CONFLICT: ErrorKind
ERROR_KIND_UNAVAILABLE: ErrorKind
ERROR_KIND_LAGGING: ErrorKind
ERROR_KIND_UNKNOWN: ErrorKind
WRITE_KIND_UNSPECIFIED: WriteKind
UPSERT: WriteKind
UPDATE: WriteKind
DELETE: WriteKind
FRAME_KIND_UNSPECIFIED: FrameKind
CHANGES: FrameKind
RESET: FrameKind
HEARTBEAT: FrameKind

class WriteOp(_message.Message):
    __slots__ = ("kind", "table", "key", "data")
    KIND_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    kind: WriteKind
    table: str
    key: bytes
    data: bytes
    def __init__(self, kind: _Optional[_Union[WriteKind, str]] = ..., table: _Optional[str] = ..., key: _Optional[bytes] = ..., data: _Optional[bytes] = ...) -> None: ...

class WriteRequest(_message.Message):
    __slots__ = ("protocol_version", "tenant_id", "ops", "request_id", "session", "mac")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    OPS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    tenant_id: str
    ops: _containers.RepeatedCompositeFieldContainer[WriteOp]
    request_id: str
    session: bytes
    mac: bytes
    def __init__(self, protocol_version: _Optional[int] = ..., tenant_id: _Optional[str] = ..., ops: _Optional[_Iterable[_Union[WriteOp, _Mapping]]] = ..., request_id: _Optional[str] = ..., session: _Optional[bytes] = ..., mac: _Optional[bytes] = ...) -> None: ...

class WriteResponse(_message.Message):
    __slots__ = ("event_id", "position", "stream_id", "replayed", "affected")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    AFFECTED_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    position: int
    stream_id: str
    replayed: bool
    affected: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, event_id: _Optional[str] = ..., position: _Optional[int] = ..., stream_id: _Optional[str] = ..., replayed: _Optional[bool] = ..., affected: _Optional[_Iterable[int]] = ...) -> None: ...

class WriteBatchRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[WriteRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[WriteRequest, _Mapping]]] = ...) -> None: ...

class WriteResult(_message.Message):
    __slots__ = ("response", "error_kind", "error_message", "sqlstate")
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_KIND_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SQLSTATE_FIELD_NUMBER: _ClassVar[int]
    response: WriteResponse
    error_kind: str
    error_message: str
    sqlstate: str
    def __init__(self, response: _Optional[_Union[WriteResponse, _Mapping]] = ..., error_kind: _Optional[str] = ..., error_message: _Optional[str] = ..., sqlstate: _Optional[str] = ...) -> None: ...

class WriteBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[WriteResult]
    def __init__(self, results: _Optional[_Iterable[_Union[WriteResult, _Mapping]]] = ...) -> None: ...

class WriteStreamRequest(_message.Message):
    __slots__ = ("call_id", "requests")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    call_id: int
    requests: _containers.RepeatedCompositeFieldContainer[WriteRequest]
    def __init__(self, call_id: _Optional[int] = ..., requests: _Optional[_Iterable[_Union[WriteRequest, _Mapping]]] = ...) -> None: ...

class WriteStreamResponse(_message.Message):
    __slots__ = ("call_id", "results")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    call_id: int
    results: _containers.RepeatedCompositeFieldContainer[WriteResult]
    def __init__(self, call_id: _Optional[int] = ..., results: _Optional[_Iterable[_Union[WriteResult, _Mapping]]] = ...) -> None: ...

class ChallengeRequest(_message.Message):
    __slots__ = ("protocol_version", "tenant_id")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    tenant_id: str
    def __init__(self, protocol_version: _Optional[int] = ..., tenant_id: _Optional[str] = ...) -> None: ...

class ChallengeResponse(_message.Message):
    __slots__ = ("server_nonce",)
    SERVER_NONCE_FIELD_NUMBER: _ClassVar[int]
    server_nonce: bytes
    def __init__(self, server_nonce: _Optional[bytes] = ...) -> None: ...

class HelloRequest(_message.Message):
    __slots__ = ("protocol_version", "tenant_id", "capabilities", "client_nonce", "server_nonce", "proof")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    CLIENT_NONCE_FIELD_NUMBER: _ClassVar[int]
    SERVER_NONCE_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    tenant_id: str
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    client_nonce: bytes
    server_nonce: bytes
    proof: bytes
    def __init__(self, protocol_version: _Optional[int] = ..., tenant_id: _Optional[str] = ..., capabilities: _Optional[_Iterable[str]] = ..., client_nonce: _Optional[bytes] = ..., server_nonce: _Optional[bytes] = ..., proof: _Optional[bytes] = ...) -> None: ...

class Column(_message.Message):
    __slots__ = ("name", "type_name", "is_key")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_NAME_FIELD_NUMBER: _ClassVar[int]
    IS_KEY_FIELD_NUMBER: _ClassVar[int]
    name: str
    type_name: str
    is_key: bool
    def __init__(self, name: _Optional[str] = ..., type_name: _Optional[str] = ..., is_key: _Optional[bool] = ...) -> None: ...

class TableSchema(_message.Message):
    __slots__ = ("name", "columns", "key_columns", "has_vectors", "vector_source", "text_columns", "source_dim", "vector_dim", "writable", "writable_columns", "indexes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    KEY_COLUMNS_FIELD_NUMBER: _ClassVar[int]
    HAS_VECTORS_FIELD_NUMBER: _ClassVar[int]
    VECTOR_SOURCE_FIELD_NUMBER: _ClassVar[int]
    TEXT_COLUMNS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_DIM_FIELD_NUMBER: _ClassVar[int]
    VECTOR_DIM_FIELD_NUMBER: _ClassVar[int]
    WRITABLE_FIELD_NUMBER: _ClassVar[int]
    WRITABLE_COLUMNS_FIELD_NUMBER: _ClassVar[int]
    INDEXES_FIELD_NUMBER: _ClassVar[int]
    name: str
    columns: _containers.RepeatedCompositeFieldContainer[Column]
    key_columns: _containers.RepeatedScalarFieldContainer[str]
    has_vectors: bool
    vector_source: str
    text_columns: _containers.RepeatedScalarFieldContainer[str]
    source_dim: int
    vector_dim: int
    writable: bool
    writable_columns: _containers.RepeatedScalarFieldContainer[str]
    indexes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., columns: _Optional[_Iterable[_Union[Column, _Mapping]]] = ..., key_columns: _Optional[_Iterable[str]] = ..., has_vectors: _Optional[bool] = ..., vector_source: _Optional[str] = ..., text_columns: _Optional[_Iterable[str]] = ..., source_dim: _Optional[int] = ..., vector_dim: _Optional[int] = ..., writable: _Optional[bool] = ..., writable_columns: _Optional[_Iterable[str]] = ..., indexes: _Optional[_Iterable[str]] = ...) -> None: ...

class HelloResponse(_message.Message):
    __slots__ = ("protocol_version", "stream_id", "tables", "key_epoch", "key_proof", "capabilities", "head_position", "retention_floor", "text_embedder_dim", "session", "projection_key")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    KEY_EPOCH_FIELD_NUMBER: _ClassVar[int]
    KEY_PROOF_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    HEAD_POSITION_FIELD_NUMBER: _ClassVar[int]
    RETENTION_FLOOR_FIELD_NUMBER: _ClassVar[int]
    TEXT_EMBEDDER_DIM_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    PROJECTION_KEY_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    stream_id: str
    tables: _containers.RepeatedCompositeFieldContainer[TableSchema]
    key_epoch: int
    key_proof: bytes
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    head_position: int
    retention_floor: int
    text_embedder_dim: int
    session: bytes
    projection_key: bytes
    def __init__(self, protocol_version: _Optional[int] = ..., stream_id: _Optional[str] = ..., tables: _Optional[_Iterable[_Union[TableSchema, _Mapping]]] = ..., key_epoch: _Optional[int] = ..., key_proof: _Optional[bytes] = ..., capabilities: _Optional[_Iterable[str]] = ..., head_position: _Optional[int] = ..., retention_floor: _Optional[int] = ..., text_embedder_dim: _Optional[int] = ..., session: _Optional[bytes] = ..., projection_key: _Optional[bytes] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("tenant_id", "stream_id", "from_position", "max_frame_rows", "session", "subscription", "mac", "frame_format")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_POSITION_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAME_ROWS_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    FRAME_FORMAT_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    stream_id: str
    from_position: int
    max_frame_rows: int
    session: bytes
    subscription: bytes
    mac: bytes
    frame_format: int
    def __init__(self, tenant_id: _Optional[str] = ..., stream_id: _Optional[str] = ..., from_position: _Optional[int] = ..., max_frame_rows: _Optional[int] = ..., session: _Optional[bytes] = ..., subscription: _Optional[bytes] = ..., mac: _Optional[bytes] = ..., frame_format: _Optional[int] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("format_version", "tenant_id", "stream_id", "key_epoch", "kind", "table", "sequence", "commit_position", "head_position", "commit_time_us", "count", "vector_dim", "keys", "ops", "positions", "vector_mask", "vectors", "payloads", "sealed_rows", "aead_nonce", "subscription", "watermark", "binding")
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_EPOCH_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    COMMIT_POSITION_FIELD_NUMBER: _ClassVar[int]
    HEAD_POSITION_FIELD_NUMBER: _ClassVar[int]
    COMMIT_TIME_US_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    VECTOR_DIM_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    OPS_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    VECTOR_MASK_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    PAYLOADS_FIELD_NUMBER: _ClassVar[int]
    SEALED_ROWS_FIELD_NUMBER: _ClassVar[int]
    AEAD_NONCE_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_FIELD_NUMBER: _ClassVar[int]
    WATERMARK_FIELD_NUMBER: _ClassVar[int]
    BINDING_FIELD_NUMBER: _ClassVar[int]
    format_version: int
    tenant_id: str
    stream_id: str
    key_epoch: int
    kind: FrameKind
    table: str
    sequence: int
    commit_position: int
    head_position: int
    commit_time_us: int
    count: int
    vector_dim: int
    keys: bytes
    ops: bytes
    positions: bytes
    vector_mask: bytes
    vectors: bytes
    payloads: bytes
    sealed_rows: bytes
    aead_nonce: bytes
    subscription: bytes
    watermark: bytes
    binding: bytes
    def __init__(self, format_version: _Optional[int] = ..., tenant_id: _Optional[str] = ..., stream_id: _Optional[str] = ..., key_epoch: _Optional[int] = ..., kind: _Optional[_Union[FrameKind, str]] = ..., table: _Optional[str] = ..., sequence: _Optional[int] = ..., commit_position: _Optional[int] = ..., head_position: _Optional[int] = ..., commit_time_us: _Optional[int] = ..., count: _Optional[int] = ..., vector_dim: _Optional[int] = ..., keys: _Optional[bytes] = ..., ops: _Optional[bytes] = ..., positions: _Optional[bytes] = ..., vector_mask: _Optional[bytes] = ..., vectors: _Optional[bytes] = ..., payloads: _Optional[bytes] = ..., sealed_rows: _Optional[bytes] = ..., aead_nonce: _Optional[bytes] = ..., subscription: _Optional[bytes] = ..., watermark: _Optional[bytes] = ..., binding: _Optional[bytes] = ...) -> None: ...

class HealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthResponse(_message.Message):
    __slots__ = ("status", "head_position", "source_position", "stream_id", "last_commit_time_us", "detail", "counters")
    class CountersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    STATUS_FIELD_NUMBER: _ClassVar[int]
    HEAD_POSITION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_POSITION_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_COMMIT_TIME_US_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    status: str
    head_position: int
    source_position: str
    stream_id: str
    last_commit_time_us: int
    detail: str
    counters: _containers.ScalarMap[str, int]
    def __init__(self, status: _Optional[str] = ..., head_position: _Optional[int] = ..., source_position: _Optional[str] = ..., stream_id: _Optional[str] = ..., last_commit_time_us: _Optional[int] = ..., detail: _Optional[str] = ..., counters: _Optional[_Mapping[str, int]] = ...) -> None: ...
