"""The node's local record store: where it lives, its secret salt, and loading it.

The store is one SQLite file, ``data_dir/records.sqlite``, written only by
:mod:`node.importer` (build a temporary file, then swap it in atomically) and
read here. It holds:

- ``records``: the validated raw values, one row per imported record, so the
  NGO can inspect exactly what the node holds (text columns live only here);
- ``columns(name, data)``: a columnar cache, one ``np.save``-serialised array
  per queryable column plus each record's client code (``:client``) and rank
  within its client (``:rank``), already sorted by client then rank, so that
  loading a million records is a few blob reads and one boolean mask;
- ``meta(key, value)``: format, dataset version, creation time, source, row and
  client counts, and the fingerprint of the schema the store was built for.

Loading applies per-client bounding: a record is kept when its rank is below
``max_records_per_client``. Ranks were computed at import from each client's
own records and the node's secret salt only (see :mod:`node.importer`), so
which records a client contributes never depends on anybody else's data, which
is what makes the engine's sensitivity bounds hold for the one-client privacy
unit.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import sqlite3
import tempfile
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
    NumericColumn,
    Schema,
)
from node.dataset import MISSING_DATE, Dataset

STORE_FILE = "records.sqlite"
SALT_FILE = "node.salt"
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
    return config.data_dir / STORE_FILE


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
    path = data_dir / SALT_FILE
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


def store_version(config: NodeConfig) -> str | None:
    """The current dataset version, or None if nothing has been imported yet."""
    try:
        conn = _connect_ro(store_path(config))
    except StoreMissing:
        return None
    try:
        return _read_meta(conn, store_path(config)).get("dataset_version")
    finally:
        conn.close()


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
