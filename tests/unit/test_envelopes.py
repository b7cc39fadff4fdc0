"""Relayed envelopes and outcomes: any changed byte, any swap, is caught by the reader."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from node.hub_link import REQUESTS
from tiaki.envelopes import (
    METHODS,
    EnvelopeError,
    open_envelope,
    open_outcome,
    seal_envelope,
    seal_outcome,
    work_id_of,
)
from tiaki.signing import create_signing_key
from tiaki.v1 import hub_pb2 as hub


def test_every_method_an_envelope_may_name_is_one_the_node_can_decode() -> None:
    assert set(REQUESTS) == METHODS


def test_an_envelope_opens_only_as_signed(tmp_path: Path) -> None:
    key = create_signing_key(tmp_path / "c.key")
    signed = seal_envelope(
        key, node_id="ngo-a", method="Query", payload=b"\x08\x01", issued_at=10, not_after=70
    )
    opened = open_envelope(signed)
    assert opened.envelope.node_id == "ngo-a" and opened.signer_key == key.public_text
    assert work_id_of(signed) == hashlib.sha256(signed.envelope).hexdigest()
    for i in range(len(signed.envelope)):  # every single byte flipped is refused
        altered = bytearray(signed.envelope)
        altered[i] ^= 0x01
        with pytest.raises(EnvelopeError):
            open_envelope(hub.SignedEnvelope(envelope=bytes(altered), signature=signed.signature))
    other = create_signing_key(tmp_path / "o.key")
    forged = seal_envelope(
        other, node_id="ngo-a", method="Query", payload=b"\x08\x01", issued_at=10, not_after=70
    )
    with pytest.raises(EnvelopeError):  # a valid signature, over another envelope
        open_envelope(hub.SignedEnvelope(envelope=signed.envelope, signature=forged.signature))
    with pytest.raises(EnvelopeError, match="no Node RPC"):
        seal_envelope(key, node_id="ngo-a", method="Drop", payload=b"", issued_at=1, not_after=2)


def test_an_outcome_opens_only_under_the_nodes_key_and_for_its_own_envelope(
    tmp_path: Path,
) -> None:
    coordinator = create_signing_key(tmp_path / "c.key")
    node = create_signing_key(tmp_path / "n.key")
    first, second = (
        seal_envelope(
            coordinator, node_id="ngo-a", method="GetInfo", payload=b"", issued_at=1, not_after=2
        )
        for _ in range(2)
    )
    assert first.envelope != second.envelope  # the nonce: no two envelopes alike
    outcome = hub.Outcome(envelope_sha256=hashlib.sha256(first.envelope).digest(), code=0)
    signed = seal_outcome(node, outcome)
    assert open_outcome(signed, node.public_text, first) == outcome
    with pytest.raises(EnvelopeError, match="another request"):
        open_outcome(signed, node.public_text, second)  # swapped onto another request
    with pytest.raises(EnvelopeError, match="not signed"):
        open_outcome(signed, coordinator.public_text, first)
    with pytest.raises(EnvelopeError, match="not signed"):
        open_outcome(
            hub.SignedOutcome(outcome=signed.outcome + b"\x00", signature=signed.signature),
            node.public_text,
            first,
        )
