"""The CapabilityStatement (FHIR R4 capabilitystatement.html) in R4 and R5."""

from __future__ import annotations

from typing import Any

import pytest
from fhir.resources.capabilitystatement import CapabilityStatement as CapabilityR5
from fhir.resources.R4B.capabilitystatement import CapabilityStatement as CapabilityR4

from ncpeh_dicomweb import __version__
from ncpeh_dicomweb.fhir.capability import (
    IMAGING_SELECTION_SEARCH_PARAMS,
    STATEMENT_DATE,
    SearchParamInfo,
    Security,
    capability_statement,
)
from ncpeh_dicomweb.fhir.negotiation import FhirVersion

BASE = "https://ncp.example.eu/fhir"
MODELS: dict[str, type[CapabilityR4] | type[CapabilityR5]] = {
    "R4": CapabilityR4,
    "R5": CapabilityR5,
}
RELEASES = {"R4": "4.0.1", "R5": "5.0.0"}
PUSHED_TEXT = "Pushed down to the PACS"
FILTERED_TEXT = "Matched by the gateway"

# The NCPeH page's parameters and the others, as the search service would list them.
PARAMS = [
    SearchParamInfo("patient", "reference", "The patient (chained: patient.identifier)."),
    SearchParamInfo("identifier", "token", "Study Instance UID or Accession Number."),
    SearchParamInfo("modality", "token", "Modality of a series."),
    SearchParamInfo(
        "started",
        "date",
        "When the study started.",
        "http://hl7.org/fhir/SearchParameter/ImagingStudy-started",
    ),
    SearchParamInfo("reason", "token", "Why the study was done (alias reasonCode)."),
    SearchParamInfo("bodysite", "token", "Body site of a series (alias body-site)."),
    SearchParamInfo("dicom-class", "token", "SOP Class of an instance."),
    SearchParamInfo("_id", "token", "The logical id."),
]
PUSHED = {"patient", "identifier", "modality", "started", "_id"}


def _statement(version: FhirVersion, **kwargs: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "version": version,
        "base_url": BASE,
        "search_params": PARAMS,
        "pushed_to_pacs": PUSHED,
        "imaging_selection": True,
    } | kwargs
    statement = capability_statement(**args)
    MODELS[version].model_validate(statement)
    return statement


