"""What per-node noise costs in accuracy: federated answers against one central release.

Run with ``make bench`` or::

    .venv/bin/python -m tests.bench.bench_accuracy [--releases 1000] [--records 100000]
                                                   [--nodes 1,5,20] [--epsilon 0.1]

The records are fixed (the cached synthetic store of ``--records``); their
clients are split into N equal parts, as if N NGOs each held the records of
their own clients. Each person is a client of exactly one part, so a release
at ε by every node costs each person ε, exactly as one central release at ε
over the pooled records does.

For count, mean and proportion, ``--releases`` times over: every node
releases through the node's own path (``engine.evaluate`` once, then
``answering.release_cells``, OpenDP's discrete Laplace) and
``coordinator.combine.combine`` combines the answers; the central release is
``answering.release_cells`` once over the pooled records. The error of each
is against the exact value over the pooled records (the same for both, since
every client is bounded to k records by their own records alone). Reported:
RMSE, RMSE relative to the central one (about √N expected, as N noises of the
same scale add up), and how often the combined 95% interval covered the exact
value. Results go to ``bench-results/accuracy.json`` for ``report.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from coordinator.combine import combine
from node import answering, engine
from node.config import NodeConfig, load_config
from node.dataset import Dataset
from node.store import load_dataset
from tests.bench import workload
from tiaki.answer import Answer
from tiaki.budget import PrivacyDefinition
from tiaki.query import Bounds, InSet, NumericRange, PrivacyCost, Query, QueryKind

DEFAULT_NODES = (1, 5, 20)


def questions(epsilon: Fraction) -> dict[str, Query]:
    cost = PrivacyCost(PrivacyDefinition.PURE, epsilon)
    budgeting = (InSet("service", ("budgeting",)),)
    return {
        "count: records where service = budgeting": Query(QueryKind.COUNT, cost, filters=budgeting),
        "mean: sessions (0..60) where service = budgeting": Query(
            QueryKind.MEAN, cost, column="sessions", bounds=Bounds(0, 60), filters=budgeting
        ),
        "proportion: clients whose circumstances improved, of budgeting clients": Query(
            QueryKind.PROPORTION,
            cost,
            filters=budgeting,
            condition=(NumericRange("circumstances_change", 1, None),),
        ),
    }


def split(ds: Dataset, parts: int) -> list[Dataset]:
    """The records split by client into ``parts`` datasets of about equal numbers of clients.

    Client codes follow a keyed hash of the identifier, so consecutive ranges
    of codes are unrelated to anything in the records.
    """
    bounds = np.linspace(0, ds.n_clients, parts + 1).round().astype(np.int64)
    starts = np.searchsorted(ds.client, bounds)
    out = []
    for i in range(parts):
        rows = slice(int(starts[i]), int(starts[i + 1]))
        out.append(
            replace(
                ds,
                version=f"{ds.version}-part{i}",
                client=ds.client[rows] - bounds[i],
                categorical={name: col[rows] for name, col in ds.categorical.items()},
                numeric={name: col[rows] for name, col in ds.numeric.items()},
                dates={name: col[rows] for name, col in ds.dates.items()},
                records_before_bounding=0,
            )
        )
    return out


def exact_value(query: Query, plan: engine.QueryPlan, aggregates: Sequence[Any]) -> float:
    """The noiseless answer from exact aggregates: what every release estimates."""
    values = {agg.name: int(agg.values[0]) for agg in aggregates}
    if query.kind is QueryKind.COUNT:
        return float(values["count"])
    if query.kind is QueryKind.PROPORTION:
        return values["numerator"] / values["denominator"]
    spec = plan.numeric
    assert spec is not None
    midpoint = (spec.lower_int + spec.upper_int) / (2.0 * spec.factor)
    return midpoint + values["shifted_sum"] / (2.0 * spec.factor) / values["count"]


@dataclass(frozen=True)
class Errors:
    rmse: float
    coverage: float | None  # share of 95% intervals that held the exact value
    mean_half_width: float | None


def _errors(estimates: list[float], truth: float, intervals: list[tuple[float, float]]) -> Errors:
    rmse = math.sqrt(statistics.fmean((e - truth) ** 2 for e in estimates))
    if not intervals:
        return Errors(rmse, None, None)
    covered = sum(lo <= truth <= hi for lo, hi in intervals) / len(intervals)
    half = statistics.fmean((hi - lo) / 2 for lo, hi in intervals)
    return Errors(rmse, covered, half)


def _answer(node: str, query: Query, cells: Any, charged: Fraction) -> Answer:
    return Answer(
        query_id="accuracy",
        node_id=node,
        canonical_query=query.canonical(),
        group_by=query.group_by,
        cells=cells,
        charged=PrivacyCost(query.cost.definition, charged),
        dataset_version="",
        replayed=False,
        budget=None,
    )


def measure_question(
    config: NodeConfig, pooled: Dataset, query: Query, node_counts: Sequence[int], releases: int
) -> dict[str, Any]:
    schema, definition = config.schema, config.policy.privacy_definition
    plan = engine.plan(query, schema, config.policy)
    central_aggregates = engine.evaluate(plan, pooled, schema)
    truth = exact_value(query, plan, central_aggregates)
    midpoint = None
    if plan.numeric is not None:
        midpoint = (plan.numeric.lower_int + plan.numeric.upper_int) / (2.0 * plan.numeric.factor)

    central = [
        answering.release_cells(plan, central_aggregates, definition)[0][0].value
        for _ in range(releases)
    ]
    out: dict[str, Any] = {
        "exact": truth,
        "central": _errors(central, truth, []).__dict__,
        "federated": {},
    }
    for n in node_counts:
        parts = split(pooled, n)
        names = [f"ngo-{i:02d}" for i in range(n)]
        aggregates = [engine.evaluate(plan, part, schema) for part in parts]
        summed = [sum(int(a[i].values[0]) for a in aggregates) for i in range(len(plan.components))]
        assert summed == [int(agg.values[0]) for agg in central_aggregates]  # a true partition
        mids = dict.fromkeys(names, midpoint) if midpoint is not None else None
        estimates, intervals = [], []
        for _ in range(releases):
            answers = []
            for name, aggs in zip(names, aggregates, strict=True):
                cells, charged = answering.release_cells(plan, aggs, definition)
                answers.append((name, _answer(name, query, cells, charged.charge)))
            (cell,) = combine(query, answers, mids)
            estimates.append(cell.estimate)
            intervals.append((cell.ci_low, cell.ci_high))
        out["federated"][str(n)] = _errors(estimates, truth, intervals).__dict__
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    data = workload.prepare_records(workload.clients_for(args.records))
    config = load_config(data.config_path)
    pooled = load_dataset(config)
    epsilon = Fraction(args.epsilon)
    result: dict[str, Any] = {
        "environment": workload.environment(),
        "records": data.rows,
        "clients": pooled.n_clients,
        "records_kept": pooled.n_records,
        "k": config.policy.max_records_per_client,
        "epsilon": str(epsilon),
        "releases": args.releases,
        "nodes": args.nodes,
        "questions": {},
    }
    for title, query in questions(epsilon).items():
        print(f"{title} ...", flush=True)
        start = time.perf_counter()
        q = measure_question(config, pooled, query, args.nodes, args.releases)
        q["seconds"] = time.perf_counter() - start
        result["questions"][title] = q
        central = q["central"]["rmse"]
        ratios = ", ".join(
            f"N={n}: {q['federated'][str(n)]['rmse'] / central:.2f}" for n in args.nodes
        )
        print(f"  exact {q['exact']:.4g}; RMSE central {central:.4g}; ratios {ratios}", flush=True)
    return result


def _counts(text: str) -> list[int]:
    counts = [int(part) for part in text.split(",") if part.strip()]
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: node counts like 1,5,20")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--releases", type=int, default=1000)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--nodes", type=_counts, default=list(DEFAULT_NODES))
    parser.add_argument("--epsilon", default="1/10", help="per release, e.g. 1/10 or 0.5")
    parser.add_argument("--out", default="accuracy.json", help="file name in bench-results/")
    args = parser.parse_args(argv)
    result = run(args)
    path: Path = workload.RESULTS / args.out
    path.write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(f"(written to {path.relative_to(workload.ROOT)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
