"""Fuzzing what people type and write: both command lines and the three YAML files.

``tiaki`` and ``tiaki-node`` get argument lists built from their real command
and option names mixed with garbage. Whatever they get, they return an exit
code (0, 2, 3 or 4: 1 means an unexpected internal error) and never raise or
print a traceback. No node is reachable: the federation files name a node on
``127.0.0.1:1`` in insecure mode, so every contact fails at once.

The loaders of query files, federation files and node configs get random YAML
documents, near-valid documents with wrong types and keys, and text-level
damage. Each may succeed or raise its own error type, and nothing else.

The bugs this fuzzing found are pinned, one minimal reproducer each, by the
regression tests at the end of this file.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sqlite3
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from coordinator.cli.main import main as tiaki_main
from coordinator.config import FederationConfigError, load_federation
from coordinator.query_files import QueryFileError, load_query_file
from node.cli.main import main as node_main
from node.config import ConfigError, load_config
from node.synth import write_csv
from tests.conftest import TEMPLATE, write_node_config
from tiaki import certs

pytestmark = pytest.mark.fuzz


def note(text: str) -> None:
    """A line for ``--hypothesis-show-statistics`` (a no-op outside a Hypothesis test)."""
    if currently_in_test_context():
        event(text)


ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_QUERIES = ROOT / "deploy" / "examples" / "queries" / "outcomes.yaml"

# TIAKI_FUZZ_SCALE=10 runs ten times as many examples, for a deeper search.
SCALE = max(1, int(os.environ.get("TIAKI_FUZZ_SCALE", "1")))
CLI_SETTINGS = settings(
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)

# ---------------------------------------------------------------- a workspace of real files

FEDERATION = {
    "version": 1,
    "analyst": "fuzz",
    "identity": "coordinator-a",
    "ledger": "mirror.sqlite",
    "insecure": True,
    "defaults": {"timeout_seconds": 1, "retries": 0},
    "nodes": [{"name": "ngo-a", "address": "127.0.0.1:1"}],
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every file a command line below may name, relative to this directory."""
    root = tmp_path_factory.mktemp("cli-workspace")
    certs.create_ca(root / "ca", "fuzz CA")
    certs.issue_node(root / "ca", root / "certs", "ngo-a", ips=["127.0.0.1"])
    certs.issue_coordinator(root / "ca", root / "certs", "coordinator-a")
    (root / "fed.yaml").write_text(yaml.safe_dump(FEDERATION), encoding="utf-8")
    tls_fed = {
        **FEDERATION,
        "insecure": False,
        "tls": {
            "ca": "ca/ca.crt",
            "cert": "certs/coordinator-a.crt",
            "key": "certs/coordinator-a.key",
        },
    }
    (root / "fed-tls.yaml").write_text(yaml.safe_dump(tls_fed), encoding="utf-8")
    (root / "fed-empty.yaml").write_text(
        yaml.safe_dump({**FEDERATION, "nodes": []}), encoding="utf-8"
    )
    (root / "broken.yaml").write_text("analyst: [unclosed\n  - : :\n", encoding="utf-8")
    (root / "wrong-types.yaml").write_text("analyst: [1, 2]\nnodes: 7\n", encoding="utf-8")
    shutil.copy(EXAMPLE_QUERIES, root / "queries.yaml")
    (root / "bad-queries.yaml").write_text(
        "version: 1\nqueries:\n  q: {kind: count, epsilon: 0.1, colour: red}\n", encoding="utf-8"
    )
    node_dir = root / "node"
    write_node_config(node_dir, node_id="ngo-a")
    write_node_config(root / "node-zcdp", node_id="ngo-z", policy={"privacy_definition": "zcdp"})
    # A second config sharing the first one's data folder, but accounting in rho.
    zcdp = yaml.safe_load((root / "node-zcdp" / "node.yaml").read_text(encoding="utf-8"))
    zcdp["data_dir"] = "../node/data"
    (root / "node-zcdp" / "node.yaml").write_text(yaml.safe_dump(zcdp), encoding="utf-8")
    write_csv(root / "clients.csv", 40, 3)
    (root / "garbage.csv").write_text("client_id,region\n1,atlantis\n\x01,\n", encoding="utf-8")
    (root / "empty.txt").write_text("", encoding="utf-8")
    (root / "binary.bin").write_bytes(bytes(range(256)) * 4)
    with contextlib.closing(sqlite3.connect(root / "records.sqlite")) as conn:
        conn.execute("CREATE TABLE records (client_id TEXT, region TEXT)")
        conn.execute("INSERT INTO records VALUES ('c1', 'auckland')")
        conn.commit()
    (root / "emptydir").mkdir()
    return root


