from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class QueryKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    QUERY_KIND_UNSPECIFIED: _ClassVar[QueryKind]
    COUNT: _ClassVar[QueryKind]
    COUNT_CLIENTS: _ClassVar[QueryKind]
    SUM: _ClassVar[QueryKind]
    MEAN: _ClassVar[QueryKind]
    PROPORTION: _ClassVar[QueryKind]
    HISTOGRAM: _ClassVar[QueryKind]

class PrivacyDefinition(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRIVACY_DEFINITION_UNSPECIFIED: _ClassVar[PrivacyDefinition]
    PURE_DP: _ClassVar[PrivacyDefinition]
    ZCDP: _ClassVar[PrivacyDefinition]
QUERY_KIND_UNSPECIFIED: QueryKind
COUNT: QueryKind
COUNT_CLIENTS: QueryKind
SUM: QueryKind
MEAN: QueryKind
PROPORTION: QueryKind
HISTOGRAM: QueryKind
PRIVACY_DEFINITION_UNSPECIFIED: PrivacyDefinition
PURE_DP: PrivacyDefinition
ZCDP: PrivacyDefinition

class ValueSet(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, values: _Optional[_Iterable[str]] = ...) -> None: ...

class NumericRange(_message.Message):
    __slots__ = ("min", "max")
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    min: float
    max: float
    def __init__(self, min: _Optional[float] = ..., max: _Optional[float] = ...) -> None: ...

class DateRange(_message.Message):
    __slots__ = ("start", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: str
    end: str
    def __init__(self, start: _Optional[str] = ..., end: _Optional[str] = ...) -> None: ...

class Filter(_message.Message):
    __slots__ = ("column", "in_set", "numeric_range", "date_range")
    COLUMN_FIELD_NUMBER: _ClassVar[int]
    IN_SET_FIELD_NUMBER: _ClassVar[int]
    NUMERIC_RANGE_FIELD_NUMBER: _ClassVar[int]
    DATE_RANGE_FIELD_NUMBER: _ClassVar[int]
    column: str
    in_set: ValueSet
    numeric_range: NumericRange
    date_range: DateRange
    def __init__(self, column: _Optional[str] = ..., in_set: _Optional[_Union[ValueSet, _Mapping]] = ..., numeric_range: _Optional[_Union[NumericRange, _Mapping]] = ..., date_range: _Optional[_Union[DateRange, _Mapping]] = ...) -> None: ...

class Bounds(_message.Message):
    __slots__ = ("lower", "upper")
    LOWER_FIELD_NUMBER: _ClassVar[int]
    UPPER_FIELD_NUMBER: _ClassVar[int]
    lower: float
    upper: float
    def __init__(self, lower: _Optional[float] = ..., upper: _Optional[float] = ...) -> None: ...

class PrivacyCost(_message.Message):
    __slots__ = ("epsilon", "rho")
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    RHO_FIELD_NUMBER: _ClassVar[int]
    epsilon: str
    rho: str
    def __init__(self, epsilon: _Optional[str] = ..., rho: _Optional[str] = ...) -> None: ...

class QueryRequest(_message.Message):
    __slots__ = ("query_id", "analyst", "kind", "column", "bounds", "filters", "group_by", "condition", "bin_edges", "cost")
    QUERY_ID_FIELD_NUMBER: _ClassVar[int]
    ANALYST_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    COLUMN_FIELD_NUMBER: _ClassVar[int]
    BOUNDS_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    CONDITION_FIELD_NUMBER: _ClassVar[int]
    BIN_EDGES_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    query_id: str
    analyst: str
    kind: QueryKind
    column: str
    bounds: Bounds
    filters: _containers.RepeatedCompositeFieldContainer[Filter]
    group_by: _containers.RepeatedScalarFieldContainer[str]
    condition: _containers.RepeatedCompositeFieldContainer[Filter]
    bin_edges: _containers.RepeatedScalarFieldContainer[float]
    cost: PrivacyCost
    def __init__(self, query_id: _Optional[str] = ..., analyst: _Optional[str] = ..., kind: _Optional[_Union[QueryKind, str]] = ..., column: _Optional[str] = ..., bounds: _Optional[_Union[Bounds, _Mapping]] = ..., filters: _Optional[_Iterable[_Union[Filter, _Mapping]]] = ..., group_by: _Optional[_Iterable[str]] = ..., condition: _Optional[_Iterable[_Union[Filter, _Mapping]]] = ..., bin_edges: _Optional[_Iterable[float]] = ..., cost: _Optional[_Union[PrivacyCost, _Mapping]] = ...) -> None: ...

class Component(_message.Message):
    __slots__ = ("name", "value", "distribution", "scale", "accuracy_95")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    DISTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_95_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: float
    distribution: str
    scale: float
    accuracy_95: float
    def __init__(self, name: _Optional[str] = ..., value: _Optional[float] = ..., distribution: _Optional[str] = ..., scale: _Optional[float] = ..., accuracy_95: _Optional[float] = ...) -> None: ...

class Cell(_message.Message):
    __slots__ = ("group", "bin", "value", "accuracy_95", "components")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    BIN_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_95_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    group: _containers.RepeatedScalarFieldContainer[str]
    bin: str
    value: float
    accuracy_95: float
    components: _containers.RepeatedCompositeFieldContainer[Component]
    def __init__(self, group: _Optional[_Iterable[str]] = ..., bin: _Optional[str] = ..., value: _Optional[float] = ..., accuracy_95: _Optional[float] = ..., components: _Optional[_Iterable[_Union[Component, _Mapping]]] = ...) -> None: ...

class QueryResponse(_message.Message):
    __slots__ = ("query_id", "node_id", "canonical_query", "group_by", "cells", "charged", "dataset_version", "replayed", "budget", "commitment_salt", "privacy_map", "max_records_per_client", "bounds", "midpoint", "grid_unit")
    QUERY_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CANONICAL_QUERY_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    CELLS_FIELD_NUMBER: _ClassVar[int]
    CHARGED_FIELD_NUMBER: _ClassVar[int]
    DATASET_VERSION_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    COMMITMENT_SALT_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_MAP_FIELD_NUMBER: _ClassVar[int]
    MAX_RECORDS_PER_CLIENT_FIELD_NUMBER: _ClassVar[int]
    BOUNDS_FIELD_NUMBER: _ClassVar[int]
    MIDPOINT_FIELD_NUMBER: _ClassVar[int]
    GRID_UNIT_FIELD_NUMBER: _ClassVar[int]
    query_id: str
    node_id: str
    canonical_query: str
    group_by: _containers.RepeatedScalarFieldContainer[str]
    cells: _containers.RepeatedCompositeFieldContainer[Cell]
    charged: PrivacyCost
    dataset_version: str
    replayed: bool
    budget: BudgetReport
    commitment_salt: bytes
    privacy_map: PrivacyCost
    max_records_per_client: int
    bounds: Bounds
    midpoint: float
    grid_unit: float
    def __init__(self, query_id: _Optional[str] = ..., node_id: _Optional[str] = ..., canonical_query: _Optional[str] = ..., group_by: _Optional[_Iterable[str]] = ..., cells: _Optional[_Iterable[_Union[Cell, _Mapping]]] = ..., charged: _Optional[_Union[PrivacyCost, _Mapping]] = ..., dataset_version: _Optional[str] = ..., replayed: _Optional[bool] = ..., budget: _Optional[_Union[BudgetReport, _Mapping]] = ..., commitment_salt: _Optional[bytes] = ..., privacy_map: _Optional[_Union[PrivacyCost, _Mapping]] = ..., max_records_per_client: _Optional[int] = ..., bounds: _Optional[_Union[Bounds, _Mapping]] = ..., midpoint: _Optional[float] = ..., grid_unit: _Optional[float] = ...) -> None: ...

class PlannedComponent(_message.Message):
    __slots__ = ("name", "distribution", "scale", "accuracy_95")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DISTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_95_FIELD_NUMBER: _ClassVar[int]
    name: str
    distribution: str
    scale: float
    accuracy_95: float
    def __init__(self, name: _Optional[str] = ..., distribution: _Optional[str] = ..., scale: _Optional[float] = ..., accuracy_95: _Optional[float] = ...) -> None: ...

class QueryPlan(_message.Message):
    __slots__ = ("node_id", "canonical_query", "group_by", "cells", "components", "charge", "midpoint", "bounds", "budget", "replay", "grid_unit")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CANONICAL_QUERY_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    CELLS_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    CHARGE_FIELD_NUMBER: _ClassVar[int]
    MIDPOINT_FIELD_NUMBER: _ClassVar[int]
    BOUNDS_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    REPLAY_FIELD_NUMBER: _ClassVar[int]
    GRID_UNIT_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    canonical_query: str
    group_by: _containers.RepeatedScalarFieldContainer[str]
    cells: int
    components: _containers.RepeatedCompositeFieldContainer[PlannedComponent]
    charge: PrivacyCost
    midpoint: float
    bounds: Bounds
    budget: BudgetReport
    replay: bool
    grid_unit: float
    def __init__(self, node_id: _Optional[str] = ..., canonical_query: _Optional[str] = ..., group_by: _Optional[_Iterable[str]] = ..., cells: _Optional[int] = ..., components: _Optional[_Iterable[_Union[PlannedComponent, _Mapping]]] = ..., charge: _Optional[_Union[PrivacyCost, _Mapping]] = ..., midpoint: _Optional[float] = ..., bounds: _Optional[_Union[Bounds, _Mapping]] = ..., budget: _Optional[_Union[BudgetReport, _Mapping]] = ..., replay: _Optional[bool] = ..., grid_unit: _Optional[float] = ...) -> None: ...

class PeriodBudget(_message.Message):
    __slots__ = ("label", "start", "end", "limit", "spent", "remaining")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    SPENT_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    label: str
    start: str
    end: str
    limit: str
    spent: str
    remaining: str
    def __init__(self, label: _Optional[str] = ..., start: _Optional[str] = ..., end: _Optional[str] = ..., limit: _Optional[str] = ..., spent: _Optional[str] = ..., remaining: _Optional[str] = ...) -> None: ...

class BudgetReport(_message.Message):
    __slots__ = ("definition", "per_query_max", "current", "lifetime_spent", "lifetime_limit", "periods")
    DEFINITION_FIELD_NUMBER: _ClassVar[int]
    PER_QUERY_MAX_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    LIFETIME_SPENT_FIELD_NUMBER: _ClassVar[int]
    LIFETIME_LIMIT_FIELD_NUMBER: _ClassVar[int]
    PERIODS_FIELD_NUMBER: _ClassVar[int]
    definition: PrivacyDefinition
    per_query_max: str
    current: PeriodBudget
    lifetime_spent: str
    lifetime_limit: str
    periods: _containers.RepeatedCompositeFieldContainer[PeriodBudget]
    def __init__(self, definition: _Optional[_Union[PrivacyDefinition, str]] = ..., per_query_max: _Optional[str] = ..., current: _Optional[_Union[PeriodBudget, _Mapping]] = ..., lifetime_spent: _Optional[str] = ..., lifetime_limit: _Optional[str] = ..., periods: _Optional[_Iterable[_Union[PeriodBudget, _Mapping]]] = ...) -> None: ...

class GetBudgetRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ColumnInfo(_message.Message):
    __slots__ = ("name", "type", "categories", "bounds", "date_min", "date_max", "expression")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    BOUNDS_FIELD_NUMBER: _ClassVar[int]
    DATE_MIN_FIELD_NUMBER: _ClassVar[int]
    DATE_MAX_FIELD_NUMBER: _ClassVar[int]
    EXPRESSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    categories: _containers.RepeatedScalarFieldContainer[str]
    bounds: Bounds
    date_min: str
    date_max: str
    expression: str
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., categories: _Optional[_Iterable[str]] = ..., bounds: _Optional[_Union[Bounds, _Mapping]] = ..., date_min: _Optional[str] = ..., date_max: _Optional[str] = ..., expression: _Optional[str] = ...) -> None: ...

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("node_id", "version", "definition", "identifier_column", "columns", "allowed_kinds", "max_records_per_client", "per_query_max", "budget_period", "max_group_by", "max_cells", "dataset_version", "signing_key", "ledger_id", "secure_aggregation")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DEFINITION_FIELD_NUMBER: _ClassVar[int]
    IDENTIFIER_COLUMN_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_KINDS_FIELD_NUMBER: _ClassVar[int]
    MAX_RECORDS_PER_CLIENT_FIELD_NUMBER: _ClassVar[int]
    PER_QUERY_MAX_FIELD_NUMBER: _ClassVar[int]
    BUDGET_PERIOD_FIELD_NUMBER: _ClassVar[int]
    MAX_GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    MAX_CELLS_FIELD_NUMBER: _ClassVar[int]
    DATASET_VERSION_FIELD_NUMBER: _ClassVar[int]
    SIGNING_KEY_FIELD_NUMBER: _ClassVar[int]
    LEDGER_ID_FIELD_NUMBER: _ClassVar[int]
    SECURE_AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    version: str
    definition: PrivacyDefinition
    identifier_column: str
    columns: _containers.RepeatedCompositeFieldContainer[ColumnInfo]
    allowed_kinds: _containers.RepeatedScalarFieldContainer[QueryKind]
    max_records_per_client: int
    per_query_max: str
    budget_period: str
    max_group_by: int
    max_cells: int
    dataset_version: str
    signing_key: str
    ledger_id: str
    secure_aggregation: SecureAggregationInfo
    def __init__(self, node_id: _Optional[str] = ..., version: _Optional[str] = ..., definition: _Optional[_Union[PrivacyDefinition, str]] = ..., identifier_column: _Optional[str] = ..., columns: _Optional[_Iterable[_Union[ColumnInfo, _Mapping]]] = ..., allowed_kinds: _Optional[_Iterable[_Union[QueryKind, str]]] = ..., max_records_per_client: _Optional[int] = ..., per_query_max: _Optional[str] = ..., budget_period: _Optional[str] = ..., max_group_by: _Optional[int] = ..., max_cells: _Optional[int] = ..., dataset_version: _Optional[str] = ..., signing_key: _Optional[str] = ..., ledger_id: _Optional[str] = ..., secure_aggregation: _Optional[_Union[SecureAggregationInfo, _Mapping]] = ...) -> None: ...

class SecureAggregationInfo(_message.Message):
    __slots__ = ("min_cohort", "colluders", "worst_case_per_query", "worst_case_remaining")
    MIN_COHORT_FIELD_NUMBER: _ClassVar[int]
    COLLUDERS_FIELD_NUMBER: _ClassVar[int]
    WORST_CASE_PER_QUERY_FIELD_NUMBER: _ClassVar[int]
    WORST_CASE_REMAINING_FIELD_NUMBER: _ClassVar[int]
    min_cohort: int
    colluders: int
    worst_case_per_query: str
    worst_case_remaining: str
    def __init__(self, min_cohort: _Optional[int] = ..., colluders: _Optional[int] = ..., worst_case_per_query: _Optional[str] = ..., worst_case_remaining: _Optional[str] = ...) -> None: ...

class ExportLedgerRequest(_message.Message):
    __slots__ = ("from_seq",)
    FROM_SEQ_FIELD_NUMBER: _ClassVar[int]
    from_seq: int
    def __init__(self, from_seq: _Optional[int] = ...) -> None: ...

class ExportLedgerLine(_message.Message):
    __slots__ = ("line",)
    LINE_FIELD_NUMBER: _ClassVar[int]
    line: str
    def __init__(self, line: _Optional[str] = ...) -> None: ...

class SecureSessionMember(_message.Message):
    __slots__ = ("index", "node_id", "signing_key")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNING_KEY_FIELD_NUMBER: _ClassVar[int]
    index: int
    node_id: str
    signing_key: str
    def __init__(self, index: _Optional[int] = ..., node_id: _Optional[str] = ..., signing_key: _Optional[str] = ...) -> None: ...

class SecureSession(_message.Message):
    __slots__ = ("session_id", "query", "members", "threshold", "colluders", "scale_factors", "share_scales", "not_after")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    COLLUDERS_FIELD_NUMBER: _ClassVar[int]
    SCALE_FACTORS_FIELD_NUMBER: _ClassVar[int]
    SHARE_SCALES_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    session_id: bytes
    query: QueryRequest
    members: _containers.RepeatedCompositeFieldContainer[SecureSessionMember]
    threshold: int
    colluders: int
    scale_factors: _containers.RepeatedScalarFieldContainer[int]
    share_scales: _containers.RepeatedScalarFieldContainer[float]
    not_after: int
    def __init__(self, session_id: _Optional[bytes] = ..., query: _Optional[_Union[QueryRequest, _Mapping]] = ..., members: _Optional[_Iterable[_Union[SecureSessionMember, _Mapping]]] = ..., threshold: _Optional[int] = ..., colluders: _Optional[int] = ..., scale_factors: _Optional[_Iterable[int]] = ..., share_scales: _Optional[_Iterable[float]] = ..., not_after: _Optional[int] = ...) -> None: ...

class SecureAdvertiseRequest(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: SecureSession
    def __init__(self, session: _Optional[_Union[SecureSession, _Mapping]] = ...) -> None: ...

class KeyAdvert(_message.Message):
    __slots__ = ("index", "encryption_key", "mask_key", "signature")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_KEY_FIELD_NUMBER: _ClassVar[int]
    MASK_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    index: int
    encryption_key: bytes
    mask_key: bytes
    signature: str
    def __init__(self, index: _Optional[int] = ..., encryption_key: _Optional[bytes] = ..., mask_key: _Optional[bytes] = ..., signature: _Optional[str] = ...) -> None: ...

class SecureShareKeysRequest(_message.Message):
    __slots__ = ("session", "adverts")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    ADVERTS_FIELD_NUMBER: _ClassVar[int]
    session: SecureSession
    adverts: _containers.RepeatedCompositeFieldContainer[KeyAdvert]
    def __init__(self, session: _Optional[_Union[SecureSession, _Mapping]] = ..., adverts: _Optional[_Iterable[_Union[KeyAdvert, _Mapping]]] = ...) -> None: ...

class SealedShares(_message.Message):
    __slots__ = ("sender", "recipient", "sealed")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    SEALED_FIELD_NUMBER: _ClassVar[int]
    sender: int
    recipient: int
    sealed: bytes
    def __init__(self, sender: _Optional[int] = ..., recipient: _Optional[int] = ..., sealed: _Optional[bytes] = ...) -> None: ...

class SecureShareKeysResponse(_message.Message):
    __slots__ = ("shares",)
    SHARES_FIELD_NUMBER: _ClassVar[int]
    shares: _containers.RepeatedCompositeFieldContainer[SealedShares]
    def __init__(self, shares: _Optional[_Iterable[_Union[SealedShares, _Mapping]]] = ...) -> None: ...

class SecureMaskedInputRequest(_message.Message):
    __slots__ = ("session", "shares")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    session: SecureSession
    shares: _containers.RepeatedCompositeFieldContainer[SealedShares]
    def __init__(self, session: _Optional[_Union[SecureSession, _Mapping]] = ..., shares: _Optional[_Iterable[_Union[SealedShares, _Mapping]]] = ...) -> None: ...

class ComponentShare(_message.Message):
    __slots__ = ("name", "length", "share_scale")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    SHARE_SCALE_FIELD_NUMBER: _ClassVar[int]
    name: str
    length: int
    share_scale: float
    def __init__(self, name: _Optional[str] = ..., length: _Optional[int] = ..., share_scale: _Optional[float] = ...) -> None: ...

class CellKey(_message.Message):
    __slots__ = ("group", "bin")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    BIN_FIELD_NUMBER: _ClassVar[int]
    group: _containers.RepeatedScalarFieldContainer[str]
    bin: str
    def __init__(self, group: _Optional[_Iterable[str]] = ..., bin: _Optional[str] = ...) -> None: ...

class MaskedInput(_message.Message):
    __slots__ = ("index", "vector", "components", "cells", "aggregate", "worst_case")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    CELLS_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_FIELD_NUMBER: _ClassVar[int]
    WORST_CASE_FIELD_NUMBER: _ClassVar[int]
    index: int
    vector: bytes
    components: _containers.RepeatedCompositeFieldContainer[ComponentShare]
    cells: _containers.RepeatedCompositeFieldContainer[CellKey]
    aggregate: PrivacyCost
    worst_case: PrivacyCost
    def __init__(self, index: _Optional[int] = ..., vector: _Optional[bytes] = ..., components: _Optional[_Iterable[_Union[ComponentShare, _Mapping]]] = ..., cells: _Optional[_Iterable[_Union[CellKey, _Mapping]]] = ..., aggregate: _Optional[_Union[PrivacyCost, _Mapping]] = ..., worst_case: _Optional[_Union[PrivacyCost, _Mapping]] = ...) -> None: ...

class SecureConsistencyRequest(_message.Message):
    __slots__ = ("session", "survivors")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    session: SecureSession
    survivors: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, session: _Optional[_Union[SecureSession, _Mapping]] = ..., survivors: _Optional[_Iterable[int]] = ...) -> None: ...

class SurvivorSignature(_message.Message):
    __slots__ = ("index", "signature")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    index: int
    signature: str
    def __init__(self, index: _Optional[int] = ..., signature: _Optional[str] = ...) -> None: ...

class SecureUnmaskRequest(_message.Message):
    __slots__ = ("session", "survivors", "signatures")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    session: SecureSession
    survivors: _containers.RepeatedScalarFieldContainer[int]
    signatures: _containers.RepeatedCompositeFieldContainer[SurvivorSignature]
    def __init__(self, session: _Optional[_Union[SecureSession, _Mapping]] = ..., survivors: _Optional[_Iterable[int]] = ..., signatures: _Optional[_Iterable[_Union[SurvivorSignature, _Mapping]]] = ...) -> None: ...

class RevealedShare(_message.Message):
    __slots__ = ("member", "share")
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    member: int
    share: bytes
    def __init__(self, member: _Optional[int] = ..., share: _Optional[bytes] = ...) -> None: ...

class Reveal(_message.Message):
    __slots__ = ("index", "self_mask_shares", "mask_key_shares")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SELF_MASK_SHARES_FIELD_NUMBER: _ClassVar[int]
    MASK_KEY_SHARES_FIELD_NUMBER: _ClassVar[int]
    index: int
    self_mask_shares: _containers.RepeatedCompositeFieldContainer[RevealedShare]
    mask_key_shares: _containers.RepeatedCompositeFieldContainer[RevealedShare]
    def __init__(self, index: _Optional[int] = ..., self_mask_shares: _Optional[_Iterable[_Union[RevealedShare, _Mapping]]] = ..., mask_key_shares: _Optional[_Iterable[_Union[RevealedShare, _Mapping]]] = ...) -> None: ...
