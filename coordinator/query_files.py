"""Named, repeatable questions kept in a YAML file.

An outcome-measurement programme asks the same questions every quarter. A
query file names them once, with the same words the ``tiaki query`` command
line takes::

    version: 1
    queries:
      clients_by_service_region:
        description: Clients served, by service and region
        kind: count_clients
        by: [service, region]
        epsilon: 0.5

Keys of one query: ``kind`` (required: count, count_clients, sum, mean,
proportion or histogram), ``description``, ``column``, ``where`` and
``condition`` (lists of conditions such as ``region=auckland`` or
``sessions>=5``), ``by`` (list of categorical columns), ``bounds``
(``"lo,hi"``), ``bins`` (``"a,b,c"``), and exactly one of ``epsilon`` (pure
DP) or ``rho`` (zCDP). Unknown keys are refused, so a misspelt key can never
silently change a question.

Loading checks everything that does not depend on a node's schema; whether
the columns and categories exist is checked when the query is built with a
node's column types (:meth:`NamedQuery.build`) and, finally, by each node.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from coordinator.query_spec import build_query
from tiaki.budget import AmountError, parse_amount
from tiaki.errors import InvalidQueryError, TiakiError
from tiaki.files import SourceKeepingLoader, read_yaml, scalar_text
from tiaki.query import Query, QueryKind

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# The shape build_query's parser reads; the column's type is checked later.
_CONDITION = re.compile(r"\s*[A-Za-z_]\w*\s*(>=|<=|=)\s*\S.*")
_KINDS = ", ".join(k.value for k in QueryKind)
_KEYS = "description, kind, column, where, by, condition, bounds, bins, epsilon, rho"


class QueryFileError(TiakiError):
    """A query file is missing, unreadable or invalid. The message names the file and query."""


class QueryWords(TypedDict):
    """The keyword arguments :func:`coordinator.query_spec.build_query` takes, bar column types."""

    kind: str
    column: str | None
    where: tuple[str, ...]
    by: tuple[str, ...]
    condition: tuple[str, ...]
    bounds: str | None
    bins: str | None
    epsilon: str | None
    rho: str | None


@dataclass(frozen=True)
class NamedQuery:
    """One named question from a query file."""

    name: str
    description: str
    kind: str
    column: str | None
    where: tuple[str, ...]
    by: tuple[str, ...]
    condition: tuple[str, ...]
    bounds: str | None
    bins: str | None
    epsilon: str | None
    rho: str | None

    def words(self) -> QueryWords:
        return QueryWords(
            kind=self.kind,
            column=self.column,
            where=self.where,
            by=self.by,
            condition=self.condition,
            bounds=self.bounds,
            bins=self.bins,
            epsilon=self.epsilon,
            rho=self.rho,
        )

    def build(self, column_types: dict[str, str]) -> Query:
        """The :class:`Query`, given the nodes' column types; errors name this query."""
        try:
            return build_query(**self.words(), column_types=column_types)
        except InvalidQueryError as exc:
            raise InvalidQueryError(f"query {self.name!r}: {exc.message}") from None


# ---------------------------------------------------------------- validation


def _text_list(value: Any) -> Any:
    """A single string is a list of one: ``by: service`` means ``by: [service]``."""
    return [value] if isinstance(value, str) else value


