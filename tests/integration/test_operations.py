"""Running a node as an operator does: JSON logs, a local health port, online backup and restore.

(SIGTERM draining and SIGHUP reloading of a real ``tiaki-node serve``
process are covered in test_node_process.py.)
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import signal
import subprocess
import sys
import threading
from fractions import Fraction
from pathlib import Path

import grpc
import pytest

from coordinator.client import NodeClient
from node.cli.main import main as tiaki_node
from node.config import load_config
from node.importer import import_csv
from node.ledger import PrivacyLedger
from node.store import load_dataset
from tests.conftest import ROOT, FederationPki, write_node_config
from tiaki.budget import PrivacyDefinition
from tiaki.errors import TiakiError
from tiaki.query import PrivacyCost, Query, QueryKind
from tiaki.wire_errors import status_code_of

BIN = Path(sys.executable).parent
DEPLOY = ROOT / "deploy"


class Serving:
    """``tiaki-node serve`` as a subprocess; its first stdout line says where it listens."""

    def __init__(self, config: Path, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [str(BIN / "tiaki-node"), "serve", "--config", str(config), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.first_lines = [self._line()]
        match = re.search(r"serving on (\S+?)[\s\"]", self.first_lines[0])
        if not match:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=30)
            raise AssertionError(f"node did not start: {self.first_lines} {err}")
        self.address = match.group(1)

    def _line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline()

    def stop(self) -> tuple[int, str, str]:
        """SIGTERM; returns (exit code, the rest of stdout, all of stderr)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, out, err


def client(pki: FederationPki, address: str, identity: str = "coordinator-a") -> NodeClient:
    return NodeClient(
        address,
        timeout=20,
        credentials=pki.channel_credentials(identity),
        server_name="ngo-test",
    )


COUNT = Query(
    QueryKind.COUNT_CLIENTS, PrivacyCost.parse(PrivacyDefinition.PURE, "0.5"), group_by=("service",)
)
SMALL = Query(QueryKind.COUNT, PrivacyCost.parse(PrivacyDefinition.PURE, "0.01"))


def record_values(path: Path) -> set[str]:
    """Values no log line may contain: client ids, names and addresses."""
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    return {row[col] for row in rows for col in ("client_id", "client_name", "address")}


