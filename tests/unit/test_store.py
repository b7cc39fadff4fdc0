"""Store: loading, per-client bounding, rank independence, salt, schema fingerprint."""

from __future__ import annotations

import sqlite3
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.config import NodeConfig
from node.dataset import MISSING_DATE
from node.importer import import_csv
from node.record_keys import record_ranks
from node.store import (
    SALT_BYTES,
    StoreError,
    StoreMissing,
    load_dataset,
    load_or_create_salt,
    store_path,
    store_version,
)
from tests.conftest import PUMS_DIR, PUMS_SCHEMA, node_config

SCHEMA: dict[str, Any] = {
    "identifier": "client_id",
    "recency": "start",
    "columns": {
        "name": {"type": "text"},
        "region": {"type": "categorical", "categories": ["north", "south", "east"]},
        "start": {"type": "date", "min": "2015-01-01", "max": "2030-12-31", "required": False},
        "end": {"type": "date", "min": "2015-01-01", "max": "2030-12-31", "required": False},
        "seq": {"type": "integer", "bounds": [0, 1_000_000]},
        "pre": {"type": "integer", "bounds": [1, 5]},
        "post": {"type": "integer", "bounds": [1, 5], "required": False},
        "cost": {"type": "float", "bounds": [-100, 100], "required": False},
        "change": {"type": "derived", "expression": "post - pre"},
        "total": {"type": "derived", "expression": "cost + pre"},
        "days": {"type": "derived", "expression": "end - start"},
    },
}
HEADER = "client_id,name,region,start,end,seq,pre,post,cost"


def make_config(data_dir: Path, schema: dict[str, Any] | None = None, k: int = 3) -> NodeConfig:
    return node_config(data_dir, schema or SCHEMA, k=k)


def write_csv(path: Path, rows: list[str], header: str = HEADER) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def row(client: str, seq: int, start: str = "2020-01-01", **kw: str) -> str:
    values = {"name": "", "region": "north", "end": "", "pre": "1", "post": "", "cost": ""} | kw
    return (
        f"{client},{values['name']},{values['region']},{start},{values['end']},{seq},"
        f"{values['pre']},{values['post']},{values['cost']}"
    )


def days(iso: str) -> int:
    return (date.fromisoformat(iso) - date(1970, 1, 1)).days


def by_seq(config: NodeConfig) -> dict[int, dict[str, Any]]:
    """Loaded records keyed by their unique ``seq`` value."""
    data = load_dataset(config)
    out = {}
    for i in range(data.n_records):
        out[int(data.numeric["seq"][i])] = {
            "client": int(data.client[i]),
            "region": int(data.categorical["region"][i]),
            "start": int(data.dates["start"][i]),
            "end": int(data.dates["end"][i]),
            **{n: float(data.numeric[n][i]) for n in ("pre", "post", "cost", "change", "total")},
            "days": float(data.numeric["days"][i]),
        }
    return out


# ---------------------------------------------------------------- loading


