"""The harness's vocabulary: a check (id, source section, level), its result, and the registry.

A check is an ``async`` function taking a :class:`Probe` context (defined in ``context.py``)
and returning nothing when it passes; it says how it failed by raising :class:`Failed` (the
endpoint broke a rule) or :class:`Skipped` (the check does not apply: no token given, no
frames in the test study, an optional feature absent). Any other exception is an error of
the check, reported with its message, never a traceback on the console.

Checks register with :func:`check`; each module of ``conformance.checks`` is one area (QIDO,
WADO, FHIR, security) and its checks run in the order they are defined.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .context import Probe

__all__ = [
    "REGISTRY",
    "Check",
    "CheckFn",
    "Failed",
    "Level",
    "Outcome",
    "Result",
    "Skipped",
    "check",
]


class Level(enum.StrEnum):
    """RFC 2119 strength of the rule the check tests: only a failed MUST fails the run."""

    MUST = "MUST"
    SHOULD = "SHOULD"
    MAY = "MAY"


class Outcome(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"
    ERROR = "error"  # the check itself could not run to a verdict (a bug, an unreadable answer)


class Failed(Exception):
    """The endpoint broke the rule; the message says what was seen, against what was expected."""


class Skipped(Exception):
    """The check does not apply to this endpoint or run; the message says why."""


CheckFn = Callable[["Probe"], Awaitable[None]]


@dataclass(frozen=True)
class Check:
    id: str  # stable, dotted: "qido.study.required-attributes"; STATUS.md and JUnit name it
    area: str  # "qido", "wado", "fhir", "security": the module that defines it
    section: str  # where the rule comes from: "PS3.18 10.6.3.3.1", "NCPeH Get Study Metadata"
    level: Level
    title: str  # one line, what is checked
    run: CheckFn = field(compare=False, repr=False)


@dataclass(frozen=True)
class Result:
    check: Check
    outcome: Outcome
    message: str = ""  # why it failed / was skipped / errored; empty on a pass
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)  # e.g. the URL asked, the status got


REGISTRY: dict[str, Check] = {}


def check(id: str, *, section: str, level: Level, title: str) -> Callable[[CheckFn], CheckFn]:
    """Register ``fn`` as the check ``id`` (ids are unique; the area is the id's first part)."""

    def register(fn: CheckFn) -> CheckFn:
        if id in REGISTRY:
            raise ValueError(f"check {id} registered twice")
        area = id.split(".", 1)[0]
        REGISTRY[id] = Check(id=id, area=area, section=section, level=level, title=title, run=fn)
        return fn

    return register
