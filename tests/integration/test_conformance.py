"""The conformance harness run as users run it (a subprocess) against our gateway's DICOMweb site,
bearer tokens required and one given, as `make conformance` runs it (every MUST passes, the
security ones too; STATUS.md does not drift), its DIMSE site without [auth] (every MUST passes; the
security finding is made), Orthanc's own DICOMweb root (it must fail something we pass), and
deliberately broken set-ups, which must fail naming the check and its section. Reports are kept
in build/conformance/test-*/ (CI artifacts).
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from conformance.runner import load_registry, select
from conformance.status import REGENERATE, drift, statement
from tests.conftest import (
    ROOT,
    DimseGateway,
    Gateway,
    Pacs,
    free_port,
    running_dimse_gateway,
    start_gateway,
    stop_gateway,
)
from tests.unit.test_security_tokens import AUDIENCE, ISSUER, claims, jwks_document, rsa_key

pytestmark = pytest.mark.integration

REPORTS = ROOT / "build" / "conformance"
STATUS = ROOT / "conformance" / "STATUS.md"
ServerFactory = Callable[..., Awaitable[TestServer]]
# A pydicom test file alone in its study, stored in JPEG 2000 lossless: the test study's own
# instance is compressed (losslessly), so the default retrieve must transcode it to Explicit VR
# Little Endian.
COMPRESSED_FILE = "GDCMJ2K_TextGBR.dcm"
# What the routes ask of a token (README "Security"), as scripts/conformance.sh's test IdP gives.
SCOPES = "system/ImagingStudy.rs system/ImagingSelection.rs system/Patient.r system/Endpoint.r"


@dataclass(frozen=True)
class Run:
    """One harness run: exit code, console output and results.json."""

    code: int
    output: str
    results: list[dict[str, Any]]
    folder: Path

    def outcome(self, check_id: str) -> str | None:
        return next((r["outcome"] for r in self.results if r["id"] == check_id), None)

    def failed_musts(self) -> list[dict[str, Any]]:
        return [
            r for r in self.results if r["level"] == "MUST" and r["outcome"] in ("fail", "error")
        ]

    def describe_failures(self) -> str:
        return "\n".join(f"{r['id']} ({r['section']}): {r['message']}" for r in self.failed_musts())


def _command(base: str, name: str, *extra: str, console_script: bool = False) -> list[str]:
    folder = REPORTS / name
    shutil.rmtree(folder, ignore_errors=True)
    script = Path(sys.executable).parent / "ncpeh-dicomweb"
    program = (
        [str(script), "conformance"]
        if console_script and script.exists()
        else [sys.executable, "-m", "conformance"]
    )
    return [*program, "--base-url", base, "--report-dir", str(folder), "--timeout", "60", *extra]


def _finish(name: str, code: int, output: str) -> Run:
    folder = REPORTS / name
    assert code in (0, 1), f"harness exited {code}:\n{output[-3000:]}"
    assert "Traceback" not in output, output[-3000:]
    for report in ("report.md", "junit.xml", "results.json"):
        assert (folder / report).is_file(), f"no {report} in {folder}"
    results = json.loads((folder / "results.json").read_text())["results"]
    return Run(code, output, results, folder)


def harness(base: str, name: str, *extra: str, console_script: bool = False) -> Run:
    """The harness as a subprocess; its reports in build/conformance/NAME/."""
    done = subprocess.run(
        _command(base, name, *extra, console_script=console_script),
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
        check=False,
    )
    return _finish(name, done.returncode, done.stdout + done.stderr)


async def harness_async(base: str, name: str, *extra: str) -> Run:
    """:func:`harness` without blocking the loop (a proxy of the test serves on it)."""
    proc = await asyncio.create_subprocess_exec(
        *_command(base, name, *extra),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=ROOT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=900)
    return _finish(name, proc.returncode or 0, out.decode("utf-8", "replace"))


def _core_study(pacs: Pacs) -> str:
    """The test study of `make conformance` too (scripts/conformance.sh): the same everywhere,
    the first of the Czech patient's, whose issuer CZ-NCPEH is mapped to a FHIR system (conftest:
    CZ_SYSTEM), so fhir.search.patient-system runs."""
    studies = pacs.manifest["core"]["studies"]
    return str(next(s["study_uid"] for s in studies if s["issuer_of_patient_id"] == "CZ-NCPEH"))


def _needs(pattern: str) -> None:
    """Skip when no registered check matches ``pattern`` (another area not written yet)."""
    if not select(load_registry(), [pattern]):
        pytest.skip(f"no {pattern} check registered yet")


# ---------------------------------------------------------------------------- our gateway


@dataclass(frozen=True)
class Secured:
    """A gateway asking for bearer tokens ([auth]: a JWK Set file of a test key), and a shell
    command printing a token of that key with the scopes the routes ask for."""

    gateway: DimseGateway
    token_command: str


@pytest.fixture(scope="module")
def secured(pacs: Pacs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    work = tmp_path_factory.mktemp("conformance-auth")
    key = rsa_key("conformance")
    jwks = work / "jwks.json"
    jwks.write_bytes(jwks_document(key))
    token = work / "token"  # the harness runs it once per run: an hour is plenty
    token.write_text(key.sign(claims(scope=SCOPES, exp=int(time.time()) + 3600)))
    auth = f'jwks_file = "{jwks}"\nissuer = "{ISSUER}"\naudience = "{AUDIENCE}"'
    aets = ("NCPEH-CONF", "NCPEH-CONF2"), ("NCPEH-CONFM", "NCPEH-CONFM2")
    with running_dimse_gateway(
        pacs, work, "", *aets, forget_destinations=True, auth=auth, iocm_refresh=3600
    ) as gateway:
        yield Secured(gateway, f"cat {shlex.quote(str(token))}")


@pytest.fixture(scope="module")
def web_run(secured: Secured, pacs: Pacs) -> Run:
    """The run STATUS.md is made from (the same options as scripts/conformance.sh): the default
    DICOMweb site of a gateway asking for tokens, with ``--token-command``."""
    return harness(
        f"{secured.gateway.url}/dicom-web",
        "test-dicomweb",
        "--fhir-url",
        f"{secured.gateway.url}/fhir",
        "--study",
        _core_study(pacs),
        "--token-command",
        secured.token_command,
    )


def test_gateway_dicomweb_site_passes_every_must(web_run: Run) -> None:
    assert web_run.code == 0, f"MUST checks failed:\n{web_run.describe_failures()}"
    assert not web_run.failed_musts()
    # Run, not skipped: the token checks (RFC 6750) and the patient's system.
    musts = [r["id"] for r in web_run.results if r["level"] == "MUST"]
    security = [i for i in musts if i.startswith("security.")]
    assert len(security) >= 5, security
    for check_id in [*security, "fhir.search.patient-system"]:
        assert web_run.outcome(check_id) == "pass", f"{check_id}: {web_run.outcome(check_id)}"
    # With a token the no-authentication finding does not apply.
    assert web_run.outcome("security.authentication-required") == "skip"


def test_status_md_does_not_drift(web_run: Run) -> None:
    message = drift(STATUS, statement(web_run.results))
    assert not message, (
        f"{message}\n\nRegenerate it with `{REGENERATE}` (or `python -m conformance.status "
        f"{web_run.folder / 'results.json'} --write {STATUS}`) and commit it."
    )


def test_gateway_dimse_site_passes_every_must(dimse_gateway: DimseGateway, pacs: Pacs) -> None:
    """The session's DIMSE gateway has no [auth] (loopback): every MUST passes, the token
    checks skip, and the finding that it serves data to anybody is made (a SHOULD)."""
    run = harness(
        dimse_gateway.root("get"),
        "test-dimse",
        "--fhir-url",
        f"{dimse_gateway.url}/site/get/fhir",
        "--study",
        _core_study(pacs),
        console_script=True,  # `ncpeh-dicomweb conformance`, as documented
    )
    assert run.code == 0, f"MUST checks failed:\n{run.describe_failures()}"
    assert run.outcome("security.authentication-required") == "fail"
    assert run.outcome("security.no-token.qido") == "skip"


# ---------------------------------------------------------------------------- Orthanc itself


def test_orthanc_direct_fails_what_we_pass(pacs: Pacs, web_run: Run) -> None:
    run = harness(pacs.dicomweb_root, "test-orthanc", "--study", _core_study(pacs))
    ours = {r["id"]: r["outcome"] for r in web_run.results}
    differs = [r for r in run.results if r["id"] in ours and r["outcome"] != ours[r["id"]]]
    theirs = [r for r in differs if ours[r["id"]] == "pass" and r["outcome"] in ("fail", "error")]
    lines = [f"{r['level']:<6} {r['id']} ({r['section']}): {r['message']}" for r in theirs]
    (run.folder / "fails-that-the-gateway-passes.txt").write_text("\n".join(lines) + "\n")
    print(f"\nOrthanc's DICOMweb plugin fails {len(theirs)} check(s) the gateway passes:")
    print("\n".join(f"  {line}" for line in lines))
    # Failures, not just differences: the token checks differ anyway (run with our token only).
    assert theirs, "Orthanc's DICOMweb fails no check that the gateway passes"
    # Asked without a token (Orthanc has none configured here), it serves anybody.
    assert run.outcome("security.authentication-required") == "fail"


# ---------------------------------------------------------------------------- broken set-ups


def _hop_by_hop(name: str) -> bool:
    return name.lower() in {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "content-encoding",
        "date",
        "server",
    }


@pytest.fixture
async def proxy(aiohttp_server: ServerFactory) -> AsyncIterator[Callable[..., Awaitable[str]]]:
    """Starts a reverse proxy to an upstream origin: it forwards the path, query, Accept and
    Authorization as they are, names the upstream in Host (as a proxy that does not rewrite URLs
    would), and may change the Accept header first. Returns the proxy's origin."""
    sessions: list[aiohttp.ClientSession] = []

    async def start(upstream: str, accept: Callable[[str, str], str] | None = None) -> str:
        session = aiohttp.ClientSession(auto_decompress=True)
        sessions.append(session)

        async def forward(request: web.Request) -> web.Response:
            headers = {k: v for k, v in request.headers.items() if k.lower() == "authorization"}
            wanted = request.headers.get("Accept", "")
            headers["Accept"] = accept(request.path, wanted) if accept else wanted or "*/*"
            url = URL(upstream + request.raw_path, encoded=True)
            async with session.get(url, headers=headers, allow_redirects=False) as got:
                body = await got.read()
                kept = [(k, v) for k, v in got.headers.items() if not _hop_by_hop(k)]
                return web.Response(status=got.status, body=body, headers=kept)

        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", forward)
        server = await aiohttp_server(app)
        return f"http://127.0.0.1:{server.port}"

    yield start
    for session in sessions:
        await session.close()


