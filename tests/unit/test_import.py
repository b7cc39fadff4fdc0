"""Import: row validation, file-level refusals, atomic swap, SQLite sources, versions."""

from __future__ import annotations

import hashlib
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from node.config import NodeConfig
from node.importer import MAX_BAD_ROWS_REPORTED, ImportFailed, import_csv, import_sqlite
from node.store import load_dataset, store_content_hash, store_path, store_version
from tests.conftest import PUMS_DIR, PUMS_SCHEMA, node_config

SCHEMA: dict[str, Any] = {
    "identifier": "client_id",
    "recency": "episode_start",
    "columns": {
        "client_name": {"type": "text"},
        "region": {"type": "categorical", "categories": ["northland", "auckland", "wellington"]},
        "episode_start": {"type": "date", "min": "2015-01-01", "max": "2030-12-31"},
        "episode_end": {
            "type": "date",
            "min": "2015-01-01",
            "max": "2030-12-31",
            "required": False,
        },
        "sessions": {"type": "integer", "bounds": [0, 60]},
        "score_pre": {"type": "integer", "bounds": [1, 5]},
        "score_post": {"type": "integer", "bounds": [1, 5], "required": False},
        "cost": {"type": "float", "bounds": [0, 1000], "required": False},
        "score_change": {"type": "derived", "expression": "score_post - score_pre"},
        "episode_days": {"type": "derived", "expression": "episode_end - episode_start"},
    },
}
HEADER = "client_id,client_name,region,episode_start,episode_end,sessions,score_pre,score_post,cost"
GOOD_ROWS = [
    "c1,Aroha,auckland,2020-01-05,2020-03-01,4,2,4,10.5",
    "c1,Aroha,auckland,2021-06-01,,3,3,,",
    "c2,,wellington,2019-02-01,2019-02-11,0,1,1,0",
    "c3,Bob,northland,2022-12-31,,60,5,,999.25",
]


def make_config(tmp_path: Path, schema: dict[str, Any] | None = None, k: int = 4) -> NodeConfig:
    return node_config(tmp_path / "data", schema or SCHEMA, k=k)


def write_csv(path: Path, rows: list[str], header: str = HEADER) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def config(tmp_path: Path) -> NodeConfig:
    return make_config(tmp_path)


# ---------------------------------------------------------------- good input


def test_good_csv_imports(tmp_path: Path, config: NodeConfig) -> None:
    report = import_csv(config, write_csv(tmp_path / "in.csv", GOOD_ROWS))
    assert report.committed
    assert report.rows_read == report.rows_imported == 4
    assert report.bad_rows == () and report.bad_row_count == 0
    assert report.clients == 3
    assert report.dataset_version is not None and len(report.dataset_version) == 20
    assert not report.replaced_previous
    assert report.ignored_columns == ()
    assert store_version(config) == report.dataset_version
    assert store_path(config).stat().st_mode & 0o077 == 0  # raw records: owner only
    with sqlite3.connect(store_path(config)) as conn:
        rows = conn.execute("SELECT client_id, client_name, cost FROM records").fetchall()
    assert ("c3", "Bob", 999.25) in rows and ("c2", None, 0.0) in rows


def test_whitespace_bom_crlf_blank_lines_and_extra_columns(
    tmp_path: Path, config: NodeConfig
) -> None:
    text = (
        "\ufeff" + HEADER + ",notes,\r\n"
        " c1 , Aroha , auckland ,2020-01-05, ,  4,2.0,+4,1e1,hello,\r\n"
        "\r\n"
        "c2,,wellington,2019-02-01,,0,1,,,,\r\n"
    )
    path = tmp_path / "in.csv"
    path.write_bytes(text.encode("utf-8"))
    report = import_csv(config, path)
    assert report.bad_rows == ()
    assert report.rows_imported == 2
    assert report.ignored_columns == ("notes", "(unnamed column 11)")
    with sqlite3.connect(store_path(config)) as conn:
        row = conn.execute("SELECT * FROM records WHERE client_id = 'c1'").fetchone()
    assert row == ("c1", "Aroha", "auckland", "2020-01-05", None, 4, 2, 4, 10.0)