@contextlib.contextmanager
def fresh_copy(workspace: Path, tmp_path: Path) -> Iterator[Path]:
    """A private copy of the workspace as the working directory, for one example."""
    target = tmp_path / uuid.uuid4().hex
    shutil.copytree(workspace, target)
    try:
        with contextlib.chdir(target):
            yield target
    finally:
        shutil.rmtree(target, ignore_errors=True)


# ---------------------------------------------------------------- tokens

FILES = (
    "fed.yaml",
    "fed-tls.yaml",
    "fed-empty.yaml",
    "missing.yaml",
    "broken.yaml",
    "wrong-types.yaml",
    "queries.yaml",
    "bad-queries.yaml",
    "node/node.yaml",
    "node-zcdp/node.yaml",
    "node",
    "ca",
    "ca/ca.crt",
    "ca/ca.key",
    "certs",
    "certs/ngo-a.crt",
    "certs/ngo-a.key",
    "certs/coordinator-a.crt",
    "certs/coordinator-a.key",
    "clients.csv",
    "garbage.csv",
    "records.sqlite",
    "empty.txt",
    "binary.bin",
    "emptydir",
    "nodir/deeper/file.yaml",
    "new.yaml",
    "out",
    "plot.png",
    ".",
    "",
)
WORDS = (
    "count",
    "count_clients",
    "sum",
    "mean",
    "proportion",
    "histogram",
    "COUNT",
    "median",
    "region",
    "sessions",
    "episode_days",
    "client_id",
    "client_name",
    "region=auckland",
    "region=auckland,otago",
    "sessions>=5",
    "sessions<=abc",
    "episode_start=2020-01-01..2021-01-01",
    "episode_start>=2020-02-30",
    "region=",
    "=x",
    "x==y",
    "ngo-a",
    "ngo-b",
    "ngo-a,ngo-b",
    ",",
    "coordinator-a",
    "improved_circumstances",
    "clients_by_service_region",
    "127.0.0.1:1",
    "localhost:1",
    "[::1]:1",
    "127.0.0.1:0",
    "127.0.0.1:99999",
    "10.0.0.1:1",
    "host",
    ":1",
    "table",
    "json",
    "csv",
    "xml",
    "records",
    "sqlite_master",
    'x"; DROP TABLE records; --',
    "a" * 200,
    "-",
    "--",
    "-x",
    "--nope",
    "é",
    "\u202e",
    "\t",
    "\n",
)
NUMBERS = (
    "0",
    "-0",
    "1",
    "-1",
    "10",
    "2000",
    "397",
    "3650",
    "0.1",
    "0.5",
    "1e-30",
    "1e999",
    "nan",
    "inf",
    "-inf",
    "1/3",
    "0,1",
    "-4,4",
    "1,0",
    "5,",
    "0,10,20,60",
    "1e308,1e308",
    "99999999999999999999",
    "-99999999999999999999",
    "5000001",
    "1_0",
    "٣",
)


def safe_text(max_size: int = 30) -> st.SearchStrategy[str]:
    """Garbage a real command line can carry: no NUL, no surrogates (see module notes)."""
    return st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=max_size)


def token() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(FILES),
        st.sampled_from(WORDS),
        st.sampled_from(NUMBERS),
        safe_text(),
    )


Pool = tuple[str, ...]
FLAG: Pool = ()


@dataclass(frozen=True)
class Command:
    """One command: its words, positionals, and options with values that fit them."""

    path: tuple[str, ...]
    positionals: tuple[Pool, ...] = ()
    required: dict[str, Pool] = field(default_factory=dict)
    optional: dict[str, Pool] = field(default_factory=dict)

    @property
    def options(self) -> tuple[str, ...]:
        return (*self.required, *self.optional)