def _origin(url: str) -> str:
    parsed = URL(url)
    return f"{parsed.scheme}://{parsed.host}:{parsed.port}"


def _names_check(run: Run, prefix: str, words: str = "") -> dict[str, Any]:
    """The failed MUST check whose id starts with ``prefix`` (and whose id or message holds
    ``words``); asserts the console named it with its section."""
    failed = [
        r
        for r in run.failed_musts()
        if r["id"].startswith(prefix)
        and (not words or re.search(words, f"{r['id']} {r['message']}", re.IGNORECASE))
    ]
    assert run.code == 1, f"exit {run.code}, expected 1:\n{run.output[-3000:]}"
    assert failed, f"no failed MUST {prefix}* check ({words}):\n{run.output[-3000:]}"
    for r in failed:
        assert f"{r['id']} ({r['section']})" in run.output, run.output[-3000:]
    return failed[0]


async def test_url_rewriting_off_fails_the_url_checks(
    pacs: Pacs, proxy: Callable[..., Awaitable[str]]
) -> None:
    _needs("wado.urls.*")
    study = _core_study(pacs)
    # Control: against Orthanc itself its URLs name the base URL the client used.
    direct = await harness_async(pacs.dicomweb_root, "test-urls-direct", "--only", "wado.urls.*")
    assert not direct.failed_musts(), direct.describe_failures()
    front = await proxy(_origin(pacs.dicomweb_root))
    run = await harness_async(
        f"{front}/dicom-web", "test-urls-not-rewritten", "--only", "wado.urls.*", "--study", study
    )
    failed = _names_check(run, "wado.urls.")
    assert _origin(pacs.dicomweb_root) in failed["message"], failed["message"]


