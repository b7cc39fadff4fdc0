"""The synthetic records generator: schema-exact, reproducible, realistic enough to analyse."""

from __future__ import annotations

import csv
import re
import statistics
import time
from collections import Counter, defaultdict
from datetime import date
from pathlib import Path

import numpy as np
import pytest

from node import synth
from node.config import (
    CategoricalColumn,
    DateColumn,
    DerivedColumn,
    NodeConfig,
    NumericColumn,
    TextColumn,
    load_config,
)

TEMPLATE = Path(__file__).resolve().parents[2] / "node" / "templates" / "node.yaml"
Row = dict[str, str]

# Every service equally likely, spread nationally: for comparing services.
BALANCED = synth.Profile(
    tag="BAL",
    service_mix=(1.0, 1.0, 1.0, 1.0, 1.0),
    home_region="auckland",
    regional_focus=0.0,
    frequent_share=0.2,
    effectiveness=1.0,
)


@pytest.fixture(scope="module")
def config() -> NodeConfig:
    return load_config(TEMPLATE)


def read_rows(path: Path) -> list[Row]:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == synth.COLUMNS
        return list(reader)


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> list[Row]:
    path = tmp_path_factory.mktemp("synth") / "clients.csv"
    written = synth.write_csv(path, 5000, 3)
    result = read_rows(path)
    assert written == len(result)
    return result


@pytest.fixture(scope="module")
def balanced_rows(tmp_path_factory: pytest.TempPathFactory) -> list[Row]:
    path = tmp_path_factory.mktemp("synth") / "balanced.csv"
    synth.write_csv(path, 5000, 11, profile=BALANCED)
    return read_rows(path)


def by_client(rows: list[Row]) -> dict[str, list[Row]]:
    out: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        out[row["client_id"]].append(row)
    return out


# ---------------------------------------------------------------- schema


def test_header_is_identifier_then_the_templates_stored_columns(config: NodeConfig) -> None:
    schema = config.schema
    stored = [n for n, c in schema.columns.items() if not isinstance(c, DerivedColumn)]
    assert (schema.identifier, *stored) == synth.COLUMNS


def test_every_value_is_within_the_declared_schema(config: NodeConfig, rows: list[Row]) -> None:
    columns = config.schema.columns
    for row in rows:
        assert re.fullmatch(r"[A-Z]{2,}-C\d{6,}", row[config.schema.identifier])
        for name in synth.COLUMNS[1:]:
            spec, value = columns[name], row[name]
            if isinstance(spec, TextColumn):
                assert value.strip() == value and value, (name, value)
            elif isinstance(spec, CategoricalColumn):
                assert value in spec.categories, (name, value)
            elif isinstance(spec, NumericColumn):
                if value == "":
                    assert not spec.required, name
                    continue
                assert re.fullmatch(r"\d+", value), (name, value)
                assert spec.bounds[0] <= int(value) <= spec.bounds[1], (name, value)
            else:
                assert isinstance(spec, DateColumn)
                if value == "":
                    assert not spec.required, name
                    continue
                assert re.fullmatch(r"\d{4}-\d\d-\d\d", value), (name, value)
                day = date.fromisoformat(value)
                assert spec.min is not None and spec.max is not None
                assert spec.min <= day <= spec.max, (name, value)
                assert synth.FIRST_DAY <= day <= synth.EXTRACT_DAY, (name, value)


def test_every_category_of_every_column_occurs(
    config: NodeConfig, balanced_rows: list[Row]
) -> None:
    for name, spec in config.schema.columns.items():
        if isinstance(spec, CategoricalColumn):
            assert {r[name] for r in balanced_rows} == set(spec.categories), name


# ---------------------------------------------------------------- reproducibility


def test_same_seed_gives_the_same_bytes_and_another_seed_does_not(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "c.csv"
    assert synth.write_csv(a, 1500, 7) == synth.write_csv(b, 1500, 7)
    synth.write_csv(c, 1500, 8)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_blocks_join_into_the_same_records_the_csv_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(synth, "BLOCK", 700)  # 2000 clients -> three blocks
    path = tmp_path / "blocks.csv"
    written = synth.write_csv(path, 2000, 5)
    records = synth.generate(2000, 5)
    assert records.n_clients == 2000 and records.n_rows == written
    cols = records.text_columns()
    table = zip(*(cols[c] for c in synth.COLUMNS), strict=True)
    from_records = [dict(zip(synth.COLUMNS, r, strict=True)) for r in table]
    from_csv = read_rows(path)
    assert from_records == from_csv
    assert len({r["client_id"] for r in from_csv}) == 2000


def test_client_ids_are_distinct_between_ngos() -> None:
    ids = [set(synth.generate(300, seed).text_columns()["client_id"]) for seed in (0, 1, 26)]
    assert all(len(s) == 300 for s in ids)
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])


def test_seeds_pick_different_ngos() -> None:
    main_services, main_regions = set(), set()
    for seed in range(8):
        r = synth.generate(2000, seed)
        main_services.add(int(np.bincount(r.service).argmax()))
        main_regions.add(int(np.bincount(r.region).argmax()))
    assert len(main_services) >= 3
    assert len(main_regions) >= 3


# ---------------------------------------------------------------- realism


