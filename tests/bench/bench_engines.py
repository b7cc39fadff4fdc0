"""The node engine beside OpenDP Polars, Tumult Analytics and SmartNoise SQL, size by size.

Run with ``make bench`` (10k, 100k and 1M records) or ``make bench-large``
(10M), or::

    .venv/bin/python -m tests.bench.bench_engines [--records 10000,100000]
        [--engines tiaki,opendp-polars,tumult,smartnoise] [--runs N] [--peer-runs N]
        [--profile] [--out engines.json]

For every size, every engine answers the four questions of ``workload.py``
(same records, same public keys, ε = 1 each, every client bounded to k = 4
records) in a process of its own started for that size, so that its peak
memory is its own: see ``peers/peer_protocol.py``. Tumult Analytics and
SmartNoise SQL run in the virtual environments ``make bench-peers`` makes
under ``.venv-peers/``; one that is missing or fails is reported as not
available, with the reason, and the run goes on.

Results go to ``bench-results/<out>`` as JSON (``report.py`` turns them into
``results.md`` and plots); each engine's stderr to ``bench-results/logs/``.
With ``--profile`` the node engine also profiles each question at the
largest size (pyinstrument; ``bench-results/profile-<question>.txt``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from tests.bench import workload

PEER_VENVS = workload.ROOT / ".venv-peers"
LOGS = workload.RESULTS / "logs"
DEFAULT_SIZES = (10_000, 100_000, 1_000_000)
TIMEOUT_S = 3600.0  # one engine at one size (Tumult at 10M takes about half)


@dataclass(frozen=True)
class Engine:
    key: str
    name: str
    module: str  # in tests/bench/peers/, run with ``-m`` from the repository root
    venv: str | None  # under .venv-peers/, or None for tiaki's own
    needs: tuple[str, ...] = ()  # modules that must import in tiaki's venv
    needs_java: bool = False

    @property
    def python(self) -> Path:
        if self.venv is None:
            return Path(sys.executable)
        return PEER_VENVS / self.venv / "bin" / "python"

    def unavailable(self) -> str | None:
        """Why this engine cannot run here, or None."""
        if self.venv is not None:
            recorded = PEER_VENVS / self.venv / "unavailable.txt"
            if recorded.exists():
                return recorded.read_text(encoding="utf-8").strip()
            if not self.python.exists():
                return f"no environment at .venv-peers/{self.venv} (`make bench-peers` makes it)"
        missing = [name for name in self.needs if find_spec(name) is None]
        if missing:
            return f"{', '.join(missing)} not installed (the `bench` extra)"
        if self.needs_java and shutil.which("java") is None:
            return "no Java runtime on the PATH (PySpark needs Java 8, 11 or 17)"
        return None


ENGINES = {
    e.key: e
    for e in (
        Engine("tiaki", "tiaki node engine", "tiaki_engine", None),
        Engine("opendp-polars", "OpenDP Polars", "opendp_polars", None, ("polars",)),
        Engine("tumult", "Tumult Analytics", "tumult_analytics", "tumult", needs_java=True),
        Engine("smartnoise", "SmartNoise SQL", "smartnoise_sql", "smartnoise"),
    )
}


def runs_for(engine: Engine, records: int, args: argparse.Namespace) -> tuple[int, int]:
    """(timed runs, warm-up runs): fewer for the peers, whose questions take seconds."""
    if engine.key == "tiaki":
        return (args.runs, 3) if records <= 2_000_000 else (max(5, args.runs // 3), 2)
    return (args.peer_runs, 1) if records <= 2_000_000 else (args.peer_runs, 0)


def run_engine(engine: Engine, job: dict[str, Any], log: Path) -> dict[str, Any]:
    """Start the engine's program on the job; its result, or why there is none."""
    reason = engine.unavailable()
    if reason is not None:
        return {"unavailable": reason}
    with log.open("w", encoding="utf-8") as stderr:
        proc = subprocess.Popen(
            [str(engine.python), "-m", f"tests.bench.peers.{engine.module}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=workload.ROOT,
            start_new_session=True,  # so a timeout can stop Spark's JVM with it
        )
        try:
            out, _ = proc.communicate(json.dumps(job), timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return {"unavailable": f"timed out after {TIMEOUT_S:.0f} s"}
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    result = _last_json(out)
    if result is None:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:]
        return {"unavailable": f"exited with {proc.returncode}: {' '.join(tail)[:200]}"}
    if "error" in result:
        return {"unavailable": f"failed: {result['error']}"}
    return result


def _last_json(out: str) -> dict[str, Any] | None:
    """The program's result: the last line of its output that is a JSON object."""
    for line in reversed(out.strip().splitlines()):
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None


def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = sorted(args.records)
    engines = [ENGINES[key] for key in args.engines]
    LOGS.mkdir(parents=True, exist_ok=True)
    environment = workload.environment(("numpy", "opendp", "polars", "grpcio"))
    out: dict[str, Any] = {"environment": environment, "k": workload.K, "sizes": []}
    for records in sizes:
        data = workload.prepare_records(workload.clients_for(records))
        size: dict[str, Any] = {
            "records": data.rows,
            "clients": data.facts["clients"],
            "engines": {},
        }
        print(f"{data.rows:,} records of {data.facts['clients']:,} clients", flush=True)
        for engine in engines:
            runs, warmup = runs_for(engine, records, args)
            job = workload.peer_job(data.csv, runs, warmup)
            job["config"] = str(data.config_path)
            # Spark's driver heap: its default of 1 GB runs out on the larger sizes.
            job["spark_memory"] = "4g" if records <= 2_000_000 else "8g"
            if args.profile and engine.key == "tiaki" and records == sizes[-1]:
                job["profile"] = str(workload.RESULTS)
            print(f"  {engine.name}: {runs} runs after {warmup} warm-up ...", flush=True)
            start = time.perf_counter()
            result = run_engine(engine, job, LOGS / f"{engine.key}-{data.rows}.log")
            result["wall_s"] = time.perf_counter() - start
            result.setdefault("name", engine.name)
            size["engines"][engine.key] = result
            _progress(result)
        out["sizes"].append(size)
    return out


def _progress(result: dict[str, Any]) -> None:
    if "unavailable" in result:
        print(f"    not available: {result['unavailable']}", flush=True)
        return
    for key, q in result["questions"].items():
        if "error" in q:
            print(f"    {key}: {q['error']}", flush=True)
        else:
            timing = workload.Timing(tuple(q["samples_ms"]))
            print(f"    {key}: median {timing.median:,.2f} ms ({q['sample']})", flush=True)
    print(
        f"    peak RSS {result['peak_rss_mb']:,.0f} MB; whole run {result['wall_s']:.0f} s",
        flush=True,
    )


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected numbers like 10000,100000") from None
    if not sizes or min(sizes) < 100:
        raise argparse.ArgumentTypeError(f"{text!r}: at least 100 records each")
    return sizes


def _engines(text: str) -> list[str]:
    keys = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [key for key in keys if key not in ENGINES]
    if unknown or not keys:
        raise argparse.ArgumentTypeError(f"engines are: {', '.join(ENGINES)}")
    return keys


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=_sizes, default=list(DEFAULT_SIZES))
    parser.add_argument("--engines", type=_engines, default=list(ENGINES))
    parser.add_argument("--runs", type=_positive, default=30, help="timed runs, node engine")
    parser.add_argument("--peer-runs", type=_positive, default=3, help="timed runs, peers")
    parser.add_argument("--profile", action="store_true", help="profile at the largest size")
    parser.add_argument("--out", default="engines.json", help="file name in bench-results/")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    result = run(args)
    path = workload.RESULTS / args.out
    path.write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(f"(written to {path.relative_to(workload.ROOT)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
