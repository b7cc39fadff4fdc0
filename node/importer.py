"""Import the NGO's records from a CSV file or a SQLite table into the node's store.

Every row is checked against the schema; nothing half-checked ever reaches the
store. Rules (all values are first trimmed of surrounding whitespace):

- the identifier must be non-empty;
- a categorical value must exactly match a declared category (case matters);
- integer columns take whole numbers such as ``3`` or ``3.0``, float columns
  finite decimals such as ``2.5`` or ``1e3``; values outside the declared
  bounds are bad rows;
- dates are ISO ``YYYY-MM-DD``, inside ``min``/``max`` if declared;
- an empty value is allowed only where the column has ``required: false``
  (text columns are optional by default; categorical columns always required);
- derived columns are computed at load and must not appear in the source;
  source columns unknown to the schema are ignored and listed in the report;
  optional columns may be absent (all their values are then missing).

Problems with the file as a whole (unreadable, not UTF-8, NUL bytes, a header
that lacks required columns or repeats one, a value over 1 MiB) raise
:class:`ImportFailed`. Problems with rows are reported as :class:`BadRow`
(line number and a reason naming the column). The report quotes raw values, so
it is as confidential as the records themselves.

If any row is bad the store is left untouched unless ``allow_bad_rows`` is
given, in which case the good rows are imported. The new store is built in a
temporary file beside the old one, fsynced and then swapped in with
``os.replace``: a reader or a crash sees either the old store or the new one,
never a mixture, and a failed import leaves the old store byte-for-byte intact.

Per-client bounding is prepared at import: every record gets its rank within
its own client and every client a code; the dataset version is a keyed content
hash. :mod:`node.store` says how, and why each is keyed with the node's salt.
"""

from __future__ import annotations

import csv
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO
from urllib.request import pathname2url

import numpy as np

from node.config import (
    CategoricalColumn,
    DateColumn,
    DerivedColumn,
    NodeConfig,
    NumericColumn,
    Schema,
)
from node.record_fields import (
    BadValue,
    MissingValue,
    StoredColumn,
    column_label,
    show_raw,
    stored_columns,
)
from node.record_keys import (
    client_codes,
    content_version,
    keyed_words,
    record_digest,
    record_ranks,
)
from node.store import (
    StoreBuilder,
    StoreError,
    build_store,
    load_or_create_salt,
    new_dataset_version,
    quote_identifier,
    schema_fingerprint,
    store_path,
)

MAX_FIELD = 1 << 20  # 1 MiB: a larger value is not a plausible record field
MAX_LINE = 4 << 20  # physical line cap, so a file without newlines cannot exhaust memory
MAX_BAD_ROWS_REPORTED = 1000
_BATCH = 10_000
_MAX_IGNORED_LISTED = 100


@dataclass(frozen=True)
class BadRow:
    """``line``: the row's first line in a CSV (header = line 1); for SQLite, 1 + row position."""

    line: int
    reason: str


@dataclass(frozen=True)
class ImportReport:
    """What an import did. ``bad_rows`` holds the first 1000 in detail; ``bad_row_count`` all.

    ``rows_imported``, ``clients`` and ``dataset_version`` describe the new
    store and are 0/None when nothing was committed.
    """

    source: str
    rows_read: int
    rows_imported: int
    bad_rows: tuple[BadRow, ...]
    bad_row_count: int
    clients: int
    dataset_version: str | None
    replaced_previous: bool
    committed: bool
    ignored_columns: tuple[str, ...]


class ImportFailed(Exception):
    """The source as a whole cannot be imported; the message says what and how to fix it."""