def test_optional_columns_may_be_absent(tmp_path: Path, config: NodeConfig) -> None:
    header = "client_id,region,episode_start,sessions,score_pre"
    report = import_csv(
        config, write_csv(tmp_path / "in.csv", ["c1,auckland,2020-01-01,1,1"], header)
    )
    assert report.committed
    data = load_dataset(config)
    assert data.numeric["cost"][0] != data.numeric["cost"][0]  # NaN


# ---------------------------------------------------------------- bad rows


@pytest.mark.parametrize(
    ("row", "column", "fragment"),
    [
        (",A,auckland,2020-01-05,,4,2,,", "client_id", "client_id is missing"),
        ("c1,A,Auckland ,2020-01-05,,4,2,,", "region", "did you mean 'auckland'"),
        ("c1,A,otago,2020-01-05,,4,2,,", "region", "'otago' is not a declared category"),
        ("c1,A,,2020-01-05,,4,2,,", "region", "region is missing"),
        ("c1,A,auckland,2020-13-01,,4,2,,", "episode_start", "'2020-13-01' is not a date"),
        ("c1,A,auckland,05/01/2020,,4,2,,", "episode_start", "is not a date (YYYY-MM-DD)"),
        ("c1,A,auckland,2014-12-31,,4,2,,", "episode_start", "before 2015-01-01"),
        ("c1,A,auckland,2020-01-05,2031-01-01,4,2,,", "episode_end", "after 2030-12-31"),
        ("c1,A,auckland,,,4,2,,", "episode_start", "episode_start is missing"),
        ("c1,A,auckland,2020-01-05,,3.5,2,,", "sessions", "'3.5' is not a whole number"),
        ("c1,A,auckland,2020-01-05,,1_0,2,,", "sessions", "not a whole number"),
        ("c1,A,auckland,2020-01-05,,61,2,,", "sessions", "outside the bounds [0, 60]"),
        ("c1,A,auckland,2020-01-05,,-1,2,,", "sessions", "outside the bounds [0, 60]"),
        ("c1,A,auckland,2020-01-05,,4,,,", "score_pre", "score_pre is missing"),
        ("c1,A,auckland,2020-01-05,,4,2,,abc", "cost", "'abc' is not a number"),
        ("c1,A,auckland,2020-01-05,,4,2,,nan", "cost", "is not a number"),
        ("c1,A,auckland,2020-01-05,,4,2,,1e400", "cost", "not a finite number"),
        ("c1,A,auckland,2020-01-05,,4,2,,1000.5", "cost", "outside the bounds [0, 1000]"),
        ("c1,A,auckland,2020-01-05,,4,2", "row", "row has 7 values, the header has 9"),
    ],
)
def test_bad_row_kinds(
    tmp_path: Path, config: NodeConfig, row: str, column: str, fragment: str
) -> None:
    rows = [GOOD_ROWS[0], GOOD_ROWS[1], row, GOOD_ROWS[2]]
    report = import_csv(config, write_csv(tmp_path / "in.csv", rows))
    assert not report.committed and report.dataset_version is None
    assert report.rows_read == 4 and report.rows_imported == 0
    assert report.bad_row_count == 1
    (bad,) = report.bad_rows
    assert bad.line == 4  # header is line 1
    assert bad.reason.startswith(column)
    assert fragment in bad.reason
    assert not store_path(config).exists()


def test_line_numbers_count_physical_lines(tmp_path: Path, config: NodeConfig) -> None:
    rows = ['c1,"two\nlines",auckland,2020-01-05,,4,2,,', "", "c2,A,auckland,bad,,4,2,,"]
    report = import_csv(config, write_csv(tmp_path / "in.csv", rows))
    assert [b.line for b in report.bad_rows] == [5]


def test_all_problems_of_a_row_are_named(tmp_path: Path, config: NodeConfig) -> None:
    report = import_csv(config, write_csv(tmp_path / "in.csv", [",A,x,,,99,2,,"]))
    (bad,) = report.bad_rows
    for column in ("client_id", "region", "episode_start", "sessions"):
        assert column in bad.reason


def test_bad_rows_are_all_counted_but_detail_is_capped(tmp_path: Path, config: NodeConfig) -> None:
    rows = ["c1,A,nowhere,2020-01-05,,4,2,,"] * (MAX_BAD_ROWS_REPORTED + 5)
    report = import_csv(config, write_csv(tmp_path / "in.csv", rows))
    assert report.bad_row_count == MAX_BAD_ROWS_REPORTED + 5
    assert len(report.bad_rows) == MAX_BAD_ROWS_REPORTED


