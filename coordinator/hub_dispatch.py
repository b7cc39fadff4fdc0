"""Many calls through one hub in few RPCs: submits coalesced, outcomes collected together.

A question to a thousand hub nodes is a thousand concurrent calls, one per
node (the fan-out's threads). Each would cost the coordinator and the hub a
Submit and a Collect of its own; here they share: envelopes handed in within a
few milliseconds of each other go in one Submit, and one Collect at a time
waits for every outstanding work id, handing each outcome to the call that
waits for it. A Collect in flight is cancelled and started again when new work
ids arrive, so none waits behind another's slow node.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from tiaki.envelopes import work_id_of
from tiaki.errors import TiakiError
from tiaki.v1 import hub_pb2 as hub

GATHER_SECONDS = 0.002  # how long a Submit waits for company
COLLECT_WAIT_SECONDS = 5


class HubDispatcher:
    """Coalesces the Submits and Collects of concurrent calls through one hub channel.

    ``call(method, request, timeout)`` is the channel's unary call; ``future``
    starts a Collect that can be cancelled.
    """

    def __init__(
        self,
        call: Callable[[str, Any, float], Any],
        future: Callable[[Any, float], Any],
    ) -> None:
        self._call = call
        self._future = future
        self._lock = threading.Lock()
        self._to_submit: list[tuple[hub.SignedEnvelope, Future[None]]] = []
        self._waiting: dict[str, list[Future[hub.Collected]]] = {}
        self._submit_now = threading.Event()
        self._added = threading.Event()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._submitter, name="tiaki-hub-submit", daemon=True),
            threading.Thread(target=self._collector, name="tiaki-hub-collect", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, signed: hub.SignedEnvelope, timeout: float) -> None:
        """Queue the envelope at the hub (with others sent at about the same time)."""
        done: Future[None] = Future()
        with self._lock:
            self._to_submit.append((signed, done))
        self._submit_now.set()
        done.result(timeout)

    def wait(self, signed: hub.SignedEnvelope, timeout: float) -> hub.Collected:
        """What the hub has for this envelope: its outcome, or that it expired or is unknown.

        Raises TimeoutError when nothing came within ``timeout``.
        """
        work_id = work_id_of(signed)
        result: Future[hub.Collected] = Future()
        with self._lock:
            self._waiting.setdefault(work_id, []).append(result)
        self._added.set()
        try:
            return result.result(timeout)
        finally:
            with self._lock:
                futures = self._waiting.get(work_id)
                if futures is not None and result in futures:
                    futures.remove(result)
                    if not futures:
                        del self._waiting[work_id]

    def close(self) -> None:
        self._closed = True
        self._submit_now.set()
        self._added.set()

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
            try:
                self._call("Submit", hub.SubmitRequest(envelopes=[s for s, _ in batch]), 30.0)
            except TiakiError as exc:
                for _, done in batch:
                    done.set_exception(exc)
                continue
            for _, done in batch:
                done.set_result(None)

    def _collector(self) -> None:
        while not self._closed:
            with self._lock:
                work_ids = list(self._waiting)
                self._added.clear()
            if not work_ids:
                self._added.wait(1.0)
                continue
            request = hub.CollectRequest(work_ids=work_ids, wait_seconds=COLLECT_WAIT_SECONDS)
            try:
                pending = self._future(request, COLLECT_WAIT_SECONDS + 10.0)
            except TiakiError:
                time.sleep(0.2)
                continue
            while not pending.done():
                if self._added.wait(0.005) and not pending.done():
                    pending.cancel()  # new work ids: ask again with them included
                    break
            if pending.cancelled():
                continue
            try:
                reply = pending.result()
            except Exception:
                time.sleep(0.2)
                continue
            with self._lock:
                for ready in reply.ready:
                    for future in self._waiting.pop(ready.work_id, []):
                        future.set_result(ready)
