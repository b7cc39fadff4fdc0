"""tiaki's node engine answering the benchmark questions, in a process of its own.

Run by ``bench_engines.py`` with tiaki's virtual environment; the job (see
``peer_protocol``) adds ``config``, the node.yaml whose store holds the
records, and optionally ``profile``, a directory for pyinstrument profiles.

What is timed per question is what the node does for a query once its
records are loaded: ``engine.plan`` + ``engine.evaluate`` +
``answering.release_cells`` (OpenDP's discrete Laplace, its privacy map and
accuracy included). Loading the store, done once when a node starts or its
records are re-imported, is reported as setup.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from node import answering, engine
from node.config import NodeConfig, load_config
from node.dataset import Dataset
from node.store import load_dataset
from tests.bench import workload
from tests.bench.peers.peer_protocol import Job, peak_rss_mb, rss_mb, serve, time_question
from tiaki.query import Query

PROFILE_CALLS = 20
TOP_FRAMES = 8


def _answer(config: NodeConfig, dataset: Dataset, query: Query) -> Any:
    plan = engine.plan(query, config.schema, config.policy)
    aggregates = engine.evaluate(plan, dataset, config.schema)
    return answering.release_cells(plan, aggregates, config.policy.privacy_definition)


def _sample(cells: Any) -> str:
    values = [cell.value for cell in cells[0]]
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{len(values)} cells, total {sum(values):,.0f}"


def _top_frames(root: Any, calls: int) -> list[dict[str, Any]]:
    """Self time per function over the profile's tree, most first, in ms per call."""
    self_ms: dict[tuple[str, str], float] = defaultdict(float)
    total = root.time

    def walk(frame: Any) -> None:
        if not frame.is_synthetic:
            where = f"{frame.file_path_short}:{frame.line_no}"
            self_ms[frame.function, where] += frame.total_self_time
        for child in frame.children:
            walk(child)

    walk(root)
    top = sorted(self_ms.items(), key=lambda item: -item[1])[:TOP_FRAMES]
    return [
        {
            "function": function,
            "where": where,
            "ms_per_call": seconds * 1e3 / calls,
            "share": seconds / total if total else 0.0,
        }
        for (function, where), seconds in top
    ]


def _phases(root: Any, calls: int) -> dict[str, float]:
    """Inclusive ms per call of the engine's own steps (plan, evaluate, release_cells, ...)."""
    phases: dict[str, float] = defaultdict(float)

    def walk(frame: Any) -> None:
        if frame.function == "_answer":
            for child in frame.children:
                if not child.is_synthetic:
                    phases[child.function] += child.time * 1e3 / calls
            return
        for child in frame.children:
            walk(child)

    walk(root)
    return dict(phases)


def _profile(call: Any, out: Path, key: str) -> dict[str, Any]:
    from pyinstrument import Profiler

    call()
    profiler = Profiler(interval=0.0001)
    profiler.start()
    for _ in range(PROFILE_CALLS):
        call()
    profiler.stop()
    text = profiler.output_text(unicode=False, color=False, show_all=False)
    (out / f"profile-{key}.txt").write_text(text, encoding="utf-8")
    root = profiler.last_session.root_frame() if profiler.last_session else None
    if root is None:
        return {"calls": PROFILE_CALLS, "top": [], "phases": {}}
    return {
        "calls": PROFILE_CALLS,
        "ms_per_call": root.time * 1e3 / PROFILE_CALLS,
        "top": _top_frames(root, PROFILE_CALLS),
        "phases": _phases(root, PROFILE_CALLS),
    }


def run(job: Job) -> dict[str, Any]:
    questions = {q.key: q.query for q in workload.QUESTIONS}
    rss_base = rss_mb()
    config = load_config(Path(job["config"]))
    start = time.perf_counter()
    dataset = load_dataset(config)
    setup_s = time.perf_counter() - start
    rss_loaded, peak_loaded = rss_mb(), peak_rss_mb()
    results: dict[str, Any] = {}
    profiles: dict[str, Any] = {}
    for key in job["questions"]:
        query = questions[key]

        def ask(query: Query = query) -> str:
            return _sample(_answer(config, dataset, query))

        results[key] = time_question(ask, job["runs"], job["warmup"])
        if job.get("profile"):
            call = lambda query=query: _answer(config, dataset, query)  # noqa: E731
            profiles[key] = _profile(call, Path(job["profile"]), key)
    return {
        "engine": "tiaki node engine",
        "version": _version(),
        "rss_base_mb": rss_base,
        "rss_loaded_mb": rss_loaded,
        "peak_loaded_mb": peak_loaded,
        "setup_s": setup_s,
        "records_kept": dataset.n_records,
        "records_before_bounding": dataset.records_before_bounding,
        "questions": results,
        "profiles": profiles,
        "notes": [
            "the store loaded once as numpy columns, every client bounded at load to their "
            "k most recent records (setup); timed: engine.plan + engine.evaluate + "
            "answering.release_cells (OpenDP's discrete Laplace, its privacy map, accuracy)",
            "mean: noisy midpoint-shifted sum / noisy count, ε split evenly",
        ],
    }


def _version() -> str:
    from importlib import metadata

    return f"tiaki {metadata.version('tiaki')}, opendp {metadata.version('opendp')}"


if __name__ == "__main__":
    sys.exit(serve(run))
