"""The AuditEvent of an access (security/audit/events.py): valid FHIR R4 (fhir.resources R4B
AuditEvent), coded as BALP and DICOM PS3.15 say (the module docstring), and no query value in
it."""

from __future__ import annotations

import base64
import dataclasses
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fhir.resources.R4B.auditevent import AuditEvent

from ncpeh_dicomweb.security.audit import (
    INTERACTIONS,
    Access,
    Patient,
    audit_event,
    interaction_for,
    query_names,
)

START = datetime(2025, 3, 1, 9, 30, 0, 123456, tzinfo=UTC)
STUDY = "1.2.826.0.1.3680043.8.498.1"
SERIES = "1.2.826.0.1.3680043.8.498.1.2"
SOP = "1.2.826.0.1.3680043.8.498.1.2.3"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
IHE = "urn:ihe:event-type-code"
QUERY = {(DCM, "110112"), (IHE, "RAD-129")}  # Query; QIDO-RS Query
RETRIEVE = {(DCM, "110104"), (IHE, "RAD-107")}  # DICOM Instances Transferred; WADO-RS Retrieve
INSTANCE = "/dicom-web/studies/{study}/series/{series}/instances/{instance}"


def access(**changes: Any) -> Access:
    base = Access(
        start=START,
        end=START + timedelta(seconds=2),
        request_id="req-42",
        interaction="wado-retrieve",
        method="GET",
        route="/site/{site}/dicom-web/studies/{study}",
        status=200,
        query_names=("accept",),
        subject="dr-novak",
        subject_issuer="https://idp.ncp.example",
        client_id="ncp-portal",
        token_id="tok-7",
        client_address="192.0.2.10",
        proxies=("198.51.100.1",),
        server_address="https://imaging.ncp.example",
        site="central",
        patient=Patient("8001011234", "CZ-NCPEH"),
        studies=(STUDY,),
        stream="complete",
        bytes_sent=123456,
    )
    return dataclasses.replace(base, **changes)


def valid(event: dict[str, Any]) -> AuditEvent:
    """The event validates as FHIR (R4B's AuditEvent is R4's) and survives a JSON round trip."""
    return AuditEvent.model_validate(json.loads(json.dumps(event)))


def codes(codings: list[dict[str, str]]) -> set[tuple[str, str]]:
    return {(c["system"], c["code"]) for c in codings}


def entity(event: dict[str, Any], system: str, code: str) -> list[dict[str, Any]]:
    found = []
    for e in event["entity"]:
        role = e.get("role", {})
        if (role.get("system"), role.get("code")) == (system, code):
            found.append(e)
    return found


OUTCOMES = [
    # status, stream, expected outcome, words expected in outcomeDesc
    (200, None, "0", None),
    (200, "complete", "0", None),
    (200, "cut", "4", "cut short by the gateway after"),
    (200, "client-gone", "4", "client went away"),
    (401, None, "4", "HTTP 401 Unauthorized"),
    (403, None, "4", "HTTP 403 Forbidden"),
    (404, None, "4", "HTTP 404 Not Found"),
    (502, None, "8", "HTTP 502 Bad Gateway"),
    (504, None, "8", "HTTP 504 Gateway Timeout"),
]


@pytest.mark.parametrize("interaction", sorted(INTERACTIONS))
@pytest.mark.parametrize(("status", "stream", "code", "words"), OUTCOMES)
def test_every_interaction_and_outcome_is_a_valid_audit_event(
    interaction: str, status: int, stream: str | None, code: str, words: str | None
) -> None:
    event = audit_event(access(interaction=interaction, status=status, stream=stream))
    model = valid(event)
    assert model.outcome == code
    assert event["outcome"] == code
    if words is None:
        assert "outcomeDesc" not in event
    else:
        assert words in event["outcomeDesc"]
    kind = INTERACTIONS[interaction]
    assert event["action"] == kind.action
    assert event["type"] == {
        "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
        "code": "rest",
        "display": "Restful Operation",
    }
    assert ("http://hl7.org/fhir/restful-interaction", kind.restful) in codes(event["subtype"])