def test_a_site_whose_pacs_is_down_fails(tmp_path: Path) -> None:
    port = free_port()
    dead = f"http://127.0.0.1:{free_port()}/dicom-web"  # nothing listens there
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'public_url = "http://127.0.0.1:{port}"\n[server]\nport = {port}\n'
        f'[[sites]]\nid = "down"\nurl = "{dead}"\n'
        f'[state]\nsqlite = "{tmp_path / "state.sqlite3"}"\n'
    )
    url = f"http://127.0.0.1:{port}"
    proc = start_gateway(config, tmp_path / "gateway.log", url)
    try:
        run = harness(f"{url}/dicom-web", "test-pacs-down", "--only", "qido", "wado")
    finally:
        stop_gateway(proc, tmp_path / "gateway.log")
    failed = _names_check(run, "qido.resource.studies")
    assert "502" in failed["message"] or "503" in failed["message"], failed["message"]


_RETRIEVE = re.compile(r".*/studies/[^/]+(/series/[^/]+(/instances/[^/]+)?)?/?")


def _any_transfer_syntax(path: str, accept: str) -> str:
    """The client's Accept, with ``transfer-syntax=*`` on a study/series/instance retrieve
    that asked for none: the server's choice (as stored) instead of the default."""
    if not _RETRIEVE.fullmatch(path) or "transfer-syntax" in accept:
        return accept or "*/*"
    ranges = []
    for media in [m.strip() for m in accept.split(",") if m.strip()] or ["*/*"]:
        kind = media.split(";", 1)[0].strip().lower()
        if kind == "*/*":
            media = 'multipart/related; type="application/dicom"'
        if kind in ("*/*", "multipart/related", "application/dicom"):
            media += "; transfer-syntax=*"
        ranges.append(media)
    return ", ".join(ranges)


