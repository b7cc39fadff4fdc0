"""A local federation of separate node processes on loopback, over mutual TLS.

A federation CA issues every node a server certificate and the ministry a
client certificate; each NGO gets its own directory, its own synthetic records
(a different seed gives a different size and mix) and its own ``tiaki-node
serve`` process on a free port, allowing only the ministry's identity.

    python deploy/local_federation.py start --nodes 3 --dir DIR   # returns once all are healthy
    python deploy/local_federation.py status --dir DIR            # running? SERVING?
    python deploy/local_federation.py stop --dir DIR              # SIGTERM, wait, report
    python deploy/local_federation.py run --nodes 3 --dir DIR     # in the foreground; Ctrl-C stops

``start`` leaves the nodes running in the background and writes
``DIR/federation.yaml`` for the coordinator (``tiaki query --config
DIR/federation.yaml ...``); each node's output goes to ``DIR/NAME/serve.log``
and its process id to ``DIR/NAME/serve.pid``. Starting again after a stop
reuses the certificates, records and ledgers already in DIR. ``make demo``
uses :func:`start` and :func:`stop` from here.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

if __package__ in (None, ""):  # run as a script: the repository root holds the deploy package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from coordinator.config import add_node, load_federation
from deploy import local_hub
from node.cli.main import main as node_cli
from node.config import load_config
from node.exports import node_signing_key
from tiaki import certs
from tiaki.signing import load_or_create_signing_key

BIN = Path(sys.executable).parent
COORDINATOR = "msd-coordinator"
ANALYST = "msd-analyst"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0  # above the nodes' grace_seconds, so in-flight queries can finish


@dataclass(frozen=True)
class NgoSpec:
    name: str
    clients: int
    seed: int


DEFAULT_NGOS = (NgoSpec("ngo-a", 6000, 7), NgoSpec("ngo-b", 3000, 11), NgoSpec("ngo-c", 1500, 23))


def specs_for(count: int, clients: int | None = None) -> tuple[NgoSpec, ...]:
    """``count`` NGOs: the three defaults first, then more of varied sizes and mixes."""
    if not 1 <= count <= 26:
        raise ValueError("between 1 and 26 nodes")
    specs = []
    for i in range(count):
        base = DEFAULT_NGOS[i] if i < len(DEFAULT_NGOS) else None
        size = base.clients if base else (1000 + 700 * i)
        seed = base.seed if base else 100 + i
        specs.append(NgoSpec(f"ngo-{chr(ord('a') + i)}", clients or size, seed))
    return tuple(specs)


@dataclass
class RunningNgo:
    spec: NgoSpec
    config: Path
    process: subprocess.Popen[bytes]
    address: str  # "" for a node that only dials out to the hub
    hub: subprocess.Popen[bytes] | None = None  # the hub it dials, stopped with it

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout)
        pid_file(self.config.parent).unlink(missing_ok=True)
        return code


# ---------------------------------------------------------------- setting up


def _quietly(cli: Callable[[list[str]], int], *args: str) -> None:
    """Run a tiaki CLI in this process, showing its output only if it fails."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = cli(list(args))
    if code != 0:
        raise RuntimeError(f"{' '.join(args[:2])} failed ({code}):\n{out.getvalue()}")


def make_pki(workdir: Path, specs: Sequence[NgoSpec]) -> Path:
    """A federation CA, a server certificate per node, a client certificate for the ministry.

    What already exists is kept, so a restarted federation keeps its identities.
    """
    pki = workdir / "pki"
    ca = pki / "ca"
    if not (ca / "ca.crt").exists():
        certs.create_ca(ca, "tiaki local federation CA", force=True)
    for spec in specs:
        if not (pki / spec.name / f"{spec.name}.crt").exists():
            certs.issue_node(ca, pki / spec.name, spec.name, ips=["127.0.0.1"], force=True)
    if not (pki / COORDINATOR / f"{COORDINATOR}.crt").exists():
        certs.issue_coordinator(ca, pki / COORDINATOR, COORDINATOR, force=True)
    return pki


def coordinator_tls(pki: Path) -> tuple[str, str, str]:
    """(ca, cert, key) for the ministry's federation file."""
    return (
        str(pki / "ca" / "ca.crt"),
        str(pki / COORDINATOR / f"{COORDINATOR}.crt"),
        str(pki / COORDINATOR / f"{COORDINATOR}.key"),
    )


