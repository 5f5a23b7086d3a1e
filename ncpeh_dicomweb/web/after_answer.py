"""Bookkeeping an answer leaves behind (its access-log line, its AuditEvent), done while the
gateway waits for the PACS rather than on the next request's way to it.

A client that waits for each answer sends its next request a fraction of a millisecond after
the last one arrived; whatever the gateway still has to do for the last one then runs between
that request's arrival and its upstream request, and the client waits for it. Work deferred
here runs as soon as the gateway has sent a request to the PACS and waits for its answer
(:meth:`AfterAnswer.now_waiting`, called by the backends' search and metadata client), or
``delay`` after the first of a batch was queued if no such wait comes first (an answer from a
cache, a retrieve, a quiet gateway). A fixed delay alone was not enough: on a slow machine a
third of the batches came due before the next request had left for the PACS. Under load a
batch runs on one of the loop's next turns like any other callback, so nothing waits longer
than it would have; a batch is written at once, in order. :meth:`AfterAnswer.close` (at
shutdown, before the audit trail closes) does what is left, and from then on each job is done
when it is queued: nothing is lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

__all__ = ["AFTER_ANSWER", "AfterAnswer", "after_answer_context", "defer"]

log = logging.getLogger(__name__)

# The batch's latest start when no request goes to the PACS first: long enough that a client's
# next request (its turn takes 0.1-0.3 ms here) has usually left for the PACS by then.
_DELAY = 0.005


class AfterAnswer:
    """A queue of jobs run together at the gateway's next wait for the PACS, or ``delay``
    seconds after the first was queued, whichever comes first."""

    def __init__(self, delay: float = _DELAY) -> None:
        self._delay = delay
        self._jobs: list[tuple[Callable[..., object], tuple[Any, ...]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._soon: asyncio.Handle | None = None  # run_all on the loop's next turn
        self._closed = False
        self.failed = 0  # jobs that raised (each logged)

    def defer(self, job: Callable[..., object], *args: Any) -> None:
        if self._closed:
            self._run(job, args)
            return
        self._jobs.append((job, args))
        if self._timer is None and self._soon is None:
            self._timer = asyncio.get_running_loop().call_later(self._delay, self.run_all)

    def now_waiting(self) -> None:
        """A request has just gone to the PACS and the gateway waits for its answer: what is
        queued runs on the loop's next turn, once the waiting task has yielded."""
        if self._jobs and self._soon is None:
            self._soon = asyncio.get_running_loop().call_soon(self.run_all)

    def run_all(self) -> None:
        """Run every job queued, in order (a job's failure is logged and the rest go on)."""
        self._cancel_pending()
        while self._jobs:
            jobs, self._jobs = self._jobs, []
            for job, args in jobs:
                self._run(job, args)
        self._cancel_pending()  # a job that queued another armed a timer: it ran here

    def close(self) -> None:
        self._closed = True
        self.run_all()

    def _cancel_pending(self) -> None:
        # Whichever of the two fired, the other must not run an empty (or later) batch.
        for handle in (self._timer, self._soon):
            if handle is not None:
                handle.cancel()
        self._timer = self._soon = None

    def _run(self, job: Callable[..., object], args: tuple[Any, ...]) -> None:
        try:
            job(*args)
        except Exception:
            self.failed += 1
            log.exception("after-answer job %s failed", getattr(job, "__qualname__", job))


AFTER_ANSWER = web.AppKey("after_answer", AfterAnswer)


def defer(app: web.Application | None, job: Callable[..., object], *args: Any) -> None:
    """``job(*args)`` in ``app``'s after-answer lane, or now if it has none (an app without
    the context, a request aiohttp refused before routing it)."""
    try:
        lane = app[AFTER_ANSWER] if app is not None else None  # [] is cheaper than get()
    except KeyError:
        lane = None
    if isinstance(lane, AfterAnswer):  # not a test's stand-in app
        lane.defer(job, *args)
    else:
        job(*args)


async def after_answer_context(app: web.Application) -> AsyncIterator[None]:
    """Open while the app serves; set up after the audit trail, so that it is closed (and
    what it holds done) before the trail is."""
    lane = app[AFTER_ANSWER] = AfterAnswer(_DELAY)  # read at start-up (a test sets it)
    try:
        yield
    finally:
        lane.close()
