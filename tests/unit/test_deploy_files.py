"""The deployment files, checked without a container engine or systemd.

They parse; every command they name exists and accepts the arguments given;
the paths they mount, write and protect are the ones the configs use.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shlex
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any

import pytest
import yaml

from coordinator.cli.main import build_parser as coordinator_parser
from coordinator.config import load_federation
from coordinator.hub import cli as hub_cli
from node.cli.main import build_parser as node_parser
from node.config import load_config
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
CONSOLE_SCRIPTS = PYPROJECT["project"]["scripts"]


def load(path: Path) -> ModuleType:
    """A deploy script as a module (deploy/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"deploy_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


SETUP = load(DEPLOY / "container" / "compose_setup.py")
HEALTHCHECK = load(DEPLOY / "healthcheck.py")
LAYOUT = SETUP.Layout()
DATA_DIR = str(LAYOUT.data_dir)
CONFIG_DIR = str(LAYOUT.config_dir)


def parses(parser: Any, argv: list[str]) -> Any:
    try:
        return parser.parse_args(argv)
    except SystemExit:
        pytest.fail(f"{argv} is not accepted by {parser.prog}")


# ---------------------------------------------------------------- Dockerfiles


@dataclass
class Dockerfile:
    path: Path
    stages: list[list[tuple[str, str]]] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path) -> Dockerfile:
        text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
        parsed = cls(path)
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            instruction, _, rest = line.partition(" ")
            if instruction.upper() == "FROM":
                parsed.stages.append([])
            assert parsed.stages, f"{path}: {instruction} before FROM"
            parsed.stages[-1].append((instruction.upper(), rest.strip()))
        return parsed

    @property
    def final(self) -> list[tuple[str, str]]:
        return self.stages[-1]

    def all(self, name: str, stage: list[tuple[str, str]] | None = None) -> list[str]:
        return [rest for instr, rest in (stage or self.final) if instr == name]

    def one(self, name: str) -> str:
        (value,) = self.all(name)
        return value

    def exec_form(self, name: str) -> list[str]:
        value = self.one(name)
        if name == "HEALTHCHECK":
            value = value.partition(" CMD ")[2]
        words = json.loads(value)
        assert isinstance(words, list), f"{self.path}: {name} must be in exec form"
        return [str(w) for w in words]

    def copied_to(self, directory: str) -> dict[str, str]:
        """Files COPYed from the build context into ``directory``: {target: source}."""
        found = {}
        for rest in self.all("COPY"):
            if rest.startswith("--from"):
                continue
            *sources, target = rest.split()
            if target.rstrip("/") == directory:
                found.update({f"{directory}/{Path(s).name}": s for s in sources})
        return found


DOCKERFILES = {
    "node": DEPLOY / "container" / "Dockerfile.node",
    "coordinator": DEPLOY / "container" / "Dockerfile.coordinator",
    "hub": DEPLOY / "container" / "Dockerfile.hub",
}


def hub_parser() -> argparse.ArgumentParser:
    return hub_cli.PROGRAM.parser()


ENTRYPOINT_PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "tiaki-node": node_parser,
    "tiaki": coordinator_parser,
    "tiaki-hub": hub_parser,
}


@pytest.mark.parametrize("role", sorted(DOCKERFILES))
def test_dockerfile(role: str) -> None:
    image = Dockerfile.read(DOCKERFILES[role])
    for stage in image.stages:
        base = stage[0][1].split()[0]
        assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", base), f"{base}: pin a tag"
    user = image.all("USER")
    assert user and user[-1] not in ("root", "0"), "the image must run as a non-root user"
    assert image.exec_form("VOLUME") == [DATA_DIR]
    assert any("--constraint" in run for run in image.all("RUN")), "install with pinned deps"

    entrypoint = image.exec_form("ENTRYPOINT")
    assert len(entrypoint) == 1 and entrypoint[0] in CONSOLE_SCRIPTS
    assert entrypoint[0] == {"node": "tiaki-node", "coordinator": "tiaki", "hub": "tiaki-hub"}[role]
    cmd = image.exec_form("CMD")
    args = parses(ENTRYPOINT_PARSERS[entrypoint[0]](), cmd)
    if role == "node":
        assert args.config == LAYOUT.node_config
        assert image.one("EXPOSE") == str(SETUP.PORT)
    if role == "hub":
        assert str(args.config) == "/etc/tiaki/hub.yaml" and image.one("EXPOSE") == "50060"

    health = image.exec_form("HEALTHCHECK")
    assert health[:2] == ["python", "/opt/tiaki/healthcheck.py"]
    assert "/opt/tiaki/healthcheck.py" in image.copied_to("/opt/tiaki")
    checked = parse_health(health[2:])
    if role in ("node", "hub"):
        # The health port the check asks is the one the server is told to open.
        assert checked.address == args.health_address
        assert HEALTHCHECK.is_loopback(checked.address)
    else:
        assert str(checked.federation) == str(PurePosixPath(DATA_DIR) / "federation.yaml")


def parse_health(argv: list[str]) -> Any:
    try:
        return HEALTHCHECK.parse(argv)
    except SystemExit:
        pytest.fail(f"{argv} is not accepted by deploy/healthcheck.py")


