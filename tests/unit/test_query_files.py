"""Named query files: the shipped example fits the example schema; mistakes are named."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from coordinator.query_files import NamedQuery, QueryFileError, load_query_file
from coordinator.query_spec import build_query
from node.config import load_config
from node.engine import plan
from tiaki.errors import InvalidQueryError
from tiaki.query import QueryKind

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "examples" / "queries" / "outcomes.yaml"
TEMPLATE = ROOT / "node" / "templates" / "node.yaml"


def column_types() -> dict[str, str]:
    schema = load_config(TEMPLATE).schema
    return {name: spec.type for name, spec in schema.columns.items()}


def write(tmp_path: Path, body: str, name: str = "queries.yaml") -> Path:
    path = tmp_path / name
    path.write_text(body, encoding="utf-8")
    return path


def load_error(tmp_path: Path, body: str) -> str:
    path = write(tmp_path, body)
    with pytest.raises(QueryFileError) as info:
        load_query_file(path)
    message = info.value.message
    assert str(path) in message
    return message


# ---------------------------------------------------------------- the example


def test_example_loads_in_file_order() -> None:
    queries = load_query_file(EXAMPLE)
    assert list(queries)[:3] == [
        "clients_by_service_region",
        "improved_circumstances",
        "score_change_by_service_ethnicity",
    ]
    assert "sessions_per_episode" in queries
    assert {q.kind for q in queries.values()} >= {
        "count_clients",
        "proportion",
        "mean",
        "histogram",
    }
    for name, query in queries.items():
        assert query.name == name
        assert query.description


@pytest.mark.parametrize("name", list(load_query_file(EXAMPLE)))
def test_every_example_query_builds_and_plans_against_the_example_schema(name: str) -> None:
    config = load_config(TEMPLATE)
    named = load_query_file(EXAMPLE)[name]
    query = build_query(**named.words(), column_types=column_types())
    assert query == named.build(column_types())
    query_plan = plan(query, config.schema, config.policy)
    assert query_plan.n_cells <= config.policy.max_cells


def test_example_costs_fit_the_example_budget() -> None:
    policy = load_config(TEMPLATE).policy
    queries = [q.build(column_types()) for q in load_query_file(EXAMPLE).values()]
    assert all(q.cost.definition is policy.privacy_definition for q in queries)
    assert sum(q.cost.amount for q in queries) <= policy.budget.limit


def test_words_are_exactly_build_querys_keywords_bar_column_types() -> None:
    wanted = set(inspect.signature(build_query).parameters) - {"column_types"}
    query = next(iter(load_query_file(EXAMPLE).values()))
    assert set(query.words()) == wanted


def test_example_values_are_read_as_written() -> None:
    queries = load_query_file(EXAMPLE)
    mean = queries["score_change_by_service_ethnicity"]
    assert mean == NamedQuery(
        name="score_change_by_service_ethnicity",
        description=mean.description,
        kind="mean",
        column="circumstances_change",
        where=(),
        by=("service", "ethnicity"),
        condition=(),
        bounds="-4,4",
        bins=None,
        epsilon="0.5",
        rho=None,
    )
    improved = queries["improved_circumstances"]
    assert improved.condition == ("circumstances_change>=1",)
    assert improved.where == ("circumstances_change>=-4",)


# ---------------------------------------------------------------- conveniences


def test_single_strings_lists_of_numbers_and_rho(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
version: 1
queries:
  q1:
    kind: mean
    column: sessions
    by: service
    where: region=auckland
    bounds: [0, 20.5]
    rho: 0.1
  q2:
    kind: histogram
    column: sessions
    bins: [0, 10, 60]
    epsilon: "0.25"
""",
    )
    queries = load_query_file(path)
    q1, q2 = queries["q1"], queries["q2"]
    assert (q1.by, q1.where, q1.bounds, q1.rho, q1.epsilon) == (
        ("service",),
        ("region=auckland",),
        "0,20.5",
        "0.1",
        None,
    )
    assert (q2.bins, q2.epsilon, q2.description) == ("0,10,60", "0.25", "")
    built = q2.build(column_types())
    assert built.kind is QueryKind.HISTOGRAM
    assert built.bin_edges == (0.0, 10.0, 60.0)


def test_build_names_the_query_when_the_schema_does_not_fit(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "queries:\n  by_iwi:\n    kind: count\n    where: ['iwi=ngapuhi']\n    epsilon: 0.5\n",
    )
    query = load_query_file(path)["by_iwi"]
    with pytest.raises(InvalidQueryError, match=r"query 'by_iwi': unknown column 'iwi'"):
        query.build(column_types())


