"""Associations with one PACS: opened in worker threads, reused, limited in number.

pynetdicom is thread-based and blocking; every call into it runs on this pool's own executor,
so a stuck PACS cannot starve the event loop's default executor.

Each association is opened for a :class:`~.contexts.ContextPlan`: the site's query plan
(C-ECHO, C-FIND, C-GET or C-MOVE), or a C-GET's plan, which adds the storage contexts of what
that retrieve brings (PS3.4 C.4.3, PS3.7 D.3.3.4). A lease takes an idle association whose plan
covers the one asked for; else one is opened, for the union with the most recent idle plan when
that fits in 128 contexts (PS3.8 9.3.2.2), so the plans of a site's studies converge on one
association instead of one each. Idle associations a new one covers are released, and the
open ones never outnumber ``max_associations``.

An association idle for ``idle_release_seconds`` is released: pynetdicom keeps two threads
per association polling every millisecond, about 8 % of a core while it waits for nothing.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from pynetdicom import AE, build_context, build_role, evt
from pynetdicom.association import Association

from ...config import DimseSite
from ...errors import BackendBusy, BackendTimeout, BackendUnreachable
from .contexts import ContextPlan, query_plan

__all__ = ["AssociationPool", "StoreSink"]

log = logging.getLogger(__name__)

T = TypeVar("T")

StoreSink = Callable[[Any], int]
"""Handles one C-STORE sub-operation of a C-GET (the pynetdicom event); returns a status."""

# No association has room for another operation: wait this long for one, then 503.
_LEASE_WAIT = 10.0


def socket_setup(read_timeout: float) -> Callable[[Any], None]:
    """The EVT_CONN_OPEN handler every DIMSE socket of ours gets."""

    def on_open(event: Any) -> None:
        sock = event.assoc.dul.socket.socket
        # pynetdicom never sets TCP_NODELAY: without it every DIMSE exchange stalls ~40 ms.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # ... and reads without a timeout once connected: a PACS that stops in the middle of
        # a message would hold the reader thread (and the request) forever.
        sock.settimeout(read_timeout)

    return on_open


class AssociationPool:
    def __init__(self, site: DimseSite) -> None:
        self._site = site
        self._executor = ThreadPoolExecutor(
            max_workers=site.max_associations + 2, thread_name_prefix=f"dimse-{site.id}"
        )
        ae = AE(ae_title=site.calling_aet)
        ae.connection_timeout = site.connect_timeout
        self._acse_timeout = site.connect_timeout * 2
        ae.acse_timeout = self._acse_timeout
        ae.dimse_timeout = site.dimse_timeout
        ae.network_timeout = site.dimse_timeout
        ae.maximum_pdu_size = 0  # as large as the PACS will send
        self._ae = ae  # proposes no contexts of its own: each association its plan's
        self.query_plan = query_plan(site.retrieve)
        self._idle: list[tuple[Association, ContextPlan]] = []  # most recently used last
        self._idle_since: dict[int, float] = {}  # id(association) → when it went idle
        self._leased = 0
        self._sinks: dict[int, StoreSink] = {}
        self._lock = threading.Lock()
        self._slots = asyncio.Semaphore(site.max_associations)
        self._closed = False

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking pynetdicom call on this pool's threads."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    @asynccontextmanager
    async def lease(
        self,
        sink: StoreSink | None = None,
        plan: ContextPlan | None = None,
        wait: float | None = None,
    ) -> AsyncIterator[Association]:
        """An established association for one operation, with the contexts of ``plan`` (the
        query plan if None); C-STOREs it receives go to ``sink``. BackendBusy if none is free
        within ``wait`` seconds (None: 10; 0: only one free now).

        The association goes back to the pool only if the operation ended cleanly.
        """
        wanted = plan or self.query_plan
        await self._acquire(wait)
        assoc: Association | None = None
        has = wanted
        clean = False
        with self._lock:
            self._leased += 1
        try:
            taken = self._take_idle(wanted)
            if taken is None:
                has = self._opening(wanted)
                opened = await self.run(self._open, has)
            else:
                opened, has = taken
            assoc = opened
            if sink is not None:
                with self._lock:
                    self._sinks[id(opened)] = sink
            yield opened
            clean = True
        finally:
            if assoc is not None:
                with self._lock:
                    self._sinks.pop(id(assoc), None)
                if clean and assoc.is_established and not self._closed:
                    with self._lock:
                        self._idle.append((assoc, has))
                        self._idle_since[id(assoc)] = time.monotonic()
                    asyncio.get_running_loop().call_later(
                        self._site.idle_release_seconds, self._release_expired
                    )
                else:
                    # Cancellation may land here: don't await, but do not leave it open either.
                    self.abort_soon(assoc)
            with self._lock:
                self._leased -= 1
            self._slots.release()

    async def _acquire(self, wait: float | None) -> None:
        try:
            wait = _LEASE_WAIT if wait is None else wait
            if wait <= 0 and self._slots.locked():
                raise TimeoutError
            await asyncio.wait_for(self._slots.acquire(), wait if wait > 0 else None)
        except TimeoutError:
            raise BackendBusy(
                "all associations with the PACS are in use", headers={"Retry-After": "5"}
            ) from None

    @asynccontextmanager
    async def slot(self, wait: float | None = None) -> AsyncIterator[None]:
        """Room for one association opened outside pynetdicom (a native C-GET's), counted
        with the pool's within ``max_associations``: idle ones go to make room."""
        await self._acquire(wait)
        with self._lock:
            self._leased += 1
            dropped = []
            while self._idle and self._leased + len(self._idle) > self._site.max_associations:
                dropped.append(self._idle.pop(0)[0])
        _release_in_background(dropped)
        try:
            yield
        finally:
            with self._lock:
                self._leased -= 1
            self._slots.release()

    @property
    def open_associations(self) -> int:
        """Associations open now: idle ones and those leased (one being opened counts)."""
        with self._lock:
            return len(self._idle) + self._leased

    def abort_soon(self, assoc: Association) -> None:
        """Abort an association without waiting (a client gave up).

        Not on the pool's executor: its threads may all be blocked in the very operations
        being aborted.
        """
        threading.Thread(target=_abort, args=(assoc,), name="dimse-abort", daemon=True).start()

    def _release_expired(self) -> None:
        """Let go of the associations idle for ``idle_release_seconds`` or more."""
        deadline = time.monotonic() - self._site.idle_release_seconds * 0.99
        with self._lock:
            expired = [a for a, _ in self._idle if self._idle_since.get(id(a), 0) <= deadline]
            self._idle = [(a, p) for a, p in self._idle if a not in expired]
            since = self._idle_since
            self._idle_since = {id(a): since[id(a)] for a, _ in self._idle if id(a) in since}
        _release_in_background(expired)

    def _take_idle(self, wanted: ContextPlan) -> tuple[Association, ContextPlan] | None:
        """The most recently used idle association whose plan covers ``wanted``."""
        with self._lock:
            # the PACS may have closed some while idle
            self._idle = [(a, p) for a, p in self._idle if a.is_established]
            for index in range(len(self._idle) - 1, -1, -1):
                if self._idle[index][1].covers(wanted):
                    return self._idle.pop(index)
        return None

    def _opening(self, wanted: ContextPlan) -> ContextPlan:
        """The plan to open a new association for ``wanted`` with; lets go of the idle
        associations it makes redundant, and of the oldest while too many are open."""
        with self._lock:
            plan = next(
                (m for _, p in reversed(self._idle) if (m := p.merged(wanted)) is not None),
                wanted,
            )
            kept = [(a, p) for a, p in self._idle if not plan.covers(p)]
            dropped = [a for a, p in self._idle if plan.covers(p)]
            while kept and self._leased + len(kept) > self._site.max_associations:
                dropped.append(kept.pop(0)[0])
            self._idle = kept
        _release_in_background(dropped)
        if wanted.left_out:
            log.warning("%d SOP classes left out of a C-GET's contexts", len(wanted.left_out))
        return plan

    def _open(self, plan: ContextPlan) -> Association:
        started = time.monotonic()
        assoc = self._ae.associate(
            self._site.host,
            self._site.port,
            ae_title=self._site.called_aet,
            contexts=[build_context(uid, list(syntaxes)) for uid, syntaxes in plan.contexts],
            ext_neg=[build_role(uid, scp_role=True) for uid in plan.roles],
            evt_handlers=[
                (evt.EVT_CONN_OPEN, socket_setup(self._site.dimse_timeout)),
                (evt.EVT_C_STORE, self._on_store),
            ],
        )
        if assoc.is_established:
            return assoc
        _close_socket(assoc)
        if assoc.is_rejected:
            raise BackendUnreachable("the PACS rejected the gateway's association")
        if time.monotonic() - started >= self._acse_timeout * 0.9:
            # Connected, but no answer to the association request: too slow, not down.
            raise BackendTimeout("the PACS did not answer the association request in time")
        raise BackendUnreachable("the PACS cannot be reached")

    def _on_store(self, event: Any) -> int:
        with self._lock:
            sink = self._sinks.get(id(event.assoc))
        if sink is None:
            return 0xA700  # Out of Resources: a C-STORE nobody asked for
        return sink(event)

    async def close(self) -> None:
        self._closed = True
        with self._lock:
            idle, self._idle = self._idle, []
        for assoc, _ in idle:
            await self.run(_release, assoc)
        # Not wait=True: a thread stuck on a dead PACS must not hold the process (its socket
        # read times out on its own).
        self._executor.shutdown(wait=False, cancel_futures=True)


def _close_socket(assoc: Association) -> None:
    # pynetdicom 3.0.4 skips close() when shutdown() fails (ENOTCONN after a refused
    # connect), leaving the socket to the garbage collector.
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if isinstance(sock, socket.socket):
        sock.close()


def _release_in_background(associations: list[Association]) -> None:
    for assoc in associations:
        threading.Thread(target=_release, args=(assoc,), name="dimse-release", daemon=True).start()


def _release(assoc: Association) -> None:
    try:
        assoc.release()
    except Exception:  # a peer gone already: nothing more to do
        log.debug("release failed", exc_info=True)


def _abort(assoc: Association) -> None:
    try:
        assoc.abort()
    except Exception:
        log.debug("abort failed", exc_info=True)