def _plan(schema: Schema, header: list[str], source: str) -> tuple[dict[str, int], list[str]]:
    """Map schema columns to source positions; refuse headers that cannot be imported."""
    positions: dict[str, int] = {}
    ignored: list[str] = []
    for i, raw in enumerate(header):
        name = raw.strip()
        if not name:
            ignored.append(f"(unnamed column {i + 1})")
            continue
        if name not in schema.columns and name != schema.identifier:
            ignored.append(column_label(name))
        if name in positions:
            raise ImportFailed(
                f"{source}: column {show_raw(name)} appears twice in the header (columns "
                f"{positions[name] + 1} and {i + 1}); remove or rename one"
            )
        positions[name] = i
    for name in positions:
        spec = schema.columns.get(name)
        if isinstance(spec, DerivedColumn):
            raise ImportFailed(
                f"{source}: column {name!r} is derived ({spec.expression}) and computed by the "
                "node at load; remove it from the source"
            )
    required = [schema.identifier] + [
        name
        for name, spec in schema.columns.items()
        if isinstance(spec, CategoricalColumn)
        or (isinstance(spec, NumericColumn | DateColumn) and spec.required)
    ]
    missing = [name for name in required if name not in positions]
    if missing:
        folded = {n.casefold(): n for n in positions}
        parts = []
        for name in missing:
            near = folded.get(name.casefold())
            parts.append(f"{name!r} (the source has {near!r})" if near else repr(name))
        raise ImportFailed(
            f"{source}: required column(s) missing from the header: {', '.join(parts)}. "
            "Add them or fix their names (names are case-sensitive); the header has: "
            + ", ".join(show_raw(h) for h in header[:50])
            + (", ..." if len(header) > 50 else "")
        )
    if len(ignored) > _MAX_IGNORED_LISTED:
        more = len(ignored) - _MAX_IGNORED_LISTED
        ignored = [*ignored[:_MAX_IGNORED_LISTED], f"(and {more} more)"]
    return positions, ignored


# ---------------------------------------------------------------- ingest


# (line, values): str values from CSV; SQLite values may also be None, int, float,
# bytes or an _Unusable marker, converted (or refused) by _as_text.
Row = tuple[int, Sequence[object]]


@dataclass
class _Tally:
    rows_read: int = 0
    bad_count: int = 0
    bad: list[BadRow] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)  # identifier of each good record
    digests: bytearray = field(default_factory=bytearray)  # keyed digest of each good record


def _validate(
    cols: list[StoredColumn],
    width: int,
    rows: Iterator[Row],
    salt: bytes,
    allow_bad_rows: bool,
    builder: StoreBuilder,
) -> _Tally:
    """Check every row; stream good ones to ``builder`` and the columnar caches in ``cols``.

    After the first bad row without ``allow_bad_rows`` nothing will be
    committed, so later good rows are only counted, not kept.
    """
    tally = _Tally()
    batch: list[tuple[object, ...]] = []
    for line, fields in rows:
        tally.rows_read += 1
        problems: list[str] = []
        values: list[object] = []
        cached: list[float | int] = []
        if len(fields) != width:
            problems.append(f"row has {len(fields)} values, the header has {width} columns")
        else:
            for col in cols:
                raw = fields[col.index] if col.index is not None else ""
                try:
                    s = raw.strip() if isinstance(raw, str) else _as_text(raw)
                    if s:
                        value, cache = col.parse(s)
                    elif col.required:
                        raise MissingValue
                    else:
                        value, cache = None, col.missing
                except BadValue as exc:
                    problems.append(f"{col.name}: {exc}")
                    continue
                except MissingValue:
                    problems.append(f"{col.name} is missing")
                    continue
                values.append(value)
                cached.append(cache)
        if problems:
            tally.bad_count += 1
            if len(tally.bad) < MAX_BAD_ROWS_REPORTED:
                tally.bad.append(BadRow(line, "; ".join(problems)))
            continue
        if tally.bad_count and not allow_bad_rows:
            continue
        record = tuple(values)
        # repr of normalised values (int, float, str, None) is canonical: the same
        # record from a CSV or a SQLite source gives the same bytes.
        tally.digests += record_digest(salt, repr(record).encode("utf-8", "surrogatepass"))
        tally.ids.append(str(record[0]))
        for col, cache in zip(cols, cached, strict=True):
            if col.cache is not None:
                col.cache.append(cache)  # type: ignore[arg-type]
        batch.append(record)
        if len(batch) >= _BATCH:
            builder.add_records(batch)
            batch.clear()
    if batch and not (tally.bad_count and not allow_bad_rows):
        builder.add_records(batch)
    return tally