# ---------------------------------------------------------------- mistakes


def test_bad_yaml_names_the_file_and_line(tmp_path: Path) -> None:
    message = load_error(tmp_path, "queries:\n  q1: {kind: count\n  q2: [\n")
    assert "not valid YAML" in message
    assert "line" in message


def test_unknown_key_names_query_and_key(tmp_path: Path) -> None:
    message = load_error(
        tmp_path,
        "queries:\n  clients:\n    kind: count_clients\n    epsilonn: 0.5\n    epsilon: 0.5\n",
    )
    assert "query 'clients', key 'epsilonn': unknown key" in message


def test_both_epsilon_and_rho_is_refused(tmp_path: Path) -> None:
    message = load_error(
        tmp_path, "queries:\n  clients:\n    kind: count_clients\n    epsilon: 0.5\n    rho: 0.1\n"
    )
    assert "query 'clients'" in message
    assert "exactly one of 'epsilon' (pure DP) or 'rho' (zCDP)" in message


def test_neither_epsilon_nor_rho_is_refused(tmp_path: Path) -> None:
    message = load_error(tmp_path, "queries:\n  clients:\n    kind: count_clients\n")
    assert "query 'clients'" in message
    assert "exactly one of 'epsilon'" in message


def test_unknown_kind_is_refused(tmp_path: Path) -> None:
    message = load_error(tmp_path, "queries:\n  median_age:\n    kind: median\n    epsilon: 1\n")
    assert "query 'median_age', key 'kind'" in message
    assert "unknown query kind 'median'" in message
    assert "count_clients" in message


def test_missing_kind_is_refused(tmp_path: Path) -> None:
    message = load_error(tmp_path, "queries:\n  nothing:\n    by: [service]\n    epsilon: 1\n")
    assert "query 'nothing', key 'kind': required key is missing" in message


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("  m:\n    kind: mean\n    epsilon: 1\n", "a mean query needs a numeric column"),
        (
            "  p:\n    kind: proportion\n    by: [service]\n    epsilon: 1\n",
            "a proportion query needs a condition",
        ),
        (
            "  c:\n    kind: count\n    bins: '0,1'\n    epsilon: 1\n",
            "bin edges apply only to histogram",
        ),
        (
            "  c:\n    kind: count\n    where: ['region auckland']\n    epsilon: 1\n",
            "cannot read condition 'region auckland'",
        ),
        ("  c:\n    kind: count\n    where: [{region: auckland}]\n    epsilon: 1\n", "item 1"),
        ("  c:\n    kind: count\n    epsilon: -1\n", "greater than zero"),
        ("  c:\n    kind: count\n    epsilon: true\n", "positive decimal"),
        ("  c:\n    kind: count\n    by: [a, b, c, d]\n    epsilon: 1\n", "at most 3"),
        ("  c: count\n", "expected a mapping"),
    ],
)
def test_query_shape_mistakes_are_caught_when_loading(
    tmp_path: Path, body: str, expected: str
) -> None:
    message = load_error(tmp_path, "version: 1\nqueries:\n" + body)
    name = body.strip().split(":")[0]
    assert f"query {name!r}" in message
    assert expected in message


def test_file_level_mistakes(tmp_path: Path) -> None:
    assert "expected a mapping" in load_error(tmp_path, "")
    missing = tmp_path / "absent.yaml"
    with pytest.raises(QueryFileError, match="no such query file"):
        load_query_file(missing)
    assert "expected a mapping" in load_error(tmp_path, "- kind: count\n")
    assert "key 'queries': required key is missing" in load_error(tmp_path, "version: 1\n")
    assert "names no queries" in load_error(tmp_path, "queries: {}\n")
    assert "version 1, not 2" in load_error(
        tmp_path, "version: 2\nqueries:\n  c: {kind: count, epsilon: 1}\n"
    )
    assert "key 'querys': unknown key; the file's keys are: version, queries" in load_error(
        tmp_path, "querys: {}\nqueries:\n  c: {kind: count, epsilon: 1}\n"
    )
    assert "query name 'bad name!'" in load_error(
        tmp_path, "queries:\n  'bad name!': {kind: count, epsilon: 1}\n"
    )


def test_a_query_named_twice_is_refused(tmp_path: Path) -> None:
    message = load_error(
        tmp_path,
        "queries:\n  clients: {kind: count, epsilon: 1}\n  clients: {kind: count, epsilon: 0.5}\n",
    )
    assert "'clients' is given twice" in message
