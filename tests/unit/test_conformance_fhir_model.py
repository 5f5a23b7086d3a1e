"""The harness's FHIR and security checks: their pure helpers (paging, entry comparison,
validation, Bearer challenges, data in a refusal), and a few checks run against a small fake
endpoint served here, broken on purpose, to see them fail with a message and not a traceback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from conformance import fhir_model
from conformance.checks import fhir, fhir_bundle, security
from conformance.context import Probe, Target
from conformance.model import Failed, Skipped

ServerFactory = Callable[..., Awaitable[TestServer]]

STUDY = {
    "resourceType": "ImagingStudy",
    "id": "1.2.3",
    "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:1.2.3"}],
    "status": "available",
    "subject": {"reference": "Patient/p1"},
}


def entry(resource_id: str, mode: str = "match") -> dict[str, Any]:
    resource = {**STUDY, "id": resource_id}
    return {
        "fullUrl": f"http://x/fhir/ImagingStudy/{resource_id}",
        "resource": resource,
        "search": {"mode": mode},
    }


def page(*ids: str, total: int | None = None) -> dict[str, Any]:
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if total is not None:
        bundle["total"] = total
    bundle["entry"] = [entry(i) for i in ids]
    return bundle


# ---------------------------------------------------------------- pure helpers


def test_paging_problems_none_on_good_pages() -> None:
    assert fhir_model.paging_problems([page("a", total=3), page("b", total=3), page("c")], 1) == []


def test_paging_problems_names_each_fault() -> None:
    problems = fhir_model.paging_problems([page("a", "b", total=2), page("a", total=3)], 1)
    assert problems == [
        "page 1 has 2 matches, more than _count=1",
        "ImagingStudy/a is on page 1 and again on page 2",
        "Bundle.total changes between pages: [2, 3]",
    ]
    assert fhir_model.paging_problems([page("a", total=2)], None) == [
        "Bundle.total is 2 but the pages hold 1 matches"
    ]


def test_includes_are_not_matches() -> None:
    bundle = page("a", total=1)
    bundle["entry"].append(entry("e", mode="include"))
    assert [e["resource"]["id"] for e in fhir_model.match_entries(bundle)] == ["a"]
    assert fhir_model.paging_problems([bundle], 1) == []


def test_differences_allow_more_in_the_read_but_not_less() -> None:
    search = {**STUDY, "meta": {"versionId": "1"}, "series": [{"uid": "1.2.3.1"}]}
    read = {**STUDY, "series": [{"uid": "1.2.3.1", "instance": [{"uid": "9"}]}], "note": []}
    assert fhir_model.differences(search, read) == []
    read_less = {k: v for k, v in read.items() if k != "status"}
    read_less["series"] = [{"uid": "1.2.3.9"}]
    assert fhir_model.differences(search, read_less) == [
        "status is missing from the read",
        "series[0].uid: '1.2.3.1' in the search, '1.2.3.9' in the read",
    ]


def test_validate_r4_r5_and_failures() -> None:
    assert fhir_model.validate(STUDY, fhir_model.R4, "here") is STUDY
    selection = {
        "resourceType": "ImagingSelection",
        "status": "available",
        "code": {"text": "key images"},
    }
    fhir_model.validate(selection, fhir_model.R5, "here")
    with pytest.raises(Failed, match="not a FHIR R4 resource type"):
        fhir_model.validate(selection, fhir_model.R4, "here")  # R5 only
    with pytest.raises(Failed, match="here: the ImagingStudy does not validate as FHIR R4"):
        fhir_model.validate({**STUDY, "numberOfSeries": "many"}, fhir_model.R4, "here")
    with pytest.raises(Failed, match="no resourceType"):
        fhir_model.validate(["not", "a", "resource"], fhir_model.R4, "here")


def test_study_uids_codes_origin_and_dicom_values() -> None:
    assert fhir_model.study_uids(STUDY) == {"1.2.3"}
    assert fhir_model.codes(
        [{"coding": [{"system": "s", "code": "c"}]}, {"concept": {"text": "x"}}]
    ) == [("s", "c")]
    assert fhir_model.codes({"system": "DCM", "code": "MR"}) == [("DCM", "MR")]
    assert fhir_model.same_origin("http://H:80/fhir/x", "http://h:80/fhir")
    assert not fhir_model.same_origin("http://h:81/fhir/x", "http://h:80/fhir")
    assert fhir_model.dicom_values({"00080061": {"Value": ["MR", "CT"]}}, "00080061") == [
        "MR",
        "CT",
    ]
    assert fhir_model.dicom_value({"00080061": "junk"}, "00080061") is None


@pytest.mark.parametrize(
    ("headers", "challenges"),
    [
        (['Bearer realm="x"'], ['Bearer realm="x"']),
        (['Basic realm="a, b", Bearer error="invalid_token"'], ['Bearer error="invalid_token"']),
        (["bearer", 'DPoP algs="ES256"'], ["bearer"]),
        (['Basic realm="x"'], []),
    ],
)
def test_bearer_challenges(headers: list[str], challenges: list[str]) -> None:
    assert security.bearer_challenges(headers) == challenges


def test_challenge_error() -> None:
    assert security.challenge_error('Bearer realm="x", error="invalid_token"') == "invalid_token"
    assert security.challenge_error("Bearer error=invalid_token, scope=x") == "invalid_token"
    assert security.challenge_error('Bearer realm="x", error_description="y"') is None


def test_data_in_body() -> None:
    outcome = orjson.dumps({"resourceType": "OperationOutcome", "issue": []})
    assert security.data_in_body(outcome, ["PAT1"]) == []
    assert security.data_in_body(b'{"status": 401}', ["PAT1"]) == []
    dataset = orjson.dumps([{"00100020": {"vr": "LO", "Value": ["PAT1"]}}])
    assert security.data_in_body(dataset, ["PAT1", "", "T1"]) == [
        "the value 'PAT1'",
        "DICOM JSON datasets",
    ]
    assert security.data_in_body(orjson.dumps(page("a")), []) == ["a FHIR Bundle"]


# ---------------------------------------------------------------- checks against a fake


@dataclass
class Fake:
    """A tiny DICOMweb + FHIR endpoint holding one patient with two studies; its faults are
    switched on by the test."""

    faults: set[str] = field(default_factory=set)
    server: TestServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}"


UIDS = ["1.2.3", "1.2.4"]


def _study_json(uid: str) -> dict[str, Any]:
    return {
        "0020000D": {"vr": "UI", "Value": [uid]},
        "00100020": {"vr": "LO", "Value": ["P1"]},
        "00080020": {"vr": "DA", "Value": ["20240312"]},
    }


def _app(fake: Fake) -> web.Application:
    def json(body: Any, status: int = 200, media: str = "application/fhir+json") -> web.Response:
        return web.Response(body=orjson.dumps(body), status=status, content_type=media)

    @web.middleware
    async def auth(request: web.Request, handler: Any) -> web.StreamResponse:
        if "auth" in fake.faults and request.headers.get("Authorization") != "Bearer t":
            return web.Response(status=401, headers={"WWW-Authenticate": 'Bearer realm="x"'})
        response: web.StreamResponse = await handler(request)
        return response

    async def studies(request: web.Request) -> web.Response:
        return json([_study_json(u) for u in UIDS], media="application/dicom+json")

    async def series(request: web.Request) -> web.Response:
        return json([{"0020000E": {"vr": "UI", "Value": ["9.1"]}}], media="application/dicom+json")

    async def instances(request: web.Request) -> web.Response:
        return json(
            [{"00080018": {"vr": "UI", "Value": ["9.1.1"]}}], media="application/dicom+json"
        )

    async def metadata(request: web.Request) -> web.Response:
        item = {"00280010": {"vr": "US", "Value": [2]}, "00080060": {"vr": "CS", "Value": ["MR"]}}
        return json([item], media="application/dicom+json")

    async def search(request: web.Request) -> web.Response:
        count = int(request.query.get("_count", "10"))
        offset = int(request.query.get("_offset", "0"))
        ids = UIDS[offset : offset + count]
        if "dupes" in fake.faults and offset:
            ids = UIDS[:1]
        bundle = page(*ids, total=len(UIDS))
        for item, uid in zip(bundle["entry"], ids, strict=True):
            item["resource"]["identifier"][0]["value"] = f"urn:oid:{uid}"
        bundle["link"] = (
            [] if "no-self" in fake.faults else [{"relation": "self", "url": str(request.url)}]
        )
        if offset + count < len(UIDS):
            base = "http://elsewhere.example" if "foreign-next" in fake.faults else fake.url
            following = f"{base}/fhir/ImagingStudy?_count={count}&_offset={offset + count}"
            bundle["link"].append({"relation": "next", "url": following})
        return json(bundle)

    async def read(request: web.Request) -> web.Response:
        if request.match_info["id"] in UIDS or "found-everything" in fake.faults:
            return json({**STUDY, "id": request.match_info["id"]})
        outcome = {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "not-found"}],
        }
        return json(outcome, status=404)

    app = web.Application(middlewares=[auth])
    root = "/dicom-web/studies"
    app.router.add_get(root, studies)
    app.router.add_get(root + "/{s}/series", series)
    app.router.add_get(root + "/{s}/series/{r}/instances", instances)
    app.router.add_get(root + "/{s}/series/{r}/instances/{i}/metadata", metadata)
    app.router.add_get("/fhir/ImagingStudy", search)
    app.router.add_get("/fhir/ImagingStudy/{id}", read)
    return app


@pytest.fixture
async def fake(aiohttp_server: ServerFactory) -> Fake:
    state = Fake()
    state.server = await aiohttp_server(_app(state))
    return state


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def _probe(fake: Fake, session: aiohttp.ClientSession, token: str | None = None) -> Probe:
    target = Target(f"{fake.url}/dicom-web", fhir_url=f"{fake.url}/fhir", token=token, timeout=5)
    return Probe(target, session)


async def test_paging_passes_then_fails_on_duplicates(
    fake: Fake, session: aiohttp.ClientSession
) -> None:
    await fhir_bundle.search_paging(_probe(fake, session))
    fake.faults.add("dupes")
    with pytest.raises(Failed, match=r"ImagingStudy/1\.2\.3 is on page 1 and again on page 2"):
        await fhir_bundle.search_paging(_probe(fake, session))


async def test_a_next_link_to_another_host_is_not_followed(
    fake: Fake, session: aiohttp.ClientSession
) -> None:
    fake.faults.add("foreign-next")
    with pytest.raises(Failed, match=r"next link http://elsewhere\.example/.* names another host"):
        await fhir_bundle.search_paging(_probe(fake, session))


async def test_self_link_and_unknown_id(fake: Fake, session: aiohttp.ClientSession) -> None:
    await fhir_bundle.bundle_self_link(_probe(fake, session))
    await fhir_bundle.read_unknown(_probe(fake, session))
    fake.faults |= {"no-self", "found-everything"}
    with pytest.raises(Failed, match="the Bundle has no self link"):
        await fhir_bundle.bundle_self_link(_probe(fake, session))
    with pytest.raises(Failed, match="status 200, expected 404"):
        await fhir_bundle.read_unknown(_probe(fake, session))


async def test_no_capability_is_a_failure_with_the_url(
    fake: Fake, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(Failed, match=r"/fhir/metadata: status 404, expected 200"):
        await fhir.capability(_probe(fake, session))


async def test_security_checks_skip_without_a_token_and_flag_an_open_endpoint(
    fake: Fake, session: aiohttp.ClientSession
) -> None:
    probe = _probe(fake, session)
    with pytest.raises(Skipped, match="no --token given"):
        await security.no_token_qido(probe)
    with pytest.raises(Failed, match="serves data without authentication"):
        await security.authentication_required(probe)
    fake.faults.add("auth")
    await security.authentication_required(_probe(fake, session))


async def test_an_endpoint_ignoring_the_token_fails_the_refusal_checks(
    fake: Fake, session: aiohttp.ClientSession
) -> None:
    probe = _probe(fake, session, token="t")
    with pytest.raises(Failed, match="status 200, the data was served"):
        await security.no_token_wado(probe)
    fake.faults.add("auth")  # now it asks for the token "t", never with an error code
    probe = _probe(fake, session, token="t")
    await security.no_token_qido(probe)
    await security.no_token_no_error(probe)
    with pytest.raises(Failed, match='expected "invalid_token"'):
        await security.invalid_token_error(probe)
