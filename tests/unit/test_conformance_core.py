"""The conformance harness itself (runner.py, context.py, report.py, status.py, cli.py) on fake
checks and a local server that misbehaves: stalls, garbage, endless bodies."""

from __future__ import annotations

import asyncio
import io
import json
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from conformance import cli, report, status
from conformance.checks import qido
from conformance.context import Probe, Target
from conformance.model import Check, CheckFn, Failed, Level, Outcome, Result, Skipped
from conformance.runner import load_registry, matches, run_checks, select

ServerFactory = Callable[..., Awaitable[TestServer]]


def make(id: str, run: CheckFn, level: Level = Level.MUST, section: str = "PS3.18 10.6") -> Check:
    return Check(id=id, area=id.split(".")[0], section=section, level=level, title=id, run=run)


async def passes(probe: Probe) -> None:
    return None


async def fails(probe: Probe) -> None:
    raise Failed("saw 500, expected 200")


async def skips(probe: Probe) -> None:
    raise Skipped("no frames")


async def crashes(probe: Probe) -> None:
    raise ZeroDivisionError("division by zero")


def info(target: Target | None = None) -> report.RunInfo:
    return report.RunInfo(target or Target("http://x/dicom-web"), "2025-01-01T00:00:00+00:00", 1.5)


def run(target: Target, *checks: Check) -> list[Result]:
    return asyncio.run(run_checks(target, checks))


# ---------------------------------------------------------------------------- runner


async def test_outcomes_in_registry_order() -> None:
    async def slow(probe: Probe) -> None:
        await asyncio.sleep(0.2)  # finishes last, reported first

    checks = [
        make("qido.slow", slow),
        make("qido.pass", passes),
        make("wado.fail", fails),
        make("wado.skip", skips),
        make("fhir.error", crashes),
    ]
    seen: list[str] = []
    results = await run_checks(
        Target("http://127.0.0.1:9/dicom-web"), checks, on_result=lambda r: seen.append(r.check.id)
    )
    assert [r.check.id for r in results] == [c.id for c in checks] == seen
    outcomes = [r.outcome for r in results]
    assert outcomes == [Outcome.PASS, Outcome.PASS, Outcome.FAIL, Outcome.SKIP, Outcome.ERROR]
    assert results[2].message == "saw 500, expected 200"
    assert results[3].message == "no frames"
    error = results[4]
    assert error.message == "ZeroDivisionError: division by zero"
    assert "Traceback" in error.details["traceback"]
    assert "Traceback" not in error.message


def test_exit_code_counts_only_must() -> None:
    target = Target("http://127.0.0.1:9")
    assert report.exit_code(run(target, make("a.pass", passes), make("a.skip", skips))) == 0
    should = make("a.fail", fails, Level.SHOULD)
    may = make("a.error", crashes, Level.MAY)
    assert report.exit_code(run(target, should, may)) == 0
    assert report.exit_code(run(target, make("a.fail", fails))) == 1
    assert report.exit_code(run(target, make("a.error", crashes))) == 1


def test_select_by_area_glob_and_prefix() -> None:
    checks = [make(i, passes) for i in ("qido.a.x", "qido.b", "wado.urls.x", "wado.frames")]
    assert [c.id for c in select(checks, ["wado"])] == ["wado.urls.x", "wado.frames"]
    assert [c.id for c in select(checks, ["wado.*"], ["wado.urls.*"])] == ["wado.frames"]
    assert [c.id for c in select(checks, ["qido.a"])] == ["qido.a.x"]
    assert [c.id for c in select(checks, skip=["qido"])] == ["wado.urls.x", "wado.frames"]
    assert matches(checks[0], "*.x") and not matches(checks[1], "qido.bb")


def test_registry_ids_are_area_prefixed() -> None:
    checks = load_registry()
    assert any(c.area == "qido" for c in checks)
    for c in checks:
        assert c.area in ("qido", "wado", "fhir", "security"), c.id
        assert c.section and c.title, c.id


# ---------------------------------------------------------------------------- a bad endpoint


