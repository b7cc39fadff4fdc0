"""The hub under many connected nodes: memory, dispatch latency, and CPU per node per question.

Run with::

    .venv/bin/python -m tests.bench.bench_hub [--nodes 1000] [--processes 4] [--questions 10]

A real ``tiaki-hub serve`` process holds N mutual-TLS connections from
simulated nodes: ``--processes`` processes, each holding N / processes nodes
on one event loop, every node with its own client certificate and ledger key.
A simulated node is only its link: it holds a Connect call open, and answers
each item with a canned reply in a real, signed outcome (no records, no
OpenDP: what is measured is the relay, not the nodes). One question goes to
every node at once, three ways in the same run:

- through the hub, in batches: N envelopes, each signed, in one Submit, then
  Collects until every outcome is in, each outcome's signature checked and
  matched to its envelope;
- through the hub, the fan-out's way: ``Federation.start`` for every node of a
  real federation file (what ``tiaki nodes`` and a query's fan-out do);
- dialled direct, the fan-out's way: the same, to N simulated nodes each on
  its own mutual-TLS port (a few server processes), no hub.

Measured per question: the time from the first signature to the last outcome
checked (p50, p99 over ``--questions``), this process's CPU, the hub
process's CPU and resident memory, and the simulated nodes' CPU (``/proc``).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from tiaki.v1 import hub_pb2_grpc, node_pb2_grpc
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
    """The simulated nodes, reached through the hub."""
    nodes = [{"name": name, "via": "hub", "signing_key": key} for name, key in keys.items()]
    return write_federation(
        root / "federation.yaml",
        root,
        nodes,
        hub={"address": address, "server_name": "tiaki-hub"},
        signing_key=str(root / "keys" / "sim-0000.key"),  # any Ed25519 key
    )


def write_federation(path: Path, root: Path, nodes: list[dict[str, str]], **more: Any) -> Path:
    raw = {
        "version": 1,
        "analyst": "bench",
        "identity": COORDINATOR,
        "ledger": str(root / "coordinator-ledger.sqlite"),
        "tls": {
            "ca": str(root / "ca" / "ca.crt"),
            "cert": str(root / "coordinator" / f"{COORDINATOR}.crt"),
            "key": str(root / "coordinator" / f"{COORDINATOR}.key"),
        },
        "defaults": {"timeout_seconds": 60},
        **more,
        "nodes": nodes,
    }
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


@dataclass
class Row:
    way: str
    latencies: list[float]
    hub_cpu: float  # seconds, over all questions
    own_cpu: float
    sims_cpu: float
    rss: str = "-"


def measure(way: str, ask: Callable[[], float], questions: int, hub_pid: int | None,
            sims: list[Any]) -> Row:  # fmt: skip
    """``ask`` once to warm up, then ``questions`` times, with each process's CPU."""
    ask()
    hub0 = cpu_seconds(hub_pid) if hub_pid else 0.0
    own0 = time.process_time()
    sims0 = sum(cpu_seconds(p.pid) for p in sims)
    latencies = [ask() for _ in range(questions)]
    return Row(
        way,
        latencies,
        (cpu_seconds(hub_pid) - hub0) if hub_pid else 0.0,
        time.process_time() - own0,
        sum(cpu_seconds(p.pid) for p in sims) - sims0,
    )


