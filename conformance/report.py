"""The run's reports: console (with a progress bar), Markdown, JUnit XML and JSON.

The exit code is decided here too: 1 when a MUST check failed or errored, else 0. A failed
SHOULD or MAY is reported (and is a JUnit failure, so CI shows it) but does not fail the run.
"""

from __future__ import annotations

import shutil
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import orjson

from .context import Target
from .model import Check, Level, Outcome, Result

__all__ = [
    "Console",
    "RunInfo",
    "exit_code",
    "failed_musts",
    "junit_xml",
    "markdown",
    "results_json",
]

_LABEL = {Outcome.PASS: "PASS", Outcome.FAIL: "FAIL", Outcome.SKIP: "SKIP", Outcome.ERROR: "ERROR"}


@dataclass(frozen=True)
class RunInfo:
    """What the reports say about the run besides its results (never the token)."""

    target: Target
    started: str  # ISO 8601, UTC
    seconds: float

    def describe(self) -> dict[str, Any]:
        t = self.target
        return {
            "base_url": t.base_url,
            "fhir_url": t.fhir_url,
            "token": bool(t.token),  # whether one was used, not what it was
            "study": t.study,
            "patient": t.patient,
            "timeout": t.timeout,
            "max_body": t.max_body,
            "started": self.started,
            "seconds": round(self.seconds, 3),
        }


def failed_musts(results: Sequence[Result]) -> list[Result]:
    """The results that fail the run: a MUST check that failed or errored."""
    return [
        r
        for r in results
        if r.check.level is Level.MUST and r.outcome in (Outcome.FAIL, Outcome.ERROR)
    ]


def exit_code(results: Sequence[Result]) -> int:
    return 1 if failed_musts(results) else 0


def _counts(results: Sequence[Result]) -> Counter[Outcome]:
    return Counter(r.outcome for r in results)


def _summary(results: Sequence[Result]) -> str:
    counts = _counts(results)
    parts = [f"{counts[o]} {o.value}" for o in Outcome if counts[o]]
    return f"{len(results)} checks: " + (", ".join(parts) or "none run")


# ---------------------------------------------------------------------------- console


class Console:
    """Progress and results on a text stream: a redrawn progress bar on a terminal, one line
    per check otherwise (CI logs); failures always get their line and message."""

    def __init__(self, total: int, *, stream: TextIO | None = None, quiet: bool = False) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.total = total
        self.quiet = quiet
        self.done = 0
        self.tty = self.stream.isatty()
        self._drawn = 0  # width of the bar on screen, to blank it with spaces (no escapes)

    def result(self, result: Result) -> None:
        """One finished check (called in report order)."""
        self.done += 1
        bad = result.outcome in (Outcome.FAIL, Outcome.ERROR)
        if self.tty:  # the bar shows progress; only problems get a line of their own
            self._clear()
            if bad:
                self.stream.write(self._line(result) + "\n")
            self._bar(result.check)
        elif bad or not self.quiet:
            self.stream.write(self._line(result) + "\n")
        self.stream.flush()

    def finish(self, results: Sequence[Result], info: RunInfo) -> None:
        """The summary and the MUSTs that failed, with their sections."""
        if self.tty:
            self._clear()
        out = self.stream
        out.write(f"{_summary(results)} in {info.seconds:.1f} s against {info.target.base_url}\n")
        musts = failed_musts(results)
        if musts:
            out.write(f"{len(musts)} MUST check(s) failed:\n")
            for r in musts:
                out.write(f"  {r.check.id} ({r.check.section}): {r.message}\n")
        else:
            out.write("every MUST check passed (or was skipped)\n")
        out.flush()

    def _line(self, r: Result) -> str:
        head = (
            f"[{self.done:>{len(str(self.total))}}/{self.total}] {_LABEL[r.outcome]:<5} "
            f"{r.check.level.value:<6} {r.check.id} ({r.seconds:.2f} s)"
        )
        if r.outcome is Outcome.PASS or not r.message:
            return head
        return f"{head}\n        {r.check.section}: {r.message}"

    def _bar(self, last: Check) -> None:
        width = max(20, min(40, shutil.get_terminal_size((80, 20)).columns - 40))
        filled = width * self.done // max(1, self.total)
        bar = f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {last.id}"
        self.stream.write("\r" + bar[:120])
        self._drawn = len(bar[:120])

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write("\r" + " " * self._drawn + "\r")
            self._drawn = 0


# ---------------------------------------------------------------------------- Markdown