def test_load_values_codes_dates_and_derived(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data")
    rows = [
        row("a", 1, "2020-01-01", region="south", end="2020-01-31", pre="2", post="5", cost="-2.5"),
        row("b", 2, "2021-03-04", region="east", name="Tui"),
        row("a", 3, "", region="north", pre="4", cost="7"),
    ]
    report = import_csv(config, write_csv(tmp_path / "in.csv", rows))
    data = load_dataset(config)
    assert data.version == report.dataset_version == store_version(config)
    assert data.n_records == 3 and data.n_clients == 2 and data.records_before_bounding == 3
    assert data.client.dtype == np.int64 and list(np.diff(data.client)) in ([0, 1], [1, 0])
    assert data.categorical["region"].dtype == np.int16
    assert data.dates["start"].dtype == np.int32
    assert all(a.dtype == np.float64 for a in data.numeric.values())
    assert set(data.numeric) == {"seq", "pre", "post", "cost", "change", "total", "days"}
    assert set(data.categorical) == {"region"} and set(data.dates) == {"start", "end"}

    rec = by_seq(config)
    assert rec[1]["region"] == 1 and rec[2]["region"] == 2 and rec[3]["region"] == 0
    assert rec[1]["start"] == days("2020-01-01") and rec[1]["end"] == days("2020-01-31")
    assert rec[3]["start"] == MISSING_DATE and rec[2]["end"] == MISSING_DATE
    assert rec[1]["change"] == 3.0 and rec[1]["total"] == -0.5 and rec[1]["days"] == 30.0
    assert np.isnan(rec[2]["post"]) and np.isnan(rec[2]["cost"])
    assert np.isnan(rec[2]["change"]) and np.isnan(rec[2]["total"]) and np.isnan(rec[2]["days"])
    assert rec[3]["total"] == 11.0 and np.isnan(rec[3]["days"])
    # a's records are contiguous, the dated one first (missing recency sorts last)
    a = rec[1]["client"]
    assert rec[3]["client"] == a
    assert data.numeric["seq"][data.client == a].tolist() == [1, 3]


def test_missing_store(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data")
    assert store_version(config) is None
    with pytest.raises(StoreMissing, match="tiaki-node import"):
        load_dataset(config)


def test_schema_mismatch_refused(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data")
    import_csv(config, write_csv(tmp_path / "in.csv", [row("a", 1)]))
    changed = {**SCHEMA, "columns": {**SCHEMA["columns"]}}
    changed["columns"]["region"] = {"type": "categorical", "categories": ["south", "north", "east"]}
    with pytest.raises(StoreError, match="different schema"):
        load_dataset(make_config(tmp_path / "data", changed))
    # queryable is policy, not layout: no re-import needed
    flag = {**SCHEMA, "columns": {**SCHEMA["columns"]}}
    flag["columns"]["cost"] = {**SCHEMA["columns"]["cost"], "queryable": False}
    assert load_dataset(make_config(tmp_path / "data", flag)).n_records == 1


def test_damaged_store_refused(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data")
    import_csv(config, write_csv(tmp_path / "in.csv", [row("a", 1), row("a", 2)]))
    with sqlite3.connect(store_path(config)) as conn:
        conn.execute("UPDATE columns SET data = x'00' WHERE name = 'col:seq'")
    with pytest.raises(StoreError, match="'col:seq' is damaged"):
        load_dataset(config)
    store_path(config).write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError, match="not a tiaki store or damaged"):
        load_dataset(config)


def test_inconsistent_ranks_refused(tmp_path: Path) -> None:
    # A store whose ranks would let a client exceed k breaks the privacy unit.
    config = make_config(tmp_path / "data", k=1)
    import_csv(config, write_csv(tmp_path / "in.csv", [row("a", 1), row("a", 2)]))
    from node.store import encode_array

    with sqlite3.connect(store_path(config)) as conn:
        conn.execute(
            "UPDATE columns SET data = ? WHERE name = ':rank'",
            (encode_array(np.zeros(2, dtype=np.int32)),),
        )
    with pytest.raises(StoreError, match="inconsistent"):
        load_dataset(config)


# ---------------------------------------------------------------- bounding


def test_client_with_ten_records_keeps_the_k_most_recent(tmp_path: Path) -> None:
    k = 3
    config = make_config(tmp_path / "data", k=k)
    starts = [f"2020-0{m}-15" for m in range(1, 10)] + ["2021-01-01"]
    rows = [row("busy", i, s) for i, s in enumerate(starts)] + [row("quiet", 100)]
    import_csv(config, write_csv(tmp_path / "in.csv", rows))
    data = load_dataset(config)
    assert data.records_before_bounding == 11 and data.n_records == k + 1
    assert np.bincount(data.client).tolist() in ([k, 1], [1, k])
    kept = set(by_seq(config))
    assert kept == {9, 8, 7, 100}  # the three latest starts
    busy = data.client[data.numeric["seq"] == 9][0]
    assert data.numeric["seq"][data.client == busy].tolist() == [9, 8, 7]  # most recent first


def test_missing_recency_sorts_last_and_ties_are_keyed(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data", k=2)
    rows = [row("a", 1, ""), row("a", 2, "2020-01-01"), row("a", 3, "")]
    rows += [row("b", 10 + i, "2020-05-05") for i in range(6)]
    import_csv(config, write_csv(tmp_path / "in.csv", rows))
    kept = set(by_seq(config))
    assert 2 in kept and len(kept & {1, 3}) == 1
    assert len(kept & set(range(10, 16))) == 2


def test_without_recency_column_keyed_hash_decides(tmp_path: Path) -> None:
    schema = {k: v for k, v in SCHEMA.items() if k != "recency"}
    rows = [row("a", i) for i in range(20)]
    kept = []
    for salt_dir in ("n1", "n2"):
        config = make_config(tmp_path / salt_dir, schema, k=5)
        import_csv(config, write_csv(tmp_path / "in.csv", rows))
        kept.append(set(by_seq(config)))
        assert len(kept[-1]) == 5
        import_csv(config, write_csv(tmp_path / "rev.csv", rows[::-1]))
        assert set(by_seq(config)) == kept[-1]  # source order does not matter
    assert kept[0] != kept[1]  # a different salt picks differently (p of equal = 1/15504)


@settings(max_examples=25, deadline=None)
@given(
    others_a=st.lists(st.integers(0, 5), max_size=6),
    others_b=st.lists(st.integers(0, 5), max_size=6),
    k=st.integers(1, 4),
)
def test_kept_records_of_a_client_ignore_other_clients(
    tmp_path_factory: pytest.TempPathFactory, others_a: list[int], others_b: list[int], k: int
) -> None:
    """The records client 'me' contributes are the same whoever else is in the data."""
    tmp = tmp_path_factory.mktemp("ranks")
    config = make_config(tmp / "data", k=k)
    mine = [row("me", i, f"2020-01-0{1 + i % 3}" if i % 4 else "") for i in range(6)]

    def kept_of_me(counts: list[int], tag: str) -> set[int]:
        others = [
            row(f"o{j}", 1000 + 10 * j + i, f"2020-01-0{1 + i % 3}")
            for j, c in enumerate(counts)
            for i in range(c)
        ]
        # interleave, so source position differs too
        rows = others[: len(others) // 2] + mine + others[len(others) // 2 :]
        import_csv(config, write_csv(tmp / f"{tag}.csv", rows))
        return {s for s in by_seq(config) if s < 1000}

    assert kept_of_me(others_a, "a") == kept_of_me(others_b, "b")


@settings(max_examples=60, deadline=None)
@given(
    records=st.lists(
        st.tuples(st.integers(0, 4), st.integers(0, 5), st.integers(0, 2**64 - 1)),
        min_size=1,
        max_size=40,
    ),
    drop=st.integers(0, 4),
)
def test_record_ranks_depend_only_on_own_client(
    records: list[tuple[int, int, int]], drop: int
) -> None:
    def ranks(recs: list[tuple[int, int, int]]) -> dict[tuple[int, int, int], int]:
        client = np.array([r[0] for r in recs], dtype=np.int64)
        recency = np.array([MISSING_DATE if r[1] == 0 else r[1] for r in recs], dtype=np.int32)
        tiebreak = np.array([[r[2], 0] for r in recs], dtype=np.uint64)
        out = record_ranks(client, recency, tiebreak)
        return {r: int(out[i]) for i, r in enumerate(recs)}

    recs = sorted(set(records))  # distinct records, so the expected order is fully determined
    full = ranks(recs)
    for client in {r[0] for r in recs}:
        own = sorted((r for r in recs if r[0] == client), key=lambda r: (r[1] == 0, -r[1], r[2]))
        assert [full[r] for r in own] == list(range(len(own)))
    rest = [r for r in recs if r[0] != drop]
    if rest:
        # removing a client, and reordering the input, changes nobody else's ranks
        sub = ranks(rest[::-1])
        assert all(full[r] == v for r, v in sub.items())


# ---------------------------------------------------------------- salt


def test_salt_is_created_once_private_and_checked(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    salt = load_or_create_salt(data_dir)
    assert len(salt) == SALT_BYTES
    assert (data_dir / "node.salt").stat().st_mode & 0o777 == 0o600
    assert load_or_create_salt(data_dir) == salt
    assert [p.name for p in data_dir.iterdir()] == ["node.salt"]
    (data_dir / "node.salt").write_bytes(b"short")
    with pytest.raises(StoreError, match="expected 32 bytes"):
        load_or_create_salt(data_dir)


# ---------------------------------------------------------------- PUMS


def test_pums_dup_imports_and_bounds(tmp_path: Path) -> None:
    path = PUMS_DIR / "PUMS_dup.csv"
    assert path.exists(), f"{path} is missing from the repository"
    config = make_config(tmp_path / "data", PUMS_SCHEMA, k=2)
    report = import_csv(config, path)
    assert report.committed and report.rows_imported == 1948 and report.clients == 1000
    data = load_dataset(config)
    assert data.records_before_bounding == 1948 and data.n_clients == 1000
    # rows per person from the file itself
    pids = np.loadtxt(path, delimiter=",", skiprows=1, usecols=6, dtype=np.int64)
    per_person = np.unique(pids, return_counts=True)[1]
    assert data.n_records == int(np.minimum(per_person, 2).sum()) == 1582
    assert np.bincount(data.client).max() == 2
    assert set(np.unique(data.categorical["race"]).tolist()) <= set(range(6))
    assert np.nanmax(data.numeric["income"]) <= 500_000 and not np.isnan(data.numeric["age"]).any()
