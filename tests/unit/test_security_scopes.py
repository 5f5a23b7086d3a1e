"""SMART scopes and the interaction of each request: tables, one row per case."""

from __future__ import annotations

import pytest

from ncpeh_dicomweb.security.scopes import (
    CONFIGURABLE,
    DEFAULT_SCOPES,
    Interaction,
    SmartScope,
    classify,
    is_scope_token,
    parse_scope,
    satisfies,
)

I = Interaction  # noqa: E741  (short, for the tables)
STUDY = "1.2.826.0.1.3680043.8.498.1"


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        # public
        ("GET", "/health/live", I.PUBLIC),
        ("GET", "/health/ready", I.PUBLIC),
        ("HEAD", "/health/stats", I.PUBLIC),
        ("GET", "/metrics", I.PUBLIC),
        ("GET", "/viewer", I.PUBLIC),
        ("GET", "/viewer/", I.PUBLIC),
        ("GET", "/viewer/app-config.js", I.PUBLIC),
        ("GET", "/viewer/{tail}", I.PUBLIC),
        ("GET", "/fhir/metadata", I.PUBLIC),
        ("GET", "/site/{site}/fhir/metadata", I.PUBLIC),
        # DICOMweb: every route of both prefixes, any method
        ("GET", "/dicom-web/studies", I.DICOMWEB),
        ("HEAD", "/dicom-web/studies", I.DICOMWEB),
        ("GET", "/dicom-web/series", I.DICOMWEB),
        ("GET", f"/dicom-web/studies/{STUDY}", I.DICOMWEB),
        ("GET", "/dicom-web/studies/{study}/metadata", I.DICOMWEB),
        (
            "GET",
            "/dicom-web/studies/{study}/series/{series}/instances/{instance}/frames/{f}",
            I.DICOMWEB,
        ),
        ("GET", "/dicom-web/studies/{study}/rendered", I.DICOMWEB),
        ("GET", "/dicom-web/selections/{id}", I.DICOMWEB),
        ("GET", "/site/{site}/dicom-web/studies", I.DICOMWEB),
        ("GET", "/site/main/dicom-web/selections/abc", I.DICOMWEB),
        ("POST", "/dicom-web/studies", I.DICOMWEB),
        ("GET", "/dicom-web", I.DICOMWEB),
        # FHIR ImagingStudy, Patient, Endpoint
        ("GET", "/fhir/ImagingStudy", I.IMAGING_STUDY_SEARCH),
        ("POST", "/fhir/ImagingStudy", I.IMAGING_STUDY_SEARCH),
        ("POST", "/fhir/ImagingStudy/_search", I.IMAGING_STUDY_SEARCH),
        ("GET", "/site/{site}/fhir/ImagingStudy", I.IMAGING_STUDY_SEARCH),
        ("GET", "/fhir/ImagingStudy/{id}", I.IMAGING_STUDY_READ),
        ("HEAD", "/fhir/ImagingStudy/abc", I.IMAGING_STUDY_READ),
        ("GET", "/site/get/fhir/ImagingStudy/abc", I.IMAGING_STUDY_READ),
        ("GET", "/site/{site}/fhir/imaging-study/{id}", I.IMAGING_STUDY_READ),  # vendor route
        ("GET", "/site/main/fhir/imaging-study/abc", I.IMAGING_STUDY_READ),
        ("GET", "/fhir/Patient/{id}", I.PATIENT_READ),
        ("GET", "/site/{site}/fhir/Endpoint/{id}", I.ENDPOINT_READ),
        # FHIR ImagingSelection
        ("GET", "/fhir/ImagingSelection", I.IMAGING_SELECTION_SEARCH),
        ("POST", "/fhir/ImagingSelection/_search", I.IMAGING_SELECTION_SEARCH),
        ("POST", "/fhir/ImagingSelection", I.IMAGING_SELECTION_CREATE),
        ("GET", "/fhir/ImagingSelection/{id}", I.IMAGING_SELECTION_READ),
        ("DELETE", "/fhir/ImagingSelection/{id}", I.IMAGING_SELECTION_DELETE),
        ("delete", "/site/x/fhir/ImagingSelection/abc", I.IMAGING_SELECTION_DELETE),
        # no route serves these: a token, no scope (the client then learns 404 / 405)
        ("DELETE", "/fhir/ImagingStudy/{id}", I.AUTHENTICATED),
        ("PUT", "/fhir/ImagingSelection/{id}", I.AUTHENTICATED),
        ("POST", "/fhir/metadata", I.AUTHENTICATED),
        ("GET", "/fhir/Observation", I.AUTHENTICATED),
        ("GET", "/", I.AUTHENTICATED),
        ("GET", "/healthz", I.AUTHENTICATED),
        ("GET", "/viewerx", I.AUTHENTICATED),
        ("GET", "/site/x/health/live", I.AUTHENTICATED),
        ("GET", "/dicom-webx/studies", I.AUTHENTICATED),
        ("GET", "/x/dicom-web/studies", I.AUTHENTICATED),
        ("GET", "/site/a/b/dicom-web/studies", I.AUTHENTICATED),
        ("GET", "/fhir/ImagingStudy/a/b", I.AUTHENTICATED),
        ("GET", "/site/{site}/fhir/imaging-study/a/b", I.AUTHENTICATED),
    ],
)
def test_classify(method: str, path: str, expected: Interaction) -> None:
    assert classify(method, path) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("system/ImagingStudy.rs", SmartScope("system", "ImagingStudy", frozenset("rs"))),
        ("user/Patient.r", SmartScope("user", "Patient", frozenset("r"))),
        ("patient/*.cruds", SmartScope("patient", "*", frozenset("cruds"))),
        ("system/ImagingSelection.c", SmartScope("system", "ImagingSelection", frozenset("c"))),
        # v1 forms
        ("system/ImagingStudy.read", SmartScope("system", "ImagingStudy", frozenset("rs"))),
        ("user/*.write", SmartScope("user", "*", frozenset("cud"))),
        ("patient/Observation.*", SmartScope("patient", "Observation", frozenset("cruds"))),
        # v2 granular: only part of the type
        (
            "patient/Observation.rs?category=laboratory",
            SmartScope("patient", "Observation", frozenset("rs"), restricted=True),
        ),
        # not SMART resource scopes
        ("openid", None),
        ("launch/patient", None),
        ("dicomweb/read", None),
        ("system/ImagingStudy.sr", None),  # out of order
        ("system/ImagingStudy.rrs", None),  # repeated
        ("system/ImagingStudy.x", None),
        ("system/ImagingStudy.", None),
        ("admin/ImagingStudy.rs", None),
        ("*/ImagingStudy.rs", None),
        ("system/Imaging-Study.rs", None),
        ("system/ImagingStudy.rs ", None),
    ],
)
def test_parse_scope(text: str, expected: SmartScope | None) -> None:
    assert parse_scope(text) == expected


