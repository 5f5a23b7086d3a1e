"""Selects checks from the registry and runs them against one endpoint.

Every check ends as a :class:`Result`, whatever it does: a return is a pass, :class:`Failed` a
failure, :class:`Skipped` a skip, running past the per-check timeout a failure, and any other
exception an error whose console message is ``Type: message`` (the traceback goes to the
result's details, for the JSON report only). Checks run a few at a time on one HTTP session,
but results come back, and are reported, in registry order, so two runs read alike.
"""

from __future__ import annotations

import asyncio
import fnmatch
import time
import traceback
from collections.abc import Callable, Iterable, Sequence

import aiohttp

from .context import Probe, Target
from .model import REGISTRY, Check, Failed, Outcome, Result, Skipped

__all__ = ["CONCURRENCY", "load_registry", "matches", "run_checks", "select"]

CONCURRENCY = 4  # checks in flight at once: enough to overlap waits, gentle on the endpoint


def load_registry() -> list[Check]:
    """Every registered check, in definition order (importing the areas registers them)."""
    import conformance.checks  # noqa: F401  (registration by import)

    return list(REGISTRY.values())


def matches(check: Check, pattern: str) -> bool:
    """True when ``pattern`` names ``check``: an area ("qido"), an id glob ("wado.*",
    "*.406"), or an id prefix ending at a dot ("qido.study" covers "qido.study.limit")."""
    return (
        fnmatch.fnmatchcase(check.id, pattern)
        or fnmatch.fnmatchcase(check.area, pattern)
        or check.id.startswith(pattern.rstrip(".") + ".")
    )


def select(
    checks: Iterable[Check], only: Sequence[str] = (), skip: Sequence[str] = ()
) -> list[Check]:
    """The checks named by any ``only`` pattern (all when none), less those named by ``skip``;
    in the order given."""
    return [
        c
        for c in checks
        if (not only or any(matches(c, p) for p in only)) and not any(matches(c, p) for p in skip)
    ]


async def run_checks(
    target: Target,
    checks: Sequence[Check],
    *,
    concurrency: int = CONCURRENCY,
    check_timeout: float | None = None,
    on_result: Callable[[Result], None] | None = None,
) -> list[Result]:
    """Run ``checks`` against ``target``; the results in the order of ``checks``.

    ``check_timeout`` bounds one check as a whole (default: four request timeouts), since a
    check may make many requests each within its own limit. ``on_result`` is called with each
    result in order, as soon as it and all before it are done (for a progress display).
    """
    limit = check_timeout if check_timeout is not None else 4 * target.timeout
    gate = asyncio.Semaphore(max(1, concurrency))
    ordered = _InOrder(len(checks), on_result)
    # No cookies kept between checks, no proxy settings taken from the environment: each
    # request is what the check says, and only that.
    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(), trust_env=False
    ) as session:
        probe = Probe(target, session)

        async def one(index: int, chk: Check) -> Result:
            async with gate:
                result = await run_one(probe, chk, limit)
            ordered.done(index, result)
            return result

        return list(await asyncio.gather(*(one(i, c) for i, c in enumerate(checks))))


async def run_one(probe: Probe, chk: Check, limit: float) -> Result:
    """One check to a Result (see the module docstring); never raises but on cancellation."""
    started = time.monotonic()

    def result(outcome: Outcome, message: str = "", **details: object) -> Result:
        return Result(chk, outcome, message, round(time.monotonic() - started, 3), dict(details))

    try:
        await asyncio.wait_for(chk.run(probe), timeout=limit)
    except Failed as exc:
        return result(Outcome.FAIL, _text(exc) or "failed")
    except Skipped as exc:
        return result(Outcome.SKIP, _text(exc))
    except TimeoutError:
        return result(Outcome.FAIL, f"the check did not finish within {limit:g} s")
    except Exception as exc:  # a check's own fault: an error, not a crash
        trace = "".join(traceback.format_exception(exc))
        return result(Outcome.ERROR, f"{type(exc).__name__}: {_text(exc)}", traceback=trace)
    return result(Outcome.PASS)


def _text(exc: BaseException) -> str:
    """The exception's message on one line, bounded (an endpoint's words may be long)."""
    text = " ".join(str(exc).split())
    return text if len(text) <= 2000 else text[:1997] + "..."


class _InOrder:
    """Hands results to a callback in index order while they complete in any order."""

    def __init__(self, total: int, callback: Callable[[Result], None] | None) -> None:
        self._pending: dict[int, Result] = {}
        self._next = 0
        self._total = total
        self._callback = callback

    def done(self, index: int, result: Result) -> None:
        self._pending[index] = result
        while self._next in self._pending:
            ready = self._pending.pop(self._next)
            self._next += 1
            if self._callback is not None:
                self._callback(ready)
