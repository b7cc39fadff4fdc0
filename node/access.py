"""Who is asking, and may they? Decided before any work is done.

With mutual TLS the caller's identity is the common name of the certificate
the TLS handshake verified, and its SHA-256 fingerprint; a name a coordinator
writes into a request is only ever recorded as a claim. In ``--insecure``
development mode there is no certificate, so the coordinator's claimed name
(the ``tiaki-coordinator`` metadata) stands in, and the node says so in its log.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import grpc

from node.config import AuditorGrant, CoordinatorGrant, Policy
from tiaki.errors import PolicyViolationError, TiakiError
from tiaki.metadata import IDENTITY_METADATA_KEY

log = logging.getLogger("tiaki.node.access")


ANONYMOUS = "anonymous"


class TooManyConcurrentQueries(TiakiError):
    """This identity already has as many queries in flight as the node allows.

    UNAVAILABLE, not RESOURCE_EXHAUSTED: it is transient, so coordinators
    retry it (with the same query id), whereas an exhausted budget is final.
    """

    status_code = grpc.StatusCode.UNAVAILABLE


@dataclass(frozen=True)
class Caller:
    identity: str
    fingerprint: str | None  # sha256 of the verified certificate, hex
    verified: bool  # True when the identity comes from a verified certificate


def _first(auth: dict[str, list[bytes]], key: str) -> str | None:
    values = auth.get(key)
    return values[0].decode("utf-8", "replace") if values else None


def caller_of(context: grpc.ServicerContext) -> Caller:
    auth = context.auth_context()
    common_name = _first(auth, "x509_common_name")
    pem = _first(auth, "x509_pem_cert")
    if common_name:
        fingerprint = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest() if pem else None
        return Caller(common_name, fingerprint, verified=True)
    for key, value in context.invocation_metadata():
        if key == IDENTITY_METADATA_KEY and isinstance(value, str):
            claim = value.strip()
            if 0 < len(claim) <= 128 and claim.isprintable():
                return Caller(claim, None, verified=False)
    return Caller(ANONYMOUS, None, verified=False)


def _names(grant: CoordinatorGrant | AuditorGrant, caller: Caller) -> bool:
    """Does the policy entry name this caller, by certificate identity or fingerprint?"""
    by_name = grant.identity is not None and grant.identity == caller.identity
    by_print = (
        grant.normalised_fingerprint is not None
        and caller.fingerprint == grant.normalised_fingerprint
    )
    return by_name or by_print


class Gatekeeper:
    """Applies the policy's list of allowed coordinators and per-identity concurrency."""

    def __init__(self, policy: Policy, max_concurrent_per_identity: int) -> None:
        self._grants = policy.coordinators
        self._auditors = policy.auditors
        self._limit = max_concurrent_per_identity
        self._lock = threading.Lock()
        self._in_flight: dict[str, int] = {}

    def admit(
        self, caller: Caller, what: str, *, auditors: bool = False, kind: str | None = None
    ) -> CoordinatorGrant | None:
        """The caller's grant, or PERMISSION_DENIED (logged, nothing spent).

        With ``auditors``, the policy's auditors are let in too (with no grant:
        they may read the node's info, budget and ledger, never ask a query).
        """
        if not self._grants:
            return None  # only possible without TLS: every claim is let in (development)
        for grant in self._grants:
            if _names(grant, caller):
                return grant
        if auditors and any(_names(auditor, caller) for auditor in self._auditors):
            return None
        log.warning(
            "refused %s from %s (%s, fingerprint %s): not an allowed coordinator",
            what,
            caller.identity,
            "verified certificate" if caller.verified else "unverified claim",
            caller.fingerprint or "-",
            extra={
                "identity": caller.identity,
                "verified": caller.verified,
                "fingerprint": caller.fingerprint,
                "kind": kind,
                "outcome": "refused",
            },
        )
        raise PolicyViolationError(
            f"this node does not accept requests from {caller.identity!r}; ask the NGO to add "
            "your coordinator identity to its policy"
        )

    @contextmanager
    def slot(self, caller: Caller) -> Iterator[None]:
        """Hold one of the caller's concurrent-query slots for the duration."""
        with self._lock:
            current = self._in_flight.get(caller.identity, 0)
            if current >= self._limit:
                raise TooManyConcurrentQueries(
                    f"{caller.identity!r} already has {current} queries in flight at this node "
                    f"(the most it allows); retry shortly with the same query id"
                )
            self._in_flight[caller.identity] = current + 1
        try:
            yield
        finally:
            with self._lock:
                self._in_flight[caller.identity] -= 1
