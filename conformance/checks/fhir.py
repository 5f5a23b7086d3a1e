"""NCPeH "Get Study Metadata (HL7 FHIR)" checks against ``--fhir-url``: the CapabilityStatement
and the ImagingStudy search with the page's SHALL parameters and its examples. The searchset
Bundle, paging, read and errors are checked in ``fhir_bundle``; the test study's ImagingStudy
against what QIDO says of it, R5 on request and ImagingSelection when the server declares it in
``fhir_study`` (the reports list them in that order).

Every Bundle and resource is validated with ``fhir.resources`` (see ``conformance.fhir_model``).
The test study and patient come from ``probe.fixture()``: searches are for that patient.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Mapping
from typing import Any

from ..context import Probe
from ..fhir_model import DICOM_UID, R4, codes, dicom_values, study_date, validate
from ..model import Failed, Level, Skipped, check
from ._fhir_common import (
    FHIR_JSON,
    HTTP,
    OTHER_MODALITIES,
    PAGE,
    SEARCH,
    SHALL_PARAMS,
    _capability,
    _declared,
    _expect,
    _fail_if,
    _first_modality,
    _object,
    _param,
    _patient,
    _study,
    _uids_found,
)

__all__: list[str] = []


# ---------------------------------------------------------------- CapabilityStatement


@check(
    "fhir.capability",
    section=f"{HTTP}: capabilities",
    level=Level.MUST,
    title="GET [base]/metadata answers a CapabilityStatement that validates",
)
async def capability(probe: Probe) -> None:
    body = await _capability(probe)
    if body["resourceType"] != "CapabilityStatement":
        raise Failed(f"GET metadata: a {body['resourceType']}, not a CapabilityStatement")


@check(
    "fhir.capability.r4-default",
    section="NCPeH guide (FHIR 4.0.1)",
    level=Level.SHOULD,
    title="Without a fhirVersion the server answers FHIR R4 (4.0.x)",
)
async def capability_r4(probe: Probe) -> None:
    version = str((await _capability(probe)).get("fhirVersion"))
    if not version.startswith("4.0"):
        raise Failed(f"GET metadata: fhirVersion {version}, expected 4.0.1 (the guide's FHIR)")


@check(
    "fhir.capability.imagingstudy",
    section=f"{PAGE}: search parameters",
    level=Level.SHOULD,
    title="The CapabilityStatement lists ImagingStudy search with the page's SHALL parameters",
)
async def capability_imagingstudy(probe: Probe) -> None:
    resource = _declared(await _capability(probe), "ImagingStudy")
    if resource is None:
        raise Failed("the CapabilityStatement does not list ImagingStudy")
    interactions = {i.get("code") for i in resource.get("interaction") or [] if isinstance(i, dict)}
    names = {p.get("name") for p in resource.get("searchParam") or [] if isinstance(p, dict)}
    problems = [] if "search-type" in interactions else ["no search-type interaction"]
    missing = [n for n in SHALL_PARAMS if n not in names]
    if missing:
        problems.append(f"search parameters not listed: {', '.join(missing)}")
    _fail_if(problems)


# ---------------------------------------------------------------- search parameters


@check(
    "fhir.search.patient",
    section=f"{PAGE}: patient (patient.identifier)",
    level=Level.MUST,
    title="ImagingStudy?patient.identifier=|ID gives a searchset Bundle with the patient's study",
)
async def search_patient(probe: Probe) -> None:
    await _study(probe)


@check(
    "fhir.search.patient-system",
    section=f"{PAGE}: patient (patient.identifier); {SEARCH}: token system|code",
    level=Level.MUST,
    title="patient.identifier=SYSTEM|ID finds the study; another system does not",
)
async def search_patient_system(probe: Probe) -> None:
    study = await _study(probe)
    patient = study.fixture.patient_id
    system = await _patient_system(probe, study.resource, patient)
    other = f"urn:oid:2.25.{secrets.randbits(64)}"
    _fail_if(
        [
            await _expect(
                probe, [("patient.identifier", f"{system}|{patient}")], study.fixture.study
            ),
            await _expect(
                probe,
                [("patient.identifier", f"{other}|{patient}")],
                study.fixture.study,
                found=False,
            ),
        ]
    )


async def _patient_system(probe: Probe, resource: Mapping[str, Any], patient: str) -> str:
    """The FHIR system of the patient identifier: on the subject reference, or on the Patient
    it points to; Skipped when neither says."""
    subject = resource.get("subject") or {}
    identifier = subject.get("identifier") if isinstance(subject, dict) else None
    if (
        isinstance(identifier, dict)
        and identifier.get("value") == patient
        and identifier.get("system")
    ):
        return str(identifier["system"])
    reference = subject.get("reference") if isinstance(subject, dict) else None
    if not isinstance(reference, str) or not reference.startswith("Patient/"):
        raise Skipped("the ImagingStudy's subject names no readable Patient")
    answer = await probe.get(probe.fhir(reference), accept=FHIR_JSON)
    if answer.status != 200:
        raise Skipped(f"GET {reference}: status {answer.status}; the identifier system is unknown")
    body = validate(_object(answer), R4, f"GET {answer.url}")
    for item in body.get("identifier") or []:
        if isinstance(item, dict) and item.get("value") == patient and item.get("system"):
            return str(item["system"])
    raise Skipped(f"{reference} has no identifier {patient} with a system")


@check(
    "fhir.search.identifier",
    section=f"{PAGE}: identifier",
    level=Level.MUST,
    title="identifier=urn:dicom:uid|urn:oid:UID gives that study only; identifier=urn:oid:UID too",
)
async def search_identifier(probe: Probe) -> None:
    fixture = await probe.fixture()
    exact = [("identifier", f"{DICOM_UID}|urn:oid:{fixture.study}")]
    found = await _uids_found(probe, exact)
    problems = [await _expect(probe, exact, fixture.study)]
    if found - {fixture.study}:
        problems.append(f"ImagingStudy?{_param(exact)} also matches {sorted(found)[:3]}")
    problems.append(
        await _expect(probe, [("identifier", f"urn:oid:{fixture.study}")], fixture.study)
    )
    _fail_if(problems)


@check(
    "fhir.search.modality",
    section=f"{PAGE}: modality",
    level=Level.MUST,
    title="modality=CODE finds the patient's study with that modality, and not with another",
)
async def search_modality(probe: Probe) -> None:
    fixture, patient = await _patient(probe)
    modality = _first_modality(fixture)
    present = {str(m) for m in dicom_values(fixture.study_json, "00080061")} | {modality}
    other = next((m for m in OTHER_MODALITIES if m not in present), "XC")
    who = ("patient.identifier", f"|{patient}")
    _fail_if(
        [
            await _expect(probe, [who, ("modality", modality)], fixture.study),
            await _expect(probe, [who, ("modality", other)], fixture.study, found=False),
        ]
    )


@check(
    "fhir.search.started",
    section=f"{PAGE}: started; {SEARCH}: date prefixes and precision",
    level=Level.MUST,
    title="started with ge/le/lt/gt and year precision includes and excludes the study rightly",
)
async def search_started(probe: Probe) -> None:
    fixture, patient = await _patient(probe)
    day = study_date(fixture)
    before = (day - dt.timedelta(days=1)).isoformat()
    after = (day + dt.timedelta(days=1)).isoformat()
    who = ("patient.identifier", f"|{patient}")
    uid = fixture.study
    _fail_if(
        [
            await _expect(probe, [who, ("started", str(day.year))], uid),
            await _expect(probe, [who, ("started", f"ge{before}"), ("started", f"le{after}")], uid),
            await _expect(probe, [who, ("started", f"lt{before}")], uid, found=False),
            await _expect(probe, [who, ("started", f"gt{after}")], uid, found=False),
        ]
    )


@check(
    "fhir.search.reason",
    section=f"{PAGE}: reason (provider SHALL)",
    level=Level.MUST,
    title="reason=SYSTEM|CODE and reason=CODE find the study by its reason",
)
async def search_reason(probe: Probe) -> None:
    study = await _study(probe)
    reasons = codes(study.resource.get("reasonCode")) or codes(study.resource.get("reason"))
    if not reasons:
        raise Skipped("the test study's ImagingStudy has no reason to search by")
    system, code = reasons[0]
    who = ("patient.identifier", f"|{study.fixture.patient_id}")
    searches = [[who, ("reason", code)]]
    if system:
        searches.append([who, ("reason", f"{system}|{code}")])
    _fail_if([await _expect(probe, s, study.fixture.study) for s in searches])


@check(
    "fhir.search.combination",
    section=f"{PAGE}: combination of the required parameters",
    level=Level.MUST,
    title="patient.identifier, identifier, modality and started together find the study",
)
async def search_combination(probe: Probe) -> None:
    fixture, patient = await _patient(probe)
    day = study_date(fixture) - dt.timedelta(days=1)
    params = [
        ("patient.identifier", f"|{patient}"),
        ("identifier", f"{DICOM_UID}|urn:oid:{fixture.study}"),
        ("modality", _first_modality(fixture)),
        ("started", f"ge{day.isoformat()}"),
    ]
    _fail_if([await _expect(probe, params, fixture.study)])


@check(
    "fhir.search.page-examples",
    section=f"{PAGE}: examples",
    level=Level.SHOULD,
    title="The page's three example searches, for the test patient, find the test study",
)
async def search_page_examples(probe: Probe) -> None:
    study = await _study(probe)
    fixture = study.fixture
    year = study_date(fixture).year
    who = ("patient.identifier", f"|{fixture.patient_id}")
    examples = [
        [who, ("started", f"ge{year}-01-01"), ("started", f"le{year}-12-31")],
        [who, ("modality", _first_modality(fixture))],
    ]
    reasons = codes(study.resource.get("reasonCode"))
    if reasons:  # the page's own spelling: reasonCode=|CODE
        examples.append([who, ("reasonCode", f"|{reasons[0][1]}")])
    _fail_if([await _expect(probe, e, fixture.study) for e in examples])