FEDERATION_FILES = (
    "fed.yaml",
    "fed-tls.yaml",
    "fed-empty.yaml",
    "missing.yaml",
    "broken.yaml",
    "wrong-types.yaml",
    "queries.yaml",
    "node/node.yaml",
    "new.yaml",
    "nodir/deeper/file.yaml",
    "emptydir",
    ".",
)
NODE_CONFIGS = (
    "node/node.yaml",
    "node-zcdp/node.yaml",
    "fed.yaml",
    "missing.yaml",
    "broken.yaml",
    "clients.csv",
    "binary.bin",
    "emptydir",
)
KINDS = ("count", "count_clients", "sum", "mean", "proportion", "histogram", "COUNT", "median")
COLUMNS = ("region", "service", "sessions", "episode_days", "client_id", "client_name", "nope")
CONDITIONS = tuple(w for w in WORDS if "=" in w)
COSTS = ("0.1", "0.5", "1", "0", "-1", "nan", "inf", "1e999", "1e-999", "1/3", "", "9" * 70)
NUMBER_LISTS = (*(n for n in NUMBERS if "," in n), "0,1,2", "1", "a,b", "")
DAYS = ("1", "397", "3650", "0", "-1", "2.5", "x")
CERT_FILES = (
    "certs/ngo-a.crt",
    "certs/coordinator-a.crt",
    "ca/ca.crt",
    "ca/ca.key",
    "certs/ngo-a.key",
    "clients.csv",
    "missing.crt",
    "emptydir",
)
KEY_FILES = ("certs/ngo-a.key", "certs/coordinator-a.key", "ca/ca.key", "ca/ca.crt", "missing.key")
CA_DIRS = ("ca", "certs", "missing", "emptydir", "clients.csv")
OUT_DIRS = ("out", "certs", "ca", "emptydir", "new/deeper")
NAMES = ("ngo-a", "ngo-b", "coordinator-a", "x", "localhost", "ca", "-bad", "a b", "a" * 70, "é")
ADDRESSES = ("127.0.0.1:1", "localhost:1", "[::1]:1", "127.0.0.1:0", "127.0.0.1:99999", ":1")