def test_a_denied_request_without_token_or_patient_is_valid() -> None:
    """A 401 knows no user, no patient, maybe not even a study: still a valid event, the
    client is the requestor."""
    event = audit_event(
        access(
            status=401,
            stream=None,
            bytes_sent=None,
            subject=None,
            subject_issuer=None,
            client_id=None,
            token_id=None,
            patient=None,
            studies=(),
            reason="invalid_token",
        )
    )
    valid(event)
    (client,) = event["agent"][:1]
    assert client["requestor"] is True
    assert client["who"] == {"display": "unidentified client"}
    assert event["outcomeDesc"] == "HTTP 401 Unauthorized: invalid_token"
    assert not entity(event, "http://terminology.hl7.org/CodeSystem/object-role", "1")


@pytest.mark.parametrize(
    ("interaction", "action", "restful", "dicom"),
    [
        ("qido-studies", "E", "search-type", QUERY),
        ("qido-instances", "E", "search-type", QUERY),
        ("wado-retrieve", "R", "read", RETRIEVE),
        ("wado-metadata", "R", "read", RETRIEVE),
        ("frames", "R", "read", RETRIEVE),
        ("rendered", "R", "read", RETRIEVE),
        ("selection-retrieve", "R", "read", {(DCM, "110104")}),
        ("fhir-search", "E", "search-type", set()),
        ("fhir-read", "R", "read", set()),
        ("selection-create", "C", "create", set()),
        ("selection-delete", "D", "delete", set()),
    ],
)  # fmt: skip
def test_balp_and_dicom_codes(
    interaction: str, action: str, restful: str, dicom: set[tuple[str, str]]
) -> None:
    event = audit_event(access(interaction=interaction))
    assert event["action"] == action
    assert codes(event["subtype"]) == {("http://hl7.org/fhir/restful-interaction", restful)} | dicom


def test_agents_source_and_period() -> None:
    event = audit_event(
        access(certificate_subject="CN=portal.ncp.example,O=NCP"), source_id="ncp-cz-gw1"
    )
    client, user, server = event["agent"]
    assert client["type"]["coding"][0]["code"] == "110153"  # Source Role ID
    assert client["who"] == {"identifier": {"value": "ncp-portal"}}
    assert client["altId"] == "CN=portal.ncp.example,O=NCP"
    assert client["network"] == {"address": "192.0.2.10", "type": "2"}
    assert client["requestor"] is False
    assert user["type"]["coding"][0]["code"] == "IRCP"
    assert user["who"] == {"identifier": {"system": "https://idp.ncp.example", "value": "dr-novak"}}
    assert user["requestor"] is True
    assert user["policy"] == ["urn:ietf:params:oauth:jti:tok-7"]
    assert server["type"]["coding"][0]["code"] == "110152"  # Destination Role ID
    assert server["who"]["identifier"] == {"value": "ncp-cz-gw1"}
    assert server["network"] == {"address": "https://imaging.ncp.example", "type": "5"}
    assert event["source"]["observer"]["identifier"] == {"value": "ncp-cz-gw1"}
    assert event["source"]["type"][0]["code"] == "4"  # Application Server
    assert event["period"] == {
        "start": "2025-03-01T09:30:00.123456Z",
        "end": "2025-03-01T09:30:02.123456Z",
    }
    assert event["recorded"] == "2025-03-01T09:30:02.123456Z"


def test_a_system_token_makes_the_client_the_requestor() -> None:
    """SMART backend services: the token's ``sub`` is the client itself, no human user."""
    event = audit_event(access(subject="ncp-portal", client_id="ncp-portal"))
    valid(event)
    client, server = event["agent"]
    assert client["requestor"] is True
    assert client["who"] == {"identifier": {"value": "ncp-portal"}}
    assert server["requestor"] is False


def test_transaction_entity_carries_the_request_and_how_it_ended() -> None:
    event = audit_event(access(stream="cut", bytes_sent=999))
    (transaction,) = [e for e in event["entity"] if e["type"]["code"] == "XrequestId"]
    assert transaction["what"] == {"identifier": {"value": "req-42"}}
    details = {d["type"]: d["valueString"] for d in transaction["detail"]}
    assert details == {
        "interaction": "wado-retrieve",
        "method": "GET",
        "route": "/site/{site}/dicom-web/studies/{study}",
        "query-parameters": "accept",
        "site": "central",
        "http-status": "200",
        "stream-outcome": "cut",
        "bytes-sent": "999",
        "proxies": "198.51.100.1",
    }


