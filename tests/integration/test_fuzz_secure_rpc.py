"""Fuzzing the five secure-sum RPCs of a real node that takes part in secure sums, over mTLS.

Sessions, adverts, sealed shares, survivor lists and signatures are drawn from
valid, near-valid and hostile values (the node's own id and key among them,
so that many requests get past the roster checks) and sent straight to the
node with the generated stub, or as raw bytes. Whatever arrives, the node must
refuse with a typed status (INVALID_ARGUMENT, PERMISSION_DENIED or
FAILED_PRECONDITION: never INTERNAL or UNKNOWN), with a short message that
holds no stack trace or path, and spend nothing: no random request can carry
the signed, sealed messages a charge needs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from node.config import load_config
from node.exports import node_signing_key
from node.importer import import_csv
from node.server import create_server
from node.service import open_service
from node.tls import server_credentials
from tests.conftest import FederationPki, write_node_config
from tests.integration.conftest import LiveNode
from tests.integration.test_fuzz_rpc import (
    FUZZ_SETTINGS,
    SCALE,
    Outcome,
    assert_clean_details,
    fuzzed_request,
    valid_request,
    wild_float,
    wild_text,
)
from tiaki.signing import create_signing_key
from tiaki.v1 import node_pb2 as pb
from tiaki.v1 import node_pb2_grpc

TIMEOUT = 10.0
NODE_ID = "ngo-secure"
ALLOWED = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ALREADY_EXISTS,
    }
)
ROUNDS = {
    "SecureAdvertise": (pb.SecureAdvertiseRequest, pb.KeyAdvert),
    "SecureShareKeys": (pb.SecureShareKeysRequest, pb.SecureShareKeysResponse),
    "SecureMaskedInput": (pb.SecureMaskedInputRequest, pb.MaskedInput),
    "SecureConsistency": (pb.SecureConsistencyRequest, pb.SurvivorSignature),
    "SecureUnmask": (pb.SecureUnmaskRequest, pb.Reveal),
}


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("fuzz-peers")
    return {
        f"ngo-peer-{i}": create_signing_key(root / f"peer-{i}.key").public_text for i in range(3)
    }


@pytest.fixture(scope="module")
def node(
    tmp_path_factory: pytest.TempPathFactory,
    pki: FederationPki,
    synth_csv: Path,
    peers: dict[str, str],
) -> Iterator[LiveNode]:
    policy = {
        "privacy_definition": "zcdp",
        "budget": {"limit": "1000", "period": "none"},
        "per_query_max": "1",
    }
    path = write_node_config(
        tmp_path_factory.mktemp("fuzz-secure"), node_id=NODE_ID, policy=policy, pki=pki
    )
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    raw["policy"]["secure_aggregation"] = {
        "peers": [{"node_id": n, "signing_key": k} for n, k in peers.items()],
        "min_cohort": 2,
        "colluders": 0,
        "worst_case": {"per_query": "10", "lifetime": "100"},
    }
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    config = load_config(path)
    assert config.server.tls is not None
    assert import_csv(config, synth_csv).committed
    service = open_service(config)
    running = create_server(service, "127.0.0.1:0", server_credentials(config.server.tls))
    try:
        yield LiveNode(config, running, f"127.0.0.1:{running.port}", pki)
    finally:
        running.stop(grace=1)
        service.close()


@pytest.fixture(scope="module")
def own_key(node: LiveNode) -> str:
    return node_signing_key(node.config)[0].public_text


@pytest.fixture(scope="module")
def channel(node: LiveNode) -> Iterator[grpc.Channel]:
    chan = node.channel()
    try:
        yield chan
    finally:
        chan.close()


# ---------------------------------------------------------------- hostile sessions


def members(names: list[tuple[str, str]]) -> st.SearchStrategy[list[pb.SecureSessionMember]]:
    """Rosters: the node itself and its pinned peers, strangers, bad indices and keys."""
    known = st.sampled_from(names)
    stranger = st.tuples(wild_text(40, huge=False), wild_text(80, huge=False))
    entry = st.one_of(known, known, stranger)
    return st.lists(entry, max_size=6).flatmap(
        lambda picked: st.lists(st.integers(0, 8), min_size=len(picked), max_size=len(picked)).map(
            lambda indices: [
                pb.SecureSessionMember(index=i, node_id=n, signing_key=k)
                for i, (n, k) in zip(indices, picked, strict=True)
            ]
        )
    )


def in_order(roster: list[pb.SecureSessionMember]) -> list[pb.SecureSessionMember]:
    """Half the time, renumber the roster 1..N, so later checks are reached too."""
    return [
        pb.SecureSessionMember(index=i, node_id=m.node_id, signing_key=m.signing_key)
        for i, m in enumerate(roster, start=1)
    ]


@st.composite
def sessions(draw: st.DrawFn, names: list[tuple[str, str]]) -> pb.SecureSession:
    roster = draw(members(names))
    if draw(st.booleans()):
        roster = in_order(roster)
    n = max(1, len(roster))
    query = draw(st.one_of(valid_request(), fuzzed_request()))
    if draw(st.booleans()):
        query.cost.Clear()
        query.cost.rho = draw(st.sampled_from(["0.5", "0.1", "1", "0", "-1", "1e3", ""]))
    return pb.SecureSession(
        session_id=draw(st.one_of(st.binary(min_size=16, max_size=16), st.binary(max_size=40))),
        query=query,
        members=roster,
        threshold=draw(st.integers(0, n + 2)),
        colluders=draw(st.integers(0, 3)),
        scale_factors=draw(
            st.lists(st.sampled_from([0, 1, 2, 3, 4, 1024, 2**31, 2**32 - 1]), max_size=3)
        ),
        share_scales=draw(st.lists(wild_float(), max_size=3)),
        not_after=draw(
            st.sampled_from([-1, 0, 2_000_000_000, 1_800_000_000, 4_000_000_000, 2**63 - 1])
        ),
    )


def adverts() -> st.SearchStrategy[list[pb.KeyAdvert]]:
    return st.lists(
        st.builds(
            pb.KeyAdvert,
            index=st.integers(0, 8),
            encryption_key=st.binary(max_size=40),
            mask_key=st.binary(max_size=40),
            signature=wild_text(120, huge=False),
        ),
        max_size=6,
    )


def sealed() -> st.SearchStrategy[list[pb.SealedShares]]:
    return st.lists(
        st.builds(
            pb.SealedShares,
            sender=st.integers(0, 8),
            recipient=st.integers(0, 8),
            sealed=st.binary(max_size=200),
        ),
        max_size=6,
    )


def survivors() -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, 8), max_size=8)


def signatures() -> st.SearchStrategy[list[pb.SurvivorSignature]]:
    return st.lists(
        st.builds(pb.SurvivorSignature, index=st.integers(0, 8), signature=wild_text(120)),
        max_size=6,
    )


@st.composite
def plausible_sessions(draw: st.DrawFn, names: list[tuple[str, str]]) -> pb.SecureSession:
    """Sessions a node would join: itself and pinned peers, a safe threshold, sound noise.

    They reach the checks behind the roster's: the rounds' order, the adverts'
    signatures, the sealed shares, the survivor list and its signatures.
    """
    own, others = names[0], names[1:]
    picked = [own, *draw(st.lists(st.sampled_from(others), min_size=1, unique=True))]
    order = draw(st.permutations(picked))
    n = len(order)
    query = draw(valid_request())
    query.cost.Clear()
    query.cost.rho = draw(st.sampled_from(["0.1", "0.5", "1"]))
    components = draw(st.integers(1, 2))
    return pb.SecureSession(
        session_id=draw(st.binary(min_size=16, max_size=16)),
        query=query,
        members=[
            pb.SecureSessionMember(index=i, node_id=name, signing_key=key)
            for i, (name, key) in enumerate(order, start=1)
        ],
        threshold=draw(st.integers(n // 2 + 1, n)),
        colluders=0,
        scale_factors=[draw(st.sampled_from([1, 2, 4, 64])) for _ in range(components)],
        share_scales=[draw(st.floats(2.0, 500.0)) for _ in range(components)],
        not_after=int(time.time()) + 600,
    )


@st.composite
def requests(draw: st.DrawFn, names: list[tuple[str, str]]) -> tuple[str, Any]:
    method = draw(st.sampled_from(sorted(ROUNDS)))
    session = draw(st.one_of(sessions(names), plausible_sessions(names)))
    if method == "SecureAdvertise":
        return method, pb.SecureAdvertiseRequest(session=session)
    if method == "SecureShareKeys":
        return method, pb.SecureShareKeysRequest(session=session, adverts=draw(adverts()))
    if method == "SecureMaskedInput":
        return method, pb.SecureMaskedInputRequest(session=session, shares=draw(sealed()))
    if method == "SecureConsistency":
        return method, pb.SecureConsistencyRequest(session=session, survivors=draw(survivors()))
    return method, pb.SecureUnmaskRequest(
        session=session, survivors=draw(survivors()), signatures=draw(signatures())
    )


# ---------------------------------------------------------------- the property


def call(channel: grpc.Channel, method: str, payload: bytes) -> Outcome:
    send: Callable[..., bytes] = channel.unary_unary(
        f"/tiaki.v1.Node/{method}",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    try:
        send(payload, timeout=TIMEOUT)
    except grpc.RpcError as exc:
        return Outcome(exc.code(), exc.details() or "", None)
    return Outcome(grpc.StatusCode.OK, "", None)


def check(node: LiveNode, channel: grpc.Channel, method: str, payload: bytes) -> None:
    before = (len(node.running.service.ledger.entries()), node.budget())
    outcome = call(channel, method, payload)
    if currently_in_test_context():
        event(f"{method} {outcome.code.name}: {outcome.details[:36]}")
    if outcome.code is not grpc.StatusCode.OK:
        assert outcome.code in ALLOWED, (method, outcome.code, outcome.details[:300])
        assert_clean_details(outcome)
    # Advertise may succeed (two fresh keys, nothing else); nothing is ever charged.
    assert outcome.code is not grpc.StatusCode.OK or method == "SecureAdvertise", method
    assert (len(node.running.service.ledger.entries()), node.budget()) == before


@pytest.mark.fuzz
def test_any_secure_round_is_refused_with_a_typed_status_and_spends_nothing(
    node: LiveNode, channel: grpc.Channel, own_key: str, peers: dict[str, str]
) -> None:
    names = [(NODE_ID, own_key), *peers.items()]

    @settings(FUZZ_SETTINGS, max_examples=300 * SCALE)
    @given(drawn=requests(names))
    def run(drawn: tuple[str, Any]) -> None:
        method, request = drawn
        check(node, channel, method, request.SerializeToString())

    run()


@pytest.mark.fuzz
def test_raw_bytes_to_a_secure_round_are_refused_and_spend_nothing(
    node: LiveNode, channel: grpc.Channel
) -> None:
    @settings(FUZZ_SETTINGS, max_examples=100 * SCALE)
    @given(method=st.sampled_from(sorted(ROUNDS)), payload=st.binary(max_size=2_000))
    def run(method: str, payload: bytes) -> None:
        check(node, channel, method, payload)

    run()


@pytest.mark.fuzz
def test_forged_adverts_and_shares_after_a_real_advert_are_refused(
    node: LiveNode, channel: grpc.Channel, own_key: str, peers: dict[str, str]
) -> None:
    """The node advertises for a session it would join; everything forged after is refused."""
    names = [(NODE_ID, own_key), *peers.items()]
    stub = node_pb2_grpc.NodeStub(channel)

    @settings(FUZZ_SETTINGS, max_examples=60 * SCALE)
    @given(session=plausible_sessions(names), forged=adverts(), shares=sealed())
    def run(session: pb.SecureSession, forged: list[pb.KeyAdvert], shares: Any) -> None:
        session.session_id = os.urandom(16)  # a new session every time, whatever is drawn
        own = stub.SecureAdvertise(pb.SecureAdvertiseRequest(session=session), timeout=TIMEOUT)
        listed = [own, *forged]
        check(
            node,
            channel,
            "SecureShareKeys",
            pb.SecureShareKeysRequest(session=session, adverts=listed).SerializeToString(),
        )
        check(
            node,
            channel,
            "SecureMaskedInput",
            pb.SecureMaskedInputRequest(session=session, shares=shares).SerializeToString(),
        )

    run()


def test_an_oversized_round_is_refused_before_it_is_read(
    node: LiveNode, channel: grpc.Channel
) -> None:
    big = pb.SecureShareKeysRequest(
        adverts=[pb.KeyAdvert(index=1, encryption_key=b"x" * 1000)] * 1200
    )
    assert big.ByteSize() > 1024 * 1024
    outcome = call(channel, "SecureShareKeys", big.SerializeToString())
    assert outcome.code is grpc.StatusCode.INVALID_ARGUMENT, outcome
    assert "larger than" in outcome.details
