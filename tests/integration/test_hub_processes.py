"""The hub as a real process that is killed (SIGKILL) and restarted, with work in flight.

The hub runs as ``tiaki-hub serve`` on a fixed free port with its queue file;
the node dials out to it from this process (its link is stopped and started
again to stand for the node going offline or restarting). The checks are the
ledger's: every question is charged exactly once, a repeat gets the same noise,
and nothing the hub acknowledged is lost.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import yaml

from coordinator.hub_client import HubChannel
from node.hub_link import HubLink, HubWorker, Inbox
from node.server import NodeServicer, gatekeeper_for
from tests.conftest import FederationPki
from tests.integration.hub_support import (
    COORDINATOR,
    HUB_NAME,
    HubNode,
    coordinator_key,
    start_hub_node,
)
from tiaki.envelopes import open_outcome, seal_envelope
from tiaki.errors import TiakiError
from tiaki.signing import SigningKey
from tiaki.v1 import hub_pb2 as hub
from tiaki.v1 import node_pb2 as pb

BIN = Path(sys.executable).parent
NODE = "ngo-far"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class HubProcess:
    """``tiaki-hub serve`` on a fixed address, killed and restarted at will."""

    def __init__(self, root: Path, pki: FederationPki) -> None:
        cert, key = pki.node(HUB_NAME)
        self.address = f"127.0.0.1:{free_port()}"
        self.config = root / "hub.yaml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "address": self.address,
                    "queue": str(root / "hub-queue.sqlite"),
                    "tls": {"cert": str(cert), "key": str(key), "client_ca": str(pki.ca_cert)},
                    "nodes": [NODE],
                    "coordinators": [COORDINATOR],
                    "lease_seconds": 5,
                }
            ),
            encoding="utf-8",
        )
        self.log = root / "hub.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [str(BIN / "tiaki-hub"), "serve", "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        host, _, port = self.address.rpartition(":")
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((host, int(port)), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"the hub did not start: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(10)


@pytest.fixture
def hub_process(tmp_path: Path, pki: FederationPki) -> Iterator[HubProcess]:
    process = HubProcess(tmp_path, pki)
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def far(
    tmp_path: Path, pki: FederationPki, hub_process: HubProcess, synth_csv: Path
) -> Iterator[tuple[HubNode, SigningKey]]:
    signer = coordinator_key(tmp_path)
    node = start_hub_node(
        tmp_path, pki, hub_process.address, NODE, synth_csv, signer=signer.public_text
    )
    try:
        yield node, signer
    finally:
        node.stop()


def coordinator_channel(pki: FederationPki, address: str) -> HubChannel:
    return HubChannel(
        address,
        identity=COORDINATOR,
        credentials=pki.channel_credentials(COORDINATOR),
        server_name=HUB_NAME,
    )


def query_envelope(signer: SigningKey, query_id: str, seconds: int = 600) -> hub.SignedEnvelope:
    now = int(time.time())
    request = pb.QueryRequest(
        query_id=query_id, analyst="ana", kind=pb.COUNT, cost=pb.PrivacyCost(epsilon="0.5"),
        group_by=["region"],
    )  # fmt: skip
    return seal_envelope(
        signer, node_id=NODE, method="Query", payload=request.SerializeToString(),
        issued_at=now, not_after=now + seconds,
    )  # fmt: skip


def collect(channel: HubChannel, work_id: str, seconds: float = 30) -> hub.Collected:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            reply = channel.call(
                "Collect", hub.CollectRequest(work_ids=[work_id], wait_seconds=3), 10
            )
        except TiakiError:  # the hub is restarting: ask again
            time.sleep(0.2)
            continue
        for ready in reply.ready:
            found: hub.Collected = ready
            return found
    raise AssertionError("no outcome in time")


def answer_of(outcome: hub.Outcome) -> pb.QueryResponse:
    assert outcome.code == 0, outcome.message
    return pb.QueryResponse.FromString(outcome.replies[0])


def node_worker(node: HubNode) -> HubWorker:
    """The node's worker, on its inbox and servicer, as its link would make it."""
    return HubWorker(
        lambda: node.service.config,
        NodeServicer(node.service, gatekeeper_for(node.service)),
        node.service.signing_key,
        Inbox(node.service.config.paths.hub_inbox),
    )


