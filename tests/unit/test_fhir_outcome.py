"""The error tree as OperationOutcome (FHIR R4 operationoutcome.html), one row per error."""

from __future__ import annotations

from typing import Any

import pytest
from fhir.resources.operationoutcome import OperationOutcome as OutcomeR5
from fhir.resources.R4B.operationoutcome import OperationOutcome as OutcomeR4

from ncpeh_dicomweb import errors
from ncpeh_dicomweb.errors import GatewayError
from ncpeh_dicomweb.fhir.outcome import (
    ISSUE_TYPES,
    Issue,
    operation_outcome,
    outcome,
    outcome_for_status,
)

# The IssueType value set of FHIR R4 (valueset-issue-type.html), written out here so that a
# code mistyped in the module's tables fails (fhir.resources does not check bindings).
R4_ISSUE_TYPES = {
    *("invalid", "structure", "required", "value", "invariant"),
    *("security", "login", "unknown", "expired", "forbidden", "suppressed"),
    *("processing", "not-supported", "duplicate", "multiple-matches", "not-found"),
    *("deleted", "too-long", "code-invalid", "extension", "too-costly", "business-rule"),
    *("conflict", "transient", "lock-error", "no-store", "exception", "timeout"),
    *("incomplete", "throttled", "informational"),
}


def _validate(body: dict[str, Any]) -> None:
    OutcomeR4.model_validate(body)
    OutcomeR5.model_validate(body)
    for issue in body["issue"]:
        assert issue["code"] in R4_ISSUE_TYPES
        assert issue["severity"] in {"fatal", "error", "warning", "information"}


# (error, status, severity, code): every class of errors.py.
ERROR_ROWS = [
    (errors.BadRequest("bad"), 400, "error", "invalid"),
    (errors.InvalidQuery("bad date"), 400, "error", "invalid"),
    (errors.InvalidUID("bad uid"), 400, "error", "value"),
    (errors.Unauthorized("token needed"), 401, "error", "login"),
    (errors.Forbidden("not your patient"), 403, "error", "forbidden"),
    (errors.NotFound("no such study"), 404, "error", "not-found"),
    (errors.MethodNotAllowed("read-only"), 405, "error", "not-supported"),
    (errors.NotAcceptable("xml"), 406, "error", "not-supported"),
    (errors.Gone("deleted"), 410, "error", "deleted"),
    (errors.PayloadTooLarge("too big"), 413, "error", "too-costly"),
    (errors.UriTooLong("too long"), 414, "error", "too-long"),
    (errors.TooManyRequests("slow down"), 429, "error", "throttled"),
    (errors.UnsupportedMediaType("xml body"), 415, "error", "not-supported"),
    (errors.Unprocessable("no such instance"), 422, "error", "processing"),
    (errors.UpstreamRejected(409, "conflict"), 409, "error", "conflict"),
    (errors.UpstreamRejected(400, "pacs says no"), 400, "error", "invalid"),
    (errors.UpstreamRejected(418, "teapot"), 418, "error", "processing"),
    (errors.BackendError("bad answer"), 502, "fatal", "exception"),
    (errors.BackendUnreachable("refused"), 502, "fatal", "transient"),
    (errors.BackendBusy("busy"), 503, "fatal", "transient"),
    (errors.BackendTimeout("slow"), 504, "fatal", "timeout"),
    (errors.GatewayError("internal error"), 500, "fatal", "exception"),
]


@pytest.mark.parametrize(
    ("error", "status", "severity", "code"),
    ERROR_ROWS,
    ids=[f"{type(row[0]).__name__}-{row[1]}" for row in ERROR_ROWS],
)
def test_error_rows(error: GatewayError, status: int, severity: str, code: str) -> None:
    body = operation_outcome(error)
    _validate(body)
    assert error.status == status
    assert body == {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": error.message}],
    }