def test_allow_bad_rows_imports_the_rest(tmp_path: Path, config: NodeConfig) -> None:
    rows = [*GOOD_ROWS, "c9,A,nowhere,2020-01-05,,4,2,,"]
    report = import_csv(config, write_csv(tmp_path / "in.csv", rows), allow_bad_rows=True)
    assert report.committed
    assert report.rows_read == 5 and report.rows_imported == 4 and report.bad_row_count == 1
    assert report.clients == 3
    assert load_dataset(config).records_before_bounding == 4


def test_zero_good_rows_never_commit(tmp_path: Path, config: NodeConfig) -> None:
    bad = write_csv(tmp_path / "bad.csv", ["c9,A,nowhere,2020-01-05,,4,2,,"])
    assert not import_csv(config, bad, allow_bad_rows=True).committed
    header_only = write_csv(tmp_path / "empty.csv", [])
    report = import_csv(config, header_only)
    assert not report.committed and report.rows_read == 0
    assert not store_path(config).exists()


# ---------------------------------------------------------------- atomicity


def test_failed_import_leaves_previous_store_intact(tmp_path: Path, config: NodeConfig) -> None:
    first = import_csv(config, write_csv(tmp_path / "a.csv", GOOD_ROWS))
    before = digest(store_path(config))
    # bad rows
    report = import_csv(config, write_csv(tmp_path / "b.csv", ["c1,A,x,2020-01-05,,4,2,,"]))
    assert not report.committed
    # a file-level failure after many rows were already written to the temp store
    many = [f"c{i},A,auckland,2020-01-05,,4,2,," for i in range(30_000)]
    path = write_csv(tmp_path / "c.csv", [*many, "c1,A,auckland,2020-01-05,,4,2,,"])
    with path.open("ab") as fh:
        fh.write(b"c2,caf\xe9,auckland,2020-01-05,,4,2,,\n")
    with pytest.raises(ImportFailed, match="line 30003 is not valid UTF-8"):
        import_csv(config, path)
    assert digest(store_path(config)) == before
    assert store_version(config) == first.dataset_version
    assert load_dataset(config).version == first.dataset_version
    leftovers = {p.name for p in config.data_dir.iterdir()}
    assert leftovers == {"records.sqlite", "node.salt", ".import.lock"}


def test_successful_reimport_replaces(tmp_path: Path, config: NodeConfig) -> None:
    import_csv(config, write_csv(tmp_path / "a.csv", GOOD_ROWS))
    report = import_csv(config, write_csv(tmp_path / "b.csv", GOOD_ROWS[:2]))
    assert report.replaced_previous and report.committed
    assert load_dataset(config).records_before_bounding == 2


# ---------------------------------------------------------------- file-level


def _fails(config: NodeConfig, path: Path, match: str) -> None:
    with pytest.raises(ImportFailed, match=match):
        import_csv(config, path)
    assert not store_path(config).exists()


def test_missing_required_column(tmp_path: Path, config: NodeConfig) -> None:
    header = HEADER.replace("region", "Region")
    path = write_csv(tmp_path / "in.csv", GOOD_ROWS, header)
    _fails(config, path, r"'region' \(the source has 'Region'\)")


def test_missing_identifier_column(tmp_path: Path, config: NodeConfig) -> None:
    path = write_csv(tmp_path / "in.csv", [], HEADER.replace("client_id", "id"))
    _fails(config, path, "required column.*'client_id'")


def test_duplicate_header(tmp_path: Path, config: NodeConfig) -> None:
    path = write_csv(tmp_path / "in.csv", [], HEADER + ",sessions")
    _fails(config, path, "'sessions' appears twice")


def test_derived_column_in_source(tmp_path: Path, config: NodeConfig) -> None:
    path = write_csv(tmp_path / "in.csv", [], HEADER + ",episode_days")
    _fails(config, path, "'episode_days' is derived")


def test_latin1_bytes(tmp_path: Path, config: NodeConfig) -> None:
    path = tmp_path / "in.csv"
    text = "\n".join([HEADER, GOOD_ROWS[0], "c5,Zoë,auckland,2020-01-05,,4,2,,"]) + "\n"
    path.write_bytes(text.encode("latin-1"))
    _fails(config, path, "line 3 is not valid UTF-8.*save it as UTF-8")


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le"])
def test_utf16_file(tmp_path: Path, config: NodeConfig, encoding: str) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(("\n".join([HEADER, *GOOD_ROWS]) + "\n").encode(encoding))
    _fails(config, path, "UTF-16")