def test_clients_keep_their_details_across_episodes(rows: list[Row]) -> None:
    fixed = ("client_name", "address", "age_band", "gender", "ethnicity", "region")
    for episodes in by_client(rows).values():
        assert len({tuple(e[c] for c in fixed) for e in episodes}) == 1
        town = episodes[0]["address"].rsplit(", ", 1)[1]
        assert town in synth._TOWNS[episodes[0]["region"]]


def test_episode_counts_have_a_long_tail(rows: list[Row]) -> None:
    counts = Counter(len(e) for e in by_client(rows).values())
    clients = sum(counts.values())
    assert clients == 5000
    assert sum(counts[k] for k in (1, 2, 3)) / clients > 0.6
    assert sum(v for k, v in counts.items() if k > 4) / clients > 0.05
    assert max(counts) <= synth.MAX_EPISODES


def test_episode_dates_are_ordered_and_open_episodes_have_no_outcome(rows: list[Row]) -> None:
    open_ = 0
    for row in rows:
        post = (row["circumstances_post"], row["goals_post"])
        if row["episode_end"] == "":
            open_ += 1
            assert post == ("", "")
        else:
            assert "" not in post
            assert row["episode_end"] >= row["episode_start"]
    assert 0.05 < open_ / len(rows) < 0.15


def test_a_clients_episodes_are_in_start_order(rows: list[Row]) -> None:
    for episodes in by_client(rows).values():
        starts = [e["episode_start"] for e in episodes]
        assert starts == sorted(starts)


def test_sessions_follow_episode_length(balanced_rows: list[Row]) -> None:
    closed = [r for r in balanced_rows if r["episode_end"]]
    days = [
        (date.fromisoformat(r["episode_end"]) - date.fromisoformat(r["episode_start"])).days
        for r in closed
    ]
    sessions = [int(r["sessions"]) for r in closed]
    assert statistics.correlation(days, sessions) > 0.5


def test_demographics_are_plausible_for_nz_social_services() -> None:
    r = synth.generate(20_000, 1, profile=BALANCED)
    eth = np.bincount(r.ethnicity, minlength=5) / r.n_clients
    assert 0.25 < eth[synth.ETHNICITIES.index("maori")] < 0.45
    assert 0.08 < eth[synth.ETHNICITIES.index("pacific")] < 0.22
    assert 0.30 < eth[synth.ETHNICITIES.index("european_other")] < 0.50
    regions = np.bincount(r.region, minlength=len(synth.REGIONS))
    assert synth.REGIONS[int(regions.argmax())] == "auckland"
    genders = np.bincount(r.gender, minlength=3) / r.n_clients
    assert genders[0] > genders[1] > 0.2 and 0.005 < genders[2] < 0.06
    youth = r.service == synth.SERVICES.index("youth")
    assert np.all(r.age_band[np.repeat(np.arange(r.n_clients), np.diff(r.starts))][youth] <= 1)


def test_pre_scores_skew_low(balanced_rows: list[Row]) -> None:
    pre = [int(r["circumstances_pre"]) for r in balanced_rows]
    assert statistics.mean(pre) < 2.6
    assert sum(p <= 2 for p in pre) / len(pre) > 0.5


def change(rows: list[Row], service: str, measure: str) -> list[int]:
    return [
        int(r[f"{measure}_post"]) - int(r[f"{measure}_pre"])
        for r in rows
        if r["service"] == service and r["episode_end"]
    ]


def test_outcomes_differ_by_service(balanced_rows: list[Row]) -> None:
    budgeting = change(balanced_rows, "budgeting", "circumstances")
    violence = change(balanced_rows, "family_violence", "circumstances")
    assert len(budgeting) > 500 and len(violence) > 500
    assert 0.6 < statistics.mean(budgeting) < 1.3
    assert statistics.mean(budgeting) - statistics.mean(violence) > 0.25
    assert statistics.stdev(violence) > statistics.stdev(budgeting)
    counselling_goals = statistics.mean(change(balanced_rows, "counselling", "goals"))
    counselling_circ = statistics.mean(change(balanced_rows, "counselling", "circumstances"))
    assert counselling_goals - counselling_circ > 0.3
    housing = statistics.mean(change(balanced_rows, "housing", "circumstances"))
    assert housing > statistics.mean(budgeting) - 0.1


# ---------------------------------------------------------------- limits and speed


@pytest.mark.parametrize("clients", [0, -1, synth.MAX_CLIENTS + 1, 2.5, True])
def test_bad_client_counts_are_refused(clients: object, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="clients"):
        synth.write_csv(tmp_path / "x.csv", clients, 1)  # type: ignore[arg-type]


def test_bad_seeds_and_profiles_are_refused() -> None:
    with pytest.raises(ValueError, match="seed"):
        synth.generate(10, -1)
    with pytest.raises(ValueError, match="home_region"):
        synth.Profile("X", (1, 1, 1, 1, 1), "atlantis", 0.5, 0.2, 1.0)
    with pytest.raises(ValueError, match="service_mix"):
        synth.Profile("X", (1, 1), "otago", 0.5, 0.2, 1.0)


def test_twenty_thousand_clients_are_quick(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    began = time.perf_counter()
    written = synth.write_csv(path, 20_000, 2)
    elapsed = time.perf_counter() - began
    with path.open(encoding="utf-8") as f:
        lines = sum(1 for _ in f)
    assert written == lines - 1 > 40_000
    assert elapsed < 10, f"20,000 clients took {elapsed:.1f} s"