def _resources(statement: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (rest,) = statement["rest"]
    return {r["type"]: r for r in rest["resource"]}


@pytest.mark.parametrize("version", ["R4", "R5"])
def test_top_level(version: FhirVersion) -> None:
    statement = _statement(version)
    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["status"] == "active"
    assert statement["kind"] == "instance"
    assert statement["fhirVersion"] == RELEASES[version]
    assert statement["format"] == ["json"]
    assert statement["date"] == STATEMENT_DATE
    assert statement["implementation"]["url"] == BASE
    assert statement["software"] == {"name": "ncpeh-dicomweb", "version": __version__}
    (rest,) = statement["rest"]
    assert rest["mode"] == "server"
    # Both versions and how to ask for each are stated.
    assert "fhirVersion=4.0" in rest["documentation"]
    assert "fhirVersion=5.0" in rest["documentation"]


@pytest.mark.parametrize("version", ["R4", "R5"])
def test_imaging_study(version: FhirVersion) -> None:
    study = _resources(_statement(version))["ImagingStudy"]
    assert study["interaction"] == [{"code": "read"}, {"code": "search-type"}]
    assert study["searchInclude"] == ["ImagingStudy:endpoint", "ImagingStudy:patient"]
    assert [(p["name"], p["type"]) for p in study["searchParam"]] == [
        (p.name, p.type) for p in PARAMS
    ]
    started = next(p for p in study["searchParam"] if p["name"] == "started")
    assert started["definition"] == "http://hl7.org/fhir/SearchParameter/ImagingStudy-started"
    assert "definition" not in study["searchParam"][0]


@pytest.mark.parametrize("version", ["R4", "R5"])
def test_each_parameter_says_whether_it_is_pushed_to_the_pacs(version: FhirVersion) -> None:
    study = _resources(_statement(version))["ImagingStudy"]
    for param in study["searchParam"]:
        original = next(p for p in PARAMS if p.name == param["name"])
        assert param["documentation"].startswith(original.documentation)
        pushed = param["name"] in PUSHED
        assert (PUSHED_TEXT in param["documentation"]) == pushed, param["name"]
        assert (FILTERED_TEXT in param["documentation"]) == (not pushed), param["name"]


def test_nothing_pushed_down() -> None:
    study = _resources(_statement("R4", pushed_to_pacs=set()))["ImagingStudy"]
    assert all(FILTERED_TEXT in p["documentation"] for p in study["searchParam"])


@pytest.mark.parametrize(
    ("version", "imaging_selection", "present"),
    [("R4", True, False), ("R4", False, False), ("R5", True, True), ("R5", False, False)],
)
def test_imaging_selection_only_in_r5(
    version: FhirVersion, imaging_selection: bool, present: bool
) -> None:
    resources = _resources(_statement(version, imaging_selection=imaging_selection))
    assert ("ImagingSelection" in resources) == present
    if present:
        selection = resources["ImagingSelection"]
        assert [i["code"] for i in selection["interaction"]] == [
            "read",
            "search-type",
            "create",
            "delete",
        ]
        assert [p["name"] for p in selection["searchParam"]] == [
            "patient",
            "subject",
            "study-uid",
            "derived-from",
            "code",
            "status",
            "_id",
        ]


@pytest.mark.parametrize("version", ["R4", "R5"])
def test_read_types(version: FhirVersion) -> None:
    resources = _resources(_statement(version, read_types={"Endpoint", "Patient"}))
    for rtype in ("Patient", "Endpoint"):
        assert resources[rtype]["interaction"] == [{"code": "read"}]
        assert "searchParam" not in resources[rtype]
    assert list(resources)[-2:] == ["Endpoint", "Patient"]


def test_no_read_types_by_default() -> None:
    assert set(_resources(_statement("R5"))) == {"ImagingStudy", "ImagingSelection"}


def test_custom_selection_params() -> None:
    params = [SearchParamInfo("study-uid", "uri", "Study.")]
    selection = _resources(_statement("R5", imaging_selection_params=params))["ImagingSelection"]
    assert selection["searchParam"] == [
        {"name": "study-uid", "type": "uri", "documentation": "Study."}
    ]
    assert len(IMAGING_SELECTION_SEARCH_PARAMS) == 7


def test_date_can_be_given() -> None:
    assert _statement("R4", date="2026-12-02T05:00:00Z")["date"] == "2026-12-02T05:00:00Z"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"pushed_to_pacs": {"modality", "nope"}}, "not listed", id="pushed-unknown"),
        pytest.param({"search_params": [*PARAMS, PARAMS[0]]}, "twice", id="duplicate"),
        pytest.param({"read_types": {"Observation"}}, "read_types", id="read-type"),
        pytest.param({"read_types": {"ImagingStudy"}}, "read_types", id="read-type-twice"),
    ],
)
def test_statement_must_tell_the_truth(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _statement("R4", **kwargs)


@pytest.mark.parametrize("bad", ["text", "Token", ""])
def test_search_param_type_checked(bad: str) -> None:
    with pytest.raises(ValueError, match="search parameter type"):
        SearchParamInfo("x", bad, "doc")  # type: ignore[arg-type]


def test_search_param_needs_a_name() -> None:
    with pytest.raises(ValueError, match="name"):
        SearchParamInfo("", "token", "doc")


@pytest.mark.parametrize("version", ["R4", "R5"])
def test_security_is_stated_only_when_tokens_are_asked(version: FhirVersion) -> None:
    assert "security" not in _statement(version)["rest"][0]
    secured = _statement(
        version,
        security=Security(issuer="https://idp.example", scopes=["b/x.rs", "a/y.r", "b/x.rs"]),
    )["rest"][0]["security"]
    assert secured["cors"] is False
    assert [c["code"] for c in secured["service"][0]["coding"]] == ["SMART-on-FHIR", "OAuth"]
    assert "https://idp.example, with SMART v2 scopes: a/y.r, b/x.rs." in secured["description"]