def _ingest(
    config: NodeConfig,
    source: str,
    header: list[str],
    rows: Iterator[Row],
    allow_bad_rows: bool,
) -> ImportReport:
    schema = config.schema
    positions, ignored = _plan(schema, header, source)
    cols = stored_columns(schema, positions)
    lowered = [c.name.lower() for c in cols]
    if len(set(lowered)) != len(lowered):
        raise ImportFailed(
            f"{source}: schema column names must differ by more than letter case for the store"
        )
    tally = _Tally()
    version: str | None = None
    clients = 0
    replaced = False
    try:
        config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        salt = load_or_create_salt(config.data_dir)
        layout = [(c.name, c.sql_type) for c in cols]
        with build_store(store_path(config), layout) as builder:
            tally = _validate(cols, len(header), rows, salt, allow_bad_rows, builder)
            if tally.ids and (allow_bad_rows or not tally.bad_count):
                client, clients = client_codes(tally.ids, salt)
                tiebreak = keyed_words(bytes(tally.digests))
                recency = None
                for col in cols:
                    if col.name == schema.recency and col.cache is not None:
                        recency = np.frombuffer(col.cache, dtype=np.int32)
                fingerprint = schema_fingerprint(schema)
                # Published: a fresh random id per import, so it says "the records
                # were replaced" and nothing about whether they changed. The
                # content hash stays inside the node.
                version = new_dataset_version()
                replaced = builder.commit(
                    client=client,
                    rank=record_ranks(client, recency, tiebreak),
                    arrays={c.name: c.array() for c in cols if c.cache is not None},
                    meta={
                        "dataset_version": version,
                        "content_hash": content_version(fingerprint, tiebreak),
                        "source": source,
                        "schema_fingerprint": fingerprint,
                    },
                )
    except (OSError, StoreError) as exc:
        raise ImportFailed(f"{source}: cannot write the store: {exc}") from None
    return ImportReport(
        source=source,
        rows_read=tally.rows_read,
        rows_imported=len(tally.ids) if version else 0,
        bad_rows=tuple(tally.bad),
        bad_row_count=tally.bad_count,
        clients=clients,
        dataset_version=version,
        replaced_previous=replaced,
        committed=version is not None,
        ignored_columns=tuple(ignored),
    )


# ---------------------------------------------------------------- CSV


def import_csv(config: NodeConfig, source: Path, *, allow_bad_rows: bool = False) -> ImportReport:
    """Validate a UTF-8 CSV file (header on line 1) and, if it passes, make it the node's store."""
    name = str(source)
    try:
        fh = open(source, "rb")  # noqa: SIM115 - closed in the finally below
    except OSError as exc:
        raise ImportFailed(f"{name}: cannot open: {exc.strerror or exc}") from None
    previous_limit = csv.field_size_limit(MAX_FIELD)
    try:
        reader = csv.reader(_csv_lines(fh, name), strict=True)
        try:
            header = next(reader)
        except StopIteration:
            raise ImportFailed(f"{name}: the file is empty; line 1 must be the header") from None
        except csv.Error as exc:
            raise ImportFailed(_csv_problem(name, reader.line_num, exc)) from None
        if not any(h.strip() for h in header):
            raise ImportFailed(f"{name}: line 1 must be the header, but it is blank")

        def rows() -> Iterator[Row]:
            while True:
                start = reader.line_num + 1
                try:
                    fields = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    raise ImportFailed(_csv_problem(name, reader.line_num, exc)) from None
                if fields:  # blank lines are skipped
                    yield start, fields

        return _ingest(config, name, header, rows(), allow_bad_rows)
    except OSError as exc:
        raise ImportFailed(f"{name}: cannot read: {exc.strerror or exc}") from None
    finally:
        csv.field_size_limit(previous_limit)
        fh.close()


def _csv_problem(name: str, line: int, exc: csv.Error) -> str:
    if "field larger than field limit" in str(exc):
        return f"{name}: line {line}: a value is longer than 1 MiB; this is not a record export"
    return f"{name}: line {line}: not valid CSV ({exc}); check quoting around this line"


