"""The hub dispatcher's bookkeeping: shared Submits and Collects, deadlines, failures, close.

The hub here is a pair of plain functions standing for the channel's Submit and
Collect (the real hub is exercised over gRPC in tests/integration/test_hub*.py):
each records what it was sent, and Collect hands back what the test has made
ready.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import Any

import pytest

from coordinator.hub_dispatch import HubDispatcher
from tiaki.envelopes import work_id_of
from tiaki.errors import InvalidQueryError, NodeUnreachableError
from tiaki.v1 import hub_pb2 as hub


def envelope(n: int) -> hub.SignedEnvelope:
    return hub.SignedEnvelope(envelope=f"envelope {n}".encode(), signature="x")


class FakeHub:
    def __init__(self) -> None:
        self.submits: list[list[str]] = []
        self.collects: list[list[str]] = []
        self.ready: dict[str, hub.Collected] = {}
        self.refuse_submit: Exception | None = None
        self.fail_collects = 0
        self.lock = threading.Lock()

    def call(self, method: str, request: Any, timeout: float) -> Any:
        assert method == "Submit"
        if self.refuse_submit is not None:
            raise self.refuse_submit
        with self.lock:
            self.submits.append([work_id_of(e) for e in request.envelopes])
        return hub.SubmitResponse()

    def future(self, request: Any, timeout: float) -> Future[Any]:
        done: Future[Any] = Future()
        with self.lock:
            self.collects.append(list(request.work_ids))
            failing = self.fail_collects > 0
            self.fail_collects -= 1
        if failing:
            done.set_exception(RuntimeError("connection reset"))
        else:
            ready = [self.ready[w] for w in request.work_ids if w in self.ready]
            done.set_result(hub.CollectResponse(ready=ready))
        return done


class Told:
    def __init__(self) -> None:
        self.outcome: Any = None
        self.event = threading.Event()

    def __call__(self, outcome: Any) -> None:
        assert not self.event.is_set(), "told twice"
        self.outcome = outcome
        self.event.set()


@pytest.fixture
def fake() -> FakeHub:
    return FakeHub()


def start(dispatcher: HubDispatcher, n: int, timeout: float = 5.0) -> tuple[str, Told]:
    signed, told = envelope(n), Told()
    dispatcher.start(signed, work_id_of(signed), timeout, told)
    return work_id_of(signed), told


def test_calls_started_together_share_one_submit_and_each_gets_its_own_outcome(
    fake: FakeHub,
) -> None:
    dispatcher = HubDispatcher(fake.call, fake.future)
    try:
        for n in range(50):
            fake.ready[work_id_of(envelope(n))] = hub.Collected(
                work_id=work_id_of(envelope(n)), expired=True
            )
        started = [start(dispatcher, n) for n in range(50)]
        for work_id, told in started:
            assert told.event.wait(5)
            assert told.outcome.work_id == work_id
        assert sum(len(s) for s in fake.submits) == 50 and len(fake.submits) <= 3
    finally:
        dispatcher.close()


def test_a_wait_with_no_outcome_fails_at_its_deadline(fake: FakeHub) -> None:
    dispatcher = HubDispatcher(fake.call, fake.future)
    try:
        began = time.monotonic()
        _, told = start(dispatcher, 1, timeout=0.5)
        assert told.event.wait(5)
        assert isinstance(told.outcome, TimeoutError)
        assert 0.5 <= time.monotonic() - began < 2.0
    finally:
        dispatcher.close()


def test_a_failed_collect_is_made_again_and_the_outcome_still_arrives(fake: FakeHub) -> None:
    fake.fail_collects = 2
    dispatcher = HubDispatcher(fake.call, fake.future)
    try:
        work_id, told = start(dispatcher, 7)
        time.sleep(0.1)
        fake.ready[work_id] = hub.Collected(work_id=work_id, unknown=True)
        assert told.event.wait(5)
        assert told.outcome.unknown
        assert len(fake.collects) >= 3  # two failed, then the one that brought it
    finally:
        dispatcher.close()


def test_a_refused_submit_reaches_every_call_in_it(fake: FakeHub) -> None:
    fake.refuse_submit = InvalidQueryError("an envelope is not a tiaki.v1.Envelope")
    dispatcher = HubDispatcher(fake.call, fake.future)
    try:
        started = [start(dispatcher, n) for n in range(3)]
        for _, told in started:
            assert told.event.wait(5)
            assert isinstance(told.outcome, InvalidQueryError)
    finally:
        dispatcher.close()


def test_closing_fails_the_open_waits_at_once(fake: FakeHub) -> None:
    dispatcher = HubDispatcher(fake.call, fake.future)
    _, told = start(dispatcher, 1, timeout=60)
    time.sleep(0.05)
    dispatcher.close()
    assert told.event.wait(1)
    assert isinstance(told.outcome, NodeUnreachableError)