def test_dicom_objects_and_resource_entities() -> None:
    event = audit_event(
        access(series=(SERIES,), instances=(SOP,), resource="ImagingSelection/sel-1")
    )
    reports = entity(event, "http://terminology.hl7.org/CodeSystem/object-role", "3")
    identifiers = [e["what"]["identifier"] for e in reports]
    assert [i["value"] for i in identifiers] == [f"urn:oid:{u}" for u in (STUDY, SERIES, SOP)]
    assert {i["system"] for i in identifiers} == {"urn:dicom:uid"}
    assert identifiers[0]["type"]["coding"][0]["code"] == "110180"  # Study Instance UID
    assert identifiers[1]["type"]["coding"][0]["code"] == "112002"  # Series Instance UID
    assert identifiers[2]["type"] == {"text": "SOP Instance UID"}
    (resource,) = entity(event, "http://terminology.hl7.org/CodeSystem/object-role", "4")
    assert resource["what"] == {"reference": "ImagingSelection/sel-1"}


@pytest.mark.parametrize(
    ("patient", "identifier"),
    [
        (
            Patient("8001011234", "CZ-NCPEH"),
            {"value": "8001011234", "assigner": {"display": "CZ-NCPEH"}},
        ),
        (
            Patient("8001011234", "1.2.203.24341.1.2"),
            {"value": "8001011234", "system": "urn:oid:1.2.203.24341.1.2"},
        ),
        (
            Patient("8001011234", "CZ-NCPEH", system="urn:oid:1.2.203.24341.1.2"),
            {"value": "8001011234", "system": "urn:oid:1.2.203.24341.1.2"},
        ),
        (Patient("P1"), {"value": "P1"}),
    ],
)
def test_patient_entity(patient: Patient, identifier: dict[str, Any]) -> None:
    event = audit_event(access(patient=patient))
    valid(event)
    (found,) = entity(event, "http://terminology.hl7.org/CodeSystem/object-role", "1")
    assert found["type"]["code"] == "1"  # Person
    assert found["what"]["identifier"] == identifier


def test_patient_reference_when_known() -> None:
    event = audit_event(access(patient=Patient("P1", fhir_id="cz-8001011234")))
    (found,) = entity(event, "http://terminology.hl7.org/CodeSystem/object-role", "1")
    assert found["what"]["reference"] == "Patient/cz-8001011234"


def test_no_query_value_reaches_the_event() -> None:
    """The values of a QIDO query (a name, a birth date, anything a client sends) appear
    nowhere; the names do, in the query entity and the transaction's details."""
    raw = (
        "PatientName=NOVAK%5EJAN&PatientBirthDate=19800101&StudyDate=20240101-20240301"
        "&includefield=00081030&limit=10&PatientName=DOE%5EJOHN&token=s3cr3t"
    )
    event = audit_event(
        access(
            interaction="qido-studies",
            route="/dicom-web/studies",
            query_names=query_names(raw),
            patient=None,
            studies=(),
            stream=None,
        )
    )
    valid(event)
    text = json.dumps(event)
    for value in ("NOVAK", "JAN", "19800101", "20240101", "00081030", "DOE", "JOHN", "s3cr3t"):
        assert value not in text, value
    (query,) = entity(event, "http://terminology.hl7.org/CodeSystem/object-role", "24")
    described = (
        "GET /dicom-web/studies?PatientName&PatientBirthDate&StudyDate&includefield&limit&token"
    )
    assert query["description"] == described
    assert base64.b64decode(query["query"]).decode() == described
    assert query["type"]["code"] == "2"  # System Object


def test_reads_have_no_query_entity() -> None:
    event = audit_event(access(interaction="wado-metadata"))
    assert not entity(event, "http://terminology.hl7.org/CodeSystem/object-role", "24")


def test_query_names() -> None:
    assert query_names("a=1&b=2&a=3&&c&=x") == ("a", "b", "c")
    assert query_names("Patient%20Name=x&00100010=y") == ("Patient Name", "00100010")
    assert query_names(["limit", "offset", "limit"]) == ("limit", "offset")
    many = "&".join(f"p{i}=1" for i in range(1000))
    assert len(query_names(many)) == 64
    assert query_names("x" * 1000 + "=1") == ("x" * 128,)


def test_a_name_with_reserved_characters_stays_one_name() -> None:
    event = audit_event(access(interaction="fhir-search", query_names=("a&b=c",)))
    (query,) = entity(event, "http://terminology.hl7.org/CodeSystem/object-role", "24")
    assert query["description"].endswith("?a%26b%3Dc")