def test_embedded_nul(tmp_path: Path, config: NodeConfig) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(f"{HEADER}\n{GOOD_ROWS[0]}\nc2,A\x00B,auckland,2020-01-05,,4,2,,\n".encode())
    _fails(config, path, "line 3 contains NUL")


def test_huge_field(tmp_path: Path, config: NodeConfig) -> None:
    path = write_csv(tmp_path / "in.csv", [GOOD_ROWS[0], f"c2,{'x' * 2_000_000},auckland"])
    _fails(config, path, "line 3: a value is longer than 1 MiB")


def test_huge_line_without_newline(tmp_path: Path, config: NodeConfig) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(HEADER.encode() + b"\n" + b"x," * 3_000_000)
    _fails(config, path, "line 2 is longer than 4 MiB")


def test_empty_and_missing_files(tmp_path: Path, config: NodeConfig) -> None:
    (tmp_path / "empty.csv").write_bytes(b"")
    _fails(config, tmp_path / "empty.csv", "the file is empty")
    _fails(config, tmp_path / "nope.csv", "cannot open")
    _fails(config, tmp_path, "cannot")  # a directory


def test_unbalanced_quote(tmp_path: Path, config: NodeConfig) -> None:
    path = write_csv(tmp_path / "in.csv", ['c1,"Aroha" x,auckland,2020-01-05,,4,2,,'])
    _fails(config, path, "line 2: not valid CSV")


# ---------------------------------------------------------------- SQLite


def _sqlite_source(path: Path) -> Path:
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE episodes (client_id TEXT, client_name TEXT, region TEXT, "
            "episode_start TEXT, episode_end TEXT, sessions INTEGER, score_pre REAL, "
            "score_post INTEGER, cost REAL, extra BLOB)"
        )
        conn.executemany(
            "INSERT INTO episodes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                ("c1", "Aroha", "auckland", "2020-01-05", "2020-03-01", 4, 2.0, 4, 10.5, b"x"),
                ("c1", None, "auckland", "2021-06-01", None, 3, 3.0, None, None, None),
                (7, "Bob", "northland", "2022-12-31", None, 60, 5.0, None, 999.25, None),
            ],
        )
        conn.execute("CREATE VIEW recent AS SELECT * FROM episodes WHERE sessions > 3")
    return path


def test_import_sqlite_table_and_view(tmp_path: Path, config: NodeConfig) -> None:
    source = _sqlite_source(tmp_path / "src.sqlite")
    report = import_sqlite(config, source, "episodes")
    assert report.committed and report.rows_imported == 3 and report.clients == 2
    assert report.ignored_columns == ("extra",)
    report = import_sqlite(config, source, "recent")
    assert report.committed and report.rows_imported == 2 and report.replaced_previous


def test_sqlite_and_csv_of_same_content_have_same_content_hash(
    tmp_path: Path, config: NodeConfig
) -> None:
    source = _sqlite_source(tmp_path / "src.sqlite")
    import_sqlite(config, source, "episodes")
    from_sqlite = store_content_hash(config)
    rows = [
        "c1,Aroha,auckland,2020-01-05,2020-03-01,4,2,4,10.5",
        "7,Bob,northland,2022-12-31,,60,5,,999.25",
        "c1,,auckland,2021-06-01,,3,3,,",
    ]
    import_csv(config, write_csv(tmp_path / "in.csv", rows))
    assert from_sqlite is not None and store_content_hash(config) == from_sqlite


def test_sqlite_bad_rows(tmp_path: Path, config: NodeConfig) -> None:
    source = _sqlite_source(tmp_path / "src.sqlite")
    with sqlite3.connect(source) as conn:
        conn.execute(
            "INSERT INTO episodes VALUES (NULL, 'x', 'auckland', '2020-01-05', "
            "NULL, 1, 1, NULL, NULL, NULL)"
        )
        conn.execute(
            "INSERT INTO episodes VALUES ('c8', x'00ff', 'auckland', '2020-01-05', "
            "NULL, 1, 1, NULL, NULL, NULL)"
        )
    report = import_sqlite(config, source, "episodes")
    assert not report.committed
    assert [(b.line, b.reason) for b in report.bad_rows] == [
        (5, "client_id is missing"),
        (6, "client_name: binary (BLOB) values cannot be imported"),
    ]