def _numbers_text(value: Any, what: str) -> Any:
    """``"-4,4"`` as written, or a YAML list of numbers joined the same way."""
    if isinstance(value, list):
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
            raise ValueError(f'{what} must be numbers, such as "-4,4" or [-4, 4]')
        return ",".join(repr(v) if isinstance(v, float) else str(v) for v in value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(f'{what} needs comma-separated numbers in quotes, such as "0,1,5"')
    return value


def _amount_text(value: Any, what: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{what} must be a positive decimal such as 0.5")
    # Judged as it was written: the strict grammar of amounts, not YAML's reading.
    text = scalar_text(value)
    try:
        parse_amount(text, what=what)
    except AmountError as exc:
        raise ValueError(str(exc)) from None
    return text


class _QueryModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    description: StrictStr = ""
    kind: StrictStr
    column: StrictStr | None = None
    where: tuple[StrictStr, ...] = ()
    by: tuple[StrictStr, ...] = ()
    condition: tuple[StrictStr, ...] = ()
    bounds: StrictStr | None = None
    bins: StrictStr | None = None
    epsilon: str | None = None
    rho: str | None = None

    @field_validator("kind")
    @classmethod
    def _kind(cls, kind: str) -> str:
        if kind not in {k.value for k in QueryKind}:
            raise ValueError(f"unknown query kind {kind!r}; choose one of: {_KINDS}")
        return kind

    @field_validator("where", "by", "condition", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _text_list(value)

    @field_validator("where", "condition")
    @classmethod
    def _conditions(cls, conditions: tuple[str, ...]) -> tuple[str, ...]:
        for text in conditions:
            if not _CONDITION.fullmatch(text):
                raise ValueError(
                    f"cannot read condition {text!r}; write column=value, column=a,b, "
                    "column>=x, column<=x or column=lo..hi"
                )
        return conditions

    @field_validator("bounds", "bins", mode="before")
    @classmethod
    def _numbers(cls, value: Any) -> Any:
        return _numbers_text(value, "bounds or bins")

    @field_validator("epsilon", "rho", mode="before")
    @classmethod
    def _amount(cls, value: Any) -> str | None:
        return _amount_text(value, "privacy cost")

    @model_validator(mode="after")
    def _shape(self) -> _QueryModel:
        if (self.epsilon is None) == (self.rho is None):
            raise ValueError("give exactly one of 'epsilon' (pure DP) or 'rho' (zCDP)")
        # Everything a Query checks without a schema: parts the kind needs or
        # forbids, bounds, bins and group-by. Filters are stood in for by a
        # placeholder, because their columns' types are not known here.
        try:
            build_query(
                kind=self.kind,
                column=self.column,
                where=(),
                by=self.by,
                condition=["_=x"] if self.condition else [],
                bounds=self.bounds,
                bins=self.bins,
                epsilon=self.epsilon,
                rho=self.rho,
                column_types={"_": "categorical"},
            )
        except InvalidQueryError as exc:
            raise ValueError(exc.message) from None
        return self


class _FileModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = Field(default=1)
    queries: dict[str, _QueryModel]

    @field_validator("version")
    @classmethod
    def _version(cls, version: int) -> int:
        if version != 1:
            raise ValueError(f"this tiaki reads query files of version 1, not {version}")
        return version

    @field_validator("queries", mode="before")
    @classmethod
    def _names(cls, queries: Any) -> Any:
        if isinstance(queries, dict):
            if not queries:
                raise ValueError("the file names no queries")
            for name in queries:
                if not isinstance(name, str) or not _NAME.fullmatch(name):
                    raise ValueError(
                        f"query name {name!r} must be 1 to 64 letters, digits, '_', '.' or '-'"
                    )
        return queries


# ---------------------------------------------------------------- loading


class _UniqueKeyLoader(SourceKeepingLoader):
    """A safe loader that refuses a key given twice (PyYAML would keep the last)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} is given twice", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def _describe(error: Any) -> str:
    loc = [str(part) for part in error["loc"] if not str(part).startswith("function-")]
    msg = str(error["msg"]).removeprefix("Value error, ")
    kind = error["type"]
    if kind == "extra_forbidden":
        keys = _KEYS if len(loc) >= 3 else "version, queries"
        msg = f"unknown key; {'a query' if len(loc) >= 3 else 'the file'}'s keys are: {keys}"
    elif kind == "missing":
        msg = "required key is missing"
    elif kind in ("model_type", "dict_type"):
        msg = "expected a mapping of keys such as kind, by and epsilon"
    if loc[:1] == ["queries"] and len(loc) >= 2:
        where = f"query {loc[1]!r}"
        if len(loc) >= 3:
            where += f", key {loc[2]!r}"
        if len(loc) >= 4 and loc[3].isdigit():
            where += f", item {int(loc[3]) + 1}"
    elif loc:
        where = f"key {loc[0]!r}"
    else:
        where = "(top level)"
    return f"{where}: {msg}"


def load_query_file(path: Path) -> dict[str, NamedQuery]:
    """Read and validate a query file; the queries in the order the file gives them."""
    raw = read_yaml(path, QueryFileError, missing="no such query file", loader=_UniqueKeyLoader)
    if not isinstance(raw, dict):
        raise QueryFileError(f"{path}: expected a mapping with 'version' and 'queries'")
    try:
        model = _FileModel.model_validate(raw)
    except ValidationError as exc:
        lines = "\n".join(f"  {_describe(e)}" for e in exc.errors())
        raise QueryFileError(f"{path}: invalid query file:\n{lines}") from None
    return {
        name: NamedQuery(
            name=name,
            description=q.description,
            kind=q.kind,
            column=q.column,
            where=q.where,
            by=q.by,
            condition=q.condition,
            bounds=q.bounds,
            bins=q.bins,
            epsilon=q.epsilon,
            rho=q.rho,
        )
        for name, q in model.queries.items()
    }
