"""The whole story on a local federation: what `make demo` runs.

Three NGOs with different sizes and mixes of synthetic clients each run a node
(a separate process, accounting in zCDP, each pinning the others for secure
sums). The ministry adds them to its federation file, checks them, plans a
question, asks it per node and then as a secure sum (one noise instead of
three), runs the shipped outcome measurements by name, draws a plot, and
compares every node's budget with its own mirror ledger.
Then an evaluator verifies every signed ledger against the keys the parties
gave, and writes an HTML report.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coordinator.config import load_federation  # noqa: E402
from coordinator.fanout import coordinator_identity  # noqa: E402
from deploy import local_federation  # noqa: E402
from tiaki.signing import load_signing_key  # noqa: E402

WORK = ROOT / "demo-run"
BIN = Path(sys.executable).parent
QUERIES = ROOT / "deploy" / "examples" / "queries" / "outcomes.yaml"


def step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def tiaki(*args: str, refused: bool = False) -> None:
    shown = " ".join(a if " " not in a else repr(a) for a in args)
    print(f"\n$ tiaki {shown}", flush=True)
    done = subprocess.run([str(BIN / "tiaki"), *args], check=False, cwd=WORK)
    if (done.returncode != 0) != refused:
        raise SystemExit(f"unexpected exit code {done.returncode} from tiaki {shown}")


def node_yaml(node: local_federation.RunningNgo) -> dict[str, Any]:
    raw: dict[str, Any] = yaml.safe_load(node.config.read_text(encoding="utf-8"))
    return raw


def set_identity(path: Path, identity: str) -> None:
    """The name the NGOs granted the ministry (and its signing key) under."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    raw["identity"] = identity
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")


def write_trusted_keys(nodes: list[local_federation.RunningNgo]) -> None:
    """The public keys each party handed the evaluator (in life: by a channel of their own)."""
    keys = {
        node.spec.name: load_signing_key(node.config.parent / "data" / "signing.key").public_text
        for node in nodes
    }
    config = load_federation(WORK / "federation.yaml")
    keys[coordinator_identity(config)] = load_signing_key(config.signing_key_path).public_text
    (WORK / "trusted-keys.yaml").write_text(
        "".join(f"{name}: {text}\n" for name, text in keys.items()), encoding="utf-8"
    )


def main() -> int:
    started = time.monotonic()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()
    step(
        "1. A federation CA certifies three NGO nodes, the ministry and its hub; each NGO "
        "generates synthetic records, writes its node config, imports, and serves over mutual "
        "TLS (NGO C, behind NAT, opens no port: it dials out to the hub)"
    )
    # NGO C has no open port at all: it dials out to the ministry's hub.
    nodes = local_federation.start(WORK, secure=True, hub_nodes=("ngo-c",))
    try:
        for node in nodes:
            where = f"serving on {node.address}" if node.address else "dialling out to the hub"
            print(
                f"  {node.spec.name}: {node.spec.clients} clients (seed {node.spec.seed}), {where}"
            )
        step("2. The ministry builds its federation file and checks every node")
        ca, cert, key = local_federation.coordinator_tls(WORK / "pki")
        tls = ("--analyst", "msd-analyst", "--tls-ca", ca, "--tls-cert", cert, "--tls-key", key)
        for node in nodes:
            if node.address:
                tiaki("nodes", "add", node.spec.name, node.address, *tls)
            else:  # the NGO gave its ledger key; the ministry checks its answers against it
                hub_address = node_yaml(node)["server"]["hub"]["address"]
                ledger_key = load_signing_key(node.config.parent / "data" / "signing.key")
                tiaki("nodes", "add", node.spec.name, "--via-hub", hub_address,
                      "--hub-server-name", "tiaki-hub", "--signing-key", ledger_key.public_text,
                      *tls)  # fmt: skip
        set_identity(WORK / "federation.yaml", local_federation.COORDINATOR)
        tiaki("nodes")
        step("3. Before asking: what would it cost, and how accurate would it be?")
        question = ("count_clients", "--where", "service=family_violence", "--by", "region")
        tiaki("query", *question, "--rho", "0.5", "--dry-run")
        tiaki("query", *question, "--target-ci", "20", "--dry-run")
        step("4. Asking: one question, every node, one combined answer with 95% intervals")
        tiaki("query", *question, "--rho", "0.5", "--plot", "family_violence_by_region.png")
        step(
            "5. The same question as a secure sum: each node adds a share of one noise and "
            "masks its answer, the ministry learns only the total, and the interval narrows"
        )
        tiaki("query", *question, "--rho", "0.5", "--secure", "--dry-run")
        tiaki("query", *question, "--rho", "0.5", "--secure")
        tiaki(
            "query",
            "mean",
            "circumstances_change",
            "--bounds",
            "-4,4",
            "--where",
            "service=family_violence",
            "--by",
            "region",
            "--rho",
            "0.5",
            "--secure",
        )
        step("6. The shipped outcome measurements, by name, repeatable each quarter")
        # The file's costs are epsilons; these nodes account in zCDP, so each is given as rho.
        for name in ("improved_circumstances", "housing_circumstances_by_region"):
            tiaki("query", "--file", str(QUERIES), "--name", name, "--rho", "0.25")
        tiaki("query", "--file", str(QUERIES), "--name", "sessions_per_episode", "--rho", "0.25",
              "--format", "csv")  # fmt: skip
        step("7. Refusals cost nothing: a never-queryable column, a cost above policy")
        tiaki("query", "count", "--by", "client_name", "--rho", "0.1", refused=True)
        tiaki("query", "count", "--rho", "5", "--require-all", refused=True)
        step("8. Budgets: each node's own ledger beside the ministry's mirror")
        tiaki("budget")
        step(
            "9. An evaluator checks every signed ledger (chains, signatures, budgets, and that "
            "the ministry's record agrees with each NGO's) against the keys the parties gave"
        )
        tiaki("ledger", "fetch", "--out-dir", "audit")
        write_trusted_keys(nodes)
        exports = sorted(str(p.relative_to(WORK)) for p in (WORK / "audit").glob("*.jsonl"))
        tiaki("audit", "verify", *exports, "--keys", "trusted-keys.yaml")
        tiaki("audit", "report", *exports, "--keys", "trusted-keys.yaml", "--format", "html",
              "--out", "audit/report.html")  # fmt: skip
        step("10. What NGO A's staff see: their own ledger, in plain words")
        node_a = nodes[0].config
        print(f"\n$ tiaki-node ledger --config {node_a.relative_to(WORK)}", flush=True)
        subprocess.run([str(BIN / "tiaki-node"), "ledger", "--config", str(node_a)], check=True)
    finally:
        step("11. Stopping the nodes")
        local_federation.stop(nodes)
    print(f"\nDone in {time.monotonic() - started:.0f} s. Files (and the plot) are in {WORK}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