def test_every_error_class_has_a_row() -> None:
    classes = {
        obj
        for name in errors.__all__
        if isinstance(obj := getattr(errors, name), type) and issubclass(obj, GatewayError)
    }
    assert classes == {type(row[0]) for row in ERROR_ROWS}


@pytest.mark.parametrize(
    ("parameter", "expression"),
    [
        pytest.param("started", ["started"], id="one"),
        pytest.param(["modality", "started"], ["modality", "started"], id="list"),
        pytest.param(("_format",), ["_format"], id="tuple"),
        pytest.param("", None, id="empty"),
        pytest.param(7, None, id="not-a-name"),
    ],
)
def test_parameter_becomes_expression(parameter: object, expression: list[str] | None) -> None:
    error = errors.InvalidQuery(
        "started: bad date", detail={"parameter": parameter, "value": "20x4"}
    )
    body = operation_outcome(error)
    _validate(body)
    issue = body["issue"][0]
    assert issue.get("expression") == expression
    assert issue.get("location") == (expression and [f"http.{n}" for n in expression])
    # The value (maybe patient data) is never echoed.
    assert "20x4" not in str(body)


def test_406_from_negotiation_points_at_format() -> None:
    error = errors.NotAcceptable("nope", detail={"parameter": "_format", "value": "xml"})
    issue = operation_outcome(error)["issue"][0]
    assert (issue["code"], issue["expression"]) == ("not-supported", ["_format"])


@pytest.mark.parametrize(
    ("status", "severity", "code"),
    [
        (400, "error", "invalid"),
        (401, "error", "login"),
        (403, "error", "forbidden"),
        (404, "error", "not-found"),
        (405, "error", "not-supported"),
        (406, "error", "not-supported"),
        (408, "error", "timeout"),
        (409, "error", "conflict"),
        (410, "error", "deleted"),
        (412, "error", "conflict"),
        (413, "error", "too-costly"),
        (414, "error", "too-long"),
        (415, "error", "not-supported"),
        (422, "error", "processing"),
        (429, "error", "throttled"),
        (431, "error", "processing"),
        (500, "fatal", "exception"),
        (501, "fatal", "not-supported"),
        (502, "fatal", "exception"),
        (503, "fatal", "transient"),
        (504, "fatal", "timeout"),
        (599, "fatal", "exception"),
    ],
)
def test_status_rows(status: int, severity: str, code: str) -> None:
    body = outcome_for_status(status, "Not Found")
    _validate(body)
    assert body["issue"] == [{"severity": severity, "code": code, "diagnostics": "Not Found"}]


@pytest.mark.parametrize("status", [200, 204, 304, 600, 99])
def test_not_an_error_status(status: int) -> None:
    with pytest.raises(ValueError, match="error status"):
        outcome_for_status(status, "fine")


def test_warning_outcome_for_search() -> None:
    body = outcome(
        [
            Issue("warning", "not-supported", "foo is not supported: ignored", ("foo",)),
            Issue("information", "informational", "results capped"),
        ]
    )
    _validate(body)
    assert body["issue"][0]["expression"] == ["foo"]
    assert body["issue"][1] == {
        "severity": "information",
        "code": "informational",
        "diagnostics": "results capped",
    }


def test_issue_code_checked() -> None:
    with pytest.raises(ValueError, match="IssueType"):
        Issue("error", "not-a-code")


def test_outcome_needs_an_issue() -> None:
    with pytest.raises(ValueError, match="at least one"):
        outcome([])


def test_issue_types_table_is_r4s() -> None:
    assert set(ISSUE_TYPES) == R4_ISSUE_TYPES


def test_an_expression_into_the_posted_resource_has_no_http_location() -> None:
    error = errors.Unprocessable(
        "not in the PACS", detail={"expression": "ImagingSelection.instance[1].uid"}
    )
    body = operation_outcome(error)
    _validate(body)
    assert body["issue"][0]["expression"] == ["ImagingSelection.instance[1].uid"]
    assert "location" not in body["issue"][0]
