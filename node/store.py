"""The node's local record store: its layout, its secret salt, writing it and loading it.

The store is one SQLite file, ``data_dir/records.sqlite``, written through
:func:`build_store` once :mod:`node.importer` has validated the records, and
read by :func:`load_dataset`. It holds:

- ``records``: the validated raw values, one row per imported record, so the
  NGO can inspect exactly what the node holds (text columns live only here);
- ``columns(name, data)``: a columnar cache, one ``np.save``-serialised array
  per categorical, numeric and date column, plus each record's client code (``:client``) and rank
  within its client (``:rank``), already sorted by client then rank, so that
  loading a million records is a few blob reads and one boolean mask;
- ``meta(key, value)``: format, dataset version, creation time, source, row and
  client counts, and the fingerprint of the schema the store was built for.

Per-client bounding is prepared when the store is written and applied at load:
each record's rank within its own client and each client's code come from
:mod:`node.record_keys` (keyed with the node's secret salt), and loading keeps
records whose rank is below ``max_records_per_client``.

The dataset version, which coordinators see in every answer and the ledger
records, is 20 random hex digits drawn afresh at every import, whether or not
the records changed: a content hash there would answer "did any client join,
leave or change since the last import?" exactly, outside any DP release. The
content hash (the first 20 hex digits of a sha256 over the schema fingerprint
and the sorted keyed record hashes, independent of row order) is kept in the
store's metadata as ``content_hash`` for the NGO's own use and never leaves
the node.

A new store is built in a private temporary file beside the old one, fsynced
and swapped in with ``os.replace``: readers and crashes see the old store or
the new one, never a mixture, and a failed import leaves the old store
byte-for-byte intact.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import secrets
import sqlite3
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar, cast
from urllib.request import pathname2url

import numpy as np
import numpy.typing as npt

from node.config import (
    CategoricalColumn,
    DateColumn,
    DerivedColumn,
    NodeConfig,
    NodePaths,
    NumericColumn,
    Schema,
)
from node.dataset import MISSING_DATE, Dataset

STORE_FILE = NodePaths(Path()).records.name
SALT_FILE = NodePaths(Path()).salt.name
SALT_BYTES = 32
STORE_FORMAT = "tiaki-store-1"

# Keys of the columnar cache. Schema columns are stored as "col:<name>"; the
# colon cannot occur in a schema column name, so internal arrays never clash.
CLIENT_KEY = ":client"
RANK_KEY = ":rank"


_T = TypeVar("_T", bound=np.generic)


def column_key(name: str) -> str:
    return f"col:{name}"


class StoreError(Exception):
    """The store is unusable (damaged, or built for another schema). The message says what to do."""


class StoreMissing(StoreError):
    """No records have been imported yet."""


def store_path(config: NodeConfig) -> Path:
    return config.paths.records


# ---------------------------------------------------------------- salt


def load_or_create_salt(data_dir: Path) -> bytes:
    """Return the node's secret 32-byte salt, creating ``data_dir/node.salt`` (mode 0600) once.

    The salt keys every hash the importer computes: tie-breaks between a
    client's records, the order of client codes and the dataset version. Keyed
    hashes are unpredictable to anyone without the salt, so no outsider can
    steer which records are kept, infer an ordering from identifiers, or test a
    guess about the records against the (public) dataset version. It never
    leaves the node. Creation is race-free: the new salt is written to a
    private temporary file and hard-linked into place, which fails rather than
    overwrites if another process got there first.
    """
    path = NodePaths(data_dir).salt
    if not path.exists():
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=data_dir, prefix=".node.salt-")  # mode 0600
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(SALT_BYTES))
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # another process created it first; use theirs
            else:
                fsync_dir(data_dir)
        finally:
            os.unlink(tmp)
    try:
        salt = path.read_bytes()
    except OSError as exc:
        raise StoreError(f"{path}: cannot read the node's salt: {exc}") from None
    if len(salt) != SALT_BYTES:
        raise StoreError(
            f"{path}: expected {SALT_BYTES} bytes, found {len(salt)}; the salt is damaged. "
            "Restore it from backup, or delete it and re-import (ranks and version will change)"
        )
    return salt


def fsync_dir(directory: Path) -> None:
    """Make a rename or link inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- schema


