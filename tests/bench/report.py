"""Turns the benchmarks' JSON into ``bench-results/results.md`` and its plots.

Run last by ``make bench`` and ``make bench-large``, or::

    .venv/bin/python -m tests.bench.report

Reads what is there of ``engines.json`` (``bench_engines.py``, 10k-1M records),
``engines-large.json`` (the same at 10M, ``make bench-large``),
``fanout.json`` (``bench_fanout.py``) and ``accuracy.json``
(``bench_accuracy.py``), and writes the tables, ``latency-vs-records.png``,
``memory-vs-records.png`` and ``latency-vs-nodes.png``. A section whose JSON
is missing says so; each section names the run it comes from.
"""

from __future__ import annotations

import itertools
import json
import math
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tests.bench import workload
from tests.bench.workload import Timing, row, verdict

RESULTS = workload.RESULTS
ENGINE_ORDER = ("tiaki", "opendp-polars", "tumult", "smartnoise")
# Targets for the node engine per question: under 30 ms at 1M records, 300 ms at 10M.
ENGINE_TARGETS_MS = ((1_000_000, 30.0), (10_000_000, 300.0))
MEMORY_TARGET_MB = 4096.0  # at 10M records
FANOUT_RATIO_TARGET = 3.0


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / name
    if not path.exists():
        return None
    result: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return result


def ms(value: float) -> str:
    if value < 10:
        return f"{value:.2f}"
    if value < 1000:
        return f"{value:.1f}"
    return f"{value:,.0f}"


def _timing(q: dict[str, Any]) -> Timing | None:
    return Timing(tuple(q["samples_ms"])) if "samples_ms" in q else None


def _target_ms(records: int) -> float | None:
    """The node's target at about this many records (within half either way), if any."""
    for size, target in ENGINE_TARGETS_MS:
        if size / 2 <= records <= size * 1.5:
            return target
    return None


# ---------------------------------------------------------------- engines


