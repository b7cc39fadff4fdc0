"""How the engine programs in this folder talk to ``bench_engines.py``: standard library only.

Each engine program runs in its own process (and, for Tumult Analytics and
SmartNoise SQL, its own virtual environment, whose pinned versions conflict
with tiaki's), so its memory is its own and one size never inherits another's
heap. It reads one job as JSON on stdin (see ``workload.peer_job``) and prints
one result as JSON on the last line of stdout::

    {"engine": ..., "version": ..., "rss_base_mb": ..., "rss_loaded_mb": ...,
     "peak_rss_mb": ..., "setup_s": ..., "notes": [...],
     "questions": {key: {"samples_ms": [...], "sample": "..."} | {"error": "..."}}}

Memory counts the program and every process it started (Spark's JVM, for
one): resident sets (VmRSS) summed now, and peaks (VmHWM) summed, an upper
bound on what they held at once.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

Job = dict[str, Any]
Ask = Callable[[], str]  # asks one question once; returns a one-line sample of the answer


def _status(pid: int | str) -> dict[str, int]:
    out = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # the process has gone
        return {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def _descendants(pid: int | str) -> list[str]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            found += [child, *_descendants(child)]
    return found


def rss_mb() -> float:
    """Resident set of this process and every live descendant now, summed, in MB."""
    pids = ["self", *_descendants("self")]
    return sum(_status(pid).get("VmRSS", 0) for pid in pids) / 1024


def peak_rss_mb() -> float:
    """Peak resident set of this process and of every live descendant, summed, in MB."""
    pids = ["self", *_descendants("self")]
    return sum(_status(pid).get("VmHWM", 0) for pid in pids) / 1024


def time_question(ask: Ask, runs: int, warmup: int) -> dict[str, Any]:
    """Wall time of ``ask`` over ``runs`` calls after ``warmup`` untimed ones; or the error."""
    try:
        sample = ""
        for _ in range(warmup):
            sample = ask()
        samples = []
        for _ in range(runs):
            start = time.perf_counter_ns()
            sample = ask()
            samples.append((time.perf_counter_ns() - start) / 1e6)
        return {"samples_ms": samples, "sample": sample}
    except Exception as exc:  # the table says why instead of the run failing
        return {"error": reason(exc)}


def reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"


def serve(run: Callable[[Job], dict[str, Any]]) -> int:
    """Read the job, run it, print the result as the last line; exit 0 unless it crashed."""
    job: Job = json.loads(sys.stdin.read())
    try:
        result = run(job)
    except Exception as exc:
        traceback.print_exc()
        print(json.dumps({"error": reason(exc)}), flush=True)
        return 1
    result.setdefault("peak_rss_mb", peak_rss_mb())
    print(json.dumps(result), flush=True)
    return 0