def relink(node: HubNode, settings: Any) -> HubLink:
    """The node's link again, on the same inbox and servicer (a reconnect or a restart)."""
    link = HubLink(settings, node_worker(node))
    link.start()
    return link


def test_questions_queued_while_the_node_is_away_survive_a_hub_kill_and_are_charged_once(
    far: tuple[HubNode, SigningKey], hub_process: HubProcess, pki: FederationPki
) -> None:
    node, signer = far
    settings = node.service.config.server.hub
    node.link.stop(timeout=2)  # the node goes offline
    channel = coordinator_channel(pki, hub_process.address)
    try:
        signed = query_envelope(signer, "q-away")
        (work_id,) = channel.call("Submit", hub.SubmitRequest(envelopes=[signed]), 10).work_ids
        hub_process.kill()  # the hub dies with the question queued
        hub_process.start()
        node.link = relink(node, settings)  # the node comes back
        ready = collect(channel, work_id)
        first = answer_of(open_outcome(ready.outcome, node.service.signing_key.public_text, signed))
        assert node.budget_spent() == Fraction(1, 2)
        # Killed again after the answer: the outcome is still there, and the same
        # envelope sent again is the same work, never a second charge.
        hub_process.kill()
        hub_process.start()
        again = channel.call("Submit", hub.SubmitRequest(envelopes=[signed]), 10).work_ids
        assert list(again) == [work_id]
        ready = collect(channel, work_id)
        second = answer_of(
            open_outcome(ready.outcome, node.service.signing_key.public_text, signed)
        )
        assert [c.value for c in second.cells] == [c.value for c in first.cells]
        assert node.budget_spent() == Fraction(1, 2)
        assert len(node.service.ledger.entries()) == 1
    finally:
        channel.close()


def test_a_cut_after_the_charge_is_pushed_again_on_return_charged_once_same_noise(
    far: tuple[HubNode, SigningKey], hub_process: HubProcess, pki: FederationPki
) -> None:
    node, signer = far
    settings = node.service.config.server.hub
    assert settings is not None
    node.link.stop(timeout=2)
    # This link's worker runs the question (the ledger commits), then the hub dies
    # before the outcome can be pushed.
    worker = node_worker(node)
    honest = worker.handle

    def handle_then_cut(item: hub.WorkItem) -> hub.SignedOutcome:
        outcome = honest(item)
        hub_process.kill()
        return outcome

    worker.handle = handle_then_cut  # type: ignore[method-assign]
    channel = coordinator_channel(pki, hub_process.address)
    try:
        signed = query_envelope(signer, "q-cut")
        (work_id,) = channel.call("Submit", hub.SubmitRequest(envelopes=[signed]), 10).work_ids
        link = HubLink(settings, worker)
        link.start()
        deadline = time.monotonic() + 20
        while node.budget_spent() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert node.budget_spent() == Fraction(1, 2)  # charged, not yet delivered
        worker.handle = honest  # type: ignore[method-assign]
        hub_process.start()  # the link reconnects and pushes the stored outcome
        ready = collect(channel, work_id)
        answer = answer_of(
            open_outcome(ready.outcome, node.service.signing_key.public_text, signed)
        )
        assert not answer.replayed
        assert node.budget_spent() == Fraction(1, 2) and len(node.service.ledger.entries()) == 1
        node.link = link
    finally:
        channel.close()


