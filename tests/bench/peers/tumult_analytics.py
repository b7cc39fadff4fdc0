"""Tumult Analytics answering the benchmark questions, in its own virtual environment.

Tumult Analytics pins pandas < 2, numpy < 2 and PySpark 3.5, which conflict
with tiaki's, so ``make bench-peers`` installs it into ``.venv-peers/tumult``
from ``tumult-requirements.txt``; PySpark 3.5 needs a Java 8, 11 or 17
runtime on the PATH.

Spark runs in local mode on every core, with the shuffle partitions cut from
Spark's default 200 to two per core (200 tiny tasks per shuffle would only
slow it down on one machine) and its UI off. One session is built per run
(reported as setup, with starting Spark and reading and caching the CSV),
with a budget of ε per question asked. What is timed per question is
``session.evaluate`` and ``toPandas()``.

Per-client bounding: the table is protected with ``AddRowsWithID("client_id")``
and every query ``enforce(MaxRowsPerID(k))``, which Tumult truncates by a
hash of the rows (the node keeps each client's most recent k). Cells come
from public ``KeySet`` s. The noise matches the node's: discrete Laplace of
scale 4 for the counts, 240 (in sessions) and 8 for the mean's sum and count.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
import tempfile
import time
import warnings
from importlib import metadata
from typing import Any

from tests.bench.peers.peer_protocol import Job, rss_mb, serve, time_question

# Spark's Python workers must run this environment's interpreter, not whatever is on the PATH.
os.environ["PYSPARK_PYTHON"] = sys.executable
os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable


def run(job: Job) -> dict[str, Any]:
    warnings.filterwarnings("ignore")  # pandas-UDF deprecation notices, once per query
    sql = importlib.import_module("pyspark.sql")
    functions = importlib.import_module("pyspark.sql.functions")
    ta = importlib.import_module("tmlt.analytics")
    rss_base = rss_mb()
    cores = os.cpu_count() or 1
    k, epsilon = int(job["k"]), float(job["epsilon"])
    lower, upper = job["sessions_bounds"]
    asked = len(job["questions"]) * (job["runs"] + job["warmup"])

    scratch = tempfile.mkdtemp(prefix="tumult-")  # Spark's warehouse and spill, not the repo
    start = time.perf_counter()
    spark = (
        sql.SparkSession.builder.master(f"local[{cores}]")
        .config("spark.driver.memory", job.get("spark_memory", "4g"))
        .config("spark.sql.warehouse.dir", os.path.join(scratch, "warehouse"))
        .config("spark.local.dir", scratch)
        .config("spark.sql.shuffle.partitions", str(2 * cores))
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    started_s = time.perf_counter() - start
    frame = (
        spark.read.csv(job["csv"], header=True)
        .select(
            "client_id",
            "region",
            "service",
            functions.col("sessions").cast("int").alias("sessions"),
        )
        .cache()
    )
    frame.count()  # materialise the cache now, in setup
    session = ta.Session.from_dataframe(
        privacy_budget=ta.PureDPBudget(epsilon * asked),
        source_id="records",
        dataframe=frame,
        protected_change=ta.AddRowsWithID("client_id"),
    )
    setup_s = time.perf_counter() - start
    rss_loaded = rss_mb()

    bins = ta.BinningSpec(
        bin_edges=[float(e) for e in job["bin_edges"]], right=False, include_both_endpoints=True
    )
    regions = ta.KeySet.from_dict({"region": job["regions"]})
    cells = ta.KeySet.from_dict({"region": job["regions"], "service": job["services"]})
    bin_keys = ta.KeySet.from_dict({"sessions_binned": bins.bins()})

    def bounded() -> Any:
        return ta.QueryBuilder("records").enforce(ta.MaxRowsPerID(k))

    def evaluate(query: Any) -> Any:
        return session.evaluate(query, ta.PureDPBudget(epsilon)).toPandas()

    def total(answer: Any) -> str:
        return f"{len(answer)} cells, total {int(answer.iloc[:, -1].sum()):,}"

    def mean_sessions_budgeting() -> str:
        query = (
            bounded()  # bounded first, as the node bounds at load
            .filter("service = 'budgeting'")
            .average("sessions", low=lower, high=upper)
        )
        return f"{float(evaluate(query).iloc[0, 0]):.3f}"

    asks = {
        "count_by_region": lambda: total(evaluate(bounded().groupby(regions).count())),
        "mean_sessions_budgeting": mean_sessions_budgeting,
        "clients_by_region_service": lambda: total(
            evaluate(bounded().groupby(cells).count_distinct(["client_id"]))
        ),
        "histogram_sessions": lambda: total(
            evaluate(bounded().bin_column("sessions", bins).groupby(bin_keys).count())
        ),
    }
    results = {
        key: time_question(asks[key], job["runs"], job["warmup"]) for key in job["questions"]
    }
    spark.stop()
    shutil.rmtree(scratch, ignore_errors=True)
    return {
        "engine": "Tumult Analytics",
        "version": (
            f"tmlt.analytics {metadata.version('tmlt.analytics')}, "
            f"pyspark {metadata.version('pyspark')}"
        ),
        "rss_base_mb": rss_base,
        "rss_loaded_mb": rss_loaded,
        "setup_s": setup_s,
        "spark_start_s": started_s,
        "questions": results,
        "notes": [
            f"Spark local[{cores}], {2 * cores} shuffle partitions; setup: Spark start "
            f"({started_s:.1f} s), CSV read and cached, session with ε per question",
            "per-client bounding: AddRowsWithID + MaxRowsPerID(k) (rows chosen by hash)",
        ],
    }


if __name__ == "__main__":
    sys.exit(serve(run))
