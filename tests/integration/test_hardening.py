"""The holes an adversarial review found, each closed and pinned against a real node.

Real gRPC servers on port 0 (in this process, or ``tiaki-node serve`` as a
real subprocess where a signal or a second process matters), mutual TLS with
certificates from the project's own CA tool, real SQLite ledgers.
"""

from __future__ import annotations

import hashlib
import logging
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from coordinator.client import NodeClient, new_query_id
from node.config import load_config
from tests.conftest import ALLOWED_COORDINATORS, FederationPki, write_node_config
from tests.integration.conftest import LiveNode, status_code
from tiaki import certs
from tiaki.budget import PrivacyDefinition
from tiaki.chain import read_entries
from tiaki.errors import TiakiError
from tiaki.ledger_export import parse_export
from tiaki.ledger_records import ChargeRecord, PolicyRecord, parse_record
from tiaki.metadata import IDENTITY_METADATA_KEY
from tiaki.query import PrivacyCost, Query, QueryKind
from tiaki.v1 import node_pb2 as pb
from tiaki.v1 import node_pb2_grpc

BIN = Path(sys.executable).parent
PURE = PrivacyDefinition.PURE


def count(cost: str = "0.1") -> Query:
    return Query(QueryKind.COUNT, PrivacyCost.parse(PURE, cost))


def entries_and_budget(node: LiveNode) -> tuple[int, Any]:
    return len(node.running.service.ledger.entries()), node.budget()


# ---------------------------------------------------------------- 1. identity from the certificate


def _cert_without_cn(
    pki: FederationPki, out: Path, subject: x509.Name, sans: list[x509.GeneralName]
) -> tuple[Path, Path]:
    """A client certificate signed by the federation CA (made by the project's tool) whose
    subject has no common name: an empty subject, or only ``O=``, as SAN-only PKI issues."""
    ca_cert = x509.load_pem_x509_certificate((pki.ca_dir / certs.CA_CERT).read_bytes())
    ca_key = serialization.load_pem_private_key(
        (pki.ca_dir / certs.CA_KEY).read_bytes(), password=None
    )
    key = ec.generate_private_key(ec.SECP256R1())
    now = ca_cert.not_valid_before_utc
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(ca_cert.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    if sans:
        # An empty subject makes the SAN extension critical (RFC 5280, 4.2.1.6).
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=not subject)
    cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    out.mkdir(parents=True, exist_ok=True)
    crt, pem_key = out / "client.crt", out / "client.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem_key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return crt, pem_key


def _stub(node: LiveNode, pki: FederationPki, crt: Path, key: Path) -> node_pb2_grpc.NodeStub:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca_cert.read_bytes(),
        private_key=key.read_bytes(),
        certificate_chain=crt.read_bytes(),
    )
    channel = grpc.secure_channel(
        node.address, credentials, options=[("grpc.ssl_target_name_override", node.config.node_id)]
    )
    return node_pb2_grpc.NodeStub(channel)


@pytest.fixture
def guarded(
    make_node_config: Callable[..., Path], start_node: Callable[..., LiveNode], synth_csv: Path
) -> LiveNode:
    policy = {
        "budget": {"limit": "5", "period": "none"},
        "per_query_max": "1",
        "coordinators": [{"identity": name} for name in ALLOWED_COORDINATORS],
        "auditors": [{"identity": "evaluator"}],
    }
    return start_node(make_node_config(policy=policy), synth_csv)