@pytest.mark.parametrize("role", sorted(DOCKERFILES))
def test_dockerfile_copies_only_what_exists_and_is_not_ignored(role: str) -> None:
    path = DOCKERFILES[role]
    image = Dockerfile.read(path)
    ignore = path.with_name(path.name + ".dockerignore").read_text(encoding="utf-8").splitlines()
    allowed = [line[1:] for line in ignore if line.startswith("!")]
    assert "*" in ignore, "the build context is an allow-list"
    sources = []
    for stage in image.stages:
        for rest in image.all("COPY", stage):
            if not rest.startswith("--from"):
                sources += rest.split()[:-1]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"{path.name} copies {source}, which does not exist"
        assert any(source == a or source.startswith(a + "/") for a in allowed), (
            f"{source} is excluded by {path.name}.dockerignore"
        )


def test_every_package_folder_is_packaged() -> None:
    # An editable install finds any folder; a built wheel (the container) only the listed.
    setuptools = PYPROJECT["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    found = {
        ".".join((top, *init.parent.relative_to(ROOT / folder).parts))
        for top, folder in setuptools["package-dir"].items()
        for init in (ROOT / folder).rglob("__init__.py")
    }
    assert found == listed


def test_constraints_pin_exactly_what_pyproject_pins() -> None:
    lines = (DEPLOY / "container" / "constraints.txt").read_text(encoding="utf-8").splitlines()
    pins = dict(
        line.lower().split("==") for line in lines if line.strip() and not line.startswith("#")
    )
    for requirement in PYPROJECT["project"]["dependencies"]:
        name, version = requirement.split("==")
        assert pins.get(name.lower().replace("_", "-")) == version, requirement


# ---------------------------------------------------------------- compose


def compose() -> dict[str, Any]:
    doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


def mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """{container path: (volume, read_only)}."""
    found = {}
    for spec in service.get("volumes", []):
        volume, path, *mode = spec.split(":")
        found[path] = (volume, mode == ["ro"])
    return found


def mount(name: str, service: dict[str, Any], path: str) -> tuple[str, bool]:
    found = mounts(service)
    assert path in found, f"compose service {name} mounts nothing at {path}"
    return found[path]


def test_compose_services_commands_and_mounts() -> None:
    doc = compose()
    services: dict[str, dict[str, Any]] = doc["services"]
    volumes = set(doc["volumes"])
    nodes = sorted(name for name in services if re.fullmatch(r"ngo-[a-z]", name))
    assert len(nodes) == 3

    for name, service in services.items():
        dockerfile = DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]
        assert dockerfile.resolve() in {p.resolve() for p in DOCKERFILES.values()}, name
        image = Dockerfile.read(dockerfile)
        for volume, _ in mounts(service).values():
            assert volume in volumes, f"{name} mounts undeclared volume {volume}"
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        assert service.get("read_only") is True and "ALL" in service.get("cap_drop", [])

        entrypoint = service.get("entrypoint", image.exec_form("ENTRYPOINT"))
        command = service.get("command", image.exec_form("CMD"))
        if entrypoint == ["python", "/opt/tiaki/compose_setup.py"]:
            assert "/opt/tiaki/compose_setup.py" in image.copied_to("/opt/tiaki")
            args = parses(SETUP.build_parser(LAYOUT), command)
            if args.step == "pki":
                assert mount(name, service, str(args.out)) == ("pki", False)
            else:
                assert mount(name, service, str(LAYOUT.pki_dir)) == ("pki", True)
            if args.step == "node":
                # The set-up writes exactly the volumes its node then serves from.
                node = services[args.name]
                for path, read_only in ((CONFIG_DIR, True), (DATA_DIR, False)):
                    volume = mount(name, service, path)[0]
                    assert mount(args.name, node, path) == (volume, read_only)
            if args.step in ("pki", "coordinator"):
                assert args.nodes.split(",") == nodes
        else:
            (program,) = entrypoint
            assert program in CONSOLE_SCRIPTS
            parses(ENTRYPOINT_PARSERS[program](), command)
            assert mount(name, service, DATA_DIR)[1] is False  # the VOLUME, writable
            assert mount(name, service, CONFIG_DIR)[1] is True  # config and keys, read-only

    for path in (CONFIG_DIR, DATA_DIR):
        made = mount("setup-coordinator", services["setup-coordinator"], path)[0]
        assert mount("coordinator", services["coordinator"], path)[0] == made


# ---------------------------------------------------------------- systemd


def unit_file(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections of key → values (a key may repeat); systemd has no inline comments."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            assert line.endswith("]"), f"{path}:{number}: bad section header"
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"{path}:{number}: not key=value"
        assert " #" not in value, f"{path}:{number}: systemd would read the comment as a value"
        current.setdefault(key, []).append(value)
    return sections