def schema_fingerprint(schema: Schema) -> str:
    """sha256 of the schema's canonical JSON, ignoring the ``queryable`` flags.

    A store built under one schema is refused under another: its codes, bounds
    and ranks would be meaningless or wrong. Whether a column may be queried is
    policy, not data layout, so toggling ``queryable`` needs no re-import.
    """
    raw = schema.model_dump(mode="json")
    for spec in raw["columns"].values():
        spec.pop("queryable", None)
    canonical = json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def code_dtype(spec: CategoricalColumn) -> type[np.int16] | type[np.int32]:
    return np.int16 if len(spec.categories) <= np.iinfo(np.int16).max else np.int32


# ---------------------------------------------------------------- arrays


def encode_array(array: npt.NDArray[np.generic]) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _decode_array(
    blobs: dict[str, bytes], key: str, dtype: type[_T], n: int, path: Path
) -> npt.NDArray[_T]:
    blob = blobs.get(key)
    if blob is None:
        raise StoreError(f"{path}: column {key!r} is missing from the store; {_REIMPORT}")
    try:
        array = np.load(io.BytesIO(blob), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise StoreError(f"{path}: column {key!r} is damaged ({exc}); {_REIMPORT}") from None
    if array.dtype != np.dtype(dtype) or array.shape != (n,):
        raise StoreError(
            f"{path}: column {key!r} has dtype {array.dtype} and shape {array.shape}, "
            f"expected {np.dtype(dtype)} and ({n},); {_REIMPORT}"
        )
    return cast("npt.NDArray[_T]", array)


_REIMPORT = "re-run 'tiaki-node import' to rebuild it"


# ---------------------------------------------------------------- writing
# The importer validates; this section turns validated records into the layout
# that load_dataset reads, so both sides of the format live in one module.


def new_dataset_version() -> str:
    """A published dataset version: 20 random hex digits, new for every import."""
    return secrets.token_hex(10)


def quote_identifier(identifier: str) -> str:
    """An SQL identifier in double quotes; only for names already checked or from the schema."""
    return '"' + identifier.replace('"', '""') + '"'


class StoreBuilder:
    """A new store under construction in a private temporary file; see :func:`build_store`."""

    def __init__(
        self, conn: sqlite3.Connection, tmp: Path, target: Path, columns: Sequence[tuple[str, str]]
    ) -> None:
        self._conn, self._tmp, self._target = conn, tmp, target
        declared = ", ".join(f"{quote_identifier(name)} {sql_type}" for name, sql_type in columns)
        conn.execute(f"CREATE TABLE records ({declared})")
        conn.execute("CREATE TABLE columns (name TEXT PRIMARY KEY, data BLOB NOT NULL)")
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        # Only placeholders are formatted in; the values are bound parameters.
        self._insert = f"INSERT INTO records VALUES ({', '.join('?' * len(columns))})"  # noqa: S608

    def add_records(self, records: Sequence[tuple[object, ...]]) -> None:
        """Append validated raw values, in the column order given to :func:`build_store`."""
        self._conn.executemany(self._insert, records)

    def commit(
        self,
        *,
        client: npt.NDArray[np.int64],
        rank: npt.NDArray[np.int32],
        arrays: Mapping[str, npt.NDArray[np.generic]],
        meta: Mapping[str, str],
    ) -> bool:
        """Write the columnar cache sorted by (client, rank), then swap the file in.

        Returns whether a previous store was replaced. The file is fsynced
        before ``os.replace`` and the directory after, so after a crash the
        store is either wholly the old one or wholly the new one.
        """
        order = np.lexsort((rank, client))
        blobs: list[tuple[str, npt.NDArray[np.generic]]] = [
            (CLIENT_KEY, client[order]),
            (RANK_KEY, rank[order]),
        ]
        blobs += [(column_key(name), array[order]) for name, array in arrays.items()]
        self._conn.executemany(
            "INSERT INTO columns VALUES (?, ?)", ((k, encode_array(a)) for k, a in blobs)
        )
        full_meta = {
            **meta,
            "format": STORE_FORMAT,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "rows": str(client.shape[0]),
            "clients": str(int(client.max()) + 1 if client.size else 0),
        }
        self._conn.executemany("INSERT INTO meta VALUES (?, ?)", full_meta.items())
        self._conn.commit()
        self._conn.close()
        with open(self._tmp, "rb") as fh:
            os.fsync(fh.fileno())
        replaced = self._target.exists()
        os.replace(self._tmp, self._target)
        fsync_dir(self._target.parent)
        return replaced


@contextlib.contextmanager
def build_store(target: Path, columns: Sequence[tuple[str, str]]) -> Iterator[StoreBuilder]:
    """Build a replacement for the store at ``target``; nothing changes unless ``commit`` runs.

    ``columns`` are the (name, SQL type) of the ``records`` table. One build at
    a time per directory (an advisory lock), temporary files from crashed
    builds are removed, and the temporary file is private (mode 0600) because
    it holds raw client records. Any exception, including one from the
    caller's own code inside the ``with`` block, deletes the temporary file and
    leaves the previous store byte-for-byte as it was. Write failures surface
    as :class:`StoreError`.
    """
    data_dir = target.parent
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock = open(data_dir / ".import.lock", "a+b")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise StoreError(f"cannot write in data directory {data_dir}: {exc}") from None
    with lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        tmp: Path | None = None
        conn: sqlite3.Connection | None = None
        try:
            for stale in data_dir.glob(".records-*.tmp"):
                stale.unlink(missing_ok=True)
            fd, name = tempfile.mkstemp(dir=data_dir, prefix=".records-", suffix=".tmp")
            os.close(fd)
            tmp = Path(name)
            conn = sqlite3.connect(tmp)
            # Safe to skip the journal: on any failure this file is thrown away.
            conn.execute("PRAGMA journal_mode=OFF")
            conn.execute("PRAGMA synchronous=OFF")
            yield StoreBuilder(conn, tmp, target, columns)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot write the new store in {data_dir}: {exc}") from None
        finally:
            if conn is not None:
                conn.close()
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


# ---------------------------------------------------------------- reading


def _connect_ro(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise StoreMissing(
            f"no records at {path} yet; run 'tiaki-node import' to load the NGO's records"
        )
    try:
        return sqlite3.connect(f"file:{pathname2url(str(path))}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot open the store: {exc}") from None


def _read_meta(conn: sqlite3.Connection, path: Path) -> dict[str, str]:
    try:
        meta = {str(k): str(v) for k, v in conn.execute("SELECT key, value FROM meta")}
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path}: not a tiaki store or damaged ({exc}); {_REIMPORT}") from None
    if meta.get("format") != STORE_FORMAT:
        raise StoreError(
            f"{path}: store format {meta.get('format')!r}, this node reads {STORE_FORMAT!r}; "
            f"{_REIMPORT}"
        )
    return meta


def _store_meta(config: NodeConfig, key: str) -> str | None:
    """One value of the store's metadata, or None if nothing has been imported yet."""
    try:
        conn = _connect_ro(store_path(config))
    except StoreMissing:
        return None
    try:
        return _read_meta(conn, store_path(config)).get(key)
    finally:
        conn.close()


def store_content_hash(config: NodeConfig) -> str | None:
    """The store's private content hash (never published), or None before the first import."""
    return _store_meta(config, "content_hash")


def store_version(config: NodeConfig) -> str | None:
    """The current (published, random) dataset version, or None before the first import."""
    return _store_meta(config, "dataset_version")


def load_dataset(config: NodeConfig) -> Dataset:
    """Load the store into memory, keeping each client's ``max_records_per_client`` best records.

    Everything is vectorised: the cache is stored sorted by (client, rank), so
    bounding is one mask that preserves that order. As a guard on the privacy
    invariant the engine relies on, the kept records are re-checked to number
    at most k per client; a store that breaks it is refused.
    """
    path = store_path(config)
    schema = config.schema
    k = config.policy.max_records_per_client
    conn = _connect_ro(path)
    try:
        meta = _read_meta(conn, path)
        if meta.get("schema_fingerprint") != schema_fingerprint(schema):
            raise StoreError(
                f"{path} was imported under a different schema than the one in the config "
                "(a column, category, bound or the identifier changed). Re-run "
                "'tiaki-node import' with the current config, or restore the old schema"
            )
        blobs = {
            str(name): bytes(data) for name, data in conn.execute("SELECT name, data FROM columns")
        }
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path}: store is damaged ({exc}); {_REIMPORT}") from None
    finally:
        conn.close()
    try:
        n = int(meta["rows"])
        version = meta["dataset_version"]
    except (KeyError, ValueError):
        raise StoreError(f"{path}: store metadata is incomplete; {_REIMPORT}") from None

    client = _decode_array(blobs, CLIENT_KEY, np.int64, n, path)
    rank = _decode_array(blobs, RANK_KEY, np.int32, n, path)
    keep = rank < k
    kept_client = client[keep]
    if kept_client.size and (
        np.any(np.diff(kept_client) < 0)
        or kept_client[0] != 0
        or np.bincount(kept_client).max() > k
        or np.any(np.bincount(kept_client) == 0)
    ):
        raise StoreError(f"{path}: client codes or ranks are inconsistent; {_REIMPORT}")

    categorical: dict[str, npt.NDArray[np.integer]] = {}
    numeric: dict[str, npt.NDArray[np.float64]] = {}
    dates: dict[str, npt.NDArray[np.int32]] = {}
    for name, spec in schema.columns.items():
        key = column_key(name)
        if isinstance(spec, CategoricalColumn):
            codes = _decode_array(blobs, key, code_dtype(spec), n, path)[keep]
            if codes.size and (codes.min() < 0 or codes.max() >= len(spec.categories)):
                raise StoreError(f"{path}: column {name!r} has invalid codes; {_REIMPORT}")
            categorical[name] = codes
        elif isinstance(spec, NumericColumn):
            numeric[name] = _decode_array(blobs, key, np.float64, n, path)[keep]
        elif isinstance(spec, DateColumn):
            dates[name] = _decode_array(blobs, key, np.int32, n, path)[keep]
    for name, spec in schema.columns.items():
        if isinstance(spec, DerivedColumn):
            numeric[name] = _derive(spec, numeric, dates)

    return Dataset(
        version=version,
        max_records_per_client=k,
        client=kept_client,
        categorical=categorical,
        numeric=numeric,
        dates=dates,
        records_before_bounding=n,
    )


def _derive(
    spec: DerivedColumn,
    numeric: dict[str, npt.NDArray[np.float64]],
    dates: dict[str, npt.NDArray[np.int32]],
) -> npt.NDArray[np.float64]:
    """``a - b`` / ``a + b`` as float64, NaN where either side is missing (dates: in days)."""
    left, op, right = spec.operands
    if left in dates:
        lday, rday = dates[left], dates[right]
        missing = (lday == MISSING_DATE) | (rday == MISSING_DATE)
        diff = lday.astype(np.float64) - rday.astype(np.float64)
        return np.where(missing, np.nan, diff)
    a, b = numeric[left], numeric[right]
    return a - b if op == "-" else a + b