@pytest.mark.parametrize(
    "change",
    [
        {"interaction": "qido-everything"},
        {"method": "get"},
        {"route": "/dicom-web/studies?PatientID=1"},
        {"route": "dicom-web/studies"},
        {"request_id": ""},
        {"start": datetime(2025, 3, 1)},  # naive
        {"end": START - timedelta(seconds=1)},
        {"status": 99},
        {"stream": "partial"},
        {"bytes_sent": -1},
    ],
)
def test_bad_access_is_refused(change: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011  (each names its field)
        access(**change)


def test_each_event_has_its_own_uuid() -> None:
    first, second = audit_event(access()), audit_event(access())
    assert first["id"] != second["id"]
    assert len(first["id"]) == 36
    assert audit_event(access(), event_id="fixed")["id"] == "fixed"


@pytest.mark.parametrize(
    ("method", "route", "name"),
    [
        ("GET", "/dicom-web/studies", "qido-studies"),
        ("GET", "/site/{site}/dicom-web/studies", "qido-studies"),
        ("GET", "/dicom-web/series", "qido-series"),
        ("GET", "/dicom-web/studies/{study}/series", "qido-series"),
        ("GET", "/dicom-web/instances", "qido-instances"),
        ("GET", "/dicom-web/studies/{study}/instances", "qido-instances"),
        ("GET", "/dicom-web/studies/{study}/series/{series}/instances", "qido-instances"),
        ("GET", "/dicom-web/studies/{study}", "wado-retrieve"),
        ("HEAD", "/dicom-web/studies/{study}/series/{series}", "wado-retrieve"),
        ("GET", INSTANCE, "wado-retrieve"),
        ("GET", "/dicom-web/studies/1.2.3/metadata", "wado-metadata"),
        ("GET", "/dicom-web/studies/{study}/series/{series}/metadata", "wado-metadata"),
        ("GET", f"{INSTANCE}/frames/{{frames}}", "frames"),
        ("GET", f"{INSTANCE}/bulk/{{path}}", "bulkdata"),
        ("GET", "/dicom-web/studies/{study}/rendered", "rendered"),
        ("GET", f"{INSTANCE}/frames/{{frames}}/rendered", "rendered"),
        ("GET", "/site/{site}/dicom-web/studies/{study}/series/{series}/thumbnail", "thumbnail"),
        ("GET", "/dicom-web/selections/{id}", "selection-retrieve"),
        ("GET", "/fhir/ImagingStudy", "fhir-search"),
        ("POST", "/site/{site}/fhir/ImagingStudy/_search", "fhir-search"),
        ("GET", "/fhir/ImagingStudy/{id}", "fhir-read"),
        ("GET", "/fhir/Patient/{id}", "fhir-read"),
        ("GET", "/site/{site}/fhir/imaging-study/{id}", "fhir-read"),
        ("GET", "/fhir/ImagingSelection", "selection-search"),
        ("POST", "/fhir/ImagingSelection", "selection-create"),
        ("GET", "/fhir/ImagingSelection/{id}", "selection-read"),
        ("DELETE", "/fhir/ImagingSelection/{id}", "selection-delete"),
        ("GET", "/fhir/metadata", None),
        ("GET", "/health/live", None),
        ("GET", "/viewer/index.html", None),
        ("DELETE", "/dicom-web/studies/{study}", None),
    ],
)  # fmt: skip
def test_interaction_for(method: str, route: str, name: str | None) -> None:
    assert interaction_for(method, route) == name


def test_every_data_route_of_the_app_is_classified() -> None:
    """Each route the gateway serves patient data on has an audit interaction."""
    from ncpeh_dicomweb.app import create_app
    from ncpeh_dicomweb.config import settings_from_mapping

    settings = settings_from_mapping(
        {"sites": [{"id": "main", "url": "http://127.0.0.1:1/dicom-web"}]}, {}
    )
    app = create_app(settings)
    unclassified = []
    for route in app.router.routes():
        canonical = route.resource.canonical if route.resource is not None else ""
        if route.method in ("OPTIONS", "*") or canonical.startswith(
            ("/health", "/viewer", "/metrics")
        ):
            continue
        if canonical.endswith(("/fhir/metadata", "/Endpoint/{id}")) or canonical in ("/", ""):
            continue
        if interaction_for(route.method, canonical) is None:
            unclassified.append(f"{route.method} {canonical}")
    assert unclassified == []