def start_sims(target: Callable[..., None], root: Path, names: list[str], processes: int,
               where: Any) -> list[Any]:  # fmt: skip
    ctx = multiprocessing.get_context("spawn")
    share = [names[i::processes] for i in range(processes)]
    events = [ctx.Event() for _ in share]
    procs = [
        ctx.Process(target=target, args=(root, part, where, ev), daemon=True)
        for part, ev in zip(share, events, strict=True)
    ]
    for proc in procs:
        proc.start()
    for ev in events:
        ev.wait(300)
    return procs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--questions", type=int, default=10)
    args = parser.parse_args(argv)
    rows = []
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
        names = node_names(args.nodes)
        t = time.monotonic()
        procs = start_sims(simulate, root, names, args.processes, address)
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
        batched = measure(
            "through the hub, in batches",
            lambda: ask_all(channel, signer, keys), args.questions, hub_proc.pid, procs,
        )  # fmt: skip
        batched.rss = f"{rss_idle:.0f} / {rss_connected:.0f} / {rss_mb(hub_proc.pid):.0f}"
        rows.append(batched)
        with Federation(load_federation(federation_file(root, address, keys))) as federation:
            rows.append(
                measure(
                    "through the hub, the fan-out's way",
                    lambda: ask_all_as_the_product_does(federation),
                    args.questions,
                    hub_proc.pid,
                    procs,
                )
            )
        channel.close()
        hub_proc.terminate()
        hub_proc.wait(60)
        if os.environ.get("TIAKI_HUB_LOG"):
            print("".join(hub_log[-40:]))
        for proc in procs:
            proc.kill()
        # The same question to the same number of nodes, each dialled direct.
        ports = free_ports(args.nodes)
        direct = start_sims(serve_direct, root, names, args.processes, ports)
        path = direct_federation_file(root, dict(zip(names, ports, strict=True)))
        with Federation(load_federation(path)) as federation:
            rows.append(
                measure(
                    "dialled direct, the fan-out's way",
                    lambda: ask_all_as_the_product_does(federation),
                    args.questions,
                    None,
                    direct,
                )
            )
        for proc in direct:
            proc.kill()
    print()
    print(
        "| way | dispatch p50 / p99 ms | hub CPU ms / question | coordinator CPU ms / question "
        "| coordinator + hub CPU ms / node | hub RSS MB: idle / connected / busy "
        "| simulated nodes' CPU ms / question |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        ordered = sorted(row.latencies)
        p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
        per_node = 1000 * (row.hub_cpu + row.own_cpu) / (args.questions * args.nodes)
        print(
            f"| {row.way} | {1000 * statistics.median(ordered):,.0f} / {1000 * p99:,.0f} | "
            f"{1000 * row.hub_cpu / args.questions:,.0f} | "
            f"{1000 * row.own_cpu / args.questions:,.0f} | {per_node:.2f} | {row.rss} | "
            f"{1000 * row.sims_cpu / args.questions:,.0f} |"
        )
    print(f"\n{args.nodes:,} nodes, {args.questions} questions each way")
    return 0


def free_ports(count: int) -> list[int]:
    """Ports free now on loopback (bound and let go; the simulated servers bind them)."""
    held = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        held.append(sock)
    ports = [sock.getsockname()[1] for sock in held]
    for sock in held:
        sock.close()
    return ports


def serve_direct(root: Path, names: list[str], ports: list[int], ready: object) -> None:
    """One process serving many simulated nodes, each on its own port (mutual TLS),
    answering GetInfo with the same canned reply the hub's simulated nodes give."""
    asyncio.run(_serve_direct(root, names, ports, ready))


class _CannedNode(node_pb2_grpc.NodeServicer):  # type: ignore[misc]
    reply = pb.NodeInfo(node_id="sim", definition=pb.PURE_DP, per_query_max="1")

    async def GetInfo(self, request: Any, context: Any) -> pb.NodeInfo:
        return self.reply


async def _serve_direct(root: Path, names: list[str], ports: list[int], ready: object) -> None:
    credentials = grpc.ssl_server_credentials(
        [((root / "hub" / "tiaki-hub.key").read_bytes(),
          (root / "hub" / "tiaki-hub.crt").read_bytes())],
        root_certificates=(root / "ca" / "ca.crt").read_bytes(),
        require_client_auth=True,
    )  # fmt: skip
    server = grpc.aio.server()
    node_pb2_grpc.add_NodeServicer_to_server(_CannedNode(), server)
    mine = set(names)
    for name, port in zip(node_names(len(ports)), ports, strict=True):
        if name in mine:
            server.add_secure_port(f"127.0.0.1:{port}", credentials)
    await server.start()
    ready.set()  # type: ignore[attr-defined]
    await server.wait_for_termination()


def direct_federation_file(root: Path, ports: dict[str, int]) -> Path:
    """The same simulated nodes, each dialled at its own port."""
    nodes = [
        {"name": name, "address": f"127.0.0.1:{port}", "server_name": "tiaki-hub"}
        for name, port in ports.items()
    ]
    return write_federation(root / "federation-direct.yaml", root, nodes)


if __name__ == "__main__":
    sys.exit(main())