def test_systemd_unit_for_the_hub_is_hardened_and_runs_the_hub() -> None:
    unit = unit_file(DEPLOY / "systemd" / "tiaki-hub.service")
    service = {key: values[-1] for key, values in unit["Service"].items()}
    for key, value in {
        "User": "tiaki",
        "ProtectSystem": "strict",
        "ReadWritePaths": DATA_DIR,
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "MemoryDenyWriteExecute": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "Restart": "on-failure",
    }.items():
        assert service.get(key) == value, key
    program, *argv = shlex.split(service["ExecStart"])
    assert PurePosixPath(program).name == "tiaki-hub" and "tiaki-hub" in CONSOLE_SCRIPTS
    args = parses(hub_cli.PROGRAM.parser(), argv)
    assert args.command == "serve" and str(args.config) == "/etc/tiaki/hub.yaml"
    assert HEALTHCHECK.is_loopback(args.health_address)


def test_systemd_unit_is_hardened_and_runs_the_node() -> None:
    unit = unit_file(DEPLOY / "systemd" / "tiaki-node.service")
    service = {key: values[-1] for key, values in unit["Service"].items()}
    expected = {
        "User": "tiaki",
        "ProtectSystem": "strict",
        "ReadWritePaths": DATA_DIR,
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "PrivateDevices": "yes",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "RestrictSUIDSGID": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "LockPersonality": "yes",
        "Restart": "on-failure",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "StateDirectory": PurePosixPath(DATA_DIR).name,
    }
    assert {key: service.get(key) for key in expected} == expected
    assert unit["Service"]["ReadWritePaths"] == [DATA_DIR], "the data directory and nothing else"
    assert "@system-service" in unit["Service"]["SystemCallFilter"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]

    program, *argv = shlex.split(service["ExecStart"])
    assert PurePosixPath(program).parent == PurePosixPath("/opt/tiaki/venv/bin")
    assert PurePosixPath(program).name in CONSOLE_SCRIPTS
    args = parses(node_parser(), argv)
    assert args.command == "serve" and args.config == LAYOUT.node_config
    assert args.log_format == "json" and HEALTHCHECK.is_loopback(args.health_address)
    # Long enough for in-flight queries to finish on stop.
    grace = yaml.safe_load((ROOT / "node" / "templates" / "node.yaml").read_text(encoding="utf-8"))[
        "server"
    ]["grace_seconds"]
    assert int(service["TimeoutStopSec"]) > grace


# ---------------------------------------------------------------- example configs


def test_example_federation_file_fits_the_coordinator_image() -> None:
    example = DEPLOY / "examples" / "federation.yaml"
    config = load_federation(example)
    assert config.nodes and config.tls is not None
    for path in (config.tls.ca, config.tls.cert, config.tls.key):
        assert path.parent == LAYOUT.tls_dir, f"{path} is not where the images mount certificates"
    # Placed where the coordinator image looks for it, its ledger lands in the volume.
    raw = yaml.safe_load(example.read_text(encoding="utf-8"))
    workdir = Dockerfile.read(DOCKERFILES["coordinator"]).all("WORKDIR")[-1]
    assert workdir == DATA_DIR
    assert (PurePosixPath(workdir) / raw["ledger"]).parent == PurePosixPath(DATA_DIR)


def test_example_node_config_is_the_template() -> None:
    example = DEPLOY / "examples" / "node.yaml"
    assert example.resolve() == (ROOT / "node" / "templates" / "node.yaml").resolve()
    assert load_config(example).node_id


def test_compose_setup_builds_a_working_federation_layout(tmp_path: Path) -> None:
    """The set-up steps, run against a temporary layout, leave configs both CLIs accept."""
    layout = SETUP.Layout(
        config_dir=tmp_path / "etc", data_dir=tmp_path / "data", pki_dir=tmp_path / "pki"
    )
    assert SETUP.main(["pki", "--out", str(layout.pki_dir), "--nodes", "ngo-a"], layout) == 0
    assert SETUP.main(["node", "ngo-a", "--clients", "200", "--seed", "3"], layout) == 0
    assert SETUP.main(["node", "ngo-a"], layout) == 0  # a second run keeps what is there
    config = load_config(layout.node_config)
    assert config.data_dir == layout.data_dir and config.server.address == "0.0.0.0:50051"
    assert config.server.tls is not None and config.server.tls.key.stat().st_mode & 0o077 == 0
    assert [g.identity for g in config.policy.coordinators] == [SETUP.COORDINATOR]
    assert (layout.data_dir / "records.sqlite").exists()

    coordinator = SETUP.Layout(
        config_dir=tmp_path / "c-etc", data_dir=tmp_path / "c-data", pki_dir=layout.pki_dir
    )
    assert SETUP.main(["coordinator", "--nodes", "ngo-a"], coordinator) == 0
    federation = load_federation(coordinator.federation)
    assert [(n.name, n.address) for n in federation.nodes] == [("ngo-a", "ngo-a:50051")]
    assert federation.tls is not None and federation.tls.cert.exists()


def test_healthcheck_refuses_plaintext_off_this_host() -> None:
    with pytest.raises(SystemExit, match="not loopback"):
        HEALTHCHECK.main(["--address", "192.0.2.1:50052"])
    with pytest.raises(SystemExit, match="go together"):
        HEALTHCHECK.main(["--address", "192.0.2.1:50051", "--tls-ca", "ca.crt"])
