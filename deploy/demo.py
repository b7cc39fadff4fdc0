"""A node on synthetic data answering a few questions: what `make demo` runs.

Everything a real NGO would do, in order: generate records, write a config,
import, serve (a separate process), then ask over gRPC and read the budget.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordinator.client import new_query_id

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "demo-run"
BIN = Path(sys.executable).parent


def step(title: str) -> None:
    print(f"\n=== {title}")


def run(*args: str, expect_refusal: bool = False) -> None:
    print("\n$ " + " ".join(args), flush=True)
    done = subprocess.run([str(BIN / args[0]), *args[1:]], check=False)
    if (done.returncode != 0) != expect_refusal:
        raise SystemExit(f"unexpected exit code {done.returncode} from {args[0]}")


def wait_serving(address: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise SystemExit(f"node at {address} did not become healthy")


def main() -> int:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()
    os.chdir(WORK)
    step("1. An NGO generates synthetic client records (stand-in for its case system export)")
    run("tiaki-node", "synth", "--clients", "20000", "--seed", "7", "--out", "clients.csv")
    step("2. It writes its node config: schema, public categories and bounds, privacy policy")
    run("tiaki-node", "init", "ngo-a", "--address", "127.0.0.1:0")
    step("3. It imports the records (checked row by row, swapped in atomically)")
    run("tiaki-node", "import", "--config", "ngo-a/node.yaml", "clients.csv")
    step("4. It starts the node (a separate process)")
    node = subprocess.Popen(
        [str(BIN / "tiaki-node"), "serve", "--config", "ngo-a/node.yaml"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert node.stdout is not None
        line = node.stdout.readline()
        print(line.rstrip())
        match = re.search(r"serving on (\S+)", line)
        if not match:
            raise SystemExit("node did not start")
        address = match.group(1)
        wait_serving(address)
        ask = ("tiaki", "query", "--node", address, "--identity", "msd-coordinator")
        step("5. The ministry asks differentially private questions")
        run(
            *ask,
            "count_clients",
            "--by",
            "region",
            "--where",
            "service=family_violence",
            "--epsilon",
            "0.5",
        )
        run(*ask, "mean", "circumstances_change", "--by", "service", "--epsilon", "0.5")
        run(
            *ask,
            "proportion",
            "--condition",
            "goals_change>=1",
            "--by",
            "ethnicity",
            "--where",
            "episode_start=2024-01-01..2024-12-31",
            "--epsilon",
            "0.3",
        )
        run(*ask, "histogram", "sessions", "--bins", "0,2,5,10,20,60", "--epsilon", "0.2")
        step("6. Asking again with the same query id returns the stored answer, free")
        qid = new_query_id()
        for _ in range(2):
            run(*ask, "count", "--by", "service", "--epsilon", "0.2", "--query-id", qid)
        step("7. The node refuses what its policy forbids, and spends nothing")
        run(*ask, "count", "--by", "client_name", "--epsilon", "0.1", expect_refusal=True)
        run(*ask, "count", "--epsilon", "2", expect_refusal=True)
        step("8. The NGO checks its own ledger")
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(timeout=30)
    run("tiaki-node", "budget", "--config", "ngo-a/node.yaml")
    print(f"\nDemo files are in {WORK}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
