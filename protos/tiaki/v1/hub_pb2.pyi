from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Envelope(_message.Message):
    __slots__ = ("node_id", "method", "payload", "issued_at", "not_after", "signer_key", "nonce")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    SIGNER_KEY_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    method: str
    payload: bytes
    issued_at: int
    not_after: int
    signer_key: str
    nonce: bytes
    def __init__(self, node_id: _Optional[str] = ..., method: _Optional[str] = ..., payload: _Optional[bytes] = ..., issued_at: _Optional[int] = ..., not_after: _Optional[int] = ..., signer_key: _Optional[str] = ..., nonce: _Optional[bytes] = ...) -> None: ...

class SignedEnvelope(_message.Message):
    __slots__ = ("envelope", "signature")
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    envelope: bytes
    signature: str
    def __init__(self, envelope: _Optional[bytes] = ..., signature: _Optional[str] = ...) -> None: ...

class Outcome(_message.Message):
    __slots__ = ("envelope_sha256", "node_id", "code", "message", "status", "replies", "expired")
    ENVELOPE_SHA256_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REPLIES_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_FIELD_NUMBER: _ClassVar[int]
    envelope_sha256: bytes
    node_id: str
    code: int
    message: str
    status: bytes
    replies: _containers.RepeatedScalarFieldContainer[bytes]
    expired: bool
    def __init__(self, envelope_sha256: _Optional[bytes] = ..., node_id: _Optional[str] = ..., code: _Optional[int] = ..., message: _Optional[str] = ..., status: _Optional[bytes] = ..., replies: _Optional[_Iterable[bytes]] = ..., expired: _Optional[bool] = ...) -> None: ...

class SignedOutcome(_message.Message):
    __slots__ = ("outcome", "signature")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    outcome: bytes
    signature: str
    def __init__(self, outcome: _Optional[bytes] = ..., signature: _Optional[str] = ...) -> None: ...

class WorkItem(_message.Message):
    __slots__ = ("work_id", "attempt", "envelope")
    WORK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    work_id: str
    attempt: int
    envelope: SignedEnvelope
    def __init__(self, work_id: _Optional[str] = ..., attempt: _Optional[int] = ..., envelope: _Optional[_Union[SignedEnvelope, _Mapping]] = ...) -> None: ...

class NodeOutcome(_message.Message):
    __slots__ = ("work_id", "outcome")
    WORK_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    work_id: str
    outcome: SignedOutcome
    def __init__(self, work_id: _Optional[str] = ..., outcome: _Optional[_Union[SignedOutcome, _Mapping]] = ...) -> None: ...

class NodeMessage(_message.Message):
    __slots__ = ("credit", "outcomes", "heartbeat_seconds")
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    credit: int
    outcomes: _containers.RepeatedCompositeFieldContainer[NodeOutcome]
    heartbeat_seconds: int
    def __init__(self, credit: _Optional[int] = ..., outcomes: _Optional[_Iterable[_Union[NodeOutcome, _Mapping]]] = ..., heartbeat_seconds: _Optional[int] = ...) -> None: ...

class HubMessage(_message.Message):
    __slots__ = ("items", "stored")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[WorkItem]
    stored: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, items: _Optional[_Iterable[_Union[WorkItem, _Mapping]]] = ..., stored: _Optional[_Iterable[str]] = ...) -> None: ...

class SubmitRequest(_message.Message):
    __slots__ = ("envelopes",)
    ENVELOPES_FIELD_NUMBER: _ClassVar[int]
    envelopes: _containers.RepeatedCompositeFieldContainer[SignedEnvelope]
    def __init__(self, envelopes: _Optional[_Iterable[_Union[SignedEnvelope, _Mapping]]] = ...) -> None: ...

class SubmitResponse(_message.Message):
    __slots__ = ("work_ids",)
    WORK_IDS_FIELD_NUMBER: _ClassVar[int]
    work_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, work_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class CollectRequest(_message.Message):
    __slots__ = ("work_ids", "wait_seconds")
    WORK_IDS_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    work_ids: _containers.RepeatedScalarFieldContainer[str]
    wait_seconds: int
    def __init__(self, work_ids: _Optional[_Iterable[str]] = ..., wait_seconds: _Optional[int] = ...) -> None: ...

class Collected(_message.Message):
    __slots__ = ("work_id", "outcome", "expired", "unknown")
    WORK_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_FIELD_NUMBER: _ClassVar[int]
    work_id: str
    outcome: SignedOutcome
    expired: bool
    unknown: bool
    def __init__(self, work_id: _Optional[str] = ..., outcome: _Optional[_Union[SignedOutcome, _Mapping]] = ..., expired: _Optional[bool] = ..., unknown: _Optional[bool] = ...) -> None: ...

class CollectResponse(_message.Message):
    __slots__ = ("ready",)
    READY_FIELD_NUMBER: _ClassVar[int]
    ready: _containers.RepeatedCompositeFieldContainer[Collected]
    def __init__(self, ready: _Optional[_Iterable[_Union[Collected, _Mapping]]] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HubNode(_message.Message):
    __slots__ = ("node_id", "last_seen", "connected", "queued")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    last_seen: int
    connected: bool
    queued: int
    def __init__(self, node_id: _Optional[str] = ..., last_seen: _Optional[int] = ..., connected: _Optional[bool] = ..., queued: _Optional[int] = ...) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[HubNode]
    def __init__(self, nodes: _Optional[_Iterable[_Union[HubNode, _Mapping]]] = ...) -> None: ...