def merged_sizes(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every size of every run, smallest first, each with the run's environment."""
    sizes = []
    for run in runs:
        for size in run["sizes"]:
            sizes.append(size | {"environment": run["environment"]})
    return sorted(sizes, key=lambda size: size["records"])


def engine_tables(sizes: Sequence[dict[str, Any]]) -> Iterator[str]:
    engines = [e for e in ENGINE_ORDER if any(e in size["engines"] for size in sizes)]
    for size in sizes:
        records, results = size["records"], size["engines"]
        present = [e for e in engines if e in results]
        names = [results[e].get("name", e) for e in present]
        target = _target_ms(records)
        yield f"### {records:,} records ({size['clients']:,} clients)"
        yield ""
        yield f"Run: {size['environment']}."
        yield ""
        header = ["question", *(f"{n}: median ms (min–max)" for n in names)]
        if target is not None:
            header.append(f"node < {target:g} ms")
        yield row(header)
        yield row(["---", *["---:"] * len(present), *(["---"] if target is not None else [])])
        for question in workload.QUESTIONS:
            cells = [question.title]
            node_median = None
            for key in present:
                result = results[key]
                if "unavailable" in result:
                    cells.append("not available")
                    continue
                q = result["questions"].get(question.key, {"error": "not asked"})
                timing = _timing(q)
                if timing is None:
                    cells.append(f"failed: {q['error'][:80]}")
                    continue
                runs = len(timing.samples_ms)
                text = f"{ms(timing.median)} ({ms(timing.low)}–{ms(timing.high)}, {runs} runs)"
                if key == "tiaki":
                    node_median = timing.median
                    text = f"**{text}**"
                elif node_median:
                    text += f", {timing.median / node_median:,.0f}×"
                cells.append(text)
            if target is not None:
                cells.append("-" if node_median is None else verdict(node_median < target))
            yield row(cells)
        yield ""
        for key in present:
            if "unavailable" in results[key]:
                name = results[key].get("name", key)
                yield f"- {name}: not available: {results[key]['unavailable']}"
        yield ""


def memory_table(sizes: Sequence[dict[str, Any]]) -> Iterator[str]:
    engines = [e for e in ENGINE_ORDER if any(e in size["engines"] for size in sizes)]
    names = {
        e: next(s["engines"][e].get("name", e) for s in sizes if e in s["engines"]) for e in engines
    }
    yield row(
        [
            "records",
            *(f"{names[e]}: imports / loaded / peak MB (setup s)" for e in engines),
            f"node peak < {MEMORY_TARGET_MB / 1024:g} GB",
        ]
    )
    yield row(["---:", *["---:"] * len(engines), "---"])
    for size in sizes:
        cells = [f"{size['records']:,}"]
        for e in engines:
            r = size["engines"].get(e)
            if r is None or "unavailable" in r:
                cells.append("-")
                continue
            cells.append(
                f"{r['rss_base_mb']:,.0f} / {r['rss_loaded_mb']:,.0f} / {r['peak_rss_mb']:,.0f} "
                f"({r['setup_s']:.1f})"
            )
        node = size["engines"].get("tiaki", {})
        peak = node.get("peak_rss_mb")
        cells.append("-" if peak is None else verdict(peak < MEMORY_TARGET_MB))
        yield row(cells)


def memory_growth(sizes: Sequence[dict[str, Any]]) -> str:
    """The node's memory per million records, loaded and at peak, between the end sizes."""
    points = [
        (s["records"], s["engines"]["tiaki"])
        for s in sizes
        if "peak_rss_mb" in s["engines"].get("tiaki", {})
    ]
    if len(points) < 2:
        return ""
    (n0, a), (n1, b) = points[0], points[-1]
    per_m = 1e6 / (n1 - n0)
    loaded = (b["rss_loaded_mb"] - a["rss_loaded_mb"]) * per_m
    peak = (b["peak_rss_mb"] - a["peak_rss_mb"]) * per_m
    slopes = []
    for (m0, x), (m1, y) in itertools.pairwise(points):
        slopes.append(f"{(y['rss_loaded_mb'] - x['rss_loaded_mb']) * 1e6 / (m1 - m0):.0f}")
    return (
        f"Node memory grows by {loaded:.0f} MB per million records loaded and {peak:.0f} MB per "
        f"million at peak (loading), from {n0:,} to {n1:,} records; loaded, size step by size "
        f"step: {' / '.join(slopes)} MB per million (linear if these agree)."
    )


def engine_notes(sizes: Sequence[dict[str, Any]]) -> Iterator[str]:
    seen: dict[str, list[str]] = {}
    for size in sizes:
        for key in ENGINE_ORDER:
            r = size["engines"].get(key)
            if r and "notes" in r and key not in seen:
                seen[key] = [f"{r.get('name', key)} ({r.get('version', '')})", *r["notes"]]
    for lines in seen.values():
        yield f"- {lines[0]}: " + "; ".join(lines[1:]) if len(lines) > 1 else f"- {lines[0]}"


def profile_section(sizes: Sequence[dict[str, Any]]) -> Iterator[str]:
    profiled = [s for s in sizes if s["engines"].get("tiaki", {}).get("profiles")]
    if not profiled:
        yield "No profile in these runs (`bench_engines.py --profile`)."
        return
    size = profiled[-1]
    profiles = size["engines"]["tiaki"]["profiles"]
    titles = {q.key: q.title for q in workload.QUESTIONS}
    yield (
        f"pyinstrument, {size['records']:,} records, each question asked "
        f"{next(iter(profiles.values()))['calls']} times in a row (plan + evaluate + release); "
        "full trees in `bench-results/profile-<question>.txt`."
    )
    yield ""
    yield row(["question", "ms per call", "plan / evaluate / release ms", "top frames (self time)"])
    yield row(["---", "---:", "---:", "---"])
    for key, p in profiles.items():
        phases = p.get("phases", {})
        split = " / ".join(
            f"{phases.get(name, 0.0):.2f}" for name in ("plan", "evaluate", "release_cells")
        )
        top = "; ".join(
            f"`{f['function']}` ({Path(f['where']).name}) {f['ms_per_call']:.2f} ms "
            f"{f['share']:.0%}"
            for f in p["top"][:4]
        )
        yield row([titles.get(key, key), f"{p.get('ms_per_call', 0.0):.2f}", split, top])


def _log_axes(ax: Any) -> None:
    """Log scales with plain numbers on the ticks (10, 100, 1,000 rather than 10²)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plain = FuncFormatter(lambda value, _: f"{value:,.10g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(NullFormatter())
    ax.grid(True, which="both", alpha=0.3)


def plot_engines(sizes: Sequence[dict[str, Any]]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    engines = [e for e in ENGINE_ORDER if any(e in size["engines"] for size in sizes)]
    fig, axes = plt.subplots(1, len(workload.QUESTIONS), figsize=(16, 4.2), sharey=True)
    for ax, question in zip(axes, workload.QUESTIONS, strict=True):
        for key in engines:
            xs, med, lo, hi, name = [], [], [], [], key
            for size in sizes:
                r = size["engines"].get(key, {})
                name = r.get("name", name)
                t = _timing(r.get("questions", {}).get(question.key, {}))
                if t is not None:
                    xs.append(size["records"])
                    med.append(t.median)
                    lo.append(t.median - t.low)
                    hi.append(t.high - t.median)
            if xs:
                ax.errorbar(xs, med, yerr=[lo, hi], marker="o", capsize=3, label=name)
        for records, target in ENGINE_TARGETS_MS:
            ax.plot([records / 2, records * 1.5], [target, target], "k:", linewidth=1)
        _log_axes(ax)
        ax.set_title(question.title, fontsize=9)
        ax.set_xlabel("records")
    axes[0].set_ylabel("ms per question (median, min–max)")
    axes[0].legend(fontsize=8)
    fig.suptitle("Time per question against records (dotted: the node's targets)")
    fig.tight_layout()
    fig.savefig(RESULTS / "latency-vs-records.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for key in engines:
        xs, peaks, name = [], [], key
        for size in sizes:
            r = size["engines"].get(key, {})
            name = r.get("name", name)
            if "peak_rss_mb" in r:
                xs.append(size["records"])
                peaks.append(r["peak_rss_mb"])
        if xs:
            ax.plot(xs, peaks, marker="o", label=name)
    ax.axhline(MEMORY_TARGET_MB, color="k", linestyle=":", linewidth=1)
    _log_axes(ax)
    ax.set_xlabel("records")
    ax.set_ylabel("peak RSS, MB (process and its children)")
    ax.set_title("Peak memory against records (dotted: 4 GB)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "memory-vs-records.png", dpi=110)
    plt.close(fig)
    return ["latency-vs-records.png", "memory-vs-records.png"]


def summary_table(sizes: Sequence[dict[str, Any]]) -> Iterator[str]:
    """Median ms per question and engine at the largest size(s): the README's table."""
    largest = [s for s in sizes if s["records"] >= 900_000] or list(sizes[-1:])
    for size in largest:
        results = size["engines"]
        present = [e for e in ENGINE_ORDER if e in results]
        names = [results[e].get("name", e) for e in present]
        yield row([f"median ms, {size['records']:,} records", *names])
        yield row(["---", *["---:"] * len(present)])
        for question in workload.QUESTIONS:
            cells = [question.title]
            for key in present:
                r = results[key]
                t = None if "unavailable" in r else _timing(r["questions"].get(question.key, {}))
                cells.append("n/a" if t is None else ms(t.median))
            yield row(cells)
        yield ""


# ---------------------------------------------------------------- fan-out


def fanout_section(fanout: dict[str, Any]) -> Iterator[str]:
    rows = fanout["rows"]
    base = next((r["median_ms"] for r in rows if r["nodes"] == 1), None)
    yield (
        f"Run: {fanout['environment']}. Each node {fanout['records_per_node']:,} records; "
        f"{fanout['processes']} node processes of at most {fanout['servers_per_process']} "
        f"node servers each ({fanout['nodes_rss_gb']:.1f} GB RSS together), all on this "
        f"machine's {fanout['cores']} cores with the coordinator."
    )
    yield ""
    yield row(
        [
            "nodes",
            "processes",
            "runs",
            "median ms",
            "p99 ms",
            "min–max ms",
            "× 1 node",
            f"< {FANOUT_RATIO_TARGET:g}×",
            "CPU per question: coordinator + nodes ms",
            "CPU floor ms",
        ]
    )
    yield row(["---:", "---", "---:", "---:", "---:", "---:", "---:", "---", "---:", "---:"])
    for r in rows:
        t = Timing(tuple(r["samples_ms"]))
        ratio = r["median_ms"] / base if base else math.nan
        cpu = r["coordinator_cpu_ms"] + r["nodes_cpu_ms"]
        yield row(
            [
                str(r["nodes"]),
                str(r["processes"]),
                str(len(t.samples_ms)),
                ms(r["median_ms"]),
                ms(r["p99_ms"]),
                f"{ms(t.low)}–{ms(t.high)}",
                f"{ratio:.1f}",
                "-" if r["nodes"] == 1 else verdict(ratio < FANOUT_RATIO_TARGET),
                f"{ms(r['coordinator_cpu_ms'])} + {ms(r['nodes_cpu_ms'])}",
                ms(cpu / fanout["cores"]),
            ]
        )


def fanout_verdict(fanout: dict[str, Any]) -> str:
    """Why the largest federation meets the target or not, from the measured CPU."""
    rows = fanout["rows"]
    base = next((r for r in rows if r["nodes"] == 1), None)
    most = rows[-1]
    if base is None or most["nodes"] == 1:
        return ""
    target = FANOUT_RATIO_TARGET * base["median_ms"]
    floor = (most["coordinator_cpu_ms"] + most["nodes_cpu_ms"]) / fanout["cores"]
    per_node = most["coordinator_cpu_ms"] / most["nodes"]
    met = most["median_ms"] < target
    text = (
        f"{most['nodes']} nodes took {most['median_ms'] / base['median_ms']:.1f}× one node "
        f"({ms(most['median_ms'])} against a target of {ms(target)} ms): "
        f"{'met' if met else 'missed'}. "
    )
    if not met:
        above = most["coordinator_cpu_ms"] >= target
        text += (
            f"On this machine the nodes' and the coordinator's CPU alone need {ms(floor)} ms "
            f"of the {fanout['cores']} cores per question. With a machine per node the node "
            f"work would run in parallel; the coordinator spent "
            f"{ms(most['coordinator_cpu_ms'])} ms of CPU per question ({per_node:.2f} ms per "
            "node: a `Plan` and a `Query` RPC and a mirror write per node, in "
            f"Python), {'itself above' if above else 'within'} the target. The breakdown is "
            "in `fanout.md`."
        )
    return text


def plot_fanout(fanout: dict[str, Any]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = fanout["rows"]
    xs = [r["nodes"] for r in rows]
    med = [r["median_ms"] for r in rows]
    lo = [r["median_ms"] - min(r["samples_ms"]) for r in rows]
    hi = [max(r["samples_ms"]) - r["median_ms"] for r in rows]
    floor = [(r["coordinator_cpu_ms"] + r["nodes_cpu_ms"]) / fanout["cores"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.errorbar(xs, med, yerr=[lo, hi], marker="o", capsize=3, label="end-to-end, median")
    ax.plot(xs, [r["p99_ms"] for r in rows], marker="^", linestyle="--", label="p99")
    ax.plot(xs, floor, marker="s", linestyle=":", label="CPU floor (all CPU / cores)")
    base = next((r["median_ms"] for r in rows if r["nodes"] == 1), None)
    if base:
        ax.axhline(FANOUT_RATIO_TARGET * base, color="k", linestyle=":", linewidth=1)
    _log_axes(ax)
    ax.set_xlabel("nodes")
    ax.set_ylabel("ms per question")
    ax.set_title(f"Fan-out on one {fanout['cores']}-core machine (dotted: 3× one node)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "latency-vs-nodes.png", dpi=110)
    plt.close(fig)
    return "latency-vs-nodes.png"


# ---------------------------------------------------------------- accuracy


def accuracy_section(acc: dict[str, Any]) -> Iterator[str]:
    nodes = acc["nodes"]
    yield (
        f"Run: {acc['environment']}. {acc['records']:,} records of {acc['clients']:,} clients "
        f"({acc['records_kept']:,} after bounding to k = {acc['k']}), split by client into N "
        f"nodes; ε = {acc['epsilon']} per release at every node and for the central release, "
        f"so each person pays the same; {acc['releases']:,} releases each."
    )
    yield ""
    yield row(
        [
            "question",
            "exact",
            "central RMSE",
            *(f"N = {n}: RMSE (× central, √N = {math.sqrt(n):.2f})" for n in nodes),
            "95% CI coverage (N = " + ", ".join(map(str, nodes)) + ")",
        ]
    )
    yield row(["---", "---:", "---:", *["---:"] * len(nodes), "---:"])
    for title, q in acc["questions"].items():
        central = q["central"]["rmse"]
        exact = q["exact"]
        shown = f"{exact:,.0f}" if float(exact).is_integer() else f"{exact:.4g}"
        cells = [title, shown, f"{central:.3g}"]
        for n in nodes:
            fed = q["federated"][str(n)]
            cells.append(f"{fed['rmse']:.3g} ({fed['rmse'] / central:.2f}×)")
        cells.append(" / ".join(f"{q['federated'][str(n)]['coverage']:.1%}" for n in nodes))
        yield row(cells)


# ---------------------------------------------------------------- main


def build() -> tuple[str, list[str]]:
    lines = [
        "# tiaki benchmarks",
        "",
        "Reproduce with `make bench` (10k, 100k and 1M records; fan-out; accuracy; the node "
        "over gRPC and under load) and `make bench-large` (10M records). Every timing is the "
        "median of several runs with their min and max, and each peer ran on the same machine "
        "in the same run as the node it is compared with. The questions: "
        + "; ".join(q.title for q in workload.QUESTIONS)
        + f"; each at ε = {workload.EPSILON} (pure DP), every client bounded to "
        f"k = {workload.K} records.",
        "",
    ]
    plots: list[str] = []
    runs = [r for r in (_load("engines.json"), _load("engines-large.json")) if r is not None]
    if runs:
        lines += ["## Summary", "", *summary_table(merged_sizes(runs))]
    lines += ["## 1. The node engine beside the peers", ""]
    if runs:
        sizes = merged_sizes(runs)
        lines += [*engine_tables(sizes)]
        lines += ["### Memory", "", *memory_table(sizes), ""]
        growth = memory_growth(sizes)
        if growth:
            lines += [growth, ""]
        lines += [
            "Memory of the engine's process and its children (Spark's JVM) together. "
            "Imports: resident with the libraries loaded; loaded: with the records in memory "
            "(node: the store loaded as numpy columns; peers: their frame, context or "
            "session); peak: the peak resident sets (VmHWM) summed. Setup: loading the "
            "records (node) or reading the CSV and building the context, session or reader "
            "(peers), once per run.",
            "",
            "How each engine was asked:",
            "",
            *engine_notes(sizes),
            "",
        ]
        plots += plot_engines(sizes)
        lines += [
            "![time per question against records](latency-vs-records.png)",
            "",
            "![peak memory against records](memory-vs-records.png)",
            "",
        ]
    else:
        lines += ["No results: run `make bench`.", ""]

    lines += ["## 2. Fan-out", ""]
    fanout = _load("fanout.json")
    if fanout:
        lines += [*fanout_section(fanout), ""]
        verdict_text = fanout_verdict(fanout)
        if verdict_text:
            lines += [verdict_text, ""]
        lines += [
            "End-to-end: `ask_federation` (pre-flight `Plan`, with the budget, to every node, "
            "the mirror ledger's durable intent, the concurrent `Query` fan-out, one durable "
            "mirror write per outcome, combination). CPU floor: all the CPU the coordinator "
            "and the nodes spent on a question, divided by the cores; every node here shares "
            "the machine's cores with every other node and the coordinator, so no schedule "
            "finishes sooner. Nodes on machines of their own would answer in parallel. "
            "Details, with a breakdown of where the time goes: `fanout.md`.",
            "",
            "![fan-out latency against nodes](latency-vs-nodes.png)",
            "",
        ]
        plots.append(plot_fanout(fanout))
    else:
        lines += ["No results: run `make bench`.", ""]

    lines += ["## 3. Accuracy: federated against central", ""]
    acc = _load("accuracy.json")
    if acc:
        lines += [*accuracy_section(acc), ""]
        lines += [
            "Every release is the node's own (`engine.evaluate`, then "
            "`answering.release_cells`: OpenDP's discrete Laplace); the federated answers are "
            "combined by `coordinator.combine.combine`. A count's N independent noises of the "
            "same scale add up to √N times the central noise; a mean and a proportion are "
            "ratios of such sums, so they follow. Coverage: the share of the combined 95% "
            "intervals that held the exact value. This is today's cost of per-node noise, the "
            "baseline for secure aggregation.",
            "",
        ]
    else:
        lines += ["No results: run `make bench`.", ""]

    lines += ["## 4. Where the node's time goes", ""]
    lines += [*(profile_section(merged_sizes(runs)) if runs else ["No results."]), ""]
    lines += [
        "## 5. More",
        "",
        "- `node.md`: one node at 1M records, timed at the engine, through `NodeService` "
        "(with the ledger's durable charge) and over gRPC on loopback.",
        "- `load.md`: one node under 20 concurrent clients over mutual TLS.",
        "- `fanout.md`: the fan-out's breakdown (pre-flight, mirror, combination, CPU).",
        "- `logs/`: each engine's standard error, per size.",
        "",
    ]
    return "\n".join(lines), plots


def main() -> int:
    text, plots = build()
    path = RESULTS / "results.md"
    path.write_text(text, encoding="utf-8")
    print(text)
    print(f"(written to {path.relative_to(workload.ROOT)}, with {', '.join(plots) or 'no plots'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
