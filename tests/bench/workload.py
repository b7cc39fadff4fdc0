"""What every benchmark shares: the records, the four questions, their privacy cost, timing.

The records are the synthesiser's (``node.synth``, NGO profile ``seed`` 2:
about 3 records per client, a minority with many), written once per size to
a CSV and imported into a node store, both cached under
``bench-results/cache/`` keyed by (clients, seed). The node reads the store;
the peers read the same CSV.

The four questions are asked at ε = 1 (pure DP) with every client bounded to
k = 4 records. :func:`peer_job` states them, with their public keys, in plain
JSON for the peer programs in ``peers/``, which run in other virtual
environments and cannot import tiaki.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from importlib import metadata
from pathlib import Path
from typing import Any

from node.config import load_config
from node.importer import import_csv
from node.store import StoreError, load_dataset
from node.synth import REGIONS, SERVICES, write_csv
from tiaki.budget import PrivacyDefinition
from tiaki.query import Bounds, InSet, PrivacyCost, Query, QueryKind

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench-results"
CACHE = RESULTS / "cache"
K = 4
EPSILON = Fraction(1)
SEED = 2  # NGO profile: about 3 records per client
# Seed 2 gives about 3.03 records per client: 330,000 clients -> 1,008,243 records.
CLIENTS_PER_RECORD = Fraction(33, 100)
HISTOGRAM_EDGES = (0.0, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0)
POLICY: dict[str, Any] = {  # generous, so no benchmark runs out of budget
    "privacy_definition": "pure",
    "budget": {"limit": 1_000_000, "period": "none", "lifetime_limit": None},
    "per_query_max": 10,
    "max_records_per_client": K,
}


@dataclass(frozen=True)
class Question:
    key: str  # the name peers know it by
    title: str
    query: Query
    cells: int  # cells in a right answer


_COST = PrivacyCost(PrivacyDefinition.PURE, EPSILON)
QUESTIONS: tuple[Question, ...] = (
    Question(
        "count_by_region",
        "group-by count: records by region",
        Query(QueryKind.COUNT, _COST, group_by=("region",)),
        len(REGIONS),
    ),
    Question(
        "mean_sessions_budgeting",
        "filtered mean: sessions (0..60) where service = budgeting",
        Query(
            QueryKind.MEAN,
            _COST,
            column="sessions",
            bounds=Bounds(0, 60),
            filters=(InSet("service", ("budgeting",)),),
        ),
        1,
    ),
    Question(
        "clients_by_region_service",
        "distinct clients by region × service",
        Query(QueryKind.COUNT_CLIENTS, _COST, group_by=("region", "service")),
        len(REGIONS) * len(SERVICES),
    ),
    Question(
        "histogram_sessions",
        "histogram: sessions in 6 bins",
        Query(QueryKind.HISTOGRAM, _COST, column="sessions", bin_edges=HISTOGRAM_EDGES),
        len(HISTOGRAM_EDGES) - 1,
    ),
)


def peer_job(csv: Path, runs: int, warmup: int) -> dict[str, Any]:
    """The questions in plain JSON: what every engine is asked, with the public keys."""
    return {
        "csv": str(csv),
        "epsilon": float(EPSILON),
        "k": K,
        "runs": runs,
        "warmup": warmup,
        "questions": [q.key for q in QUESTIONS],
        "regions": list(REGIONS),
        "services": list(SERVICES),
        "sessions_bounds": [0, 60],
        "bin_edges": list(HISTOGRAM_EDGES),
    }


# ---------------------------------------------------------------- the records


def clients_for(records: int) -> int:
    """Clients for about ``records`` records (seed 2)."""
    return max(1, round(records * CLIENTS_PER_RECORD))


@dataclass(frozen=True)
class Records:
    """A cached synthetic CSV and the node store imported from it."""

    config_path: Path  # node.yaml; its data_dir holds the store and salt
    csv: Path
    facts: dict[str, Any]  # csv_rows, clients, synth_s, import_s

    @property
    def rows(self) -> int:
        return int(self.facts["csv_rows"])


def prepare_records(clients: int, seed: int = SEED) -> Records:
    """The cached CSV and store for (clients, seed), built on first use."""
    from tests.conftest import write_node_config  # the test suite's node.yaml writer

    cache = CACHE / f"clients{clients}-seed{seed}"
    csv, marker = cache / "clients.csv", cache / "built.json"
    config_path = write_node_config(cache / "node", node_id="ngo-bench", policy=POLICY)
    config = load_config(config_path)
    facts: dict[str, Any] = json.loads(marker.read_text()) if marker.exists() else {}
    try:
        load_dataset(config)
    except StoreError:
        facts = {}
    if not facts or not csv.exists():
        print(f"building the cache in {cache.relative_to(ROOT)} (once) ...", flush=True)
        start = time.perf_counter()
        facts = {"csv_rows": write_csv(csv, clients, seed)}
        facts["synth_s"] = time.perf_counter() - start
        start = time.perf_counter()
        report = import_csv(config, csv)
        facts["import_s"] = time.perf_counter() - start
        if not report.committed:
            raise SystemExit(f"import failed: {report.bad_row_count} bad rows")
        facts["clients"] = report.clients
        marker.write_text(json.dumps(facts))
    return Records(config_path, csv, facts)


def fresh_ledger(config_path: Path) -> None:
    """Remove the node's ledger so a run charges a fresh one."""
    data_dir = load_config(config_path).data_dir
    for suffix in ("", "-wal", "-shm"):
        (data_dir / f"ledger.sqlite{suffix}").unlink(missing_ok=True)


# ---------------------------------------------------------------- timing


@dataclass(frozen=True)
class Timing:
    """Wall-time samples of one measured call, in ms."""

    samples_ms: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def low(self) -> float:
        return min(self.samples_ms)

    @property
    def high(self) -> float:
        return max(self.samples_ms)

    @property
    def p99(self) -> float:
        if len(self.samples_ms) < 2:
            return self.samples_ms[0]
        return statistics.quantiles(self.samples_ms, n=100, method="inclusive")[98]


def measure(call: Callable[[], object], runs: int, warmup: int) -> Timing:
    """Wall time of ``call`` over ``runs`` calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        call()
        samples.append((time.perf_counter_ns() - start) / 1e6)
    return Timing(tuple(samples))


def memory_mb() -> dict[str, float]:
    """This process's resident set now (VmRSS) and at its peak (VmHWM), in MB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


# ---------------------------------------------------------------- reporting


def row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def verdict(ok: bool) -> str:
    return "yes" if ok else "**NO**"


def version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def environment(packages: Sequence[str] = ("numpy", "opendp", "grpcio")) -> str:
    versions = ", ".join(f"{name} {version(name)}" for name in packages)
    load = os.getloadavg()[0]
    return (
        f"Python {platform.python_version()}, {versions}; {os.cpu_count()} CPUs "
        f"({platform.machine()}); 1-minute load average {load:.1f} at the start; "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}"
    )