def prepare(workdir: Path, spec: NgoSpec, pki: Path, privacy: str = "pure") -> Path:
    """Synthetic records, a config and an imported store for one NGO; returns its config.

    The same commands an NGO runs (``synth``, ``init``, ``import``), in this process.
    """
    home = workdir / spec.name
    config = home / "node.yaml"
    if config.exists() and (home / "data" / "records.sqlite").exists():
        return config
    csv = workdir / f"{spec.name}-clients.csv"
    cert = pki / spec.name
    _quietly(node_cli, "synth", "--clients", str(spec.clients), "--seed", str(spec.seed),
             "--out", str(csv))  # fmt: skip
    _quietly(node_cli, "init", str(home), "--address", "127.0.0.1:0", "--node-id", spec.name,
             "--force", "--cert", str(cert / f"{spec.name}.crt"),
             "--key", str(cert / f"{spec.name}.key"), "--client-ca", str(pki / "ca" / "ca.crt"),
             "--allow", COORDINATOR, "--privacy", privacy)  # fmt: skip
    _quietly(node_cli, "import", "--config", str(config), str(csv))
    return config


# ---------------------------------------------------------------- processes


PID_FILE = "serve.pid"
LOG_FILE = "serve.log"


def pid_file(home: Path) -> Path:
    return home / PID_FILE


@dataclass
class Launched:
    spec: NgoSpec
    config: Path
    process: subprocess.Popen[bytes]
    log_offset: int  # where this run's output starts in serve.log