@pytest.mark.parametrize(
    "subject",
    [x509.Name([]), x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "msd")])],
    ids=["empty subject", "O only"],
)
@pytest.mark.parametrize("claim", ["msd-coordinator", "evaluator"])
def test_a_certificate_naming_nobody_is_refused_whatever_it_claims(
    guarded: LiveNode,
    pki: FederationPki,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    subject: x509.Name,
    claim: str,
) -> None:
    crt, key = _cert_without_cn(pki, tmp_path / "anon", subject, [])
    fingerprint = certs.fingerprint(crt.read_bytes())
    stub = _stub(guarded, pki, crt, key)
    metadata = ((IDENTITY_METADATA_KEY, claim),)
    # Answered once by the real coordinator, so a replay of its id would read its answer.
    with guarded.client("msd-coordinator") as real:
        real.query(count(), query_id="their-question", analyst="jo")
    before = entries_and_budget(guarded)
    request = pb.QueryRequest(
        query_id="their-question", analyst="x", kind=pb.COUNT, cost=pb.PrivacyCost(epsilon="0.1")
    )
    calls: list[Callable[[], object]] = [
        lambda: stub.GetInfo(pb.GetInfoRequest(), metadata=metadata, timeout=10),
        lambda: stub.GetBudget(pb.GetBudgetRequest(), metadata=metadata, timeout=10),
        lambda: stub.Plan(request, metadata=metadata, timeout=10),
        lambda: stub.Query(request, metadata=metadata, timeout=10),
        lambda: list(stub.ExportLedger(pb.ExportLedgerRequest(), metadata=metadata, timeout=10)),
    ]
    caplog.set_level(logging.WARNING, logger="tiaki.node.access")
    for call in calls:
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "names no identity" in (info.value.details() or "")
    assert entries_and_budget(guarded) == before
    assert any(fingerprint in record.getMessage() for record in caplog.records)


def test_a_san_only_certificate_is_known_by_its_first_dns_name(
    guarded: LiveNode, pki: FederationPki, tmp_path: Path
) -> None:
    crt, key = _cert_without_cn(
        pki, tmp_path / "san", x509.Name([]), [x509.DNSName("coordinator-a")]
    )
    stub = _stub(guarded, pki, crt, key)
    request = pb.QueryRequest(
        query_id="san-1", analyst="a", kind=pb.COUNT, cost=pb.PrivacyCost(epsilon="0.1")
    )
    stub.Query(request, metadata=((IDENTITY_METADATA_KEY, "msd-coordinator"),), timeout=10)
    (entry,) = guarded.running.service.ledger.entries()
    assert entry.identity == "coordinator-a"  # the certificate, not the claim


# ---------------------------------------------------------------- 2. policy reload, live


