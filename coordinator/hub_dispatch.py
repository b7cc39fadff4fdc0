"""Many calls through one hub in few RPCs: submits coalesced, outcomes collected together.

A question to a thousand hub nodes is a thousand concurrent calls, one per
node (the fan-out's threads). Each would cost the coordinator and the hub a
Submit and a Collect of its own; here they share: envelopes handed in within a
few milliseconds of each other go in one Submit, and work ids waited for within
a few milliseconds of each other are collected in one Collect, which hands
each outcome to the call that waits for it. Work ids that arrive while a
Collect is held go in a Collect of their own beside it (never restarting the
first), and whatever a Collect returns without is collected again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from tiaki.envelopes import work_id_of
from tiaki.errors import NodeUnreachableError, TiakiError
from tiaki.v1 import hub_pb2 as hub

GATHER_SECONDS = 0.002  # how long a Submit waits for company
COLLECT_WAIT_SECONDS = 5
RETRY_SECONDS = 0.2  # after a Collect that failed
EXPIRE_SECONDS = 0.25  # how punctually a wait that ran out of time is failed


Settle = Callable[[hub.Collected | BaseException], None]


class _Wait:
    """One call's wait for its envelope's outcome: told once, whatever comes first."""

    __slots__ = ("deadline", "done", "settle", "work_id")

    def __init__(self, work_id: str, deadline: float, settle: Settle) -> None:
        self.work_id = work_id
        self.deadline = deadline
        self.settle = settle
        self.done = False


class HubDispatcher:
    """Coalesces the Submits and Collects of concurrent calls through one hub channel.

    ``call(method, request, timeout)`` is the channel's unary call; ``future``
    starts a Collect and returns its future. Calls are told outside the lock:
    what runs then (opening an outcome, a new call) never waits on it.
    """

    def __init__(
        self,
        call: Callable[[str, Any, float], Any],
        future: Callable[[Any, float], Any],
    ) -> None:
        self._call = call
        self._future = future
        self._lock = threading.Lock()
        self._to_submit: list[hub.SignedEnvelope] = []
        self._waiting: dict[str, list[_Wait]] = {}
        self._submitted: set[str] = set()  # work ids the hub has taken
        self._covered: set[str] = set()  # work ids a Collect in flight waits for
        self._waits: list[_Wait] = []  # every open wait, for its deadline
        self._retry_at = 0.0  # monotonic: after a failed Collect, no new one before this
        self._submit_now = threading.Event()
        self._added = threading.Event()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._submitter, name="tiaki-hub-submit", daemon=True),
            threading.Thread(target=self._collector, name="tiaki-hub-collect", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def start(
        self, signed: hub.SignedEnvelope, work_id: str, timeout: float, settle: Settle
    ) -> None:
        """Queue the envelope at the hub (with others sent at about the same time); then
        ``settle`` is called once, from one of the dispatcher's threads, with what the hub
        has for it (its outcome, or that it expired or is unknown), TimeoutError when
        nothing came within ``timeout``, or the Submit's error if the hub refused it.
        No thread waits for it meanwhile."""
        wait = _Wait(work_id, time.monotonic() + timeout, settle)
        with self._lock:
            self._to_submit.append(signed)
            self._waiting.setdefault(work_id, []).append(wait)
            self._waits.append(wait)
        self._submit_now.set()

    def close(self) -> None:
        """Stop; every wait still open fails at once (nobody is left to collect it)."""
        self._closed = True
        self._submit_now.set()
        self._added.set()
        with self._lock:
            left = _taken([w for waits in self._waiting.values() for w in waits])
            self._waiting.clear()
        _tell(left, NodeUnreachableError("the connection to the hub was closed"))

    # ------------------------------------------------------------ the two loops

    def _submitter(self) -> None:
        while not self._closed:
            self._submit_now.wait()
            time.sleep(GATHER_SECONDS)
            with self._lock:
                batch, self._to_submit = self._to_submit, []
                self._submit_now.clear()
            if not batch:
                continue
            ids = [work_id_of(signed) for signed in batch]
            try:
                self._call("Submit", hub.SubmitRequest(envelopes=batch), 30.0)
            except Exception as exc:  # refused, unreachable, or the channel closed
                if not isinstance(exc, TiakiError):
                    exc = NodeUnreachableError(f"the hub could not be reached ({exc})")
                with self._lock:
                    failed = _taken([w for i in ids for w in self._waiting.pop(i, [])])
                _tell(failed, exc)
                continue
            with self._lock:
                self._submitted.update(ids)
            self._added.set()

    def _collector(self) -> None:
        while not self._closed:
            self._added.wait(EXPIRE_SECONDS)
            time.sleep(max(GATHER_SECONDS, self._retry_at - time.monotonic()))
            with self._lock:
                self._added.clear()
                expired = self._expired()
                work_ids = [
                    w for w in self._waiting if w in self._submitted and w not in self._covered
                ]
                self._covered.update(work_ids)
            _tell(expired, TimeoutError())
            if not work_ids:
                continue
            request = hub.CollectRequest(work_ids=work_ids, wait_seconds=COLLECT_WAIT_SECONDS)
            try:
                pending = self._future(request, COLLECT_WAIT_SECONDS + 10.0)
            except Exception:  # the channel closed under us: the same as a failed Collect
                self._collected(work_ids, None)
                continue
            pending.add_done_callback(lambda done, ids=work_ids: self._collected(ids, done))

    def _expired(self) -> list[_Wait]:
        """The waits whose time is up, taken out (the lock held)."""
        now = time.monotonic()
        kept, expired = [], []
        for wait in self._waits:
            if wait.done:
                continue
            if wait.deadline > now:
                kept.append(wait)
                continue
            wait.done = True
            expired.append(wait)
            waiting = self._waiting.get(wait.work_id, [])
            if wait in waiting:
                waiting.remove(wait)
                if not waiting:
                    del self._waiting[wait.work_id]
        self._waits = kept
        return expired

    def _collected(self, work_ids: list[str], done: Any) -> None:
        """A Collect ended: hand out what it brought; what it did not is collected again."""
        try:
            reply = None if done is None else done.result()
        except Exception:  # the hub unreachable, or the call cut: try again shortly
            reply = None
        told: list[tuple[list[_Wait], hub.Collected]] = []
        with self._lock:
            if reply is None:
                self._retry_at = time.monotonic() + RETRY_SECONDS
            else:
                for ready in reply.ready:
                    self._submitted.discard(ready.work_id)
                    told.append((_taken(self._waiting.pop(ready.work_id, [])), ready))
            self._covered.difference_update(work_ids)
            # Nobody waits for these any more (they gave up): nothing to collect again.
            self._submitted.intersection_update(self._waiting)
        for waits, ready in told:
            _tell(waits, ready)
        self._added.set()


def _taken(waits: list[_Wait]) -> list[_Wait]:
    """The waits not yet told, marked as told (the lock held): each is told once."""
    open_ = [w for w in waits if not w.done]
    for wait in open_:
        wait.done = True
    return open_


def _tell(waits: list[_Wait], outcome: hub.Collected | BaseException) -> None:
    """Tell each wait taken out under the lock (outside it: see HubDispatcher)."""
    for wait in waits:
        wait.settle(outcome)