async def bad_endpoint(aiohttp_server: ServerFactory) -> str:
    async def stall(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response(text="late")

    async def garbage(request: web.Request) -> web.Response:
        return web.Response(body=b"<html>not json{", content_type="application/dicom+json")

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/dicom+json"})
        await response.prepare(request)
        for _ in range(1000):  # 64 MB unless the client stops reading
            await response.write(b"[" * 65536)
        return response

    app = web.Application()
    app.router.add_get("/stall/studies", stall)
    app.router.add_get("/garbage/studies", garbage)
    app.router.add_get("/endless/studies", endless)
    server = await aiohttp_server(app)
    return f"http://127.0.0.1:{server.port}"


async def test_a_stalling_endpoint_fails_by_timeout(aiohttp_server: ServerFactory) -> None:
    base = await bad_endpoint(aiohttp_server)
    target = Target(f"{base}/stall", timeout=0.3)
    (result,) = await run_checks(target, [make("qido.resource.studies", qido.all_studies)])
    assert result.outcome is Outcome.FAIL
    assert "no complete answer within 0.3 s" in result.message


async def test_a_check_past_its_own_limit_fails() -> None:
    async def forever(probe: Probe) -> None:
        await asyncio.sleep(30)

    target = Target("http://127.0.0.1:9")
    (result,) = await run_checks(target, [make("qido.x", forever)], check_timeout=0.2)
    assert result.outcome is Outcome.FAIL
    assert result.message == "the check did not finish within 0.2 s"


async def test_memo_asks_once_and_shares_the_answer_and_the_failure() -> None:
    calls: list[str] = []

    async def answer() -> int:
        calls.append("answer")
        await asyncio.sleep(0.2)
        return 7

    async def refusal() -> int:
        calls.append("refusal")
        raise Failed("saw 500")

    async with aiohttp.ClientSession() as session:
        probe = Probe(Target("http://127.0.0.1:9"), session)
        with pytest.raises(TimeoutError):  # a check that gives up waiting (its own limit)...
            await asyncio.wait_for(probe.memo("answer", answer), 0.05)
        # ... does not cancel the question for the others, nor ask it again
        both = await asyncio.gather(probe.memo("answer", answer), probe.memo("answer", answer))
        assert both == [7, 7]
        for _ in range(2):
            with pytest.raises(Failed, match="saw 500"):
                await probe.memo("refusal", refusal)
    assert calls == ["answer", "refusal"]


async def test_garbage_fails_with_a_message(aiohttp_server: ServerFactory) -> None:
    base = await bad_endpoint(aiohttp_server)
    (result,) = await run_checks(
        Target(f"{base}/garbage"), [make("qido.resource.studies", qido.all_studies)]
    )
    assert result.outcome is Outcome.FAIL
    assert "/garbage/studies" in result.message and "not JSON" in result.message


async def test_a_huge_body_is_cut_at_max_body(aiohttp_server: ServerFactory) -> None:
    base = await bad_endpoint(aiohttp_server)
    limit = 100_000
    seen: dict[str, int | bool] = {}

    async def read(probe: Probe) -> None:
        answer = await probe.get("/studies")
        seen.update(size=len(answer.body), truncated=answer.truncated)

    target = Target(f"{base}/endless", max_body=limit)
    await run_checks(target, [make("qido.read", read)])
    assert seen["truncated"] is True
    assert limit < int(seen["size"]) <= limit + 65536
    (result,) = await run_checks(target, [make("qido.resource.studies", qido.all_studies)])
    assert result.outcome is Outcome.FAIL and "--max-body" in result.message


async def test_a_closed_port_fails_with_a_message() -> None:
    (result,) = await run_checks(
        Target("http://127.0.0.1:9/dicom-web", timeout=2),
        [make("qido.resource.studies", qido.all_studies)],
    )
    assert result.outcome is Outcome.FAIL
    assert result.message.startswith("GET http://127.0.0.1:9/dicom-web/studies: Client")


# ---------------------------------------------------------------------------- reports


def sample_results() -> list[Result]:
    return run(
        Target("http://127.0.0.1:9"),
        make("qido.ok", passes),
        make("qido.bad", fails, section="PS3.18 10.6.3.3.1"),
        make("wado.skip", skips, Level.SHOULD),
        make("wado.crash", crashes, Level.MAY, "PS3.18 10.4"),
    )


def test_junit_xml_is_valid_and_complete() -> None:
    root = ET.fromstring(report.junit_xml(sample_results(), info()))
    assert root.tag == "testsuites" and root.get("tests") == "4" and root.get("failures") == "2"
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert list(suites) == ["qido", "wado"]
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert cases["qido.bad"].get("classname") == "qido"
    failure = cases["qido.bad"].find("failure")
    assert failure is not None and failure.get("message") == "saw 500, expected 200"
    assert "PS3.18 10.6.3.3.1" in (failure.text or "")
    props = {p.get("name"): p.get("value") for p in cases["qido.bad"].iter("property")}
    assert props["level"] == "MUST" and props["section"] == "PS3.18 10.6.3.3.1"
    assert cases["wado.skip"].find("skipped") is not None
    crash = cases["wado.crash"].find("failure")
    assert crash is not None and "Traceback" in (crash.text or "")
    assert cases["qido.ok"].find("failure") is None


def test_junit_xml_survives_control_characters() -> None:
    async def nasty(probe: Probe) -> None:
        raise Failed("bad \x00\x1b[31m byte <&>")

    results = run(Target("http://127.0.0.1:9"), make("qido.nasty", nasty))
    case = ET.fromstring(report.junit_xml(results, info())).find("testsuite/testcase/failure")
    assert case is not None and case.get("message") == "bad [31m byte <&>"


def test_markdown_and_json() -> None:
    results = sample_results()
    text = report.markdown(results, info())
    assert "**FAIL**" in text and "`qido.bad` (PS3.18 10.6.3.3.1): saw 500" in text
    assert "## wado" in text
    document = json.loads(report.results_json(results, info(Target("http://x", token="s3cr3t"))))
    assert document["exit_code"] == 1 and document["failed_musts"] == ["qido.bad"]
    assert document["summary"] == {"pass": 1, "fail": 1, "skip": 1, "error": 1, "total": 4}
    assert document["run"]["token"] is True
    assert "s3cr3t" not in json.dumps(document)
    assert [r["id"] for r in document["results"]] == [
        "qido.ok",
        "qido.bad",
        "wado.skip",
        "wado.crash",
    ]


def test_console_without_a_terminal_prints_a_line_per_check() -> None:
    results = sample_results()
    out = io.StringIO()
    console = report.Console(len(results), stream=out)
    for r in results:
        console.result(r)
    console.finish(results, info())
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    assert "[1/4] PASS  MUST   qido.ok" in text
    assert "PS3.18 10.6.3.3.1: saw 500, expected 200" in text
    assert "ZeroDivisionError: division by zero" in text and "Traceback" not in text
    assert "1 MUST check(s) failed:\n  qido.bad (PS3.18 10.6.3.3.1)" in text
    quiet = io.StringIO()
    console = report.Console(len(results), stream=quiet, quiet=True)
    for r in results:
        console.result(r)
    assert "qido.ok" not in quiet.getvalue() and "qido.bad" in quiet.getvalue()


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_console_on_a_terminal_draws_a_bar_and_lines_for_failures() -> None:
    results = sample_results()
    out = Terminal()
    console = report.Console(len(results), stream=out)
    for r in results:
        console.result(r)
    console.finish(results, info())
    text = out.getvalue()
    assert "\x1b" not in text  # plain text: the bar is blanked with spaces
    assert "\r[" in text and "] 4/4 wado.crash" in text
    lines = text.replace("\r", "\n").splitlines()
    assert any(line.startswith("[2/4] FAIL  MUST   qido.bad") for line in lines)
    assert not any(line.startswith("[1/4] PASS") for line in lines)  # the bar shows passes
    assert text.rstrip().endswith("qido.bad (PS3.18 10.6.3.3.1): saw 500, expected 200")


# ---------------------------------------------------------------------------- status


def test_status_statement_and_drift(tmp_path: Path) -> None:
    rows = [report.result_dict(r) for r in sample_results()]
    rows.append({**rows[0], "id": "fhir.x", "section": "NCPeH Get Study Metadata", "title": "t"})
    text = status.statement(rows)
    assert text == status.statement(rows)  # deterministic
    assert "| 10.6.3.3.1 | qido.bad | Not supported | MUST | `qido.bad` |" in text
    assert "| 10.6 | qido.ok | Supported | MUST | `qido.ok` |" in text
    assert "Ignored | SHOULD | `wado.skip`" in text
    assert "## DICOM PS3.18" in text and "## NCPeH" in text
    assert text.index("10.4 |") < text.index("10.6 |") < text.index("10.6.3.3.1 |")
    assert "127.0.0.1" not in text and "2025" not in text  # nothing run-specific
    path = tmp_path / "STATUS.md"
    assert "regenerate it with `make conformance-status`" in status.drift(path, text)
    path.write_text(text)
    assert status.drift(path, text) == ""
    changed = status.statement([{**rows[0], "outcome": "fail"}, *rows[1:]])
    message = status.drift(path, changed)
    assert "drifts" in message and "-| 10.6 | qido.ok | Supported" in message
    assert "+| 10.6 | qido.ok | Not supported" in message


def test_status_from_a_results_file(tmp_path: Path) -> None:
    results = sample_results()
    saved = tmp_path / "results.json"
    saved.write_bytes(report.results_json(results, info()))
    out = tmp_path / "STATUS.md"
    assert status.main([str(saved), "--write", str(out)]) == 0
    assert out.read_text() == status.statement([report.result_dict(r) for r in results])
    assert status.main([str(saved), "--check", str(out)]) == 0
    out.write_text("old\n")
    assert status.main([str(saved), "--check", str(out)]) == 3


# ---------------------------------------------------------------------------- command line


async def tiny_archive(aiohttp_server: ServerFactory, tokens: list[str]) -> str:
    """/studies answering [] (and remembering the Authorization it got)."""

    async def studies(request: web.Request) -> web.Response:
        tokens.append(request.headers.get("Authorization", ""))
        return web.Response(body=b"[]", content_type="application/dicom+json")

    app = web.Application()
    app.router.add_get("/dicom-web/studies", studies)
    server = await aiohttp_server(app)
    return f"http://127.0.0.1:{server.port}/dicom-web"


async def test_cli_runs_writes_reports_and_checks_status(
    aiohttp_server: ServerFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tokens: list[str] = []
    base = await tiny_archive(aiohttp_server, tokens)
    only = ["--only", "qido.resource.studies", "qido.media.empty-result"]
    common = ["--base-url", base, *only, "--token-command", "echo ' tok3n '"]
    status_file = tmp_path / "STATUS.md"
    argv = [*common, "--report-dir", str(tmp_path / "r"), "--write-status", str(status_file)]
    assert await asyncio.to_thread(cli.main, argv) == 0
    assert tokens and set(tokens) == {"Bearer tok3n"}
    assert {p.name for p in (tmp_path / "r").iterdir()} == {
        "report.md",
        "junit.xml",
        "results.json",
    }
    assert "`qido.resource.studies`" in status_file.read_text()
    check = [*common, "--check-status", str(status_file)]
    assert await asyncio.to_thread(cli.main, check) == 0
    status_file.write_text(status_file.read_text().replace("Supported", "Ignored", 1))
    assert await asyncio.to_thread(cli.main, check) == cli.EXIT_DRIFT
    assert "make conformance-status" in capsys.readouterr().err


def test_cli_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--base-url", "http://127.0.0.1:9"]
    assert cli.main([*base, "--only", "no.such.check"]) == cli.EXIT_USAGE
    assert cli.main([*base, "--token-command", "echo oops >&2; exit 3"]) == cli.EXIT_USAGE
    assert "--token-command exited 3: oops" in capsys.readouterr().err
    assert cli.main([*base, "--token-command", "true"]) == cli.EXIT_USAGE
    with pytest.raises(SystemExit):
        cli.main([*base, "--token", "a", "--token-command", "b"])
    with pytest.raises(SystemExit):
        cli.main([*base, "--timeout", "0"])


def test_cli_fails_when_the_endpoint_is_down(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(
        ["--base-url", "http://127.0.0.1:9/dicom-web", "--only", "qido", "--timeout", "2"]
    )
    assert code == 1
    out = capsys.readouterr().out
    assert "qido.resource.studies (PS3.18 10.6.1.1 (Table 10.6.1-1)): GET" in out
    assert "Traceback" not in out
