"""Nodes behind NAT: a real hub, nodes that only dial out, the coordinator's own client.

Every node here opens no port: it pulls signed work from the hub over mutual
TLS, runs it through its own servicer and pushes back signed outcomes. The
coordinator reaches it with the same NodeClient calls as a direct node.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from coordinator.config import load_federation
from coordinator.fanout import Federation
from coordinator.federated import ask_federation
from coordinator.mirror import MirrorLedger
from tests.conftest import FederationPki
from tests.integration.hub_support import (
    COORDINATOR,
    HubNode,
    HubThread,
    coordinator_key,
    start_hub_node,
    write_hub_federation,
)
from tiaki.budget import PrivacyDefinition
from tiaki.envelopes import seal_envelope, work_id_of
from tiaki.errors import (
    NodeUnreachableError,
    PolicyViolationError,
)
from tiaki.query import PrivacyCost, Query, QueryKind
from tiaki.signing import create_signing_key
from tiaki.v1 import hub_pb2 as hub
from tiaki.v1 import hub_pb2_grpc
from tiaki.v1 import node_pb2 as pb

COUNT = Query(
    QueryKind.COUNT, PrivacyCost(PrivacyDefinition.PURE, Fraction(1, 2)), group_by=("region",)
)


@pytest.fixture
def relayed(
    tmp_path: Path, pki: FederationPki, hub_factory: Callable[..., HubThread], synth_csv: Path
) -> Iterator[tuple[HubThread, HubNode, Path]]:
    hub_thread = hub_factory(("ngo-nat",))
    signer = coordinator_key(tmp_path)
    node = start_hub_node(
        tmp_path, pki, hub_thread.address, "ngo-nat", synth_csv, signer=signer.public_text
    )
    fed = write_hub_federation(
        tmp_path / "federation.yaml",
        pki,
        hub_thread.address,
        {"ngo-nat": node.service.signing_key.public_text},
    )
    try:
        yield hub_thread, node, fed
    finally:
        node.stop()


def test_a_node_with_no_port_answers_through_the_hub_and_is_charged_once(
    relayed: tuple[HubThread, HubNode, Path],
) -> None:
    _, node, fed = relayed
    config = load_federation(fed)
    with Federation(config) as federation:
        client = federation.clients["ngo-nat"]
        info = client.info()
        assert info.node_id == "ngo-nat"
        first = client.query(COUNT, query_id="q-hub-1", analyst="ana")
        again = client.query(COUNT, query_id="q-hub-1", analyst="ana")
        assert not first.replayed and again.replayed
        assert [c.value for c in again.cells] == [c.value for c in first.cells]  # same noise
        lines = list(client.export_ledger())
        assert lines and '"type":"charge"' in "".join(lines).replace(" ", "")
    assert node.budget_spent() == Fraction(1, 2)
    (entry,) = node.service.ledger.entries()
    # The signer's grant names it: the ledger records the coordinator, never the hub.
    assert entry.identity == COORDINATOR and entry.query_id == "q-hub-1"


def test_a_federation_question_reaches_a_hub_node_like_any_other(
    relayed: tuple[HubThread, HubNode, Path],
) -> None:
    _, node, fed = relayed
    config = load_federation(fed)
    with Federation(config) as federation, MirrorLedger(config.ledger) as mirror:
        answer = ask_federation(federation, COUNT, analyst="ana", mirror=mirror)
    assert answer.released and answer.answered_nodes == ("ngo-nat",)
    assert answer.total_charged == Fraction(1, 2) == node.budget_spent()


def test_an_envelope_altered_on_the_way_is_refused_and_spends_nothing(
    relayed: tuple[HubThread, HubNode, Path], tmp_path: Path
) -> None:
    _, node, fed = relayed
    config = load_federation(fed)
    signer = coordinator_key(tmp_path)
    with Federation(config) as federation:
        channel = federation.clients["ngo-nat"]._transport._hub  # type: ignore[attr-defined]
        now = int(time.time())
        request = pb.QueryRequest(
            query_id="q-forged", analyst="ana", kind=pb.COUNT, cost=pb.PrivacyCost(epsilon="0.5")
        )
        signed = seal_envelope(
            signer, node_id="ngo-nat", method="Query", payload=request.SerializeToString(),
            issued_at=now, not_after=now + 30,
        )  # fmt: skip
        # A hub that raises the cost: one byte of the payload changed.
        altered = hub.SignedEnvelope(
            envelope=signed.envelope.replace(b"0.5", b"1.5"), signature=signed.signature
        )
        work_id = channel.call("Submit", hub.SubmitRequest(envelopes=[altered]), 10).work_ids[0]
        assert work_id == work_id_of(altered)
        outcome = _collect(channel, work_id)
        assert outcome.code == 7  # PERMISSION_DENIED
        assert "signature does not check" in outcome.message
    assert node.budget_spent() == 0 and not node.service.ledger.entries()


def _collected(channel: object, work_id: str) -> hub.Collected:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        reply = channel.call(  # type: ignore[attr-defined]
            "Collect", hub.CollectRequest(work_ids=[work_id], wait_seconds=5), 15
        )
        for ready in reply.ready:
            found: hub.Collected = ready
            return found
    raise AssertionError("no outcome")


def _collect(channel: object, work_id: str) -> hub.Outcome:
    return hub.Outcome.FromString(_collected(channel, work_id).outcome.outcome)


def test_an_outcome_that_is_not_the_nodes_is_refused_by_the_coordinator(
    relayed: tuple[HubThread, HubNode, Path], tmp_path: Path
) -> None:
    _, _, fed = relayed
    config = load_federation(fed)
    impostor = create_signing_key(tmp_path / "impostor.key").public_text
    wrong = config.model_copy(
        update={"nodes": (config.nodes[0].model_copy(update={"signing_key": impostor}),)}
    )
    with Federation(wrong) as federation, pytest.raises(NodeUnreachableError, match="not signed"):
        federation.clients["ngo-nat"].info()


def test_a_signer_the_policy_does_not_list_is_refused_before_any_work(
    tmp_path: Path, pki: FederationPki, hub_factory: Callable[..., HubThread], synth_csv: Path
) -> None:
    hub_thread = hub_factory(("ngo-nat",))
    coordinator_key(tmp_path)  # the federation's key exists, but the NGO listed no key
    node = start_hub_node(tmp_path, pki, hub_thread.address, "ngo-nat", synth_csv, signer=None)
    try:
        fed = write_hub_federation(
            tmp_path / "federation.yaml",
            pki,
            hub_thread.address,
            {"ngo-nat": node.service.signing_key.public_text},
        )
        with (
            Federation(load_federation(fed)) as federation,
            pytest.raises(PolicyViolationError, match="does not accept requests"),
        ):
            federation.clients["ngo-nat"].query(COUNT, query_id="q-1", analyst="ana")
        assert node.budget_spent() == 0
    finally:
        node.stop()


def test_a_request_past_its_deadline_is_refused_unspent_and_said_expired(
    tmp_path: Path, pki: FederationPki, hub_factory: Callable[..., HubThread], synth_csv: Path
) -> None:
    hub_thread = hub_factory(("ngo-nat",))
    signer = coordinator_key(tmp_path)
    # No skew allowance, and a coordinator whose deadline is already behind the node's clock.
    node = start_hub_node(
        tmp_path, pki, hub_thread.address, "ngo-nat", synth_csv,
        signer=signer.public_text, skew_seconds=0,
    )  # fmt: skip
    try:
        fed = write_hub_federation(
            tmp_path / "federation.yaml",
            pki,
            hub_thread.address,
            {"ngo-nat": node.service.signing_key.public_text},
        )
        with Federation(load_federation(fed)) as federation:
            channel = federation.clients["ngo-nat"]._transport._hub  # type: ignore[attr-defined]
            now = int(time.time())
            request = pb.QueryRequest(
                query_id="q-late", analyst="ana", kind=pb.COUNT,
                cost=pb.PrivacyCost(epsilon="0.5"),
            )  # fmt: skip
            late = seal_envelope(
                signer, node_id="ngo-nat", method="Query", payload=request.SerializeToString(),
                issued_at=now - 120, not_after=now - 60,
            )  # fmt: skip
            work_id = channel.call("Submit", hub.SubmitRequest(envelopes=[late]), 10).work_ids[0]
            outcome = _collect(channel, work_id)
            assert outcome.expired and outcome.code == 4  # DEADLINE_EXCEEDED
        assert node.budget_spent() == 0
    finally:
        node.stop()


def test_the_cli_adds_a_hub_node_asks_it_and_shows_it_connected(
    relayed: tuple[HubThread, HubNode, Path], tmp_path: Path, pki: FederationPki, cli: Any
) -> None:
    hub_thread, node, _ = relayed
    fed = tmp_path / "made-by-cli.yaml"
    tls = pki.federation_tls(COORDINATOR)
    made = cli(
        "nodes", "add", "ngo-nat", "--via-hub", hub_thread.address,
        "--hub-server-name", "tiaki-hub",
        "--signing-key", node.service.signing_key.public_text,
        "--analyst", "ana", "--tls-ca", tls["ca"], "--tls-cert", tls["cert"],
        "--tls-key", tls["key"], "--config", fed,
    )  # fmt: skip
    assert made.code == 0, made.err
    assert "via hub" in made.out
    # The coordinator signs with the key beside its mirror; the NGO granted that key.
    raw = yaml.safe_load(fed.read_text(encoding="utf-8"))
    raw["signing_key"] = str(tmp_path / "coordinator-signing.key")
    raw["identity"] = COORDINATOR
    fed.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    asked = cli("query", "count", "--by", "region", "--epsilon", "0.5", "--format", "json",
                "--config", fed)  # fmt: skip
    assert asked.code == 0, asked.err
    assert asked.json()["coverage"]["answered"] == ["ngo-nat"]
    listed = cli("nodes", "--config", fed)
    assert listed.code == 0, listed.err
    assert "via hub, connected now" in listed.out and "ngo-nat via hub" in listed.out
    assert node.budget_spent() == Fraction(1, 2)


def test_a_secure_sum_runs_through_the_hub_as_it_does_direct(
    tmp_path: Path, pki: FederationPki, hub_factory: Callable[..., HubThread], synth_csv: Path
) -> None:
    from coordinator.secure_question import ask_secure
    from tiaki.signing import create_signing_key as make_key

    names = ("ngo-h1", "ngo-h2", "ngo-h3")
    hub_thread = hub_factory(names)
    signer = coordinator_key(tmp_path)
    # Each node's ledger key made first (where the node will find it), so each can pin the others.
    keys = {n: make_key(tmp_path / n / "data" / "signing.key").public_text for n in names}
    nodes = []
    try:
        for name in names:
            secure = {
                "peers": [{"node_id": o, "signing_key": k} for o, k in keys.items() if o != name],
                "min_cohort": 3,
                "colluders": 0,
                "worst_case": {"per_query": "10", "lifetime": "100"},
            }
            nodes.append(
                start_hub_node(
                    tmp_path,
                    pki,
                    hub_thread.address,
                    name,
                    synth_csv,
                    signer=signer.public_text,
                    policy={"privacy_definition": "zcdp", "secure_aggregation": secure},
                )
            )
        fed = write_hub_federation(tmp_path / "federation.yaml", pki, hub_thread.address, keys)
        config = load_federation(fed)
        query = Query(
            QueryKind.COUNT, PrivacyCost(PrivacyDefinition.ZCDP, Fraction(1, 2)),
            group_by=("region",),
        )  # fmt: skip
        with Federation(config) as federation, MirrorLedger(config.ledger) as mirror:
            answer = ask_secure(federation, query, analyst="ana", mirror=mirror)
        assert answer.released and answer.secure is not None and answer.secure.summed == 3
        for node in nodes:
            assert node.budget_spent() == Fraction(1, 2)
            (entry,) = node.service.ledger.entries()
            assert entry.secure_session is not None and entry.identity == COORDINATOR
    finally:
        for node in nodes:
            node.stop()


def test_the_hub_answers_the_standard_health_check_and_refuses_strangers(
    pki: FederationPki, hub_factory: Callable[..., HubThread], tmp_path: Path
) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from coordinator.hub_client import HubChannel
    from tiaki.errors import TiakiError

    hub_thread = hub_factory(("ngo-nat",))
    options = [("grpc.ssl_target_name_override", "tiaki-hub")]
    with grpc.secure_channel(
        hub_thread.address, pki.channel_credentials(COORDINATOR), options=options
    ) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    # A certificate from the same CA that names nobody on the roster gets no work and
    # cannot submit any.
    stranger = HubChannel(
        hub_thread.address,
        identity="coordinator-z",
        credentials=pki.channel_credentials("coordinator-z"),
        server_name="tiaki-hub",
    )
    try:
        with pytest.raises(TiakiError, match="not a coordinator this hub admits"):
            stranger.call("Submit", hub.SubmitRequest(), 5)
    finally:
        stranger.close()
    with grpc.secure_channel(
        hub_thread.address,
        pki.channel_credentials("coordinator-z"),
        options=[("grpc.ssl_target_name_override", "tiaki-hub")],
    ) as channel:
        call = hub_pb2_grpc.HubStub(channel).Connect(iter([hub.NodeMessage(credit=1)]), timeout=5)
        with pytest.raises(grpc.RpcError) as refused:
            next(call)
        assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "not a node on this hub's roster" in refused.value.details()


def test_a_node_back_after_a_day_away_answers_what_is_still_due_and_never_what_expired(
    tmp_path: Path, pki: FederationPki, hub_factory: Callable[..., HubThread], synth_csv: Path
) -> None:
    from coordinator.hub_client import HubChannel

    hub_thread = hub_factory(("ngo-nat",))
    signer = coordinator_key(tmp_path)
    node = start_hub_node(
        tmp_path, pki, hub_thread.address, "ngo-nat", synth_csv, signer=signer.public_text
    )
    node.link.stop(timeout=2)  # away
    channel = HubChannel(
        hub_thread.address,
        identity=COORDINATOR,
        credentials=pki.channel_credentials(COORDINATOR),
        server_name="tiaki-hub",
    )
    try:
        now = int(time.time())
        day = 24 * 3600
        envelopes = {}
        # Asked over the last day; some with a deadline that has passed (beyond the
        # node's 5-minute skew allowance), some still due.
        for i, (issued, due) in enumerate(
            [(now - day, now - day + 60), (now - 3600, now - 1200), (now - day, now + 600),
             (now - 60, now + 3600)]
        ):  # fmt: skip
            request = pb.QueryRequest(
                query_id=f"q-day-{i}", analyst="ana", kind=pb.COUNT,
                cost=pb.PrivacyCost(epsilon="0.1"),
            )  # fmt: skip
            envelopes[i] = seal_envelope(
                signer, node_id="ngo-nat", method="Query", payload=request.SerializeToString(),
                issued_at=issued, not_after=due,
            )  # fmt: skip
        reply = channel.call("Submit", hub.SubmitRequest(envelopes=list(envelopes.values())), 10)
        work = dict(zip(envelopes, reply.work_ids, strict=True))
        from node.hub_link import start_hub_link
        from node.server import NodeServicer, gatekeeper_for

        # Back: the same node, its link again.
        node.link = start_hub_link(
            node.service, NodeServicer(node.service, gatekeeper_for(node.service))
        )
        done: dict[int, hub.Collected] = {}
        deadline = time.monotonic() + 20
        while len(done) < len(work) and time.monotonic() < deadline:
            ready = channel.call(
                "Collect",
                hub.CollectRequest(work_ids=[w for i, w in work.items() if i not in done],
                                   wait_seconds=3),
                10,
            )  # fmt: skip
            for item in ready.ready:
                done[next(i for i, w in work.items() if w == item.work_id)] = item
        assert done[0].expired and done[1].expired  # dropped by the hub, never delivered
        for i in (2, 3):
            outcome = hub.Outcome.FromString(done[i].outcome.outcome)
            assert outcome.code == 0, outcome.message
        assert node.budget_spent() == Fraction(2, 10)
        assert {e.query_id for e in node.service.ledger.entries()} == {"q-day-2", "q-day-3"}
    finally:
        channel.close()
        node.stop()


def test_a_hub_whose_certificate_names_another_is_refused_before_any_work(
    tmp_path: Path, pki: FederationPki, synth_csv: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from coordinator.hub.config import HubConfig, HubTls

    cert, key = pki.node("evil-hub")  # the same CA, another name
    impostor = HubThread(
        HubConfig(
            address="127.0.0.1:0",
            queue=tmp_path / "evil-queue.sqlite",
            tls=HubTls(cert=cert, key=key, client_ca=pki.ca_cert),
            nodes=("ngo-nat",),
            coordinators=(COORDINATOR,),
        )
    )
    caplog.set_level(logging.WARNING, logger="tiaki.node.hub")
    try:
        node = start_hub_node(
            tmp_path, pki, impostor.address, "ngo-nat", synth_csv,
            signer=coordinator_key(tmp_path).public_text, wait_connected=False,
        )  # fmt: skip
        try:
            time.sleep(2)
            assert not node.link.connected.is_set()
            assert node.budget_spent() == 0 and not node.service.ledger.entries()
            assert any("retrying" in r.getMessage() for r in caplog.records)
        finally:
            node.stop()
    finally:
        impostor.stop()


def test_clock_skew_either_way_is_allowed_up_to_the_stated_allowance_and_no_more(
    relayed: tuple[HubThread, HubNode, Path], tmp_path: Path
) -> None:
    _, node, fed = relayed
    signer = coordinator_key(tmp_path)
    allowance = 300  # the node's skew_seconds (hub_support's default)
    with Federation(load_federation(fed)) as federation:
        channel = federation.clients["ngo-nat"]._transport._hub  # type: ignore[attr-defined]
        now = int(time.time())
        cases = {
            # The coordinator's clock is behind: its deadline passed a little for the node.
            "behind-within": (now - 200, now - allowance + 60, 0),
            "behind-beyond": (now - 900, now - allowance - 60, 4),  # DEADLINE_EXCEEDED
            # Ahead: issued "in the future" for the node.
            "ahead-within": (now + allowance - 60, now + allowance + 60, 0),
            "ahead-beyond": (now + allowance + 120, now + allowance + 300, 9),  # PRECONDITION
        }
        for name, (issued, due, code) in cases.items():
            request = pb.QueryRequest(
                query_id=f"q-{name}", analyst="ana", kind=pb.COUNT,
                cost=pb.PrivacyCost(epsilon="0.1"),
            )  # fmt: skip
            signed = seal_envelope(
                signer, node_id="ngo-nat", method="Query", payload=request.SerializeToString(),
                issued_at=issued, not_after=due,
            )  # fmt: skip
            work_id = channel.call("Submit", hub.SubmitRequest(envelopes=[signed]), 10).work_ids[0]
            ready = _collected(channel, work_id)
            if ready.expired:  # the hub dropped it itself (past not_after plus its grace)
                assert code == 4, name
                continue
            outcome = hub.Outcome.FromString(ready.outcome.outcome)
            assert outcome.code == code, (name, outcome.message)
    # Only the two within the allowance were answered, and charged.
    assert {e.query_id for e in node.service.ledger.entries()} == {
        "q-behind-within", "q-ahead-within"
    }  # fmt: skip
    assert node.budget_spent() == Fraction(2, 10)


def test_budget_and_ledger_fetch_through_the_hub_as_for_a_direct_node(
    relayed: tuple[HubThread, HubNode, Path], tmp_path: Path, cli: Any
) -> None:
    _, _, fed = relayed
    asked = cli("query", "count", "--epsilon", "0.5", "--config", fed)
    assert asked.code == 0, asked.err
    budget = cli("budget", "--config", fed)
    assert budget.code == 0, budget.err
    assert "ngo-nat" in budget.out and "0.5" in budget.out
    fetched = cli("ledger", "fetch", "--out-dir", tmp_path / "audit", "--config", fed)
    assert fetched.code == 0, fetched.err
    assert (tmp_path / "audit" / "ngo-nat.jsonl").exists()
    verified = cli(
        "audit", "verify", tmp_path / "audit" / "ngo-nat.jsonl",
        tmp_path / "audit" / "coordinator.jsonl",
    )  # fmt: skip
    assert verified.code == 0, verified.out + verified.err


def test_a_second_call_for_a_node_ends_the_first_and_a_node_going_away_is_no_error(
    pki: FederationPki, hub_factory: Callable[..., HubThread], caplog: pytest.LogCaptureFixture
) -> None:
    hub_thread = hub_factory(("ngo-nat",))
    cert, key = pki.coordinator("ngo-nat")
    credentials = grpc.ssl_channel_credentials(
        pki.ca_cert.read_bytes(), key.read_bytes(), cert.read_bytes()
    )
    options = [("grpc.ssl_target_name_override", "tiaki-hub")]

    def connect(channel: grpc.Channel, hold: Any) -> Any:
        def requests() -> Iterator[hub.NodeMessage]:
            yield hub.NodeMessage(credit=1, heartbeat_seconds=2)
            hold.wait(30)

        return hub_pb2_grpc.HubStub(channel).Connect(requests(), timeout=30)

    caplog.set_level(logging.INFO, logger="tiaki.hub")
    first_hold, second_hold = threading.Event(), threading.Event()
    with (
        grpc.secure_channel(hub_thread.address, credentials, options=options) as one,
        grpc.secure_channel(hub_thread.address, credentials, options=options) as two,
    ):
        first = connect(one, first_hold)
        next(first)  # admitted
        second = connect(two, second_hold)
        next(second)
        # The node has one call at a time: the newer one stands, the older is ended.
        ended = list(first)  # heartbeats, if any, and then the end of the call
        assert all(not m.items for m in ended)
        listed = hub_thread.running.queue.nodes(["ngo-nat"])
        assert listed[0].last_seen is not None
        second.cancel()  # the node goes away mid-call
        first_hold.set()
        second_hold.set()
        time.sleep(0.5)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