def _compressed_study(pacs: Pacs) -> str:
    by_file = pacs.manifest.get("testdata", {}).get("by_file", {})
    if COMPRESSED_FILE not in by_file:
        pytest.skip(f"the PACS holds no {COMPRESSED_FILE} (the testdata set)")
    return str(by_file[COMPRESSED_FILE]["study"])


async def test_a_wrong_default_transfer_syntax_fails(
    gateway: Gateway, pacs: Pacs, proxy: Callable[..., Awaitable[str]]
) -> None:
    _needs("wado.*default-transfer-syntax*")
    study = _compressed_study(pacs)
    only = ("--only", "wado.*default-transfer-syntax*", "--study", study)
    direct = await harness_async(gateway.dicomweb, "test-default-ts-direct", *only)
    assert not direct.failed_musts(), direct.describe_failures()
    front = await proxy(gateway.url, _any_transfer_syntax)
    run = await harness_async(f"{front}/dicom-web", "test-default-ts-wrong", *only)
    _names_check(run, "wado.", r"transfer.syntax")


def test_any_transfer_syntax_rewrite() -> None:
    path = "/dicom-web/studies/1.2/series/3.4/instances/5.6"
    star = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    assert _any_transfer_syntax(path, "") == star
    assert _any_transfer_syntax(path, "*/*") == star
    assert _any_transfer_syntax("/dicom-web/studies/1.2", "application/dicom") == (
        "application/dicom; transfer-syntax=*"
    )
    kept = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1'
    assert _any_transfer_syntax(path, kept) == kept
    assert _any_transfer_syntax(f"{path}/metadata", "application/dicom+json") == (
        "application/dicom+json"
    )
