"""OperationOutcome: the body of every FHIR error (sans-I/O).

References: FHIR R4 operationoutcome.html (issue severity, code, diagnostics, location,
expression; the IssueType value set valueset-issue-type.html), http.html#Status-Codes (an
error status comes with an OperationOutcome), search.html#errors (a bad search parameter is a
400 with an OperationOutcome).

Our error tree (:mod:`ncpeh_dicomweb.errors`) is mapped once, here, through two tables: the
error's ``code`` first (it says more than the status: a timeout and a refused connection are
both 5xx), then its HTTP status; whatever is in neither is ``processing`` (4xx) or
``exception`` (5xx). Severity follows the status class: ``error`` for 4xx (the request
failed), ``fatal`` for 5xx (the gateway could not go on). The same shape is valid in R4 and R5,
so nothing here depends on the version.

``diagnostics`` is the error's message (which by contract names no internal host, URL or AE
title); ``detail["parameter"]`` (a name or a list of names) becomes ``expression`` and, as
R4 asks of HTTP errors, ``location`` as ``http.<name>``. No other detail (values may be
patient data) goes into the body.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Literal

from ..errors import GatewayError

__all__ = [
    "ISSUE_TYPES",
    "Issue",
    "IssueSeverity",
    "operation_outcome",
    "outcome",
    "outcome_for_status",
]

IssueSeverity = Literal["fatal", "error", "warning", "information"]

#: FHIR R4 IssueType (http://hl7.org/fhir/issue-type), all of which R5 keeps.
ISSUE_TYPES: Final = frozenset(
    {
        "invalid",
        "structure",
        "required",
        "value",
        "invariant",
        "security",
        "login",
        "unknown",
        "expired",
        "forbidden",
        "suppressed",
        "processing",
        "not-supported",
        "duplicate",
        "multiple-matches",
        "not-found",
        "deleted",
        "too-long",
        "code-invalid",
        "extension",
        "too-costly",
        "business-rule",
        "conflict",
        "transient",
        "lock-error",
        "no-store",
        "exception",
        "timeout",
        "incomplete",
        "throttled",
        "informational",
    }
)


@dataclass(frozen=True, slots=True)
class Issue:
    """One OperationOutcome.issue (operationoutcome.html): ``code`` from :data:`ISSUE_TYPES`;
    ``expression``: the names of the HTTP parameters concerned (also given as ``location``
    ``http.<name>``, R4's rule for HTTP errors); ``in_body``: FHIRPath expressions into the
    request's resource instead (no ``location``: that is for HTTP parameters)."""

    severity: IssueSeverity
    code: str
    diagnostics: str | None = None
    expression: tuple[str, ...] = ()
    in_body: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.code not in ISSUE_TYPES:
            raise ValueError(f"not a FHIR IssueType code: {self.code!r}")

    def to_json(self) -> dict[str, Any]:
        """The issue as FHIR JSON."""
        out: dict[str, Any] = {"severity": self.severity, "code": self.code}
        if self.diagnostics:
            out["diagnostics"] = self.diagnostics
        if self.expression:
            out["location"] = [f"http.{name}" for name in self.expression]
        if self.expression or self.in_body:
            out["expression"] = [*self.expression, *self.in_body]
        return out


# Our error codes (errors.py) → IssueType. More precise than the status alone.
_BY_ERROR_CODE: Final[Mapping[str, str]] = MappingProxyType(
    {
        "bad-request": "invalid",
        "invalid-query": "invalid",
        "invalid-uid": "value",
        "unauthorized": "login",
        "forbidden": "forbidden",
        "not-found": "not-found",
        "not-acceptable": "not-supported",
        "gone": "deleted",
        "payload-too-large": "too-costly",
        "uri-too-long": "too-long",
        "too-many-requests": "throttled",
        "bad-gateway": "exception",
        "pacs-unreachable": "transient",
        "pacs-busy": "transient",
        "pacs-timeout": "timeout",
        "internal-error": "exception",
        "unprocessable": "processing",
        "method-not-allowed": "not-supported",
        "unsupported-media-type": "not-supported",
    }
)

# HTTP status → IssueType, for errors whose code says nothing more (the PACS's own 4xx) and
# for aiohttp's HTTP errors (unknown route, wrong method, body too large).
_BY_STATUS: Final[Mapping[int, str]] = MappingProxyType(
    {
        400: "invalid",
        401: "login",
        403: "forbidden",
        404: "not-found",
        405: "not-supported",
        406: "not-supported",
        408: "timeout",
        409: "conflict",
        410: "deleted",
        412: "conflict",
        413: "too-costly",
        414: "too-long",
        415: "not-supported",
        422: "processing",
        429: "throttled",
        500: "exception",
        501: "not-supported",
        502: "exception",
        503: "transient",
        504: "timeout",
    }
)

# Status class → (severity, IssueType when neither table has a row).
_BY_CLASS: Final[Mapping[int, tuple[IssueSeverity, str]]] = MappingProxyType(
    {4: ("error", "processing"), 5: ("fatal", "exception")}
)


def _severity_and_code(status: int, error_code: str | None) -> tuple[IssueSeverity, str]:
    if status // 100 not in _BY_CLASS:
        raise ValueError(f"an OperationOutcome is for an error status, not {status}")
    severity, fallback = _BY_CLASS[status // 100]
    code = _BY_ERROR_CODE.get(error_code or "") or _BY_STATUS.get(status, fallback)
    return severity, code


def _parameters(detail: Mapping[str, object]) -> tuple[str, ...]:
    value = detail.get("parameter")
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, Sequence):
        return tuple(v for v in value if isinstance(v, str) and v)
    return ()


def outcome(issues: Sequence[Issue]) -> dict[str, Any]:
    """An OperationOutcome (operationoutcome.html) of one or more issues, valid in R4 and R5;
    for warnings too, e.g. a search that ignored a parameter (search.html#errors)."""
    if not issues:
        raise ValueError("an OperationOutcome has at least one issue")
    return {"resourceType": "OperationOutcome", "issue": [i.to_json() for i in issues]}


def operation_outcome(error: GatewayError) -> dict[str, Any]:
    """The OperationOutcome answering ``error`` with ``error.status`` (FHIR R4
    operationoutcome.html, http.html#Status-Codes).

    One issue: severity ``error`` (4xx) or ``fatal`` (5xx); code from the error's ``code``
    (``pacs-timeout`` → ``timeout``, ``pacs-unreachable`` → ``transient``, ``gone`` →
    ``deleted``...), else from its status (400 ``invalid``, 401 ``login``, 403 ``forbidden``,
    404 ``not-found``, 406 ``not-supported``, 410 ``deleted``, 413 ``too-costly``, 502
    ``exception``, 503 ``transient``, 504 ``timeout``...); diagnostics = the message;
    ``expression`` (and ``location`` ``http.<name>``) from ``detail["parameter"]``, and a
    FHIRPath into the posted resource from ``detail["expression"]``.
    """
    severity, code = _severity_and_code(error.status, error.code)
    in_body = error.detail.get("expression")
    body_paths = (in_body,) if isinstance(in_body, str) and in_body else ()
    issue = Issue(severity, code, error.message, _parameters(error.detail), body_paths)
    return outcome([issue])


def outcome_for_status(status: int, message: str) -> dict[str, Any]:
    """The OperationOutcome for an HTTP error that is not one of ours (aiohttp's 404 for an
    unknown route, 405, 413...), by the status table of :func:`operation_outcome`."""
    severity, code = _severity_and_code(status, None)
    return outcome([Issue(severity, code, message)])
