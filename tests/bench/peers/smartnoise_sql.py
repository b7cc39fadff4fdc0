"""SmartNoise SQL answering the benchmark questions, in its own virtual environment.

SmartNoise SQL pins OpenDP 0.14 (tiaki uses 0.16), so ``make bench-peers``
installs it into ``.venv-peers/smartnoise`` from
``smartnoise-requirements.txt``. It answers SQL over a pandas DataFrame.

One reader is built per run over the CSV read with pandas (reported as
setup); what is timed per question is ``reader.execute_df(sql)``.

Per-client bounding: the metadata marks ``client_id`` as the private id with
``max_ids`` = k, so SmartNoise keeps at most k rows per client (a random
sample, redrawn in every query; the node keeps each client's most recent k).
``censor_dims`` is off, as public categories need no thresholding, but
SmartNoise has no public keys: it returns only the cells that occur in the
data. ``AVG`` spends ε on its ``SUM`` and ε on its ``COUNT``, so the mean is
asked of a reader at ε/2 to cost ε in all, like the others: noise scale 480
(in sessions) for the sum and 8 for the count against the node's 240 and 8.
Counts: Laplace of scale 4, as the node's discrete Laplace.
"""

from __future__ import annotations

import importlib
import sys
import time
from importlib import metadata
from typing import Any

from tests.bench.peers.peer_protocol import Job, rss_mb, serve, time_question

TABLE = "records.records"


def _bin_case(edges: list[float]) -> str:
    """A CASE numbering the bins [e0, e1), ..., [e(n-1), en] from 0, as the node's histogram."""
    arms = " ".join(f"WHEN sessions < {e:g} THEN {i}" for i, e in enumerate(edges[1:-1]))
    return f"CASE {arms} ELSE {len(edges) - 2} END"


def run(job: Job) -> dict[str, Any]:
    pandas = importlib.import_module("pandas")
    snsql = importlib.import_module("snsql")
    rss_base = rss_mb()
    k, epsilon = int(job["k"]), float(job["epsilon"])
    lower, upper = job["sessions_bounds"]
    edges = [float(e) for e in job["bin_edges"]]

    start = time.perf_counter()
    frame = pandas.read_csv(job["csv"], usecols=["client_id", "region", "service", "sessions"])
    metadata_ = {
        "records": {
            "records": {
                "records": {
                    "row_privacy": False,
                    "max_ids": k,
                    "sample_max_ids": True,
                    "censor_dims": False,
                    "clamp_counts": False,
                    "client_id": {"type": "string", "private_id": True},
                    "region": {"type": "string"},
                    "service": {"type": "string"},
                    "sessions": {"type": "int", "lower": lower, "upper": upper},
                }
            }
        }
    }

    def reader(eps: float) -> Any:
        return snsql.from_df(frame, privacy=snsql.Privacy(epsilon=eps), metadata=metadata_)

    whole, half = reader(epsilon), reader(epsilon / 2)
    setup_s = time.perf_counter() - start
    rss_loaded = rss_mb()

    def total(answer: Any) -> str:
        return f"{len(answer)} cells, total {int(answer.iloc[:, -1].sum()):,}"

    case = _bin_case(edges)
    asks = {
        "count_by_region": lambda: total(
            whole.execute_df(f"SELECT region, COUNT(*) AS n FROM {TABLE} GROUP BY region")
        ),
        "mean_sessions_budgeting": lambda: "{:.3f}".format(
            float(
                half.execute_df(
                    f"SELECT AVG(sessions) AS m FROM {TABLE} WHERE service = 'budgeting'"
                ).iloc[0, 0]
            )
        ),
        "clients_by_region_service": lambda: total(
            whole.execute_df(
                f"SELECT region, service, COUNT(DISTINCT client_id) AS n FROM {TABLE} "
                "GROUP BY region, service"
            )
        ),
        "histogram_sessions": lambda: total(
            whole.execute_df(f"SELECT {case} AS bin, COUNT(*) AS n FROM {TABLE} GROUP BY {case}")
        ),
    }
    results = {
        key: time_question(asks[key], job["runs"], job["warmup"]) for key in job["questions"]
    }
    return {
        "engine": "SmartNoise SQL",
        "version": (
            f"smartnoise-sql {metadata.version('smartnoise-sql')}, "
            f"opendp {metadata.version('opendp')}, pandas {metadata.version('pandas')}"
        ),
        "rss_base_mb": rss_base,
        "rss_loaded_mb": rss_loaded,
        "setup_s": setup_s,
        "questions": results,
        "notes": [
            "setup: CSV read with pandas, readers built; timed: reader.execute_df(sql)",
            "per-client bounding: private_id + max_ids = k (a random sample of rows per "
            "query); no public keys, so only cells seen in the data are returned",
            "mean: AVG at ε/2 (SmartNoise charges its SUM and COUNT ε/2 each)",
        ],
    }


if __name__ == "__main__":
    sys.exit(serve(run))
