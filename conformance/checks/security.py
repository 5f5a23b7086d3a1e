"""Security checks: bearer tokens (RFC 6750) on the three surfaces a client reads data from,
QIDO-RS, WADO-RS metadata and the FHIR ImagingStudy search.

With ``--token``: a request without one, or with a garbage one, is refused with a ``Bearer``
challenge and no data, and the given token is let in. Without it those checks skip, and one
finding is left to make: an endpoint that serves data to anybody (a SHOULD-level failure, the
NCPeH pages naming 401 for "authorization is required").
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import orjson

from ..context import Answer, Fixture, Probe
from ..model import Failed, Level, Skipped, check

__all__ = ["bearer_challenges", "challenge_error", "data_in_body"]

DICOM_JSON = "application/dicom+json"
FHIR_JSON = "application/fhir+json"
RFC = "RFC 6750"
_ERROR = re.compile(r'(?:^|[\s,])error\s*=\s*(?:"([^"]*)"|([^\s,]+))', re.IGNORECASE)
_NEXT_CHALLENGE = re.compile(r",\s*(?=[A-Za-z][\w.-]*(?:\s+[^\s=,]|\s*$|\s*,))")
_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")

# ---------------------------------------------------------------- pure helpers


def bearer_challenges(values: Iterable[str]) -> list[str]:
    """The ``Bearer`` challenges among WWW-Authenticate header values (RFC 6750 3). A value may
    hold several challenges: it is cut before each comma that starts a new scheme (a token
    followed by a space and no "="); the scheme is case-insensitive."""
    out = []
    for value in values:
        for part in _NEXT_CHALLENGE.split(value.strip()):
            words = part.split(None, 1)
            if words and words[0].lower() == "bearer":
                out.append(part.strip())
    return out


def challenge_error(challenge: str) -> str | None:
    """The ``error`` auth-param of a Bearer challenge (RFC 6750 3.1), or None."""
    found = _ERROR.search(challenge)
    return (found.group(1) if found.group(1) is not None else found.group(2)) if found else None


def data_in_body(body: bytes, private: Iterable[str]) -> list[str]:
    """What in a refusal's body is data: one of the ``private`` values (known to the harness,
    not sent in the request; four characters at least, so as not to be found by chance),
    DICOM JSON datasets, or FHIR resources other than an OperationOutcome."""
    found = [f"the value {v!r}" for v in private if len(v) >= 4 and v.encode() in body]
    try:
        parsed: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return found
    items = parsed if isinstance(parsed, list) else [parsed]
    if any(isinstance(i, dict) and i and all(_TAG.match(k) for k in i) for i in items):
        found.append("DICOM JSON datasets")
    if isinstance(parsed, dict) and parsed.get("resourceType") not in (None, "OperationOutcome"):
        found.append(f"a FHIR {parsed['resourceType']}")
    return found


# ---------------------------------------------------------------- the protected routes


@dataclass(frozen=True)
class _Route:
    name: str  # "QIDO-RS", "WADO-RS metadata", "FHIR search"
    url: str
    accept: str
    private: tuple[str, ...]  # data the answer holds that the request does not name


def _names(fixture: Fixture) -> tuple[str, ...]:
    """The patient's name as QIDO gave it (data a refusal must not hold), if long enough to
    be told from other text."""
    element = fixture.study_json.get("00100010")
    values = element.get("Value") if isinstance(element, dict) else None
    name = values[0] if isinstance(values, list) and values else None
    alphabetic = name.get("Alphabetic") if isinstance(name, dict) else None
    return (alphabetic,) if isinstance(alphabetic, str) and len(alphabetic) > 3 else ()


async def _routes(probe: Probe, *names: str) -> list[_Route]:
    """The protected routes of the test study (those named, or all); Skipped when a named one
    does not exist here (no FHIR URL)."""
    fixture = await probe.fixture()
    private = (fixture.patient_id, *_names(fixture))
    instance = f"/studies/{fixture.study}/series/{fixture.series}/instances/{fixture.instance}"
    routes = [
        _Route(
            "QIDO-RS", probe.url(f"/studies?StudyInstanceUID={fixture.study}"), DICOM_JSON, private
        ),
        _Route("WADO-RS metadata", probe.url(f"{instance}/metadata"), DICOM_JSON, private),
    ]
    if probe.target.fhir_url:
        url = probe.fhir(f"ImagingStudy?patient.identifier={quote('|' + fixture.patient_id)}")
        routes.append(_Route("FHIR search", url, FHIR_JSON, (fixture.study, *private[1:])))
    chosen = [r for r in routes if not names or r.name in names]
    if names and not chosen:
        raise Skipped(f"no {' or '.join(names)} route here (no --fhir-url given)")
    return chosen


def _need_token(probe: Probe) -> None:
    if not probe.target.token:
        raise Skipped("no --token given: the endpoint is not tested as a protected one")


def _refusal_problems(route: _Route, answer: Answer, status: int | None) -> list[str]:
    """What is wrong with a refusal: the status (when one is required), no Bearer challenge,
    data in the body."""
    where = f"{route.name} {answer.url}"
    if 200 <= answer.status < 300:
        return [f"{where}: status {answer.status}, the data was served"]
    problems = []
    if status is not None and answer.status != status:
        problems.append(f"{where}: status {answer.status}, expected {status}")
    if not bearer_challenges(answer.headers.getall("WWW-Authenticate", [])):
        problems.append(f"{where}: no WWW-Authenticate: Bearer challenge")
    leaked = data_in_body(answer.body, route.private)
    if leaked:
        problems.append(f"{where}: the refusal's body holds {', '.join(leaked)}")
    return problems


async def _refused(
    probe: Probe, token: str | bool, status: int | None, *names: str
) -> list[Answer]:
    """Ask the routes ``names`` (all when none) with ``token`` (False: none); Failed unless
    each refuses (with ``status``, when given) as RFC 6750 3 says."""
    _need_token(probe)
    routes = await _routes(probe, *names)
    answers = [await probe.get(r.url, accept=r.accept, token=token) for r in routes]
    problems = [
        p for r, a in zip(routes, answers, strict=True) for p in _refusal_problems(r, a, status)
    ]
    if problems:
        raise Failed("; ".join(problems))
    return answers


# ---------------------------------------------------------------- with --token


@check(
    "security.no-token.qido",
    section=f"{RFC} 3",
    level=Level.MUST,
    title="Without a token QIDO-RS answers 401 with WWW-Authenticate: Bearer and no data",
)
async def no_token_qido(probe: Probe) -> None:
    await _refused(probe, False, 401, "QIDO-RS")


@check(
    "security.no-token.wado",
    section=f"{RFC} 3",
    level=Level.MUST,
    title="Without a token WADO-RS metadata answers 401 with WWW-Authenticate: Bearer, no data",
)
async def no_token_wado(probe: Probe) -> None:
    await _refused(probe, False, 401, "WADO-RS metadata")


@check(
    "security.no-token.fhir",
    section=f"{RFC} 3",
    level=Level.MUST,
    title="Without a token the FHIR search answers 401 with WWW-Authenticate: Bearer, no data",
)
async def no_token_fhir(probe: Probe) -> None:
    await _refused(probe, False, 401, "FHIR search")


@check(
    "security.no-token.no-error-code",
    section=f"{RFC} 3.1",
    level=Level.SHOULD,
    title="The challenge to a request without credentials carries no error code",
)
async def no_token_no_error(probe: Probe) -> None:
    answers = await _refused(probe, False, None, "QIDO-RS")
    for challenge in bearer_challenges(answers[0].headers.getall("WWW-Authenticate", [])):
        if challenge_error(challenge) is not None:
            raise Failed(f"QIDO-RS without a token: the challenge {challenge!r} has an error code")


@check(
    "security.no-token.fhir-outcome",
    section="NCPeH Get Study Metadata (HL7 FHIR): 401; FHIR R4 search: handling errors",
    level=Level.SHOULD,
    title="The FHIR 401 is an OperationOutcome",
)
async def no_token_fhir_outcome(probe: Probe) -> None:
    (answer,) = await _refused(probe, False, None, "FHIR search")
    try:
        body = orjson.loads(answer.body)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        raise Failed(f"FHIR search without a token: {answer.content_type!r}, no OperationOutcome")


def _garbage() -> str:
    return f"conformance-not-a-token-{secrets.token_hex(16)}"  # RFC 6750 b64token syntax


@check(
    "security.invalid-token",
    section=f"{RFC} 3",
    level=Level.MUST,
    title="A garbage token is refused with WWW-Authenticate: Bearer and no data (all routes)",
)
async def invalid_token(probe: Probe) -> None:
    await _refused(probe, _garbage(), None)


@check(
    "security.invalid-token.error",
    section=f"{RFC} 3.1",
    level=Level.SHOULD,
    title='A garbage token gets 401 with error="invalid_token" in the challenge',
)
async def invalid_token_error(probe: Probe) -> None:
    (answer,) = await _refused(probe, _garbage(), 401, "QIDO-RS")
    errors = [
        challenge_error(c) for c in bearer_challenges(answer.headers.getall("WWW-Authenticate", []))
    ]
    if "invalid_token" not in errors:
        raise Failed(f'QIDO-RS with a garbage token: error {errors}, expected "invalid_token"')


@check(
    "security.token.accepted",
    section=f"{RFC} 2.1",
    level=Level.MUST,
    title="The given token, in the Authorization header, is let in (QIDO, WADO, FHIR: 200)",
)
async def token_accepted(probe: Probe) -> None:
    _need_token(probe)
    try:
        routes = await _routes(probe)
    except Skipped:  # no test study: was it the token that QIDO refused?
        answer = await probe.get("/studies", accept=DICOM_JSON, params={"limit": "1"})
        if answer.status != 200:
            raise Failed(f"QIDO-RS {answer.url}: status {answer.status} with the token") from None
        raise
    problems = []
    for route in routes:
        answer = await probe.get(route.url, accept=route.accept)
        if answer.status != 200:
            problems.append(f"{route.name} {answer.url}: status {answer.status} with the token")
    if problems:
        raise Failed("; ".join(problems))


@check(
    "security.health.public",
    section="ncpeh-dicomweb health routes (/health/live)",
    level=Level.MAY,
    title="The liveness route at the host root needs no token",
)
async def health_public(probe: Probe) -> None:
    parts = urlsplit(probe.target.base_url)
    answer = await probe.get(f"{parts.scheme}://{parts.netloc}/health/live", token=False)
    if answer.status == 404:
        raise Skipped("no /health/live at the host root")
    answer.expect(200)


# ---------------------------------------------------------------- without --token


@check(
    "security.authentication-required",
    section="NCPeH Get Study Metadata (HL7 FHIR): 401 (authorization is required)",
    level=Level.SHOULD,
    title="The endpoint does not serve data without authentication",
)
async def authentication_required(probe: Probe) -> None:
    if probe.target.token:
        raise Skipped("a token was given: the security.no-token checks apply")
    urls = [probe.url("/studies?limit=1")]
    if probe.target.fhir_url:
        urls.append(probe.fhir("ImagingStudy?_count=1"))
    served = []
    for url in urls:
        answer = await probe.get(url, token=False)
        if 200 <= answer.status < 300:
            served.append(f"GET {answer.url}: {answer.status}")
    if served:
        raise Failed(f"the endpoint serves data without authentication ({'; '.join(served)})")