class ServeProcess:
    """``tiaki-node serve`` as a real process; its stdout lines are read as they come."""

    def __init__(self, config: Path, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [str(BIN / "tiaki-node"), "serve", "--config", str(config), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.readline()
        match = re.search(r"serving on (\S+)", line)
        if not match:
            self.proc.kill()
            raise AssertionError(f"node did not start: {line!r} {self.proc.communicate()}")
        self.address = match.group(1)

    def readline(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline()

    def wait_for(self, words: str) -> str:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.readline()
            if words in line:
                return line
        raise AssertionError(f"no line with {words!r}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


@pytest.fixture
def serving(tmp_path: Path, pki: FederationPki, synth_csv: Path) -> Iterator[Callable[..., Any]]:
    started: list[ServeProcess] = []

    def start(config: Path, *extra: str) -> ServeProcess:
        process = ServeProcess(config, *extra)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def _imported(
    directory: Path, pki: FederationPki, synth_csv: Path, **kwargs: Any
) -> tuple[Path, dict[str, Any]]:
    path = write_node_config(directory, pki=pki, **kwargs)
    subprocess.run(
        [str(BIN / "tiaki-node"), "import", "--config", str(path), str(synth_csv)],
        check=True,
        capture_output=True,
    )
    return path, yaml.safe_load(path.read_text(encoding="utf-8"))


def _client(pki: FederationPki, address: str, identity: str) -> NodeClient:
    return NodeClient(
        address,
        identity=identity,
        credentials=pki.channel_credentials(identity),
        server_name="ngo-test",
        timeout=20,
    )


def test_sighup_withdraws_a_coordinator_at_once_and_a_broken_file_changes_nothing(
    tmp_path: Path, pki: FederationPki, synth_csv: Path, serving: Callable[..., ServeProcess]
) -> None:
    config, raw = _imported(tmp_path / "n", pki, synth_csv)
    node = serving(config)
    with (
        _client(pki, node.address, "coordinator-a") as a,
        _client(pki, node.address, "coordinator-b") as b,
    ):
        a.query(count(), query_id="a-1", analyst="jo")
        b.query(count(), query_id="b-1", analyst="jo")

        raw["policy"]["coordinators"] = [
            g for g in raw["policy"]["coordinators"] if g["identity"] != "coordinator-a"
        ]
        config.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
        node.proc.send_signal(signal.SIGHUP)
        node.wait_for("policy reloaded")
        with pytest.raises(TiakiError) as info:  # on the connection it already holds
            a.query(count(), query_id="a-2", analyst="jo")
        assert status_code(info.value) is grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(TiakiError):
            a.budget()

        config.write_text("policy: [this is not\n", encoding="utf-8")
        node.proc.send_signal(signal.SIGHUP)
        assert "running policy stays in force" in node.wait_for("not reloaded")
        b.query(count(), query_id="b-2", analyst="jo")  # the reloaded policy still serves b
        with pytest.raises(TiakiError) as info:
            a.query(count(), query_id="a-3", analyst="jo")
        assert status_code(info.value) is grpc.StatusCode.PERMISSION_DENIED
        spent = b.budget().lifetime_spent
    assert node.stop() == 0
    assert spent == Fraction(3, 10)  # a-1, b-1, b-2: nothing for the refusals

    # The withdrawal is in the chain, before the charge that followed it.
    with sqlite3.connect(tmp_path / "n" / "data" / "ledger.sqlite") as conn:
        records = [parse_record(e) for e in read_entries(conn)]
    policies = [i for i, r in enumerate(records) if isinstance(r, PolicyRecord)]
    charges = [(i, r.query_id) for i, r in enumerate(records) if isinstance(r, ChargeRecord)]
    assert [q for _, q in charges] == ["a-1", "b-1", "b-2"]
    withdrawn = records[policies[-1]]
    assert isinstance(withdrawn, PolicyRecord)
    assert [g.identity for g in withdrawn.coordinators] == [
        n for n in ALLOWED_COORDINATORS if n != "coordinator-a"
    ]
    assert charges[1][0] < policies[-1] < charges[2][0]


def test_a_removed_client_ca_is_refused_on_a_connection_already_open(
    make_node_config: Callable[..., Path],
    start_node: Callable[..., LiveNode],
    synth_csv: Path,
    pki: FederationPki,
    tmp_path: Path,
) -> None:
    config_path = make_node_config(node_id="aging", server={"max_connection_age_seconds": 1})
    raw = yaml.safe_load(config_path.read_text())
    own_ca = config_path.parent / "client-ca.crt"
    own_ca.write_bytes(pki.ca_cert.read_bytes())
    raw["server"]["tls"]["client_ca"] = str(own_ca)
    config_path.write_text(yaml.safe_dump(raw))
    node = start_node(config_path, synth_csv)
    other = tmp_path / "other-ca"
    certs.create_ca(other, "another CA")
    with node.client("coordinator-a") as client:
        client.query(count(), query_id="before", analyst="a")
        before = entries_and_budget(node)
        replacement = own_ca.with_name("client-ca.new")
        replacement.write_bytes((other / certs.CA_CERT).read_bytes())
        replacement.replace(own_ca)  # the federation CA is no longer trusted
        deadline = time.monotonic() + 20
        refusal = None
        while time.monotonic() < deadline and refusal is None:
            try:
                client.query(count(), query_id=new_query_id(), analyst="a")
            except TiakiError as exc:
                refusal = exc
            time.sleep(0.2)
    assert refusal is not None, "the old connection kept being served"
    assert status_code(refusal) is grpc.StatusCode.UNAVAILABLE
    # Calls made before the connection aged out were answered and charged; after, none.
    entries, budget = entries_and_budget(node)
    assert budget.lifetime_spent - before[1].lifetime_spent == Fraction(entries - before[0], 10)


# ---------------------------------------------------------------- 3. one node per port and dir


def test_a_second_node_on_the_same_address_or_data_directory_is_refused(
    tmp_path: Path, pki: FederationPki, synth_csv: Path, serving: Callable[..., ServeProcess]
) -> None:
    first_config, _ = _imported(tmp_path / "first", pki, synth_csv)
    first = serving(first_config)
    second_config, _ = _imported(tmp_path / "second", pki, synth_csv)
    same_port = subprocess.run(
        [str(BIN / "tiaki-node"), "serve", "--config", str(second_config), "--address",
         first.address],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert same_port.returncode == 2
    assert "address in use" in same_port.stderr and "Traceback" not in same_port.stderr
    same_dir = subprocess.run(
        [str(BIN / "tiaki-node"), "serve", "--config", str(first_config), "--address",
         "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert same_dir.returncode == 2
    assert f"pid {first.proc.pid}" in same_dir.stderr
    with _client(pki, first.address, "coordinator-a") as client:  # the first is unharmed
        assert client.query(count(), query_id="q", analyst="a").node_id == "ngo-test"
    assert first.stop() == 0
    # The lock goes with the process: the directory can be served again.
    again = serving(first_config)
    assert again.stop() == 0


# ---------------------------------------------------------------- 4. the dataset version


def test_the_published_version_is_random_per_import(guarded: LiveNode, synth_csv: Path) -> None:
    from node.importer import import_csv

    first = guarded.running.service.info().dataset_version
    assert import_csv(guarded.config, synth_csv).committed  # the very same records
    assert guarded.running.service.datasets.reload_if_changed()
    with guarded.client() as client:
        second = client.info().dataset_version
        answer = client.query(count(), query_id="v", analyst="a")
    assert second != first and re.fullmatch(r"[0-9a-f]{20}", second)
    assert answer.dataset_version == second


# ---------------------------------------------------------------- 5. commitments, not hashes


def test_the_ledger_commits_to_answers_so_other_readers_cannot_brute_force_them(
    guarded: LiveNode,
) -> None:
    from tiaki import receipts

    with guarded.client("coordinator-a") as asker:
        asker.query(count("0.5"), query_id="secret", analyst="jo")
        raw = asker._call(  # the asker's own copy, bytes and all (a free replay)
            "Query",
            pb.QueryRequest(
                query_id="secret", analyst="jo", kind=pb.COUNT, cost=pb.PrivacyCost(epsilon="0.5")
            ),
            pb.QueryResponse,
        )
    with guarded.client("coordinator-b") as reader:  # another coordinator reads the export
        export = parse_export(list(reader.export_ledger()), "export")
    (entry,) = [r for r in (parse_record(e) for e in export.entries) if isinstance(r, ChargeRecord)]
    committed = entry.body()
    assert "response_sha256" not in committed
    # What the reader can build: every field of the stored answer is public but the value.
    true_value = raw.cells[0].value
    candidates = set()
    for guess in range(int(true_value) - 3000, int(true_value) + 3000):
        stored = pb.QueryResponse()
        stored.CopyFrom(raw)
        stored.ClearField("budget")
        stored.ClearField("replayed")
        stored.ClearField("commitment_salt")
        stored.cells[0].value = float(guess)
        stored.cells[0].components[0].value = float(guess)
        data = stored.SerializeToString(deterministic=True)
        candidates.add(hashlib.sha256(data).hexdigest())
        candidates.add(receipts.commitment(b"", data))
    assert committed["response_commitment"] not in candidates
    # The asker, holding the salt it alone was sent, can prove what it received.
    assert len(raw.commitment_salt) == receipts.SALT_BYTES and raw.replayed
    assert receipts.commitment_of(raw) == committed["response_commitment"]
    # Another identity asking under the same id gets its own answer, never this salt.
    with guarded.client("coordinator-b") as other:
        theirs = other._call(
            "Query",
            pb.QueryRequest(
                query_id="secret", analyst="x", kind=pb.COUNT, cost=pb.PrivacyCost(epsilon="0.5")
            ),
            pb.QueryResponse,
        )
    assert not theirs.replayed and theirs.commitment_salt != raw.commitment_salt


# ---------------------------------------------------------------- 6. caps after a period change


def test_an_identity_cap_survives_a_change_of_budget_period(
    make_node_config: Callable[..., Path], start_node: Callable[..., LiveNode], synth_csv: Path
) -> None:
    policy = {
        "budget": {"limit": "5", "period": "yearly"},
        "per_query_max": "0.5",
        "coordinators": [{"identity": "coordinator-a", "budget_cap": "1"}],
    }
    path = make_node_config(policy=policy)
    node = start_node(path, synth_csv)
    with node.client() as client:
        client.query(count("0.5"), query_id="d1", analyst="a")
        client.query(count("0.5"), query_id="d2", analyst="a")
        raw = yaml.safe_load(path.read_text())
        raw["policy"]["budget"]["period"] = "monthly"
        path.write_text(yaml.safe_dump(raw))
        node.running.service.apply_config(load_config(path))  # what SIGHUP does
        before = entries_and_budget(node)
        with pytest.raises(TiakiError) as info:
            client.query(count("0.5"), query_id="d3", analyst="a")
    assert status_code(info.value) is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "remaining budget of coordinator-a" in str(info.value)
    assert entries_and_budget(node) == before


# ---------------------------------------------------------------- 7. exact charges


def test_the_charge_is_exactly_what_was_asked_with_opendps_map_beside_it(
    guarded: LiveNode,
) -> None:
    mean = Query(
        QueryKind.MEAN,
        PrivacyCost.parse(PURE, "0.1"),
        column="sessions",
    )
    with guarded.client() as client:
        plan = client.plan(mean)
        answers = [
            client.query(count("0.1"), query_id="c1", analyst="a"),
            client.query(mean, query_id="m1", analyst="a"),
            client.query(count("0.1"), query_id="c2", analyst="a"),
        ]
        status = client.budget()
    assert plan.charge == PrivacyCost(PURE, Fraction(1, 10))  # exactly ε 0.1
    assert [a.charged.amount for a in answers] == [Fraction(1, 10)] * 3
    assert status.lifetime_spent == Fraction(3, 10)  # reads as 0.3, not 0.2999999...
    for answer in answers:
        assert answer.privacy_map is not None
        assert 0 < answer.privacy_map.amount <= answer.charged.amount
    entries = guarded.running.service.ledger.entries()
    assert [e.charge for e in entries] == [Fraction(1, 10)] * 3
    assert all(e.privacy_map is not None and e.privacy_map <= e.charge for e in entries)
    # The mean's 0.1 was split exactly: each component's noise fits 0.05.
    scales = {c.name: c.scale for c in answers[1].cells[0].components}
    assert set(scales) == {"shifted_sum", "count"}
    with guarded.client("evaluator") as auditor:
        lines = list(auditor.export_ledger())
    charges = [
        parse_record(e).body() for e in parse_export(lines, "x").entries if e.type == "charge"
    ]
    assert [c["charge"] for c in charges] == ["0.1", "0.1", "0.1"]
    assert all(Fraction(c["privacy_map"]) <= Fraction(c["charge"]) for c in charges)


# ---------------------------------------------------------------- 8. one grammar for amounts


REJECTED_AMOUNTS = [
    "1_0",  # Python's Decimal and Fraction read this as 10
    "\u0661",  # ARABIC-INDIC DIGIT ONE
    "\uff11",  # FULLWIDTH DIGIT ONE
    "1e-1",
    "1E1",
    "+0.1",
    "-0.1",
    " 0.1",
    "0.1 ",
    "0. 1",
    ".5",
    "5.",
    "0..1",
    "1/10",
    "0x1",
    "NaN",
    "inf",
    "0." + "0" * 31 + "1",  # more than 30 places
    "1" * 65,
    "",
]


@pytest.mark.parametrize("amount", REJECTED_AMOUNTS)
def test_every_other_way_of_writing_an_amount_is_refused_on_the_wire(
    guarded: LiveNode, amount: str
) -> None:
    before = entries_and_budget(guarded)
    with guarded.client() as client, pytest.raises(TiakiError) as info:
        client.query_raw(
            pb.QueryRequest(
                query_id=new_query_id(),
                analyst="a",
                kind=pb.COUNT,
                cost=pb.PrivacyCost(epsilon=amount),
            )
        )
    assert status_code(info.value) is grpc.StatusCode.INVALID_ARGUMENT
    assert entries_and_budget(guarded) == before


@pytest.mark.parametrize("written", ["1_0", "0x10", "1e1", "+1", "1:30"])
def test_node_yaml_amounts_follow_the_same_grammar(tmp_path: Path, written: str) -> None:
    from node.config import ConfigError

    path = write_node_config(tmp_path)
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"(?m)^(    limit: ).*$", rf"\g<1>{written}", text, count=1)
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"policy\.budget\.limit"):
        load_config(path)


def test_yaml_decimals_are_read_as_written(tmp_path: Path) -> None:
    # YAML makes 0.00001 the float 1e-05; the amount is judged as the NGO wrote it.
    path = write_node_config(tmp_path)
    text = re.sub(r"(?m)^(  per_query_max: ).*$", r"\g<1>0.00001", path.read_text("utf-8"))
    path.write_text(text, encoding="utf-8")
    assert load_config(path).policy.per_query_max == Fraction(1, 100_000)


def test_the_cli_refuses_the_same_forms_and_spends_nothing(
    guarded: LiveNode, tmp_path: Path, pki: FederationPki
) -> None:
    federation = tmp_path / "federation.yaml"
    federation.write_text(
        yaml.safe_dump(
            {
                "analyst": "jo",
                "tls": pki.federation_tls("coordinator-a"),
                "nodes": [
                    {"name": "ngo-test", "address": guarded.address, "server_name": "ngo-test"}
                ],
            }
        ),
        encoding="utf-8",
    )
    before = entries_and_budget(guarded)
    for amount in ("1_0", "\u0661", "1e-1", " 0.1"):
        done = subprocess.run(
            [str(BIN / "tiaki"), "query", "--config", str(federation), "count", "--epsilon",
             amount],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 2, (amount, done.stderr)
        assert "plain decimal" in done.stderr and "Traceback" not in done.stderr
    assert entries_and_budget(guarded) == before


# ---------------------------------------------------------------- 9. the contract says what is done


def test_histogram_bins_are_as_the_contract_says(guarded: LiveNode) -> None:
    from node import engine

    query = Query(
        QueryKind.HISTOGRAM,
        PrivacyCost.parse(PURE, "0.1"),
        column="sessions",
        bin_edges=(0.0, 5.0, 10.0),
    )
    config = guarded.config
    plan = engine.plan(query, config.schema, config.policy)
    assert plan.bin_labels == ("[0, 5)", "[5, 10]")
    dataset = guarded.running.service.datasets.current
    (exact,) = engine.evaluate(plan, dataset, config.schema)
    values = dataset.numeric["sessions"]
    assert int(exact.values[0]) == int(((values >= 0) & (values < 5)).sum())
    assert int(exact.values[1]) == int(((values >= 5) & (values <= 10)).sum())  # closed
    assert int(exact.values.sum()) < len(values), "values above the last edge are not counted"
    proto = (Path(pb.__file__).with_name("node.proto")).read_text(encoding="utf-8")
    assert "the last bin is closed" in proto and "are not counted" in proto


def test_the_contract_names_every_component_and_the_identity_key(tmp_path: Path) -> None:
    from node.engine import plan as plan_query

    proto = (Path(pb.__file__).with_name("node.proto")).read_text(encoding="utf-8")
    comment = proto[proto.index("message Component") - 600 : proto.index("message Component")]
    config = load_config(write_node_config(tmp_path))
    for kind in QueryKind:
        column = None if kind in (QueryKind.COUNT, QueryKind.COUNT_CLIENTS,
                                  QueryKind.PROPORTION) else "sessions"  # fmt: skip
        query = Query(
            kind,
            PrivacyCost.parse(PURE, "0.1"),
            column=column,
            bin_edges=(0.0, 5.0) if kind is QueryKind.HISTOGRAM else (),
            condition=(_condition(),) if kind is QueryKind.PROPORTION else (),
        )
        for name in plan_query(query, config.schema, config.policy).components:
            assert f'"{name}"' in comment, f"{kind}: component {name!r} is not in node.proto"
    assert f'"{IDENTITY_METADATA_KEY}"' in proto


def _condition() -> Any:
    from tiaki.query import InSet

    return InSet("service", ("budgeting",))


# ---------------------------------------------------------------- 10, 11. set-up


def test_the_tests_data_lives_in_the_repository() -> None:
    from tests.conftest import PUMS_DIR, ROOT

    assert PUMS_DIR.is_relative_to(ROOT)
    for name in ("PUMS_dup.csv", "PUMS_null.csv", "README.md"):
        assert (PUMS_DIR / name).is_file(), name
    # Built, not written out, so that this check does not find itself.
    beside = "/".join(("..", "shared"))
    sources = [p for p in (ROOT / "tests").rglob("*.py")]
    assert not [p for p in sources if beside in p.read_text(encoding="utf-8")]


def test_serve_without_records_exits_with_a_code_systemd_will_not_restart(
    tmp_path: Path, pki: FederationPki
) -> None:
    from tests.unit.test_deploy_files import DEPLOY, unit_file

    config = write_node_config(tmp_path / "empty", pki=pki)
    done = subprocess.run(
        [str(BIN / "tiaki-node"), "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    unit = unit_file(DEPLOY / "systemd" / "tiaki-node.service")
    no_restart = {int(c) for c in unit["Service"]["RestartPreventExitStatus"][-1].split()}
    assert done.returncode == 4 and "no records" in done.stderr
    assert done.returncode in no_restart and 2 in no_restart
