"""Start a local federation of separate node processes on loopback.

Each NGO gets its own directory, its own synthetic records (a different seed
gives a different size and mix) and its own `tiaki-node serve` process on a
free port. Used by the demo; usable by hand:

    python deploy/local_federation.py WORKDIR   # starts three nodes, Ctrl-C stops them
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class NgoSpec:
    name: str
    clients: int
    seed: int


DEFAULT_NGOS = (NgoSpec("ngo-a", 6000, 7), NgoSpec("ngo-b", 3000, 11), NgoSpec("ngo-c", 1500, 23))


@dataclass
class RunningNgo:
    spec: NgoSpec
    config: Path
    process: subprocess.Popen[str]
    address: str

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)


def _run(*args: str) -> None:
    subprocess.run([str(BIN / args[0]), *args[1:]], check=True, stdout=subprocess.DEVNULL)


def prepare(workdir: Path, spec: NgoSpec) -> Path:
    """Synthetic records, a config and an imported store for one NGO; returns its config."""
    home = workdir / spec.name
    csv = workdir / f"{spec.name}-clients.csv"
    _run(
        "tiaki-node",
        "synth",
        "--clients",
        str(spec.clients),
        "--seed",
        str(spec.seed),
        "--out",
        str(csv),
    )
    _run(
        "tiaki-node",
        "init",
        str(home),
        "--address",
        "127.0.0.1:0",
        "--node-id",
        spec.name,
        "--force",
    )
    _run("tiaki-node", "import", "--config", str(home / "node.yaml"), str(csv))
    return home / "node.yaml"


def wait_healthy(address: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise RuntimeError(f"node at {address} did not become healthy within {timeout:.0f} s")


def serve(spec: NgoSpec, config: Path) -> RunningNgo:
    process = subprocess.Popen(
        [str(BIN / "tiaki-node"), "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(r"serving on (\S+)", line)
    if not match:
        process.kill()
        raise RuntimeError(f"{spec.name} did not start: {line.strip()!r}")
    node = RunningNgo(spec, config, process, match.group(1))
    wait_healthy(node.address)
    return node


def start(workdir: Path, specs: tuple[NgoSpec, ...] = DEFAULT_NGOS) -> list[RunningNgo]:
    workdir.mkdir(parents=True, exist_ok=True)
    configs = [prepare(workdir, spec) for spec in specs]
    running: list[RunningNgo] = []
    try:
        for spec, config in zip(specs, configs, strict=True):
            running.append(serve(spec, config))
    except BaseException:
        stop(running)
        raise
    return running


def stop(nodes: list[RunningNgo]) -> None:
    for node in nodes:
        node.stop()


def main(argv: list[str]) -> int:
    workdir = Path(argv[0] if argv else "local-federation")
    nodes = start(workdir)
    # Blocked only now, so the node processes keep their default handlers.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    for node in nodes:
        print(f"{node.spec.name} serving on {node.address} ({node.config})", flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        stop(nodes)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
