"""NCPeH FHIR checks of the search's answers: the searchset Bundle (self link, entries, total),
paging through next links to the end, read, errors as 404/400 with an OperationOutcome, and the
media type. Registered after ``fhir``'s CapabilityStatement and search parameter checks.
"""

from __future__ import annotations

import secrets
from urllib.parse import parse_qsl, urlsplit

from ..context import Probe
from ..fhir_model import (
    R4,
    bundle_links,
    differences,
    entry_key,
    match_entries,
    paging_problems,
    validate,
)
from ..model import Failed, Level, Skipped, check
from ._fhir_common import (
    FHIR_JSON,
    HTTP,
    PAGE,
    SEARCH,
    UNSERVED_TYPES,
    _capability,
    _declared,
    _fail_if,
    _matches,
    _object,
    _pages,
    _param,
    _patient,
    _search_page,
    _study,
)

__all__: list[str] = []


# ---------------------------------------------------------------- the Bundle, paging


@check(
    "fhir.bundle.self-link",
    section=f"{SEARCH}: the parameters used (self link)",
    level=Level.MUST,
    title="A search Bundle has a self link naming the parameters the server used",
)
async def bundle_self_link(probe: Probe) -> None:
    _fixture, patient = await _patient(probe)
    params = [("patient.identifier", f"|{patient}")]
    _answer, bundle = await _search_page(probe, probe.fhir("ImagingStudy"), params, R4)
    self_link = bundle_links(bundle).get("self")
    if self_link is None:
        raise Failed(f"ImagingStudy?{_param(params)}: the Bundle has no self link")
    used = {k for k, _v in parse_qsl(urlsplit(self_link).query)}
    if not used & {"patient.identifier", "patient", "subject.identifier", "subject"}:
        raise Failed(f"ImagingStudy?{_param(params)}: the self link {self_link} names no patient")


@check(
    "fhir.bundle.entries",
    section=f"{SEARCH}: searchset Bundle (fullUrl, search.mode, total)",
    level=Level.SHOULD,
    title="Entries have an absolute fullUrl ending Type/id and a search.mode; total is exact",
)
async def bundle_entries(probe: Probe) -> None:
    _fixture, patient = await _patient(probe)
    pages = await _pages(probe, "ImagingStudy", [("patient.identifier", f"|{patient}")])
    problems = paging_problems(pages, None)
    for page in pages:
        for entry in page.get("entry") or []:
            resource = entry.get("resource") or {}
            name = f"{resource.get('resourceType')}/{resource.get('id')}"
            full = entry.get("fullUrl")
            if not isinstance(full, str) or not full.startswith(("http://", "https://")):
                problems.append(f"{name}: fullUrl {full!r} is not an absolute URL")
            elif not full.rstrip("/").endswith(name):
                problems.append(f"{name}: fullUrl {full} does not end with {name}")
            mode = (entry.get("search") or {}).get("mode")
            if mode not in ("match", "include", "outcome"):
                problems.append(f"{name}: search.mode {mode!r}")
    _fail_if(problems[:5])


@check(
    "fhir.search.paging",
    section=f"{SEARCH}: paging (_count, next)",
    level=Level.MUST,
    title="_count=1 pages through next links to the end: no page too big, no loss, no duplicate",
)
async def search_paging(probe: Probe) -> None:
    _fixture, patient = await _patient(probe)
    who = ("patient.identifier", f"|{patient}")
    pages = await _pages(probe, "ImagingStudy", [who, ("_count", "1")])
    problems = paging_problems(pages, 1)
    paged = {entry_key(e) for page in pages for e in match_entries(page)}
    whole = {f"ImagingStudy/{r.get('id')}" for r in await _matches(probe, [who])}
    if paged != whole:
        lost, extra = sorted(whole - paged), sorted(paged - whole)
        problems.append(
            f"paging by 1 differs from the whole search: lost {lost[:3]}, extra {extra[:3]}"
        )
    if len(pages) < 2 and len(whole) > 1:
        problems.append(f"_count=1 gave {len(whole)} matches on one page (no next link)")
    _fail_if(problems)


# ---------------------------------------------------------------- read and errors


