"""OpenDP's Polars pipeline answering the benchmark questions (tiaki's venv, ``bench`` extra).

One context is built per run (reported as setup, with reading the CSV) and
asked every timed question, its budget split evenly so that each question
costs ε. What is timed is what an analyst pays per question beyond that:
building the query, ``release()`` (OpenDP builds and checks the measurement)
and ``collect()``.

Per-client bounding as the node does it: ``dp.unit_of(contributions=1,
identifier=client_id)`` and ``truncate_per_group(k, keep=SortBy(episode_start,
descending))``, the most recent k records of each client, in every query
(the node bounds once, at load). Cells come from public keys
(``with_keys``), as the node's come from its schema.
"""

from __future__ import annotations

import logging
import sys
import time
from importlib import metadata
from typing import Any

from tests.bench.peers.peer_protocol import Job, rss_mb, serve, time_question

COLUMNS = ("client_id", "region", "service", "sessions", "episode_start")


def run(job: Job) -> dict[str, Any]:
    import opendp.prelude as dp
    import polars as pl

    dp.enable_features("contrib")
    # The shared context's total ε (one per question asked) trips a log warning.
    logging.getLogger("opendp.context").setLevel(logging.ERROR)
    rss_base = rss_mb()
    k, epsilon = int(job["k"]), float(job["epsilon"])
    edges = [float(e) for e in job["bin_edges"]]
    lower, upper = job["sessions_bounds"]
    asked = len(job["questions"]) * (job["runs"] + job["warmup"])

    start = time.perf_counter()
    frame = pl.read_csv(
        job["csv"], columns=list(COLUMNS), schema_overrides={"sessions": pl.Int64}
    ).lazy()
    context = dp.Context.compositor(
        data=frame,
        privacy_unit=dp.unit_of(contributions=1, identifier=pl.col("client_id")),
        privacy_loss=dp.loss_of(epsilon=epsilon * asked),
        split_evenly_over=asked,
        # OpenDP needs a public bound on the rows for a sum; the synthesiser's maximum.
        margins=[dp.polars.Margin(by=(), max_length=5_000_000 * 12)],
    )
    setup_s = time.perf_counter() - start
    rss_loaded = rss_mb()

    recent = dp.polars.SortBy(by=pl.col("episode_start"), descending=True)
    region_keys = pl.DataFrame({"region": job["regions"]})
    cell_keys = region_keys.join(pl.DataFrame({"service": job["services"]}), how="cross")
    # cut's labels, one representative value per bin; the last bin is closed at
    # the schema's upper bound, so "[45, inf)" holds exactly the node's [45, 60].
    bin_labels = pl.Series(edges[:-1]).cut(edges[1:-1], left_closed=True).cast(pl.String)
    bin_keys = pl.DataFrame({"bin": bin_labels}).with_columns(pl.col("bin").cast(pl.Categorical))

    def bounded() -> Any:
        return context.query().truncate_per_group(k, keep=recent)

    def total(frame: Any) -> str:
        return f"{frame.height} cells, total {int(frame['len'].sum()):,}"

    def count_by_region() -> str:
        query = bounded().group_by("region").agg(dp.len(signed=True)).with_keys(region_keys)
        return total(query.release().collect())

    def mean_sessions_budgeting() -> str:
        query = bounded().filter(pl.col("service") == "budgeting")
        mean = pl.col("sessions").dp.mean(bounds=(lower, upper))  # type: ignore[attr-defined]
        return f"{float(query.select(mean).release().collect()['sessions'][0]):.3f}"

    def clients_by_region_service() -> str:
        cell = ["region", "service"]
        query = (
            bounded()
            .truncate_num_groups(k, by=cell, keep="first")  # a client touches at most k cells
            .truncate_per_group(1, by=cell)  # and counts once in each
            .group_by(*cell)
            .agg(dp.len(signed=True))
            .with_keys(cell_keys)
        )
        return total(query.release().collect())

    def histogram_sessions() -> str:
        binned = bounded().with_columns(
            pl.col("sessions").cut(edges[1:-1], left_closed=True).alias("bin")
        )
        query = binned.group_by("bin").agg(dp.len(signed=True)).with_keys(bin_keys)
        return total(query.release().collect())

    asks = {
        "count_by_region": count_by_region,
        "mean_sessions_budgeting": mean_sessions_budgeting,
        "clients_by_region_service": clients_by_region_service,
        "histogram_sessions": histogram_sessions,
    }
    results = {
        key: time_question(asks[key], job["runs"], job["warmup"]) for key in job["questions"]
    }
    return {
        "engine": "OpenDP Polars",
        "version": f"opendp {metadata.version('opendp')}, polars {metadata.version('polars')}",
        "rss_base_mb": rss_base,
        "rss_loaded_mb": rss_loaded,
        "setup_s": setup_s,
        "questions": results,
        "notes": [
            "one context for the run (built in setup), ε split evenly so each question "
            "costs ε; timed: query + release() + collect()",
            "per-client bounding in every query: truncate_per_group(k, keep=most recent)",
            "mean: noisy sum / noisy count without midpoint shift (sum noise twice the "
            "node's), and a public max_length margin the node does not need",
        ],
    }


if __name__ == "__main__":
    sys.exit(serve(run))
