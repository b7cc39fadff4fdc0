"""deploy/local_federation.py as a person runs it: separate node processes over mTLS."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from coordinator.cli.main import main as tiaki
from node.cli.main import main as tiaki_node
from tests.conftest import ROOT

SCRIPT = ROOT / "deploy" / "local_federation.py"


def script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=180
    )


def recorded_pids(workdir: Path) -> dict[str, int]:
    return {p.parent.name: int(p.read_text()) for p in workdir.glob("*/serve.pid")}


def running(pid: int) -> bool:
    """Alive and not a zombie (the nodes outlive the script that started them)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rpartition(")")[2].split()[0] != "Z"


def test_start_query_stop_restart(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    workdir = tmp_path / "federation"
    federation = workdir / "federation.yaml"
    pids: dict[str, int] = {}
    try:
        started = script("start", "--nodes", "2", "--dir", str(workdir), "--clients", "400")
        assert started.returncode == 0, started.stderr
        assert "ngo-a serving on 127.0.0.1:" in started.stdout
        pids = recorded_pids(workdir)
        assert sorted(pids) == ["ngo-a", "ngo-b"] and all(map(running, pids.values()))
        # The nodes are separate processes in their own sessions, not the script's children.
        assert all(os.getsid(pid) == pid for pid in pids.values())

        status = script("status", "--dir", str(workdir))
        assert status.returncode == 0 and status.stdout.count("SERVING") == 2, status.stdout

        capsys.readouterr()
        asked = tiaki(["query", "--config", str(federation), "count_clients", "--by", "service",
                       "--epsilon", "0.5", "--format", "json"])  # fmt: skip
        answer = json.loads(capsys.readouterr().out)
        assert asked == 0
        assert answer["coverage"] == {"answered": ["ngo-a", "ngo-b"], "total": 2}
        assert sorted(n["charged"] for n in answer["nodes"]) == ["0.5", "0.5"]
        assert len(answer["cells"]) == 5

        again = script("start", "--nodes", "2", "--dir", str(workdir))
        assert again.returncode == 1 and "already running" in again.stderr
    finally:
        stopped = script("stop", "--dir", str(workdir))
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.splitlines() == ["ngo-a: stopped", "ngo-b: stopped"]
    assert pids and not any(map(running, pids.values()))
    assert not list(workdir.glob("*/serve.pid"))
    assert script("status", "--dir", str(workdir)).returncode == 1
    # A graceful stop: each node logged its own orderly shutdown.
    for name in pids:
        assert (workdir / name / "serve.log").read_text().rstrip().endswith("stopped")

    # Started again, the nodes keep their certificates, records and ledgers.
    try:
        restarted = script("start", "--nodes", "2", "--dir", str(workdir))
        assert restarted.returncode == 0, restarted.stderr
        assert script("status", "--dir", str(workdir)).returncode == 0
    finally:
        assert script("stop", "--dir", str(workdir)).returncode == 0
    capsys.readouterr()
    assert tiaki_node(["budget", "--config", str(workdir / "ngo-a" / "node.yaml"),
                       "--format", "json"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["lifetime_spent"] == "0.5"


def test_stop_leaves_a_recycled_pid_alone(tmp_path: Path) -> None:
    """A stale pid file naming some other process must not get that process killed."""
    home = tmp_path / "ngo-a"
    home.mkdir(parents=True)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (home / "serve.pid").write_text(f"{bystander.pid}\n")
        stopped = script("stop", "--dir", str(tmp_path))
        assert stopped.returncode == 0
        assert bystander.poll() is None, "stop killed a process that was not a node"
    finally:
        bystander.send_signal(signal.SIGKILL)
        bystander.wait()