@check(
    "fhir.read",
    section=f"{HTTP}: read",
    level=Level.SHOULD,
    title="GET ImagingStudy/{id} of a search result validates and holds what the entry says",
)
async def read(probe: Probe) -> None:
    study = await _study(probe)
    resource_id = study.resource.get("id")
    if not resource_id:
        raise Failed("the test study's ImagingStudy has no id")
    answer = (await probe.get(probe.fhir(f"ImagingStudy/{resource_id}"), accept=FHIR_JSON)).expect(
        200
    )
    body = validate(_object(answer), R4, f"GET {answer.url}")
    if found := differences(study.resource, body):
        raise Failed(f"GET {answer.url} against its search entry: {'; '.join(found[:5])}")


def _unknown_id() -> str:
    return f"2.25.{secrets.randbits(96)}"  # a fresh UID: no server holds it


@check(
    "fhir.read.unknown-id",
    section=f"{HTTP}: read (unknown resource: 404)",
    level=Level.MUST,
    title="GET ImagingStudy/{unknown id} answers 404",
)
async def read_unknown(probe: Probe) -> None:
    (await probe.get(probe.fhir(f"ImagingStudy/{_unknown_id()}"), accept=FHIR_JSON)).expect(404)


@check(
    "fhir.search.invalid-date",
    section=f"{HTTP}: 400 (a search that cannot be processed)",
    level=Level.SHOULD,
    title="ImagingStudy?started=notadate answers 400",
)
async def search_invalid_date(probe: Probe) -> None:
    answer = await probe.get(
        probe.fhir("ImagingStudy"),
        accept=FHIR_JSON,
        params={"started": "notadate"},
        headers={"Prefer": "handling=strict"},  # FHIR R4: errors rather than ignoring
    )
    answer.expect(400)


@check(
    "fhir.errors.unknown-type",
    section=f"{PAGE}: HTTP error response codes (404)",
    level=Level.SHOULD,
    title="A resource type the server does not support answers 404",
)
async def unknown_type(probe: Probe) -> None:
    capability_body = await _capability(probe)
    kind = next((k for k in UNSERVED_TYPES if _declared(capability_body, k) is None), None)
    if kind is None:
        raise Skipped("the server declares every resource type this check would try")
    (await probe.get(probe.fhir(kind), accept=FHIR_JSON)).expect(404)


@check(
    "fhir.errors.operation-outcome",
    section=f"{SEARCH}: handling errors (OperationOutcome)",
    level=Level.SHOULD,
    title="Error answers (unknown id, bad date) carry an OperationOutcome that validates",
)
async def errors_operation_outcome(probe: Probe) -> None:
    answers = [
        await probe.get(probe.fhir(f"ImagingStudy/{_unknown_id()}"), accept=FHIR_JSON),
        await probe.get(
            probe.fhir("ImagingStudy"), accept=FHIR_JSON, params={"started": "notadate"}
        ),
    ]
    problems = []
    for answer in answers:
        if answer.status < 400:
            continue  # the status checks report that
        try:
            body = validate(_object(answer), R4, f"{answer.status} from GET {answer.url}")
            if body["resourceType"] != "OperationOutcome":
                problems.append(
                    f"GET {answer.url}: a {body['resourceType']}, not an OperationOutcome"
                )
        except Failed as exc:
            problems.append(str(exc))
    _fail_if(problems)


@check(
    "fhir.media-type",
    section=f"{HTTP}: content types (application/fhir+json)",
    level=Level.SHOULD,
    title="Answers to Accept: application/fhir+json are application/fhir+json",
)
async def media_type(probe: Probe) -> None:
    _fixture, patient = await _patient(probe)
    answers = [
        await probe.get(probe.fhir("metadata"), accept=FHIR_JSON),
        await probe.get(
            probe.fhir("ImagingStudy"),
            accept=FHIR_JSON,
            params={"patient.identifier": f"|{patient}"},
        ),
    ]
    _fail_if(
        [
            f"GET {a.url}: Content-Type {a.headers.get('Content-Type')!r}"
            for a in answers
            if a.content_type != FHIR_JSON
        ]
    )