def _csv_lines(fh: BinaryIO, name: str) -> Iterator[str]:
    """Decode physical lines strictly as UTF-8 (a UTF-8 BOM is allowed), refusing hostile bytes."""
    number = 0
    while True:
        try:
            raw = fh.readline(MAX_LINE + 1)
        except OSError as exc:
            raise ImportFailed(f"{name}: cannot read: {exc.strerror or exc}") from None
        if not raw:
            return
        number += 1
        if len(raw) > MAX_LINE:
            raise ImportFailed(f"{name}: line {number} is longer than 4 MiB; is this a CSV file?")
        if number == 1:
            if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
                raise ImportFailed(f"{name}: the file is UTF-16 encoded; {_SAVE_AS}")
            raw = raw.removeprefix(b"\xef\xbb\xbf")
        if b"\x00" in raw:
            raise ImportFailed(
                f"{name}: line {number} contains NUL bytes (a UTF-16 or binary file?); {_SAVE_AS}"
            )
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ImportFailed(
                f"{name}: line {number} is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at "
                f"position {exc.start + 1}; perhaps Latin-1 or Windows-1252); {_SAVE_AS}"
            ) from None


_SAVE_AS = "save it as UTF-8 CSV (in Excel: 'CSV UTF-8 (Comma delimited)') and import again"


# ---------------------------------------------------------------- SQLite


def import_sqlite(
    config: NodeConfig, source: Path, table: str, *, allow_bad_rows: bool = False
) -> ImportReport:
    """Import a table or view of another SQLite file, with the same checks as a CSV.

    The source is opened read-only with ``trusted_schema`` off, so a hostile
    view cannot call functions with side effects. The table name must match an
    entry of ``sqlite_master`` exactly before it is (quoted and) used.
    """
    name = f"{source} table {table!r}"
    if not source.is_file():
        raise ImportFailed(f"{source}: no such file")
    try:
        conn = sqlite3.connect(f"file:{pathname2url(str(source))}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise ImportFailed(f"{source}: cannot open as SQLite: {exc}") from None
    try:
        conn.execute("PRAGMA trusted_schema=OFF")
        conn.execute("PRAGMA query_only=ON")
        found = conn.execute(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND name = ?",
            (table,),
        ).fetchone()
        if found is None:
            available = [
                r[0]
                for r in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
                    "AND name NOT LIKE 'sqlite_%' ORDER BY name LIMIT 20"
                )
            ]
            raise ImportFailed(
                f"{source}: no table or view named {table!r}; it has: "
                + (", ".join(repr(a) for a in available) or "(none)")
            )
        # The name is one the source itself listed, and quoted: not injectable.
        cursor = conn.execute(f"SELECT * FROM {quote_identifier(found[0])}")  # noqa: S608
        header = [d[0] for d in cursor.description]

        def rows() -> Iterator[Row]:
            line = 1
            while True:
                try:
                    chunk = cursor.fetchmany(_BATCH)
                except sqlite3.Error as exc:
                    raise ImportFailed(f"{source}: cannot read {table!r}: {exc}") from None
                if not chunk:
                    return
                for row in chunk:
                    line += 1
                    yield line, _sqlite_values(row)

        return _ingest(config, name, header, rows(), allow_bad_rows)
    except sqlite3.Error as exc:
        raise ImportFailed(f"{source}: cannot read {table!r}: {exc}") from None
    finally:
        conn.close()


class _Unusable:
    """A SQLite value refused before validation; the reason names the problem."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _sqlite_values(row: tuple[object, ...]) -> list[object]:
    return [
        _Unusable("value is longer than 1 MiB")
        if isinstance(v, str) and len(v) > MAX_FIELD
        else _Unusable("value contains a NUL character")
        if isinstance(v, str) and "\x00" in v
        else v
        for v in row
    ]


def _as_text(value: object) -> str:
    """The text form of a non-string SQLite value, as a CSV export would write it."""
    if value is None:
        return ""
    if isinstance(value, bool | int):
        return str(int(value))
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, _Unusable):
        raise BadValue(value.reason)
    if isinstance(value, bytes):
        raise BadValue("binary (BLOB) values cannot be imported")
    raise BadValue(f"unsupported value of type {type(value).__name__}")