def test_a_lease_that_runs_out_is_delivered_again_and_answered_from_the_inbox(
    far: tuple[HubNode, SigningKey], hub_process: HubProcess, pki: FederationPki
) -> None:
    node, signer = far
    settings = node.service.config.server.hub
    node.link.stop(timeout=2)
    channel = coordinator_channel(pki, hub_process.address)
    try:
        signed = query_envelope(signer, "q-lease")
        (work_id,) = channel.call("Submit", hub.SubmitRequest(envelopes=[signed]), 10).work_ids
        # A node that takes the item, runs it, and then hangs without answering: its
        # call stays open, so only the lease running out sends the item again.
        worker = node_worker(node)
        with StubNodeCall(pki, hub_process.address, credit=2) as stub:
            (item,) = stub.items(timeout=10)
            assert item.attempt == 1
            taken = time.monotonic()
            worker.handle(item)
            assert node.budget_spent() == Fraction(1, 2)
            (again,) = stub.items(timeout=20)
            assert again.work_id == work_id and again.attempt == 2
            assert time.monotonic() - taken >= 4  # after the lease (5 s from the first)
        worker.inbox.close()
        node.link = relink(node, settings)  # back: the item comes again, its outcome kept
        ready = collect(channel, work_id, seconds=30)
        answer = answer_of(
            open_outcome(ready.outcome, node.service.signing_key.public_text, signed)
        )
        assert not answer.replayed  # the outcome stored the first time, not a replay
        assert node.budget_spent() == Fraction(1, 2) and len(node.service.ledger.entries()) == 1
    finally:
        channel.close()


def test_an_item_whose_call_ended_unanswered_goes_out_again_at_once_not_after_its_lease(
    far: tuple[HubNode, SigningKey], hub_process: HubProcess, pki: FederationPki
) -> None:
    node, signer = far
    settings = node.service.config.server.hub
    node.link.stop(timeout=2)
    channel = coordinator_channel(pki, hub_process.address)
    try:
        signed = query_envelope(signer, "q-gone")
        (work_id,) = channel.call("Submit", hub.SubmitRequest(envelopes=[signed]), 10).work_ids
        worker = node_worker(node)
        with StubNodeCall(pki, hub_process.address, credit=1) as stub:
            (item,) = stub.items(timeout=10)
            worker.handle(item)  # run and kept; then the connection drops before the outcome
        worker.inbox.close()
        dropped = time.monotonic()
        node.link = relink(node, settings)
        ready = collect(channel, work_id, seconds=30)
        assert time.monotonic() - dropped < 4  # well before the 5 s lease would have ended
        answer = answer_of(
            open_outcome(ready.outcome, node.service.signing_key.public_text, signed)
        )
        assert not answer.replayed
        assert node.budget_spent() == Fraction(1, 2) and len(node.service.ledger.entries()) == 1
    finally:
        channel.close()


class StubNodeCall:
    """A Connect call made as the node, by hand: it takes items and never answers them."""

    def __init__(self, pki: FederationPki, address: str, credit: int) -> None:
        import grpc

        from tiaki.v1 import hub_pb2_grpc

        cert, key = pki.coordinator(NODE)
        credentials = grpc.ssl_channel_credentials(
            pki.ca_cert.read_bytes(), key.read_bytes(), cert.read_bytes()
        )
        self._channel = grpc.secure_channel(
            address, credentials, options=[("grpc.ssl_target_name_override", HUB_NAME)]
        )
        self._gone = threading.Event()

        def requests() -> Iterator[hub.NodeMessage]:
            yield hub.NodeMessage(credit=credit, heartbeat_seconds=2)
            self._gone.wait(60)

        self._call = hub_pb2_grpc.HubStub(self._channel).Connect(requests(), timeout=60)

    def items(self, timeout: float) -> list[hub.WorkItem]:
        """The next message's items (heartbeats skipped)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = next(self._call)
            if message.items:
                return list(message.items)
        raise AssertionError("the hub sent no item")

    def __enter__(self) -> StubNodeCall:
        return self

    def __exit__(self, *exc: object) -> None:
        self._gone.set()
        self._call.cancel()
        self._channel.close()