def launch(spec: NgoSpec, config: Path) -> Launched:
    """Start ``tiaki-node serve`` in its own session, output to serve.log, pid to serve.pid.

    Its own session: a Ctrl-C meant for whoever started it does not reach it;
    it is stopped by SIGTERM, from :func:`stop` or the ``stop`` command.
    """
    home = config.parent
    with open(home / LOG_FILE, "ab") as log:
        offset = log.tell()
        process = subprocess.Popen(
            [str(BIN / "tiaki-node"), "serve", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pid_file(home).write_text(f"{process.pid}\n", encoding="ascii")
    return Launched(spec, config, process, offset)


def wait_serving(launched: Launched) -> str:
    """The address the node announces once it listens (it picks a free port)."""
    log = launched.config.parent / LOG_FILE
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        with open(log, "rb") as f:
            f.seek(launched.log_offset)
            text = f.read().decode("utf-8", "replace")
        match = re.search(r"serving on (\S+)", text)
        if match:
            return match.group(1)
        if re.search(r"taking work from hub", text):
            return ""  # dials out only: no address of its own
        code = launched.process.poll()
        if code is not None:
            raise RuntimeError(f"{launched.spec.name} exited ({code}): {text.strip()[-2000:]}")
        time.sleep(0.05)
    name = launched.spec.name
    raise RuntimeError(f"{name} did not start within {START_TIMEOUT:.0f} s; see {log}")


def health(address: str, pki: Path, name: str, timeout: float = 1.0) -> str:
    """The node's grpc.health status over mTLS, as the ministry sees it."""
    ca, cert, key = (Path(p).read_bytes() for p in coordinator_tls(pki))
    credentials = grpc.ssl_channel_credentials(ca, key, cert)
    options = [("grpc.ssl_target_name_override", name)]
    with grpc.secure_channel(address, credentials, options=options) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
        except grpc.RpcError as exc:
            return f"unreachable ({exc.code().name})"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def wait_healthy(address: str, pki: Path, name: str, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if health(address, pki, name) == "SERVING":
            return
        time.sleep(0.1)
    raise RuntimeError(f"node at {address} did not become healthy within {timeout:.0f} s")


def pin_peers(configs: Sequence[Path]) -> None:
    """Each NGO pins every other node's ledger key and takes part in secure sums.

    In life each NGO pins the keys the others gave it by a channel of their
    own; here they are read from the neighbouring directories.
    """
    keys = {}
    for path in configs:
        config = load_config(path)
        keys[config.node_id] = node_signing_key(config)[0].public_text
    for path in configs:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        me = raw["node_id"]
        raw["policy"]["secure_aggregation"] = {
            "peers": [{"node_id": n, "signing_key": k} for n, k in keys.items() if n != me],
            "min_cohort": min(3, len(configs)),
            "colluders": 0,
            # A share alone costs about h times the aggregate (h honest shares):
            # room for a twenty-node session at rho 0.5.
            "worst_case": {"per_query": "10", "lifetime": "100"},
        }
        path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")


def start(
    workdir: Path,
    specs: Sequence[NgoSpec] = DEFAULT_NGOS,
    *,
    secure: bool = False,
    hub_nodes: Sequence[str] = (),
) -> list[RunningNgo]:
    """Set up what is missing, start every node, and return once all are SERVING.

    With ``secure``, the nodes account in zCDP and pin each other for secure sums.
    The nodes named in ``hub_nodes`` open no port: a hub is started, and they
    dial out to it (:mod:`deploy.local_hub`).
    """
    workdir = workdir.resolve()  # the pid check matches the config path in each command line
    workdir.mkdir(parents=True, exist_ok=True)
    pki = make_pki(workdir, specs)
    configs = [prepare(workdir, spec, pki, "zcdp" if secure else "pure") for spec in specs]
    if secure:
        pin_peers(configs)
    hub: subprocess.Popen[bytes] | None = None
    if hub_nodes:
        local_hub.hub_certificates(pki, list(hub_nodes))
        hub, hub_address = local_hub.launch_hub(
            local_hub.write_hub_config(workdir, pki, list(hub_nodes), COORDINATOR)
        )
        signer = local_hub.coordinator_signing_key(workdir)
        for spec, config in zip(specs, configs, strict=True):
            if spec.name in hub_nodes:
                local_hub.dial_out(config, pki, hub_address, signer)
    launched: list[Launched] = []
    running: list[RunningNgo] = []
    try:
        for spec, config in zip(specs, configs, strict=True):
            launched.append(launch(spec, config))
        # Started together, then waited for: the nodes load their records in parallel.
        for each in launched:
            address = wait_serving(each)
            running.append(RunningNgo(each.spec, each.config, each.process, address, hub))
            if address:
                wait_healthy(address, pki, each.spec.name)
    except BaseException:
        stop([RunningNgo(each.spec, each.config, each.process, "", hub) for each in launched])
        raise
    return running


def stop(nodes: Sequence[RunningNgo]) -> None:
    for node in nodes:
        if node.process.poll() is None:
            node.process.send_signal(signal.SIGTERM)
    for node in nodes:
        node.stop()
    hubs = {id(n.hub): n.hub for n in nodes if n.hub is not None}
    for hub in hubs.values():
        if hub.poll() is None:
            hub.send_signal(signal.SIGTERM)
        hub.wait(timeout=STOP_TIMEOUT)


def write_federation(workdir: Path, nodes: Sequence[RunningNgo]) -> Path:
    """The ministry's federation file naming every node (created, or addresses updated)."""
    path = workdir / "federation.yaml"
    ca, cert, key = coordinator_tls(workdir / "pki")
    for node in nodes:
        if node.address:
            add_node(path, node.spec.name, node.address, analyst=ANALYST,
                     tls={"ca": ca, "cert": cert, "key": key})  # fmt: skip
            continue
        raw = yaml.safe_load(node.config.read_text(encoding="utf-8"))
        hub = {"address": raw["server"]["hub"]["address"], "server_name": local_hub.HUB_NAME}
        ledger_key = load_or_create_signing_key(node.config.parent / "data" / "signing.key")[0]
        add_node(path, node.spec.name, None, analyst=ANALYST, hub=hub,
                 signing_key=ledger_key.public_text,
                 tls={"ca": ca, "cert": cert, "key": key})  # fmt: skip
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if raw.get("identity") != COORDINATOR:
        # Nodes grant the ministry by its certificate's name; say it the same way.
        raw["identity"] = COORDINATOR
        path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


# ---------------------------------------------------------------- by pid file


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it counts as stopped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill(0)
    return stat.rpartition(")")[2].split()[0] != "Z"


def _ours(pid: int, config: Path) -> bool:
    """That the pid is still this node's server, not a recycled pid of something else."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return False
    except OSError:
        return True  # no /proc: trust the pid file
    return str(config).encode() in argv


def recorded(workdir: Path) -> list[tuple[str, Path, int]]:
    """(name, config, pid) of every node, and the hub, with a pid file under ``workdir``."""
    found = []
    for pidfile in sorted(workdir.glob(f"*/{PID_FILE}")):
        try:
            pid = int(pidfile.read_text(encoding="ascii").strip())
        except (OSError, ValueError):
            continue
        config = pidfile.parent / "node.yaml"
        if not config.exists() and (pidfile.parent / "hub.yaml").exists():
            config = pidfile.parent / "hub.yaml"
        found.append((pidfile.parent.name, config, pid))
    return found


def stop_recorded(workdir: Path, timeout: float = STOP_TIMEOUT) -> list[str]:
    """SIGTERM every recorded node, wait for each to exit; returns a line per node."""
    nodes = [(n, c, pid) for n, c, pid in recorded(workdir) if _alive(pid) and _ours(pid, c)]
    for _, _, pid in nodes:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    report = []
    for name, _, pid in nodes:
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
            report.append(f"{name}: did not stop within {timeout:.0f} s; killed")
        else:
            report.append(f"{name}: stopped")
    for _, config, _ in recorded(workdir):
        pid_file(config.parent).unlink(missing_ok=True)
    return report


def status(workdir: Path) -> tuple[bool, list[str]]:
    """Whether every recorded node runs and is SERVING, and a line per node."""
    federation = workdir / "federation.yaml"
    addresses = (
        {n.name: n.address for n in load_federation(federation).nodes}
        if federation.exists()
        else {}
    )
    nodes = recorded(workdir)
    ok = bool(nodes)
    lines = []
    for name, config, pid in nodes:
        if not (_alive(pid) and _ours(pid, config)):
            ok = False
            lines.append(f"{name}: not running (stale pid {pid})")
            continue
        address = addresses.get(name)
        state = health(address, workdir / "pki", name) if address else "no address on file"
        ok = ok and state == "SERVING"
        lines.append(f"{name}: pid {pid}, {state} on {address}")
    return ok, lines or [f"no nodes recorded under {workdir}"]


# ---------------------------------------------------------------- command


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (
        ("start", "start nodes in the background; return once all are healthy"),
        ("run", "start nodes and keep them in the foreground until Ctrl-C"),
        ("stop", "stop the nodes started under --dir"),
        ("status", "show whether the nodes under --dir run and are SERVING"),
    ):
        c = sub.add_parser(name, help=text)
        c.add_argument("--dir", type=Path, default=Path("federation-run"), help="working folder")
        if name in ("start", "run"):
            c.add_argument("--nodes", type=int, default=3, help="how many NGOs (default 3)")
            c.add_argument("--clients", type=int, help="clients per NGO (default: varied sizes)")
            c.add_argument(
                "--secure",
                action="store_true",
                help="nodes in zCDP that pin each other for secure sums",
            )
            c.add_argument(
                "--hub",
                default="",
                metavar="NAMES",
                help="comma-separated nodes that open no port and dial out to a local hub",
            )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    workdir: Path = args.dir.resolve()
    if args.command == "stop":
        print("\n".join(stop_recorded(workdir) or [f"no running nodes under {workdir}"]))
        return 0
    if args.command == "status":
        ok, lines = status(workdir)
        print("\n".join(lines))
        return 0 if ok else 1
    if any(_alive(pid) and _ours(pid, c) for _, c, pid in recorded(workdir)):
        print(f"nodes are already running under {workdir}; stop them first", file=sys.stderr)
        return 1
    hub_nodes = tuple(n for n in args.hub.split(",") if n)
    nodes = start(
        workdir, specs_for(args.nodes, args.clients), secure=args.secure, hub_nodes=hub_nodes
    )
    federation = write_federation(workdir, nodes)
    for node in nodes:
        where = f"serving on {node.address}" if node.address else "dialling out to the hub"
        print(f"{node.spec.name} {where} ({node.config})", flush=True)
    print(f"federation file: {federation}", flush=True)
    if args.command == "start":
        print(f"stop with: python {sys.argv[0]} stop --dir {args.dir}", flush=True)
        return 0
    # Blocked only now: a child inherits the signal mask, and the nodes must
    # still be stoppable by SIGTERM.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        stop(nodes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