def _cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def markdown(results: Sequence[Result], info: RunInfo) -> str:
    """A human report: the summary, the failed MUSTs, then each area's table."""
    lines = [
        "# DICOMweb / NCPeH conformance report",
        "",
        f"- Endpoint: `{info.target.base_url}`"
        + (f", FHIR `{info.target.fhir_url}`" if info.target.fhir_url else ""),
        f"- Started {info.started}, {info.seconds:.1f} s; bearer token: "
        + ("yes" if info.target.token else "no"),
        f"- {_summary(results)}",
        f"- Verdict: **{'FAIL' if failed_musts(results) else 'PASS'}** "
        "(a failed or erroring MUST check fails the run)",
        "",
    ]
    musts = failed_musts(results)
    if musts:
        lines += ["## Failed MUST checks", ""]
        lines += [f"- `{r.check.id}` ({r.check.section}): {_cell(r.message)}" for r in musts]
        lines.append("")
    for area in _areas(results):
        lines += [
            f"## {area}",
            "",
            "| Check | Level | Section | Outcome | Time (s) | Message |",
            "|---|---|---|---|---|---|",
        ]
        for r in results:
            if r.check.area == area:
                lines.append(
                    f"| `{r.check.id}` | {r.check.level.value} | {_cell(r.check.section)} | "
                    f"{_LABEL[r.outcome]} | {r.seconds:.2f} | {_cell(r.message)} |"
                )
        lines.append("")
    return "\n".join(lines)


def _areas(results: Sequence[Result]) -> list[str]:
    return list(dict.fromkeys(r.check.area for r in results))


# ---------------------------------------------------------------------------- JUnit XML


def junit_xml(results: Sequence[Result], info: RunInfo) -> bytes:
    """JUnit XML: a testsuite per area, a testcase per check (name = check id, classname =
    area, the level and section as properties); FAIL and ERROR are ``failure``s."""
    counts = _counts(results)
    root = ET.Element(
        "testsuites",
        name="conformance",
        tests=str(len(results)),
        failures=str(counts[Outcome.FAIL] + counts[Outcome.ERROR]),
        errors="0",
        skipped=str(counts[Outcome.SKIP]),
        time=f"{info.seconds:.3f}",
    )
    for area in _areas(results):
        mine = [r for r in results if r.check.area == area]
        own = _counts(mine)
        suite = ET.SubElement(
            root,
            "testsuite",
            name=area,
            tests=str(len(mine)),
            failures=str(own[Outcome.FAIL] + own[Outcome.ERROR]),
            errors="0",
            skipped=str(own[Outcome.SKIP]),
            time=f"{sum(r.seconds for r in mine):.3f}",
            timestamp=info.started,
        )
        props = ET.SubElement(suite, "properties")
        ET.SubElement(props, "property", name="base_url", value=info.target.base_url)
        for r in mine:
            _testcase(suite, r)
    ET.indent(root)
    return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True))


def _testcase(suite: ET.Element, r: Result) -> None:
    case = ET.SubElement(
        suite, "testcase", name=r.check.id, classname=r.check.area, time=f"{r.seconds:.3f}"
    )
    props = ET.SubElement(case, "properties")
    ET.SubElement(props, "property", name="level", value=r.check.level.value)
    ET.SubElement(props, "property", name="section", value=r.check.section)
    ET.SubElement(props, "property", name="title", value=r.check.title)
    message = _xml_safe(r.message)
    if r.outcome in (Outcome.FAIL, Outcome.ERROR):
        failure = ET.SubElement(
            case, "failure", message=message, type=f"{r.check.level.value} {r.outcome.value}"
        )
        trace = r.details.get("traceback")
        extra = "\n" + _xml_safe(trace) if isinstance(trace, str) else ""
        failure.text = f"{r.check.section}: {message}{extra}"
    elif r.outcome is Outcome.SKIP:
        ET.SubElement(case, "skipped", message=message)


def _xml_safe(text: str) -> str:
    """Without the characters XML 1.0 cannot carry (an endpoint's message may hold them)."""
    return "".join(
        ch
        for ch in text
        if ch in "\t\n\r"
        or "\x20" <= ch <= "\ud7ff"
        or "\ue000" <= ch <= "\ufffd"
        or ch >= "\U00010000"
    )


# ---------------------------------------------------------------------------- JSON


def result_dict(r: Result) -> dict[str, Any]:
    return {
        "id": r.check.id,
        "area": r.check.area,
        "section": r.check.section,
        "level": r.check.level.value,
        "title": r.check.title,
        "outcome": r.outcome.value,
        "message": r.message,
        "seconds": r.seconds,
        "details": r.details,
    }


def results_json(results: Sequence[Result], info: RunInfo) -> bytes:
    """Every result, with the run's description and counts (``conformance.status`` reads it)."""
    counts = _counts(results)
    document = {
        "run": info.describe(),
        "summary": {o.value: counts[o] for o in Outcome} | {"total": len(results)},
        "exit_code": exit_code(results),
        "failed_musts": [r.check.id for r in failed_musts(results)],
        "results": [result_dict(r) for r in results],
    }
    return orjson.dumps(document, option=orjson.OPT_INDENT_2, default=str)
