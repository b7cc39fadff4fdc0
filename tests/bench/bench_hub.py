"""The hub under many connected nodes: memory, dispatch latency, and CPU per node per question.

Run with::

    .venv/bin/python -m tests.bench.bench_hub [--nodes 1000] [--processes 4] [--questions 10]

A real ``tiaki-hub serve`` process holds N mutual-TLS connections from
simulated nodes: ``--processes`` processes, each holding N / processes nodes,
one channel and one thread each, every node with its own client certificate
and ledger key. A simulated node is only its link: it holds a Connect call
open, and answers each item with a canned reply in a real, signed outcome (no records, no
OpenDP: what is measured is the relay, not the nodes). The coordinator (this
process) sends one question to every node at once: N envelopes, each signed,
in one Submit; then Collects until every outcome is in, checking each
outcome's signature and that it answers its envelope. Measured per question:
the time from the first signature to the last outcome checked (p50, p99 over
``--questions``), this process's CPU, and the hub process's CPU and resident
memory (``/proc``).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import grpc.aio
import yaml

from coordinator.client import info_call
from coordinator.config import load_federation
from coordinator.fanout import Federation
from coordinator.hub_client import HubChannel
from tiaki import certs
from tiaki.envelopes import open_outcome, seal_envelope, seal_outcome, work_id_of
from tiaki.signing import create_signing_key, load_signing_key
from tiaki.v1 import hub_pb2 as hub
from tiaki.v1 import hub_pb2_grpc
from tiaki.v1 import node_pb2 as pb

BIN = Path(sys.executable).parent
COORDINATOR = "bench-coordinator"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def node_names(count: int) -> list[str]:
    return [f"sim-{i:04d}" for i in range(count)]


def simulate(root: Path, names: list[str], address: str, ready: object) -> None:
    """One process holding many node links on one event loop: take an item, answer it with
    a signed canned reply. (grpc.aio, not a thread per node: the simulated nodes share the
    machine with the hub and the coordinator, and should take as little of it as they can.)"""
    asyncio.run(_simulate(root, names, address, ready))


async def _simulate(root: Path, names: list[str], address: str, ready: object) -> None:
    reply = pb.NodeInfo(node_id="sim", definition=pb.PURE_DP, per_query_max="1").SerializeToString()
    ca = (root / "ca" / "ca.crt").read_bytes()
    connected = asyncio.Semaphore(0)

    async def run(name: str) -> None:
        key = load_signing_key(root / "keys" / f"{name}.key")
        cert = (root / "clients" / f"{name}.crt").read_bytes()
        private = (root / "clients" / f"{name}.key").read_bytes()
        credentials = grpc.ssl_channel_credentials(ca, private, cert)
        options = [("grpc.ssl_target_name_override", "tiaki-hub")]
        first = True
        async with grpc.aio.secure_channel(address, credentials, options=options) as channel:
            stub = hub_pb2_grpc.HubStub(channel)
            while True:
                # As a node does: one Connect call; each outcome gives its item's credit back.
                call = stub.Connect()
                try:
                    await call.write(hub.NodeMessage(credit=4, heartbeat_seconds=25))
                    while (message := await call.read()) is not grpc.aio.EOF:
                        if first:
                            first = False
                            connected.release()
                        for item in message.items:
                            outcome = hub.Outcome(
                                envelope_sha256=hashlib.sha256(item.envelope.envelope).digest(),
                                node_id=name,
                                code=0,
                                replies=[reply],
                            )
                            answer = hub.NodeOutcome(
                                work_id=item.work_id, outcome=seal_outcome(key, outcome)
                            )
                            await call.write(hub.NodeMessage(credit=1, outcomes=[answer]))
                except grpc.RpcError:
                    await asyncio.sleep(0.5)

    tasks = [asyncio.create_task(run(n)) for n in names]
    for _ in names:
        await connected.acquire()
    ready.set()  # type: ignore[attr-defined]
    await asyncio.gather(*tasks)


def setup(root: Path, count: int) -> tuple[Path, dict[str, str]]:
    certs.create_ca(root / "ca", "bench CA")
    certs.issue_node(root / "ca", root / "hub", "tiaki-hub", ips=["127.0.0.1"])
    certs.issue_coordinator(root / "ca", root / "coordinator", COORDINATOR)
    keys = {}
    for name in node_names(count):
        certs.issue_coordinator(root / "ca", root / "clients", name)
        keys[name] = create_signing_key(root / "keys" / f"{name}.key").public_text
    config = root / "hub.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "address": "127.0.0.1:0",
                "queue": str(root / "queue.sqlite"),
                "tls": {
                    "cert": str(root / "hub" / "tiaki-hub.crt"),
                    "key": str(root / "hub" / "tiaki-hub.key"),
                    "client_ca": str(root / "ca" / "ca.crt"),
                },
                "nodes": node_names(count),
                "coordinators": [COORDINATOR],
                "max_items": 4,
            }
        ),
        encoding="utf-8",
    )
    return config, keys


def ask_all(channel: HubChannel, signer: object, keys: dict[str, str]) -> float:
    """One question to every node; seconds from the first signature to the last outcome."""
    started = time.perf_counter()
    now = int(time.time())
    request = pb.GetInfoRequest().SerializeToString()
    envelopes = {
        name: seal_envelope(
            signer,  # type: ignore[arg-type]
            node_id=name,
            method="GetInfo",
            payload=request,
            issued_at=now,
            not_after=now + 60,
        )
        for name in keys
    }
    channel.call("Submit", hub.SubmitRequest(envelopes=list(envelopes.values())), 60)
    waiting = {work_id_of(e): name for name, e in envelopes.items()}
    while waiting:
        reply = channel.call(
            "Collect", hub.CollectRequest(work_ids=list(waiting), wait_seconds=5), 30
        )
        for ready in reply.ready:
            name = waiting.pop(ready.work_id)
            outcome = open_outcome(ready.outcome, keys[name], envelopes[name])
            assert outcome.code == 0
    return time.perf_counter() - started


def ask_all_as_the_product_does(federation: Federation) -> float:
    """The same question the way the fan-out asks it: ``Federation.start`` for each node of
    a real federation file (through the hub: no thread per node; the calls in flight share
    the dispatcher's Submits and Collects), each reply decoded as ``tiaki nodes`` does."""
    started = time.perf_counter()
    calls = [federation.start(name, info_call()) for name in federation.names]
    for call in calls:
        call.result()
    return time.perf_counter() - started


def federation_file(root: Path, address: str, keys: dict[str, str]) -> Path:
    path = root / "federation.yaml"
    raw = {
        "version": 1,
        "analyst": "bench",
        "identity": COORDINATOR,
        "ledger": str(root / "coordinator-ledger.sqlite"),
        "signing_key": str(root / "keys" / "sim-0000.key"),  # any Ed25519 key
        "tls": {
            "ca": str(root / "ca" / "ca.crt"),
            "cert": str(root / "coordinator" / f"{COORDINATOR}.crt"),
            "key": str(root / "coordinator" / f"{COORDINATOR}.key"),
        },
        "defaults": {"timeout_seconds": 60},
        "hub": {"address": address, "server_name": "tiaki-hub"},
        "nodes": [{"name": name, "via": "hub", "signing_key": key} for name, key in keys.items()],
    }
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--questions", type=int, default=10)
    parser.add_argument(
        "--through-client",
        action="store_true",
        help="ask as the fan-out does (Federation.start for each node of a federation file) "
        "instead of in batches",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tiaki-hub-bench-") as tmp:
        root = Path(tmp)
        t = time.monotonic()
        config, keys = setup(root, args.nodes)
        print(f"{args.nodes} node identities made in {time.monotonic() - t:.1f} s", flush=True)
        # TIAKI_HUB_PROFILE=FILE runs the hub under cProfile, written to FILE on its exit.
        profile = os.environ.get("TIAKI_HUB_PROFILE")
        command = (
            [sys.executable, "-m", "cProfile", "-o", profile, "-m", "coordinator.hub.cli"]
            if profile
            else [str(BIN / "tiaki-hub")]
        )
        hub_proc = subprocess.Popen(
            [*command, "serve", "--config", str(config)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        assert hub_proc.stdout is not None
        line = hub_proc.stdout.readline()
        address = line.split("hub serving on ")[1].split()[0]
        hub_log: list[str] = []  # drained, so that the hub never blocks writing its log
        output = hub_proc.stdout
        threading.Thread(target=lambda: hub_log.extend(output), daemon=True).start()
        rss_idle = rss_mb(hub_proc.pid)
        ctx = multiprocessing.get_context("spawn")
        names = node_names(args.nodes)
        share = [names[i :: args.processes] for i in range(args.processes)]
        events = [ctx.Event() for _ in share]
        procs = [
            ctx.Process(target=simulate, args=(root, part, address, ev), daemon=True)
            for part, ev in zip(share, events, strict=True)
        ]
        t = time.monotonic()
        for p in procs:
            p.start()
        for ev in events:
            ev.wait(300)
        print(f"{args.nodes} nodes connected in {time.monotonic() - t:.1f} s", flush=True)
        time.sleep(2)
        rss_connected = rss_mb(hub_proc.pid)
        signer = load_signing_key(root / "keys" / f"{names[0]}.key")  # any Ed25519 key
        channel = HubChannel(
            address,
            identity=COORDINATOR,
            credentials=grpc.ssl_channel_credentials(
                (root / "ca" / "ca.crt").read_bytes(),
                (root / "coordinator" / f"{COORDINATOR}.key").read_bytes(),
                (root / "coordinator" / f"{COORDINATOR}.crt").read_bytes(),
            ),
            server_name="tiaki-hub",
        )
        federation = Federation(load_federation(federation_file(root, address, keys)))

        def one() -> float:
            if args.through_client:
                return ask_all_as_the_product_does(federation)
            return ask_all(channel, signer, keys)

        one()  # warm-up
        latencies = []
        hub_cpu0, own_cpu0 = cpu_seconds(hub_proc.pid), time.process_time()
        sims_cpu0 = sum(cpu_seconds(p.pid) for p in procs if p.pid is not None)
        for _ in range(args.questions):
            latencies.append(one())
        hub_cpu = cpu_seconds(hub_proc.pid) - hub_cpu0
        own_cpu = time.process_time() - own_cpu0
        sims_cpu = sum(cpu_seconds(p.pid) for p in procs if p.pid is not None) - sims_cpu0
        rss_busy = rss_mb(hub_proc.pid)
        federation.close()
        channel.close()
        hub_proc.terminate()
        hub_proc.wait(60)
        if os.environ.get("TIAKI_HUB_LOG"):
            print("".join(hub_log[-40:]))
        for p in procs:
            p.kill()
        per_node = 1000 * (hub_cpu + own_cpu) / (args.questions * args.nodes)
        latencies.sort()
        p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
        print()
        print("asked", "through NodeClient (the fan-out's way)" if args.through_client else
              "in batches")  # fmt: skip
        print(
            "| nodes connected | questions | dispatch p50 ms | dispatch p99 ms | hub CPU ms / "
            "question | coordinator CPU ms / question | coordinator + hub CPU ms / node | "
            "hub RSS MB: idle / connected / busy | simulated nodes' CPU ms / question |"
        )
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        print(
            f"| {args.nodes:,} | {args.questions} | {1000 * statistics.median(latencies):,.0f} | "
            f"{1000 * p99:,.0f} | {1000 * hub_cpu / args.questions:,.0f} | "
            f"{1000 * own_cpu / args.questions:,.0f} | {per_node:.2f} | "
            f"{rss_idle:.0f} / {rss_connected:.0f} / {rss_busy:.0f} | "
            f"{1000 * sims_cpu / args.questions:,.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
