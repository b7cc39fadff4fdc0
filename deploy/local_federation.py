"""Start a local federation of separate node processes on loopback.

A federation CA issues every node a server certificate and the ministry a
client certificate; each NGO gets its own directory, its own synthetic
records (a different seed gives a different size and mix) and its own
`tiaki-node serve` process on a free port, serving mutual TLS and allowing
only the ministry's identity. Used by the demo; usable by hand:

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


COORDINATOR = "msd-coordinator"


def make_pki(workdir: Path, specs: tuple[NgoSpec, ...]) -> Path:
    """A federation CA, a server certificate per node, a client certificate for the ministry."""
    pki = workdir / "pki"
    ca = str(pki / "ca")
    _run("tiaki", "certs", "ca", ca, "--force")
    for spec in specs:
        out = str(pki / spec.name)
        _run("tiaki-node", "certs", "node", spec.name, "--ca", ca, "--out", out,
             "--ip", "127.0.0.1", "--force")  # fmt: skip
    out = str(pki / COORDINATOR)
    _run("tiaki", "certs", "coordinator", COORDINATOR, "--ca", ca, "--out", out, "--force")
    return pki


def coordinator_tls(pki: Path) -> tuple[str, str, str]:
    """(ca, cert, key) for the ministry's federation file."""
    return (
        str(pki / "ca" / "ca.crt"),
        str(pki / COORDINATOR / f"{COORDINATOR}.crt"),
        str(pki / COORDINATOR / f"{COORDINATOR}.key"),
    )


def prepare(workdir: Path, spec: NgoSpec, pki: Path) -> Path:
    """Synthetic records, a config and an imported store for one NGO; returns its config."""
    home = workdir / spec.name
    csv = workdir / f"{spec.name}-clients.csv"
    certs = pki / spec.name
    _run("tiaki-node", "synth", "--clients", str(spec.clients), "--seed", str(spec.seed),
         "--out", str(csv))  # fmt: skip
    _run("tiaki-node", "init", str(home), "--address", "127.0.0.1:0", "--node-id", spec.name,
         "--force", "--cert", str(certs / f"{spec.name}.crt"),
         "--key", str(certs / f"{spec.name}.key"), "--client-ca", str(pki / "ca" / "ca.crt"),
         "--allow", COORDINATOR)  # fmt: skip
    _run("tiaki-node", "import", "--config", str(home / "node.yaml"), str(csv))
    return home / "node.yaml"


def wait_healthy(address: str, pki: Path, name: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    ca, cert, key = (Path(p).read_bytes() for p in coordinator_tls(pki))
    credentials = grpc.ssl_channel_credentials(ca, key, cert)
    options = [("grpc.ssl_target_name_override", name)]
    with grpc.secure_channel(address, credentials, options=options) as channel:
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


def serve(spec: NgoSpec, config: Path, pki: Path) -> RunningNgo:
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
    wait_healthy(node.address, pki, spec.name)
    return node


def start(workdir: Path, specs: tuple[NgoSpec, ...] = DEFAULT_NGOS) -> list[RunningNgo]:
    workdir.mkdir(parents=True, exist_ok=True)
    pki = make_pki(workdir, specs)
    configs = [prepare(workdir, spec, pki) for spec in specs]
    running: list[RunningNgo] = []
    try:
        for spec, config in zip(specs, configs, strict=True):
            running.append(serve(spec, config, pki))
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