@pytest.mark.parametrize(
    "table", ["missing", "episodes; DROP TABLE episodes", 'episodes" --', "EPISODES ", ""]
)
def test_sqlite_unknown_or_hostile_table_name(
    tmp_path: Path, config: NodeConfig, table: str
) -> None:
    source = _sqlite_source(tmp_path / "src.sqlite")
    before = digest(source)
    with pytest.raises(ImportFailed, match=r"no table or view named.*it has: 'episodes', 'recent'"):
        import_sqlite(config, source, table)
    assert digest(source) == before


def test_sqlite_not_a_database(tmp_path: Path, config: NodeConfig) -> None:
    path = write_csv(tmp_path / "in.csv", GOOD_ROWS)
    with pytest.raises(ImportFailed, match=r"in\.csv"):
        import_sqlite(config, path, "episodes")
    with pytest.raises(ImportFailed, match="no such file"):
        import_sqlite(config, tmp_path / "nope.sqlite", "episodes")


# ---------------------------------------------------------------- versions


def _content_hash_after(config: NodeConfig, path: Path) -> str | None:
    assert import_csv(config, path).committed
    return store_content_hash(config)


def test_content_hash_changes_only_with_content(tmp_path: Path, config: NodeConfig) -> None:
    v1 = _content_hash_after(config, write_csv(tmp_path / "a.csv", GOOD_ROWS))
    v2 = _content_hash_after(config, write_csv(tmp_path / "b.csv", GOOD_ROWS[::-1]))
    assert v1 == v2  # row order is not content
    spaced = [GOOD_ROWS[0].replace("4,2,4,10.5", "4.0, 2,4 ,10.50"), *GOOD_ROWS[1:]]
    assert _content_hash_after(config, write_csv(tmp_path / "c.csv", spaced)) == v1
    changed = [GOOD_ROWS[0].replace("Aroha", "Arohanui"), *GOOD_ROWS[1:]]
    v3 = _content_hash_after(config, write_csv(tmp_path / "d.csv", changed))
    assert v3 != v1
    duplicated = [*GOOD_ROWS, GOOD_ROWS[0]]
    assert _content_hash_after(config, write_csv(tmp_path / "e.csv", duplicated)) not in (v1, v3)


def test_content_hash_is_keyed_by_the_node_salt(tmp_path: Path) -> None:
    # Two nodes with the same records have unrelated hashes, so even a leaked
    # hash cannot be used to confirm a guess about the records.
    csv_path = write_csv(tmp_path / "in.csv", GOOD_ROWS)
    a, b = make_config(tmp_path / "a"), make_config(tmp_path / "b")
    assert _content_hash_after(a, csv_path) != _content_hash_after(b, csv_path)


def test_published_version_is_new_at_every_import_and_says_nothing_of_content(
    tmp_path: Path, config: NodeConfig
) -> None:
    # A content hash in the published version would be an exact answer to
    # "did anyone join, leave or change?"; a random id per import says only
    # that the records were replaced.
    path = write_csv(tmp_path / "a.csv", GOOD_ROWS)
    versions = [import_csv(config, path).dataset_version for _ in range(3)]
    hashes = {store_content_hash(config)}
    assert len(set(versions)) == 3, "the same records imported again get a new version"
    assert all(v is not None and re.fullmatch(r"[0-9a-f]{20}", v) for v in versions)
    assert len(hashes) == 1 and not hashes & set(versions)
    assert load_dataset(config).version == versions[-1] == store_version(config)


# ---------------------------------------------------------------- PUMS


def test_pums_null_reports_missing_pid(tmp_path: Path) -> None:
    config = make_config(tmp_path, PUMS_SCHEMA, k=2)
    report = import_csv(config, PUMS_DIR / "PUMS_null.csv")
    assert not report.committed
    missing_pid = [b for b in report.bad_rows if "pid is missing" in b.reason]
    assert len(missing_pid) == 88
    assert report.bad_row_count == len(report.bad_rows) < 1948
    report = import_csv(config, PUMS_DIR / "PUMS_null.csv", allow_bad_rows=True)
    assert report.committed
    assert report.rows_imported == 1948 - report.bad_row_count
    assert load_dataset(config).records_before_bounding == report.rows_imported
