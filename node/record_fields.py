"""How each schema column reads one raw field of an import, and what it stores.

A parser takes a trimmed, non-empty value and returns the value for the
records table and the value for the column's in-memory cache, or raises
:class:`BadValue` with the problem in words an NGO's staff can act on. The
rules are listed in :mod:`node.importer`. Messages quote raw values, so they
are as confidential as the records themselves.
"""

from __future__ import annotations

import math
import re
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

import numpy as np
import numpy.typing as npt

from node.config import CategoricalColumn, DateColumn, NumericColumn, Schema, TextColumn
from node.dataset import MISSING_DATE
from node.store import code_dtype

_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_INTEGER = re.compile(r"[+-]?[0-9]+(?:\.0*)?")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


class BadValue(Exception):
    """A value that breaks the schema; the message says how."""


class MissingValue(Exception):
    """A required value is empty."""


def show_raw(raw: str) -> str:
    return repr(raw) if len(raw) <= 40 else repr(raw[:40]) + "..."


def column_label(name: str) -> str:
    """A source column name safe to print: shortened, and quoted if it holds control characters."""
    short = name if len(name) <= 100 else name[:100] + "..."
    return short if short.isprintable() else repr(short)


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


# A parser takes a trimmed non-empty value and returns (value for the records
# table, value for the columnar cache), or raises BadValue with the problem.
FieldParser = Callable[[str], tuple[object, float | int]]


def _categorical(spec: CategoricalColumn) -> FieldParser:
    codes = {c: i for i, c in enumerate(spec.categories)}
    folded = {c.casefold(): c for c in spec.categories}

    def parse(s: str) -> tuple[object, int]:
        code = codes.get(s)
        if code is None:
            hint = folded.get(s.casefold())
            extra = f" (did you mean {hint!r}?)" if hint else ""
            raise BadValue(f"{show_raw(s)} is not a declared category{extra}")
        return s, code

    return parse


def _numeric(spec: NumericColumn) -> FieldParser:
    lo, hi = spec.bounds
    integer = spec.type == "integer"

    def parse(s: str) -> tuple[object, float]:
        value: int | float
        if integer:
            digits = s
            if not (s.isascii() and s.isdigit()):  # the common case needs no regex
                if not _INTEGER.fullmatch(s):
                    raise BadValue(f"{show_raw(s)} is not a whole number")
                digits = s.split(".", 1)[0]
            try:
                value = int(digits)
            except ValueError:  # more digits than Python converts
                raise BadValue(f"{show_raw(s)[:20]}... has too many digits") from None
        else:
            if not _FLOAT.fullmatch(s):
                raise BadValue(f"{show_raw(s)} is not a number")
            value = float(s) + 0.0  # + 0.0 turns -0.0 into 0.0
            if not math.isfinite(value):
                raise BadValue(f"{show_raw(s)} is not a finite number")
        if not lo <= value <= hi:
            raise BadValue(f"{show_raw(s)} is outside the bounds [{_fmt(lo)}, {_fmt(hi)}]")
        return value, float(value)

    return parse


def _date(spec: DateColumn) -> FieldParser:
    def parse(s: str) -> tuple[object, int]:
        try:
            if not _DATE.fullmatch(s):
                raise ValueError
            day = date.fromisoformat(s)
        except ValueError:
            raise BadValue(f"{show_raw(s)} is not a date (YYYY-MM-DD)") from None
        if spec.min is not None and day < spec.min:
            raise BadValue(f"{s} is before {spec.min}, the earliest allowed date")
        if spec.max is not None and day > spec.max:
            raise BadValue(f"{s} is after {spec.max}, the latest allowed date")
        return s, day.toordinal() - _EPOCH_ORDINAL

    return parse


def _text(s: str) -> tuple[object, int]:
    return s, 0


@dataclass
class StoredColumn:
    """One stored column: where it is in the source and how its values are checked."""

    name: str
    index: int | None  # None: optional column absent from the source
    required: bool
    parse: FieldParser
    sql_type: str
    cache: array[int] | array[float] | None  # None for text and the identifier
    missing: float | int

    def array(self) -> npt.NDArray[np.generic]:
        assert self.cache is not None
        dtype = {"h": np.int16, "i": np.int32, "d": np.float64}[self.cache.typecode]
        return np.frombuffer(self.cache, dtype=dtype)


def stored_columns(schema: Schema, positions: dict[str, int]) -> list[StoredColumn]:
    """The identifier, then every non-derived schema column, with its source position."""
    cols = [
        StoredColumn(schema.identifier, positions[schema.identifier], True, _text, "TEXT", None, 0)
    ]
    for name, spec in schema.columns.items():
        pos = positions.get(name)
        if isinstance(spec, TextColumn):
            cols.append(StoredColumn(name, pos, spec.required, _text, "TEXT", None, 0))
        elif isinstance(spec, CategoricalColumn):
            typecode = "h" if code_dtype(spec) is np.int16 else "i"
            cols.append(
                StoredColumn(name, pos, True, _categorical(spec), "TEXT", array(typecode), 0)
            )
        elif isinstance(spec, NumericColumn):
            sql = "INTEGER" if spec.type == "integer" else "REAL"
            cols.append(
                StoredColumn(name, pos, spec.required, _numeric(spec), sql, array("d"), math.nan)
            )
        elif isinstance(spec, DateColumn):
            cols.append(
                StoredColumn(
                    name, pos, spec.required, _date(spec), "TEXT", array("i"), MISSING_DATE
                )
            )
    return cols