@pytest.mark.parametrize(
    ("granted", "required", "ok"),
    [
        (["system/ImagingStudy.rs"], "system/ImagingStudy.rs", True),
        (["system/ImagingStudy.cruds"], "system/ImagingStudy.rs", True),
        (["system/ImagingStudy.read"], "system/ImagingStudy.rs", True),  # v1
        (["system/*.rs"], "system/ImagingStudy.rs", True),  # wildcard
        (["system/*.read"], "system/Patient.r", True),
        (["system/*.*"], "system/ImagingSelection.d", True),
        (["openid", "system/ImagingStudy.rs"], "system/ImagingStudy.rs", True),
        (["system/ImagingStudy.r"], "system/ImagingStudy.rs", False),  # no search
        (["system/ImagingStudy.s"], "system/ImagingStudy.rs", False),
        (["system/Patient.rs"], "system/ImagingStudy.rs", False),  # another type
        (["user/ImagingStudy.rs"], "system/ImagingStudy.rs", False),  # another context
        (["patient/*.rs"], "system/ImagingStudy.rs", False),
        (["system/ImagingStudy.rs?modality=CT"], "system/ImagingStudy.rs", False),  # granular
        (["system/ImagingStudy.write"], "system/ImagingStudy.rs", False),
        (["system/ImagingSelection.rs"], "system/ImagingSelection.c", False),
        (["system/ImagingSelection.crus"], "system/ImagingSelection.c", True),
        ([], "system/ImagingStudy.rs", False),
        (["ImagingStudy.rs"], "system/ImagingStudy.rs", False),
        # a deployment's own scope: exactly that string
        (["dicomweb/read"], "dicomweb/read", True),
        (["dicomweb/read-all"], "dicomweb/read", False),
        (["system/*.cruds"], "dicomweb/read", False),
        # a granular requirement: exactly that string
        (["system/Observation.rs?category=x"], "system/Observation.rs?category=x", True),
        (["system/Observation.rs"], "system/Observation.rs?category=x", False),
    ],
)
def test_satisfies(granted: list[str], required: str, ok: bool) -> None:
    assert satisfies(granted, required) is ok


def test_default_scopes_cover_every_configurable_interaction() -> None:
    assert set(DEFAULT_SCOPES) == set(CONFIGURABLE)
    assert {Interaction.PUBLIC, Interaction.AUTHENTICATED}.isdisjoint(CONFIGURABLE)
    assert DEFAULT_SCOPES[Interaction.IMAGING_STUDY_SEARCH] == "system/ImagingStudy.rs"
    assert DEFAULT_SCOPES[Interaction.IMAGING_SELECTION_CREATE] == "system/ImagingSelection.c"
    assert DEFAULT_SCOPES[Interaction.IMAGING_SELECTION_DELETE] == "system/ImagingSelection.d"
    for interaction, scope in DEFAULT_SCOPES.items():
        assert parse_scope(scope) is not None, interaction
        assert satisfies([scope], scope)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("system/ImagingStudy.rs", True),
        ("dicomweb/read", True),
        ("a", True),
        ("", False),
        ("two words", False),
        ('quo"te', False),
        ("back\\slash", False),
        ("line\nbreak", False),
        ("caf\u00e9", False),
    ],
)
def test_is_scope_token(value: str, ok: bool) -> None:
    assert is_scope_token(value) is ok
