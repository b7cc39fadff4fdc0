"""The node as an NGO runs it: real commands, real processes, real signals."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from coordinator.client import NodeClient, new_query_id
from tests.conftest import FederationPki, write_node_config
from tiaki.budget import PrivacyDefinition
from tiaki.errors import TiakiError
from tiaki.query import PrivacyCost, Query, QueryKind
from tiaki.wire_errors import status_code_of

BIN = Path(sys.executable).parent
HERE = Path(__file__).resolve().parent


def cli(
    *args: str, check: bool = True, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(BIN / args[0]), *args[1:]], capture_output=True, text=True, cwd=cwd, timeout=120
    )
    if check and done.returncode != 0:
        raise AssertionError(f"{args} exited {done.returncode}: {done.stderr}")
    return done


class NodeProcess:
    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = re.search(r"serving on (\S+)", line)
        if not match:
            self.proc.kill()
            raise AssertionError(f"node did not start: {line!r} {self.proc.stderr.read()}")  # type: ignore[union-attr]
        self.address = match.group(1)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


def test_ngo_workflow_end_to_end(tmp_path: Path) -> None:
    csv_a = tmp_path / "a.csv"
    csv_b = tmp_path / "b.csv"
    assert (
        "wrote"
        in cli("tiaki-node", "synth", "--clients", "800", "--seed", "3", "--out", str(csv_a)).stdout
    )
    cli("tiaki-node", "synth", "--clients", "500", "--seed", "4", "--out", str(csv_b))
    # One command per party for the certificates: the federation CA, the node, the ministry.
    pki = tmp_path / "pki"
    cli("tiaki", "certs", "ca", str(pki / "ca"))
    shown = cli("tiaki-node", "certs", "node", "ngo", "--ca", str(pki / "ca"), "--out",
                str(pki / "ngo"), "--ip", "127.0.0.1").stdout  # fmt: skip
    assert "sha256:" in shown and "PRIVATE" not in shown
    cli("tiaki", "certs", "coordinator", "msd", "--ca", str(pki / "ca"), "--out", str(pki / "msd"))
    tls = {
        "ca": pki / "ca" / "ca.crt",
        "cert": pki / "msd" / "msd.crt",
        "key": pki / "msd" / "msd.key",
    }
    created = cli("tiaki-node", "init", str(tmp_path / "ngo"), "--address", "127.0.0.1:0",
                  "--cert", str(pki / "ngo" / "ngo.crt"), "--key", str(pki / "ngo" / "ngo.key"),
                  "--client-ca", str(tls["ca"]), "--allow", "msd")  # fmt: skip
    assert "next:" in created.stdout
    again = cli("tiaki-node", "init", str(tmp_path / "ngo"), check=False)
    assert again.returncode == 2 and "already exists" in again.stderr
    config = tmp_path / "ngo" / "node.yaml"

    not_yet = cli("tiaki-node", "serve", "--config", str(config), check=False)
    assert not_yet.returncode == 4 and "import" in not_yet.stderr
    imported = cli("tiaki-node", "import", "--config", str(config), str(csv_a))
    assert "imported:" in imported.stdout

    node = NodeProcess([str(BIN / "tiaki-node"), "serve", "--config", str(config)])
    federation = str(tmp_path / "federation.yaml")
    credentials = grpc.ssl_channel_credentials(
        tls["ca"].read_bytes(), tls["key"].read_bytes(), tls["cert"].read_bytes()
    )

    def client() -> NodeClient:
        return NodeClient(node.address, credentials=credentials, server_name="ngo")

    try:
        cli("tiaki", "nodes", "add", "ngo", node.address, "--config", federation,
            "--tls-ca", str(tls["ca"]), "--tls-cert", str(tls["cert"]),
            "--tls-key", str(tls["key"]))  # fmt: skip
        fed = ("--config", federation)
        asked = cli(
            "tiaki",
            "query",
            *fed,
            "count_clients",
            "--by",
            "service",
            "--epsilon",
            "0.5",
            "--format",
            "json",
        )
        answer = json.loads(asked.stdout)
        assert len(answer["cells"]) == 5
        assert [n["charged"] for n in answer["nodes"]] == ["0.5"]
        # A text column is published by no node: refused before asking, nothing spent.
        refused = cli(
            "tiaki", "query", *fed, "count", "--by", "client_name", "--epsilon", "0.1", check=False
        )
        assert refused.returncode == 2 and "no column 'client_name'" in refused.stderr
        assert "Traceback" not in refused.stderr + refused.stdout
        # One the node alone can refuse (it accounts in pure DP) is refused by the node.
        refused = cli("tiaki", "query", *fed, "count", "--rho", "0.1", check=False)
        assert refused.returncode == 3 and "give the cost as epsilon" in refused.stdout

        with client() as c:
            version_a = c.info().dataset_version
        cli("tiaki-node", "import", "--config", str(config), str(csv_b))
        node.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        with client() as c:
            while c.info().dataset_version == version_a:
                assert time.monotonic() < deadline, "re-import was not picked up"
                time.sleep(0.2)
    finally:
        assert node.stop() == 0

    budget = json.loads(
        cli("tiaki-node", "budget", "--config", str(config), "--format", "json").stdout
    )
    assert budget["lifetime_spent"] == "0.5"
    table = cli("tiaki-node", "budget", "--config", str(config)).stdout
    assert "current" in table and "0.5" in table


def test_bad_config_and_bad_csv_give_clear_errors(tmp_path: Path) -> None:
    config = tmp_path / "node.yaml"
    config.write_text("node_id: x\nschema: {}\n")
    done = cli("tiaki-node", "import", "--config", str(config), "nothing.csv", check=False)
    assert done.returncode == 2 and str(config) in done.stderr and "Traceback" not in done.stderr

    good = write_node_config(tmp_path / "ngo")
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("client_id,region\nc1,auckland\n")
    done = cli("tiaki-node", "import", "--config", str(good), str(bad_csv), check=False)
    assert done.returncode == 3 and "Traceback" not in done.stderr + done.stdout
    assert done.stderr or done.stdout


def tls_client(pki: FederationPki, address: str, timeout: float = 30.0) -> NodeClient:
    return NodeClient(
        address,
        timeout=timeout,
        credentials=pki.channel_credentials("coordinator-a"),
        server_name="ngo-test",
    )


def test_crash_between_charge_and_reply_keeps_the_charge(
    tmp_path: Path, synth_csv: Path, pki: FederationPki
) -> None:
    config = write_node_config(tmp_path / "ngo", pki=pki)
    cli("tiaki-node", "import", "--config", str(config), str(synth_csv))
    query = Query(QueryKind.COUNT, PrivacyCost.parse(PrivacyDefinition.PURE, "0.25"))
    qid = new_query_id()

    crashing = NodeProcess(
        [sys.executable, str(HERE / "crashing_node.py"), "serve", "--config", str(config)]
    )
    with tls_client(pki, crashing.address, 20) as client, pytest.raises(TiakiError) as info:
        client.query(query, query_id=qid, analyst="ana")
    assert status_code_of(info.value) in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL)
    assert crashing.proc.wait(timeout=10) == -signal.SIGKILL

    budget = json.loads(
        cli("tiaki-node", "budget", "--config", str(config), "--format", "json").stdout
    )
    assert budget["lifetime_spent"] == "0.25", "the charge committed before the crash was lost"

    node = NodeProcess([str(BIN / "tiaki-node"), "serve", "--config", str(config)])
    try:
        with tls_client(pki, node.address) as client:
            retried = client.query(query, query_id=qid, analyst="ana")
            assert retried.replayed
            assert client.budget().lifetime_spent == retried.charged.amount
    finally:
        assert node.stop() == 0


def test_sigterm_mid_burst_charges_exactly_the_answered_queries(
    tmp_path: Path, synth_csv: Path, pki: FederationPki
) -> None:
    from node.config import load_config
    from node.ledger import PrivacyLedger

    policy = {"budget": {"limit": "100", "period": "none"}, "per_query_max": "1"}
    config = write_node_config(
        tmp_path / "ngo", policy=policy, pki=pki, server={"max_concurrent_per_identity": 8}
    )
    cli("tiaki-node", "import", "--config", str(config), str(synth_csv))
    node = NodeProcess([str(BIN / "tiaki-node"), "serve", "--config", str(config)])
    query = Query(QueryKind.COUNT, PrivacyCost.parse(PrivacyDefinition.PURE, "0.01"))
    answered: list[str] = []
    started = threading.Event()

    def burst(worker: int) -> None:
        with tls_client(pki, node.address, 10) as client:
            for i in range(400):
                try:
                    answer = client.query(query, query_id=f"w{worker}-{i}", analyst="burst")
                except TiakiError:
                    return
                answered.append(answer.query_id)
                started.set()

    threads = [threading.Thread(target=burst, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    assert started.wait(20)
    time.sleep(0.3)
    assert node.stop() == 0
    for thread in threads:
        thread.join(30)

    ledger = PrivacyLedger.open(
        load_config(config).data_dir / "ledger.sqlite", load_config(config).policy
    )
    try:
        charged = [entry.query_id for entry in ledger.entries()]
    finally:
        ledger.close()
    assert answered, "no query was answered before the stop"
    assert sorted(charged) == sorted(answered)
