"""One-shot set-up steps of the compose trial federation (deploy/compose.yaml).

Each step runs in its own short-lived container, as the image's non-root user,
and does what the parties would each do by hand (deploy/README.md):

    compose_setup.py pki --nodes ngo-a,ngo-b,ngo-c      # the CA operator: CA and certificates
    compose_setup.py node ngo-a --clients 6000 --seed 7 # an NGO: config, synthetic records, import
    compose_setup.py coordinator --nodes ngo-a,...      # the ministry: its federation file

Every step keeps what an earlier run made, so ``docker compose up`` can be
run again without losing ledgers. The paths are the ones the images, the
systemd unit and the example configs use; a test checks that they agree.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from coordinator.config import add_node
from node.cli.init import render
from node.config import load_config
from node.importer import import_csv
from node.store import store_path
from node.synth import write_csv
from tiaki import certs

PORT = 50051
COORDINATOR = "msd-coordinator"
ANALYST = "msd-analyst"


@dataclass(frozen=True)
class Layout:
    """Where things live in the containers (and on a systemd host)."""

    config_dir: Path = Path("/etc/tiaki")  # read-only to the service
    data_dir: Path = Path("/var/lib/tiaki")  # the one writable place: the volume
    pki_dir: Path = Path("/pki")  # the trial's certificate volume, mounted read-only

    @property
    def node_config(self) -> Path:
        return self.config_dir / "node.yaml"

    @property
    def tls_dir(self) -> Path:
        return self.config_dir / "tls"

    @property
    def federation(self) -> Path:
        return self.data_dir / "federation.yaml"


def _install(source: Path, target: Path, mode: int) -> None:
    target.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    target.chmod(mode)


def make_pki(out: Path, nodes: Sequence[str]) -> None:
    """The federation CA, a certificate per node (its compose service name), the ministry's."""
    if not (out / "ca" / "ca.crt").exists():
        certs.create_ca(out / "ca", "tiaki compose trial CA")
    for name in nodes:
        if not (out / name / f"{name}.crt").exists():
            certs.issue_node(out / "ca", out / name, name)  # DNS SAN = the service name
    if not (out / COORDINATOR / f"{COORDINATOR}.crt").exists():
        certs.issue_coordinator(out / "ca", out / COORDINATOR, COORDINATOR)
    print(f"certificates in {out}: CA, {', '.join(nodes)}, {COORDINATOR}")


def server_config(name: str, tls: tuple[Path, Path, Path], data_dir: Path) -> str:
    """What ``tiaki-node init`` writes, serving every interface, data kept in ``data_dir``."""
    cert, key, ca = (str(p) for p in tls)
    text = render(name, f"0.0.0.0:{PORT}", (cert, key, ca), [COORDINATOR])
    return re.sub(r"(?m)^data_dir: .*$", lambda _: f"data_dir: {data_dir}", text, count=1)


def make_node(layout: Layout, name: str, clients: int, seed: int) -> None:
    if layout.node_config.exists() and store_path(load_config(layout.node_config)).exists():
        print(f"{name}: already set up")
        return
    tls = layout.tls_dir
    cert, key, ca = tls / f"{name}.crt", tls / f"{name}.key", tls / "ca.crt"
    _install(layout.pki_dir / name / f"{name}.crt", cert, 0o644)
    _install(layout.pki_dir / name / f"{name}.key", key, 0o600)
    _install(layout.pki_dir / "ca" / "ca.crt", ca, 0o644)
    text = server_config(name, (cert, key, ca), layout.data_dir)
    layout.node_config.write_text(text, encoding="utf-8")
    config = load_config(layout.node_config)
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "clients.csv"
        write_csv(csv, clients, seed)
        report = import_csv(config, csv)
    if not report.committed:
        raise SystemExit(f"{name}: import refused: {report.bad_rows[:3]}")
    print(f"{name}: {clients} synthetic clients imported into {layout.data_dir}")


def make_coordinator(layout: Layout, nodes: Sequence[str]) -> None:
    tls = layout.tls_dir
    ca, cert, key = tls / "ca.crt", tls / f"{COORDINATOR}.crt", tls / f"{COORDINATOR}.key"
    _install(layout.pki_dir / "ca" / "ca.crt", ca, 0o644)
    _install(layout.pki_dir / COORDINATOR / f"{COORDINATOR}.crt", cert, 0o644)
    _install(layout.pki_dir / COORDINATOR / f"{COORDINATOR}.key", key, 0o600)
    files = {"ca": str(ca), "cert": str(cert), "key": str(key)}
    layout.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name in nodes:
        add_node(layout.federation, name, f"{name}:{PORT}", analyst=ANALYST, tls=files)
    print(f"federation file {layout.federation}: {', '.join(nodes)}")


def build_parser(layout: Layout) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="step", required=True)
    pki = sub.add_parser("pki", help="CA and certificates, into --out")
    pki.add_argument("--out", type=Path, default=layout.data_dir)
    pki.add_argument("--nodes", required=True, help="comma-separated node names")
    node = sub.add_parser("node", help="a node's config, synthetic records and import")
    node.add_argument("name")
    node.add_argument("--clients", type=int, default=3000)
    node.add_argument("--seed", type=int, default=7)
    coord = sub.add_parser("coordinator", help="the ministry's federation file")
    coord.add_argument("--nodes", required=True, help="comma-separated node names")
    return p


def main(argv: Sequence[str] | None = None, layout: Layout = Layout()) -> int:
    args = build_parser(layout).parse_args(argv)
    if args.step == "pki":
        make_pki(args.out, args.nodes.split(","))
    elif args.step == "node":
        make_node(layout, args.name, args.clients, args.seed)
    else:
        make_coordinator(layout, args.nodes.split(","))
    return 0


if __name__ == "__main__":
    sys.exit(main())