COORDINATOR: tuple[Command, ...] = (
    Command((), optional={"--version": FLAG, "-h": FLAG}),
    Command(
        ("query",),
        positionals=(KINDS, COLUMNS),
        required={"--config": FEDERATION_FILES, "--epsilon": COSTS},
        optional={
            "--where": CONDITIONS,
            "--by": COLUMNS,
            "--condition": CONDITIONS,
            "--bounds": NUMBER_LISTS,
            "--bins": NUMBER_LISTS,
            "--rho": COSTS,
            "--file": ("queries.yaml", "bad-queries.yaml", "missing.yaml", "fed.yaml", "."),
            "--name": ("improved_circumstances", "clients_by_service_region", "x", ""),
            "--nodes": ("ngo-a", "ngo-b", ",", "ngo-a,ngo-a", ""),
            "--require-all": FLAG,
            "--dry-run": FLAG,
            "--target-ci": ("1", "0", "-1", "nan", "inf", "1e-300", "x"),
            "--query-id": ("q1", "", "\t", "a" * 200),
            "--format": ("table", "json", "csv", "xml"),
            "--plot": ("plot.png", "emptydir", "nodir/p.png"),
            "--quiet": FLAG,
        },
    ),
    Command(("nodes",), required={"--config": FEDERATION_FILES}),
    Command(
        ("nodes", "add"),
        positionals=(NAMES, ADDRESSES),
        required={"--config": FEDERATION_FILES},
        optional={
            "--analyst": ("ana", "", "a" * 200, "\n"),
            "--server-name": ("ngo-a", "", "a" * 300),
            "--tls-ca": CERT_FILES,
            "--tls-cert": CERT_FILES,
            "--tls-key": KEY_FILES,
            "--insecure": FLAG,
        },
    ),
    Command(
        ("budget",),
        required={"--config": FEDERATION_FILES},
        optional={"--format": ("table", "json", "csv")},
    ),
    Command(
        ("certs", "ca"),
        positionals=(("newca", "ca", "emptydir", "clients.csv", "nodir/ca", "."),),
        optional={
            "--name": ("CA", "", " x", "\x01", "a" * 70),
            "--days": DAYS,
            "--force": FLAG,
        },
    ),
    Command(
        ("certs", "node"),
        positionals=(NAMES,),
        required={"--ca": CA_DIRS, "--out": OUT_DIRS},
        optional={
            "--dns": ("a.example", "-bad", "*.x", "a" * 300),
            "--ip": ("127.0.0.1", "::1", "999.1.1.1", "fe80::1%eth0"),
            "--days": DAYS,
            "--force": FLAG,
        },
    ),
    Command(
        ("certs", "coordinator"),
        positionals=(NAMES,),
        required={"--ca": CA_DIRS, "--out": OUT_DIRS},
        optional={"--days": DAYS, "--force": FLAG},
    ),
    Command(("certs", "show"), positionals=(CERT_FILES,)),
    Command(
        ("certs", "renew"),
        positionals=(CERT_FILES,),
        required={"--ca": CA_DIRS},
        optional={
            "--key": KEY_FILES,
            "--days": DAYS,
            "--if-expiring-within": ("0", "1", "400", "-1", "x"),
        },
    ),
)
NODE: tuple[Command, ...] = (
    Command((), optional={"--version": FLAG, "-h": FLAG}),
    Command(
        ("init",),
        positionals=(("n1", "node", "emptydir", "clients.csv", "nodir/deeper", ".", ""),),
        optional={
            "--address": ("127.0.0.1:50051", "0.0.0.0:1", "bad", "x:1 #", "{x:1", "a: b:1"),
            "--node-id": ("ngo-x", "-x", "bad id", "a" * 70, "ok\nx: 1"),
            "--force": FLAG,
            "--cert": CERT_FILES,
            "--key": KEY_FILES,
            "--client-ca": CERT_FILES,
            "--allow": ("coordinator-a", "", "a" * 200),
        },
    ),
    Command(
        ("synth",),
        required={"--out": ("s.csv", "clients.csv", "emptydir", "nodir/s.csv", ".")},
        optional={
            "--clients": ("0", "1", "10", "2000", "5000001", "-1", "abc"),
            "--seed": ("0", "7", "-1", "99999999999999999999"),
        },
    ),
    Command(
        ("import",),
        positionals=(
            (
                "clients.csv",
                "garbage.csv",
                "records.sqlite",
                "empty.txt",
                "binary.bin",
                "emptydir",
                "missing.csv",
            ),
        ),
        required={"--config": NODE_CONFIGS},
        optional={
            "--table": ("records", "sqlite_master", 'x"; DROP TABLE records; --', ""),
            "--allow-bad-rows": FLAG,
        },
    ),
    Command(
        ("budget",),
        required={"--config": NODE_CONFIGS},
        optional={"--format": ("table", "json", "csv")},
    ),
    *(c for c in COORDINATOR if c.path[:1] == ("certs",)),
)
# Never drawn: `serve` runs until it is signalled.
FORBIDDEN_WORDS = frozenset({"serve"})


def fitting(pool: Pool) -> st.SearchStrategy[str]:
    """Mostly a value that fits the option (the pool's first is a good one), or anything."""
    if not pool:
        return token()
    return st.one_of(st.just(pool[0]), st.sampled_from(pool), token())


@st.composite
def structured_line(draw: st.DrawFn, commands: tuple[Command, ...]) -> list[str]:
    """A real command with (mostly) its required parts and a few options, in any order."""
    command = draw(st.sampled_from(commands))
    groups: list[list[str]] = []
    for pool in command.positionals:
        if draw(st.integers(0, 9)):
            groups.append([draw(fitting(pool))])
    for option, pool in command.required.items():
        if draw(st.integers(0, 9)):
            groups.append([option, draw(fitting(pool))])
    if command.optional:
        for option in draw(st.lists(st.sampled_from(sorted(command.optional)), max_size=4)):
            pool = command.optional[option]
            if not pool:
                groups.append([option])
            elif draw(st.integers(0, 7)):
                groups.append([option, draw(fitting(pool))])
            else:
                groups.append([f"{option}={draw(fitting(pool))}"])
    if draw(st.integers(0, 4)) == 0:
        groups.append([draw(token())])
    ordered = draw(st.permutations(groups))
    argv = [*command.path, *(word for group in ordered for word in group)]
    return [word for word in argv if word not in FORBIDDEN_WORDS]


