"""A study retrieved in parts: one C-GET / C-MOVE per series, several at once.

The first part starts at once, on the association the retrieve leased; the others wait for
its first instance (or its end), so the first part reaches the client as soon as it would
without the split, then take the remaining series on associations free at that moment. Any
part failing, or every client leaving, C-CANCELs the parts running and starts no other.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

from ...errors import BackendError, GatewayError
from ..base import Target
from .operations import RetrieveOutcome
from .status import CANCEL, SUCCESS

__all__ = ["Split", "by_series", "splits"]


class Cancels(Protocol):
    def soon(self) -> None:
        """C-CANCEL the operation without blocking the caller (the event loop)."""
        ...


def splits(parallelism: int, max_associations: int, cache_max_bytes: int, window: int) -> int:
    """Operations a study retrieve may run at once: ``parallelism``, at most the site's
    associations, and 1 (no split) when the cache cannot hold a client window per part: a
    site that keeps nothing gains little, and its PACS should not be held by several
    associations waiting on slow clients."""
    room = min(parallelism, max_associations)
    return room if room > 1 and cache_max_bytes >= room * window else 1


class Split:
    """The parts of one retrieval, taken in turn by its sub-retrieves, and how it ended.

    Used on the event loop. ``stop`` is read by the DIMSE threads: set when every client has
    gone (the flight's ``cancel``) or a part failed, it makes each running part C-CANCEL, and
    no part starts after it. ``ready`` is set once the first part has brought an instance or
    ended (or the split stopped): the other parts start only then.
    """

    def __init__(self, parts: Sequence[Target], cancel: threading.Event) -> None:
        self.stop = threading.Event()
        self.ready = asyncio.Event()
        self._pending = deque(parts)
        self._cancel = cancel
        self._running: list[Cancels] = []
        self._outcomes: list[RetrieveOutcome] = []
        self._error: GatewayError | None = None

    @property
    def pending(self) -> int:
        return len(self._pending)

    def next(self) -> Target | None:
        return None if self.stop.is_set() or not self._pending else self._pending.popleft()

    @contextmanager
    def cancelling(self, canceller: Cancels) -> Iterator[None]:
        """While a part runs, :meth:`halt` C-CANCELs it."""
        self._running.append(canceller)
        try:
            yield
        finally:
            self._running.remove(canceller)

    def halt(self) -> None:
        self.ready.set()  # the parts waiting to start: to find there is nothing left
        if self.stop.is_set():
            return
        self.stop.set()
        for canceller in self._running:
            canceller.soon()

    def record(self, outcome: RetrieveOutcome) -> None:
        self._outcomes.append(outcome)
        if faulty(outcome):  # the retrieval fails whatever the others bring: stop them
            self.halt()

    def fail(self, error: GatewayError) -> None:
        if self._error is None:  # the first: the others may only be its consequences
            self._error = error
        self.halt()

    def outcome(self) -> RetrieveOutcome:
        """The parts' outcomes as one: the first error raised, else the first faulty status,
        else cancelled (every client gone), else their counts summed."""
        if self._error is not None:
            raise self._error
        bad = [o for o in self._outcomes if faulty(o)]
        if not bad and (self._cancel.is_set() or self.stop.is_set()):
            return RetrieveOutcome(CANCEL, 0, 0, 0)
        if self._pending:  # cannot happen: a stop is a cancel or a fault
            raise BackendError("the retrieve ended before all its series were asked for")
        status = bad[0].status if bad else _status_of(self._outcomes)
        return RetrieveOutcome(
            status,
            sum(o.completed for o in self._outcomes),
            sum(o.failed for o in self._outcomes),
            sum(o.warning for o in self._outcomes),
        )


def faulty(outcome: RetrieveOutcome) -> bool:
    return outcome.status not in (SUCCESS, CANCEL) or outcome.failed > 0


def _status_of(outcomes: Sequence[RetrieveOutcome]) -> int:
    # A part the PACS cancelled of itself: as a whole retrieve it cancelled (not ours).
    return CANCEL if any(o.status == CANCEL for o in outcomes) else SUCCESS


def by_series(members: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Instances grouped by series (series in order of arrival, instances in theirs): the
    series of a study retrieved in parallel arrive interleaved; read later, they need not."""
    first: dict[str, int] = {}
    for series, _ in members:
        first.setdefault(series, len(first))
    return sorted(members, key=lambda m: first[m[0]])