def test_json_logs_and_the_loopback_health_port(
    tmp_path: Path, synth_csv: Path, pki: FederationPki
) -> None:
    config = write_node_config(
        tmp_path / "ngo", pki=pki, policy={"coordinators": [{"identity": "coordinator-a"}]}
    )
    assert import_csv(load_config(config), synth_csv).committed
    node = Serving(config, "--log-format", "json", "--verbose", "--health-address", "127.0.0.1:0")
    health_line = json.loads(node._line())
    try:
        assert health_line["event"] == "health"
        health = subprocess.run(
            [sys.executable, str(DEPLOY / "healthcheck.py"),
             "--address", health_line["health_address"]],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert health.returncode == 0 and "SERVING" in health.stdout, health.stderr

        with client(pki, node.address) as c:
            first = c.query(COUNT, query_id="q-logs-1", analyst="ana")
            again = c.query(COUNT, query_id="q-logs-1", analyst="ana")
        assert again.replayed and not first.replayed
        with client(pki, node.address, "coordinator-b") as c, pytest.raises(TiakiError) as info:
            c.query(COUNT, query_id="q-logs-2", analyst="eve")
        assert status_code_of(info.value) is grpc.StatusCode.PERMISSION_DENIED
    finally:
        code, out, err = node.stop()
    assert code == 0

    stdout = [json.loads(line) for line in [node.first_lines[0], *out.splitlines()]]
    assert [e["event"] for e in stdout] == ["serving", "stopping", "stopped"]
    assert stdout[0]["node_id"] == "ngo-test" and stdout[0]["address"] == node.address
    assert stdout[0]["records"] > 0 and stdout[0]["clients"] > 0

    lines = [json.loads(line) for line in err.splitlines()]  # every line is one JSON object
    for entry in lines:
        assert {"time", "level", "logger", "message"} <= set(entry)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"])
    queries = [e for e in lines if e.get("query_id") == "q-logs-1"]
    assert [e["outcome"] for e in queries] == ["answered", "replayed"]
    for entry in queries:
        assert entry["identity"] == "coordinator-a" and entry["kind"] == "count_clients"
        assert entry["charge"] == "epsilon=0.5" and entry["level"] == "INFO"
        assert 0 <= entry["duration_ms"] < 30_000
    (refusal,) = [e for e in lines if e.get("outcome") == "refused"]
    assert refusal["identity"] == "coordinator-b" and refusal["verified"] is True
    assert re.fullmatch(r"[0-9a-f]{64}", refusal["fingerprint"])
    assert refusal["level"] == "WARNING" and refusal["kind"] == "count_clients"

    everything = err + out + node.first_lines[0]
    leaked = [value for value in record_values(synth_csv) if value and value in everything]
    assert not leaked, f"record values in the log: {leaked[:5]}"


def test_health_port_must_be_loopback(tmp_path: Path, pki: FederationPki) -> None:
    config = write_node_config(tmp_path / "ngo", pki=pki)
    assert tiaki_node(["serve", "--config", str(config), "--health-address", "10.1.2.3:9"]) == 2


def ledger_totals(ledger: PrivacyLedger) -> tuple[list[str], Fraction]:
    """The charged query ids in order, and the total, checked against the entries' sum."""
    entries = ledger.entries()
    total = ledger.status().lifetime_spent
    assert total == sum((e.charge for e in entries), Fraction(0))
    return [e.query_id for e in entries], total


def backup(data_dir: Path, target: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(DEPLOY / "backup.py"), "backup", str(data_dir), str(target)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def restore(source: Path, data_dir: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(DEPLOY / "backup.py"), "restore", str(source), str(data_dir)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def restored_node(original: Path, backup_dir: Path, home: Path) -> Path:
    """A fresh node directory: the original config beside data restored from the backup."""
    home.mkdir()
    shutil.copy(original, home / "node.yaml")
    restore(backup_dir, home / "data")
    return home / "node.yaml"


def test_backup_of_a_serving_node_restores_and_verifies(
    tmp_path: Path, synth_csv: Path, pki: FederationPki
) -> None:
    policy = {"budget": {"limit": "100", "period": "none"}}
    config = write_node_config(tmp_path / "ngo", pki=pki, policy=policy)
    data_dir = load_config(config).data_dir
    assert import_csv(load_config(config), synth_csv).committed
    node = Serving(config)
    burst_answered: list[str] = []
    try:
        with client(pki, node.address) as c:
            for i in range(5):
                c.query(COUNT, query_id=f"before-{i}", analyst="ana")
            served_budget = c.budget()
        # 1. A quiet moment: the backup holds exactly what the node has charged.
        backup(data_dir, tmp_path / "backup-quiet")

        # 2. Under load: queries are charged while the snapshot is taken.
        stop_burst = threading.Event()

        def burst() -> None:
            with client(pki, node.address) as c:
                i = 0
                while not stop_burst.is_set():
                    burst_answered.append(
                        c.query(SMALL, query_id=f"burst-{i}", analyst="b").query_id
                    )
                    i += 1

        worker = threading.Thread(target=burst)
        worker.start()
        try:
            while len(burst_answered) < 5:
                stop_burst.wait(0.01)
            backup(data_dir, tmp_path / "backup-busy")
        finally:
            stop_burst.set()
            worker.join(30)
    finally:
        code, _, err = node.stop()
    assert code == 0, err
    with PrivacyLedger.open(data_dir / "ledger.sqlite", load_config(config).policy) as original:
        original_ids, original_total = ledger_totals(original)

    quiet = restored_node(config, tmp_path / "backup-quiet", tmp_path / "restored-quiet")
    quiet_config = load_config(quiet)
    with PrivacyLedger.open(quiet_config.data_dir / "ledger.sqlite", quiet_config.policy) as led:
        led.verify()
        ids, total = ledger_totals(led)
    assert ids == [f"before-{i}" for i in range(5)]
    assert total == served_budget.lifetime_spent == Fraction(5, 2)
    # The rest of the data directory came back too: the same records, the same secret salt.
    assert load_dataset(quiet_config).version == load_dataset(load_config(config)).version
    salt = (quiet_config.data_dir / "node.salt").read_bytes()
    assert salt == (data_dir / "node.salt").read_bytes()
    assert not list(quiet_config.data_dir.glob("*-wal"))  # one self-contained file per database

    busy = restored_node(config, tmp_path / "backup-busy", tmp_path / "restored-busy")
    busy_config = load_config(busy)
    with PrivacyLedger.open(busy_config.data_dir / "ledger.sqlite", busy_config.policy) as led:
        led.verify()
        ids, total = ledger_totals(led)
    # A consistent snapshot: a prefix of the original history, with its own totals right.
    assert len(ids) >= 10 and ids == original_ids[: len(ids)]
    assert set(burst_answered) <= set(original_ids) and total <= original_total


def test_backup_refuses_to_overwrite(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "node.salt").write_bytes(b"x" * 32)
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "something").write_text("keep me")
    done = subprocess.run(
        [sys.executable, str(DEPLOY / "backup.py"), "backup", str(tmp_path / "data"),
         str(tmp_path / "dest")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0 and "not empty" in done.stderr
    assert (tmp_path / "dest" / "something").read_text() == "keep me"


def test_import_from_standard_input(tmp_path: Path, synth_csv: Path) -> None:
    """How deploy/README.md feeds the service user a file it cannot open itself."""
    config = write_node_config(tmp_path / "ngo")
    with open(synth_csv, "rb") as stdin:
        done = subprocess.run(
            [str(BIN / "tiaki-node"), "import", "--config", str(config), "/dev/stdin"],
            stdin=stdin, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert done.returncode == 0 and "imported:" in done.stdout, done.stderr