@st.composite
def wild_line(draw: st.DrawFn, commands: tuple[Command, ...]) -> list[str]:
    """A real command, then any options (values or none), positionals and garbage."""
    command = draw(st.sampled_from(commands))
    every = sorted({o for c in commands for o in c.options})
    argv = list(command.path)
    for _ in range(draw(st.integers(0, 7))):
        kind = draw(st.sampled_from(("own", "any", "positional", "garbage")))
        if (kind == "own" and command.options) or kind == "any":
            argv.append(draw(st.sampled_from(command.options if kind == "own" else every)))
            if draw(st.integers(0, 4)):
                argv.append(draw(token()))
        elif kind == "positional":
            argv.append(draw(st.sampled_from(FILES + WORDS)))
        else:
            argv.append(draw(token()))
    if draw(st.integers(0, 9)) == 0:
        argv = draw(st.permutations(argv))
    return [word for word in argv if word not in FORBIDDEN_WORDS]


def command_line(commands: tuple[Command, ...]) -> st.SearchStrategy[list[str]]:
    return st.one_of(structured_line(commands), structured_line(commands), wild_line(commands))


_INT_TOKEN = re.compile(r"(?:--[a-z-]+=)?(.*)", re.DOTALL)


def keep_synth_small(argv: list[str]) -> list[str]:
    """`synth --clients N` with N up to 5,000,000 is valid and slow: cap N at 2000."""
    if "synth" not in argv:
        return argv
    out = []
    for word in argv:
        match = _INT_TOKEN.fullmatch(word)
        assert match is not None
        try:
            value = int(match[1])
        except ValueError:
            out.append(word)
            continue
        out.append(word.replace(match[1], "2000") if 2000 < value <= 5_000_000 else word)
    return out


# ---------------------------------------------------------------- the property for commands


@dataclass(frozen=True)
class Run:
    argv: list[str]
    code: int
    out: str
    err: str


def run_cli(
    main: Callable[[Sequence[str] | None], int],
    argv: list[str],
    capsys: pytest.CaptureFixture[str],
) -> Run:
    try:
        code = main(argv)
    except BaseException as exc:  # the property: main never raises, not even SystemExit
        pytest.fail(f"{argv!r} raised {type(exc).__name__}: {exc}")
    out, err = capsys.readouterr()
    return Run(argv, code, out, err)


def check_run(run: Run) -> None:
    assert isinstance(run.code, int) and not isinstance(run.code, bool), run
    assert "Traceback" not in run.err and "Traceback" not in run.out, run
    assert run.code in (0, 2, 3, 4), f"exit {run.code} for {run.argv!r}:\n{run.err}"
    note(f"exit {run.code}: {run.err.splitlines()[0][:50] if run.err else ''}")


@settings(CLI_SETTINGS, max_examples=400 * SCALE)
@given(lines=st.lists(command_line(COORDINATOR), min_size=1, max_size=3))
def test_tiaki_command_lines_never_crash(
    workspace: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    lines: list[list[str]],
) -> None:
    with fresh_copy(workspace, tmp_path):
        for argv in lines:
            check_run(run_cli(tiaki_main, argv, capsys))


@settings(CLI_SETTINGS, max_examples=400 * SCALE)
@given(lines=st.lists(command_line(NODE), min_size=1, max_size=3))
def test_tiaki_node_command_lines_never_crash(
    workspace: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    lines: list[list[str]],
) -> None:
    with fresh_copy(workspace, tmp_path):
        for argv in lines:
            check_run(run_cli(node_main, keep_synth_small(argv), capsys))


