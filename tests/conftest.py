"""Shared fixtures: real node directories with real records, real servers on port 0."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from node.config import NodeConfig
from tiaki import certs

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "node" / "templates" / "node.yaml"
# Copied into the repository (with a note on their origin): tests read nothing outside it.
PUMS_DIR = ROOT / "tests" / "data" / "pums"

PUMS_SCHEMA: dict[str, Any] = {
    "identifier": "pid",
    "columns": {
        "age": {"type": "integer", "bounds": [0, 100]},
        "sex": {"type": "categorical", "categories": ["0", "1"]},
        "educ": {"type": "integer", "bounds": [1, 16]},
        "race": {"type": "categorical", "categories": ["1", "2", "3", "4", "5", "6"]},
        "income": {"type": "float", "bounds": [0, 500000]},
        "married": {"type": "categorical", "categories": ["0", "1"]},
    },
}


def node_config(
    data_dir: Path, schema: dict[str, Any], *, k: int = 4, policy: dict[str, Any] | None = None
) -> NodeConfig:
    """A validated in-memory config for unit tests: the given schema, a small pure-DP policy."""
    return NodeConfig.model_validate(
        {
            "node_id": "test-node",
            "data_dir": data_dir,
            "schema": schema,
            "policy": {
                "privacy_definition": "pure",
                "budget": {"limit": 5},
                "per_query_max": 1,
                "max_records_per_client": k,
                **(policy or {}),
            },
        }
    )


# Coordinator identities the tests' nodes allow (each gets a certificate on demand).
ALLOWED_COORDINATORS = (
    "coordinator-a",
    "coordinator-b",
    "coord-a",
    "coord-b",
    "coord-0",
    "coord-1",
    "coord-2",
    "msd-coordinator",
)


class FederationPki:
    """A federation CA in a temporary folder, issuing certificates on demand (cached)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca_dir = root / "ca"
        certs.create_ca(self.ca_dir, "tiaki test CA")
        self._issued: dict[tuple[str, str], tuple[Path, Path]] = {}
        self._lock = threading.Lock()

    @property
    def ca_cert(self) -> Path:
        return self.ca_dir / "ca.crt"

    def node(self, name: str) -> tuple[Path, Path]:
        with self._lock:
            if ("node", name) not in self._issued:
                self._issued["node", name] = certs.issue_node(
                    self.ca_dir, self.root / "nodes", name, ips=["127.0.0.1"]
                )
            return self._issued["node", name]

    def coordinator(self, name: str) -> tuple[Path, Path]:
        with self._lock:
            if ("coordinator", name) not in self._issued:
                self._issued["coordinator", name] = certs.issue_coordinator(
                    self.ca_dir, self.root / "coordinators", name
                )
            return self._issued["coordinator", name]

    def channel_credentials(self, coordinator: str) -> grpc.ChannelCredentials:
        cert, key = self.coordinator(coordinator)
        files = certs.tls_files(cert, key, self.ca_cert)
        return grpc.ssl_channel_credentials(
            root_certificates=files.root_certificates,
            private_key=files.private_key,
            certificate_chain=files.cert_chain,
        )

    def federation_tls(self, coordinator: str = "coordinator-a") -> dict[str, str]:
        cert, key = self.coordinator(coordinator)
        return {"ca": str(self.ca_cert), "cert": str(cert), "key": str(key)}


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> FederationPki:
    return FederationPki(tmp_path_factory.mktemp("pki"))


def write_node_config(
    directory: Path,
    *,
    node_id: str = "ngo-test",
    schema: dict[str, Any] | None = None,
    policy: dict[str, Any] | None = None,
    pki: FederationPki | None = None,
    server: dict[str, Any] | None = None,
) -> Path:
    """A node.yaml from the shipped template, with optional schema/policy overrides.

    With ``pki`` the node serves mutual TLS with a certificate for ``node_id``
    and allows the coordinators in ALLOWED_COORDINATORS (unless ``policy``
    names its own); without, it is for ``--insecure`` development runs.
    """
    raw = yaml.safe_load(TEMPLATE.read_text(encoding="utf-8"))
    raw["node_id"] = node_id
    raw["data_dir"] = "data"
    raw["server"]["address"] = "127.0.0.1:0"
    if pki is not None:
        cert, key = pki.node(node_id)
        raw["server"]["tls"] = {"cert": str(cert), "key": str(key), "client_ca": str(pki.ca_cert)}
        raw["policy"]["coordinators"] = [{"identity": name} for name in ALLOWED_COORDINATORS]
    if server is not None:
        raw["server"].update(server)
    if schema is not None:
        raw["schema"] = schema
    if policy is not None:
        raw["policy"].update(policy)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "node.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def synth_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from node.synth import write_csv

    path = tmp_path_factory.mktemp("synth") / "clients.csv"
    write_csv(path, 3000, 7)
    return path


@pytest.fixture
def make_node_config(tmp_path: Path, pki: FederationPki) -> Callable[..., Path]:
    """Node configs serving mutual TLS by default (``pki=None`` for an insecure one)."""
    counter = iter(range(1000))

    def make(**kwargs: Any) -> Path:
        kwargs.setdefault("pki", pki)
        return write_node_config(tmp_path / f"node{next(counter)}", **kwargs)

    return make


@pytest.fixture
def pums_dup() -> Path:
    path = PUMS_DIR / "PUMS_dup.csv"
    if not path.exists():
        pytest.fail(f"{path} is missing from the repository")
    return path


# ---------------------------------------------------------------- the tiaki CLI, in-process


@dataclass(frozen=True)
class Run:
    """What one ``tiaki`` invocation returned and printed."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    def error_line(self) -> str:
        """The one ``error:`` line a failing command prints, and nothing else."""
        lines = self.err.strip().splitlines()
        assert len(lines) == 1, self.err
        assert lines[0].startswith("error: "), self.err
        return lines[0]


Cli = Callable[..., Run]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """Run ``tiaki ARGV`` through its ``main``; whatever happens, never a traceback."""
    from coordinator.cli.main import main

    def run(*argv: str | Path) -> Run:
        capsys.readouterr()
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err + captured.out
        return Run(code, captured.out, captured.err)

    return run