def test_the_workspace_commands_work_when_used_properly(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The fuzz above is only meaningful if the files it names are good ones."""
    with fresh_copy(workspace, tmp_path):
        good = [
            (node_main, ["import", "--config", "node/node.yaml", "clients.csv"], 0),
            (node_main, ["budget", "--config", "node/node.yaml", "--format", "json"], 0),
            (node_main, ["budget", "--config", "node-zcdp/node.yaml"], 2),
            (node_main, ["certs", "show", "certs/ngo-a.crt"], 0),
            (tiaki_main, ["query", "count", "--epsilon", "0.1", "--config", "fed.yaml"], 4),
            (
                tiaki_main,
                ["query", "--file", "queries.yaml", "--name", "x", "--config", "fed.yaml"],
                2,
            ),
            (tiaki_main, ["budget", "--config", "fed-tls.yaml"], 4),
            (tiaki_main, ["nodes", "add", "ngo-b", "127.0.0.1:2", "--config", "fed.yaml"], 0),
        ]
        for main, argv, expected in good:
            run = run_cli(main, argv, capsys)
            check_run(run)
            assert run.code == expected, run


# ---------------------------------------------------------------- YAML documents

YAML_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
    st.dates(),
)
YAML_VALUES: st.SearchStrategy[Any] = st.recursive(
    YAML_SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=12), st.integers()), children, max_size=4),
    ),
    max_leaves=12,
)
YAML_FRAGMENTS = (
    "2020-13-45",
    "2020-02-30",
    "0000-01-01",
    "!!binary x",
    "!!python/object/apply:os.system ['true']",
    "!!str",
    "&a [*a]",
    "*undefined",
    "<<: *x",
    "<<: [1]",
    "? [1]\n: 2",
    "? {a: 1}\n: 2",
    "{",
    "'",
    '"\\0"',
    '"\\x00"',
    "\t",
    "%YAML 1.1\n---",
    "---\n---",
    "...",
    "~",
    ".nan",
    "-.inf",
    "0o777",
    "0x_1",
    "1_000",
    "9" * 5000,
    "\ufeff",
    "\x85",
    "key: value\nkey: value",
    "[" * 50 + "]" * 50,
    "- - - - - - - -",
)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            yield from _paths(value, (*prefix, index))


@st.composite
def mutated_document(draw: st.DrawFn, base: Any, keys: Sequence[str]) -> Any:
    """``base`` with a few values replaced, keys dropped or added, types changed."""
    doc = yaml.safe_load(yaml.safe_dump(base))  # a deep copy
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(list(_paths(doc))))
        if not path:
            if draw(st.integers(0, 5)) == 0:
                doc = draw(YAML_VALUES)
            continue
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        last = path[-1]
        action = draw(st.sampled_from(("replace", "replace", "drop", "add", "wrap")))
        if action == "replace":
            parent[last] = draw(YAML_VALUES)
        elif action == "drop":
            del parent[last]
        elif action == "wrap":
            parent[last] = [parent[last]]
        elif isinstance(parent, dict):
            parent[draw(st.one_of(st.sampled_from(keys), st.text(max_size=10)))] = draw(YAML_VALUES)
        else:
            parent.append(draw(YAML_VALUES))
    return doc


@st.composite
def damaged_text(draw: st.DrawFn, text: str) -> str:
    """YAML text with fragments inserted at line starts or characters overwritten."""
    lines = text.splitlines()
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(lines)))
        if draw(st.booleans()):
            indent = " " * draw(st.sampled_from((0, 2, 4, 6)))
            key = draw(st.sampled_from(("", "a: ", "- ", "kind: ", "epsilon: ", "analyst: ")))
            lines.insert(at, indent + key + draw(st.sampled_from(YAML_FRAGMENTS)))
        elif lines:
            line = lines[min(at, len(lines) - 1)]
            cut = draw(st.integers(0, len(line)))
            lines[min(at, len(lines) - 1)] = line[:cut] + draw(safe_text(8)) + line[cut:]
    return "\n".join(lines) + "\n"


def documents(base: Any, keys: Sequence[str]) -> st.SearchStrategy[str | bytes]:
    base_text = yaml.safe_dump(base, sort_keys=False)
    return st.one_of(
        YAML_VALUES.map(yaml.safe_dump),
        mutated_document(base, keys).map(yaml.safe_dump),
        mutated_document(base, keys).map(yaml.safe_dump),
        damaged_text(base_text),
        damaged_text(base_text),
        st.sampled_from(YAML_FRAGMENTS),
        st.binary(max_size=64),
        st.just(b"\xff\xfe" + base_text.encode("utf-16-le")),
    )


def check_loader(
    load: Callable[[Path], object],
    expected: type[Exception],
    path: Path,
    content: str | bytes,
) -> None:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    try:
        load(path)
    except expected as exc:  # fuzzed input may or may not be refused; both are checked
        assert "Traceback" not in str(exc)  # noqa: PT017
        note(expected.__name__)
    except Exception as exc:
        raise AssertionError(
            f"{load.__name__} raised {type(exc).__name__}: {exc} for:\n{content!r}"
        ) from exc
    else:
        note("loaded")


NODE_BASE = yaml.safe_load(TEMPLATE.read_text(encoding="utf-8"))
NODE_KEYS = ("version", "node_id", "data_dir", "server", "schema", "policy", "tls", "type")
FEDERATION_KEYS = (
    "version",
    "analyst",
    "identity",
    "ledger",
    "defaults",
    "tls",
    "insecure",
    "nodes",
    "name",
    "address",
    "server_name",
)
QUERY_BASE = yaml.safe_load(EXAMPLE_QUERIES.read_text(encoding="utf-8"))
QUERY_KEYS = (
    "version",
    "queries",
    "kind",
    "description",
    "column",
    "where",
    "by",
    "condition",
    "bounds",
    "bins",
    "epsilon",
    "rho",
)
FEDERATION_BASE = {
    **FEDERATION,
    "tls": {"ca": "ca.crt", "cert": "c.crt", "key": "c.key"},
    "nodes": [
        {"name": "ngo-a", "address": "127.0.0.1:1", "server_name": "ngo-a"},
        {"name": "ngo-b", "address": "[::1]:2"},
    ],
}

LOADER_SETTINGS = settings(CLI_SETTINGS, max_examples=200 * SCALE)


@LOADER_SETTINGS
@given(content=documents(QUERY_BASE, QUERY_KEYS))
def test_query_files_load_or_raise_query_file_error(tmp_path: Path, content: str | bytes) -> None:
    check_loader(load_query_file, QueryFileError, tmp_path / "queries.yaml", content)


@LOADER_SETTINGS
@given(content=documents(FEDERATION_BASE, FEDERATION_KEYS))
def test_federation_files_load_or_raise_federation_config_error(
    tmp_path: Path, content: str | bytes
) -> None:
    check_loader(load_federation, FederationConfigError, tmp_path / "federation.yaml", content)


@LOADER_SETTINGS
@given(content=documents(NODE_BASE, NODE_KEYS))
def test_node_configs_load_or_raise_config_error(tmp_path: Path, content: str | bytes) -> None:
    check_loader(load_config, ConfigError, tmp_path / "node.yaml", content)


# ---------------------------------------------------------------- regressions found by the fuzz


def test_certs_with_a_huge_days_is_a_usage_error(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with fresh_copy(workspace, tmp_path):
        run = run_cli(tiaki_main, ["certs", "ca", "ca2", "--days", "99999999"], capsys)
    assert run.code == 2, run


def test_certs_into_an_existing_file_is_a_usage_error(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with fresh_copy(workspace, tmp_path):
        run = run_cli(node_main, ["certs", "ca", "clients.csv"], capsys)
    assert run.code == 2, run


@pytest.mark.parametrize("certificate", [".", ""])
def test_certs_renew_of_dot_is_a_usage_error(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], certificate: str
) -> None:
    with fresh_copy(workspace, tmp_path):
        run = run_cli(tiaki_main, ["certs", "renew", certificate, "--ca", "ca"], capsys)
    assert run.code == 2, run


def test_nodes_add_into_a_missing_folder_is_a_usage_error(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with fresh_copy(workspace, tmp_path):
        run = run_cli(
            tiaki_main, ["nodes", "add", "x", "127.0.0.1:5", "--config", "nodir/f.yaml"], capsys
        )
    assert run.code == 2, run


def test_nodes_add_with_a_long_analyst_is_a_usage_error(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["nodes", "add", "x", "127.0.0.1:5", "--config", "new.yaml", "--analyst", "a" * 200]
    with fresh_copy(workspace, tmp_path):
        run = run_cli(tiaki_main, argv, capsys)
    assert run.code == 2, run


BAD_DATE_FEDERATION = "analyst: fuzz\nnodes: [{name: a, address: '127.0.0.1:1'}]\nx: 2020-13-45\n"


@pytest.mark.parametrize(
    "text",
    [
        "x: 2020-13-45\n",
        "version: 1\nqueries:\n  a: {kind: count, epsilon: 2020-02-30}\n",
        "x: " + "9" * 5000 + "\n",
        "[" * 5000 + "]" * 5000,
    ],
    ids=["bad-month", "bad-day", "huge-int", "deep"],
)
@pytest.mark.parametrize(
    ("load", "error"),
    [
        (load_query_file, QueryFileError),
        (load_federation, FederationConfigError),
        (load_config, ConfigError),
    ],
    ids=["query-file", "federation", "node-config"],
)
def test_odd_yaml_scalars_and_deep_nesting_are_file_errors(
    tmp_path: Path, text: str, load: Callable[[Path], object], error: type[Exception]
) -> None:
    path = tmp_path / "file.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(error):
        load(path)


@pytest.mark.parametrize("which", ["tiaki", "tiaki-node"])
def test_a_bad_date_in_a_file_is_a_usage_error_in_both_clis(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], which: str
) -> None:
    path = tmp_path / "file.yaml"
    path.write_text(BAD_DATE_FEDERATION, encoding="utf-8")
    if which == "tiaki":
        run = run_cli(
            tiaki_main, ["query", "count", "--epsilon", "0.1", "--config", str(path)], capsys
        )
    else:
        run = run_cli(node_main, ["budget", "--config", str(path)], capsys)
    assert run.code == 2, run


@pytest.mark.parametrize("text", ["? [a, b]\n: 1\n", "version: 1\nqueries:\n  ? {x: 1}\n  : 1\n"])
def test_an_unhashable_yaml_key_is_a_query_file_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "queries.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(QueryFileError):
        load_query_file(path)


def _node_config_with(**changes: Any) -> str:
    raw = yaml.safe_load(TEMPLATE.read_text(encoding="utf-8"))
    raw.update(changes)
    return yaml.safe_dump(raw)


@pytest.mark.parametrize(
    ("text", "load", "error"),
    [
        (_node_config_with(data_dir="a\x00b"), load_config, ConfigError),
        ('analyst: a\nledger: "x\\0y"\n', load_federation, FederationConfigError),
        (
            'analyst: a\ntls: {ca: "x\\0", cert: a, key: b}\n',
            load_federation,
            FederationConfigError,
        ),
    ],
    ids=["node-data-dir", "federation-ledger", "federation-tls"],
)
def test_a_nul_in_a_path_is_a_file_error(
    tmp_path: Path, text: str, load: Callable[[Path], object], error: type[Exception]
) -> None:
    path = tmp_path / "file.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(error):
        load(path)


@pytest.mark.parametrize(
    "extra",
    [
        ["--allow", "Ngā-coordinator"],
        ["--allow", "\x07"],
        ["--cert", "tāone.crt", "--key", "k", "--client-ca", "c", "--allow", "coordinator-a"],
    ],
    ids=["macron-allow", "control-allow", "macron-cert-path"],
)
def test_init_with_non_ascii_allow_or_cert_paths_works(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str]
) -> None:
    run = run_cli(node_main, ["init", str(tmp_path / "d"), *extra], capsys)
    assert run.code == 0, run


def test_init_with_an_ipv6_address_works(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = run_cli(node_main, ["init", str(tmp_path / "d"), "--address", "[::1]:50051"], capsys)
    assert run.code == 0, run


@pytest.mark.parametrize("within", ["999999999", "99999999999999999999", "-99999999999999999999"])
@pytest.mark.parametrize("which", ["tiaki", "tiaki-node"])
def test_renew_with_a_huge_if_expiring_within_is_a_usage_error(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], which: str, within: str
) -> None:
    argv = ["certs", "renew", "certs/ngo-a.crt", "--ca", "ca", "--if-expiring-within", within]
    with fresh_copy(workspace, tmp_path):
        run = run_cli(tiaki_main if which == "tiaki" else node_main, argv, capsys)
    assert run.code == 2, run


@pytest.mark.parametrize("data_dir", ["elsewhere/dāta", "ABSOLUTE"])
def test_init_with_a_data_dir_puts_the_salt_and_signing_key_there(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], data_dir: str
) -> None:
    wanted = str(tmp_path / "var" / "tiaki") if data_dir == "ABSOLUTE" else data_dir
    run = run_cli(node_main, ["init", str(tmp_path / "d"), "--data-dir", wanted], capsys)
    assert run.code == 0, run
    config = load_config(tmp_path / "d" / "node.yaml")
    expected = Path(wanted) if Path(wanted).is_absolute() else tmp_path / "d" / wanted
    assert config.data_dir == expected.resolve()
    assert (expected / "node.salt").exists() and (expected / "signing.key").exists()
    assert (expected / "signing.key").stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / "d" / "data").exists()
