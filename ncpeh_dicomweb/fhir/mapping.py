"""DICOM JSON (PS3.18 F.2) → FHIR ImagingStudy, Patient and Endpoint, in R4 (4.0.1) and R5.

Built live from QIDO-RS answers at study, series and instance level (the tags each needs are
:data:`STUDY_INCLUDEFIELDS`, :data:`SERIES_INCLUDEFIELDS`, :data:`INSTANCE_INCLUDEFIELDS`).
Follows the DICOM mappings of FHIR R4 and R5 ImagingStudy (imagingstudy-mappings.html) and IHE
RAD MADO (identifiers, Endpoint). Each resource is one ordered table of FHIR element → the
function that reads it from DICOM; R4 and R5 differ only through :class:`_Shape`.

Rules kept everywhere: an element whose DICOM source is absent or blank is left out, and no
empty string, list or object is ever emitted (FHIR ele-1). Two elements FHIR requires
(``series.modality``, ``series.instance.sopClass``) carry a data-absent-reason extension when
the PACS did not give them, instead of an invented value.

Decisions (beyond the standards):

* ``started`` (FHIR dateTime: a time needs seconds and a time zone): date + time + offset when
  Timezone Offset From UTC (0008,0201) is known (series: its own, else the study's), else the
  offset of ``local_zone`` at that date and time (DST-aware) if the deployment configured one,
  else the date alone. A time of day is never sent without its zone; an unparseable time gives
  the date alone, an unparseable date nothing.
* R4 ``modality`` lists only acquisition modalities (CID 29), as R4 defines the element; R5
  lists every modality in the study (R5: "all of the distinct values for series' modalities").
  Source: Modalities in Study (0008,0061), else the series' Modality.
* ``reason``: the union, without duplicates, of Reason for Performed Procedure Code Sequence
  (0040,1012) and Reason for Requested Procedure Code Sequence (0040,100A) at study level and in
  Request Attributes Sequence (0040,0275) items of the study and of every series.
* ``series.instance.title``: Content Label, else Concept Name Code Sequence > Code Meaning,
  else Document Title (R4 mapping); Image Type (0008,0008), last in R4's list, is left out: it
  classifies an image, it does not title it.
* ``series.started``: Series Date + Time, else Performed Procedure Step Start Date + Time.
* Counts are the PACS's (Number of Study/Series Related ...), never counted from the lists
  given, which a search may have trimmed.
* Series and instances are ordered by number, then UID (the PACS's order varies); an instance
  whose series is not among the series answers brings that series, read from its own
  series-level attributes.
* ``bodySite``: Body Part Examined, upper-cased and without spaces ("WHOLE BODY" is the Defined
  Term WHOLEBODY), through ``bodysite.BODY_PART_SNOMED``; a term not in the table gives none.
* Codes of a scheme with no FHIR system (private ``99...`` designators) keep code and display
  but no ``system`` (see :func:`.codes.code_system`); ids: :func:`study_id`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import tzinfo
from types import MappingProxyType
from typing import Any, Final, Literal

from ..backends.base import DicomJson
from ..dicomweb.dicomjson import first_value
from ..dicomweb.uids import is_valid_uid
from .bodysite import BODY_PART_SNOMED
from .codes import (
    CODE_MEANING,
    DATA_ABSENT_REASON,
    ENDPOINT_CONNECTION_TYPE,
    GENDER,
    LATERALITY_SNOMED,
    MODALITIES,
    SCT,
    URI_SYSTEM,
    V2_0203,
    Coding,
    Json,
    codings,
    display_name,
    fhir_date,
    fhir_datetime,
    human_name,
    modality_coding,
    person_names,
    string,
    text,
    unsigned,
    values,
)

__all__ = [
    "INSTANCE_INCLUDEFIELDS",
    "SERIES_INCLUDEFIELDS",
    "STUDY_INCLUDEFIELDS",
    "FhirVersion",
    "endpoint",
    "imaging_study",
    "patient",
    "study_id",
]

FhirVersion = Literal["R4", "R5"]

# Study level (PS3.3 C.7.1.1 Patient, C.7.2.1 General Study, C.12.1 SOP Common).
STUDY_INSTANCE_UID = "0020000D"
STUDY_DATE = "00080020"
STUDY_TIME = "00080030"
TIMEZONE_OFFSET_FROM_UTC = "00080201"
ACCESSION_NUMBER = "00080050"
ISSUER_OF_ACCESSION_NUMBER_SEQUENCE = "00080051"
MODALITIES_IN_STUDY = "00080061"
REFERRING_PHYSICIAN_NAME = "00080090"
STUDY_DESCRIPTION = "00081030"
PROCEDURE_CODE_SEQUENCE = "00081032"
NUMBER_OF_STUDY_RELATED_SERIES = "00201206"
NUMBER_OF_STUDY_RELATED_INSTANCES = "00201208"
REASON_FOR_PERFORMED_PROCEDURE_CODE_SEQUENCE = "00401012"
REASON_FOR_REQUESTED_PROCEDURE_CODE_SEQUENCE = "0040100A"
REQUEST_ATTRIBUTES_SEQUENCE = "00400275"
PATIENT_NAME = "00100010"
PATIENT_ID = "00100020"
PATIENT_BIRTH_DATE = "00100030"
PATIENT_SEX = "00100040"
# HL7 v2 Universal ID of an issuer (PS3.3 10.14 HL7v2 Hierarchic Designator Macro).
LOCAL_NAMESPACE_ENTITY_ID = "00400031"
UNIVERSAL_ENTITY_ID = "00400032"
UNIVERSAL_ENTITY_ID_TYPE = "00400033"
# Series level (PS3.3 C.7.3.1 General Series).
SERIES_INSTANCE_UID = "0020000E"
SERIES_NUMBER = "00200011"
MODALITY = "00080060"
SERIES_DESCRIPTION = "0008103E"
NUMBER_OF_SERIES_RELATED_INSTANCES = "00201209"
BODY_PART_EXAMINED = "00180015"
LATERALITY = "00200060"
SERIES_DATE = "00080021"
SERIES_TIME = "00080031"
PERFORMED_PROCEDURE_STEP_START_DATE = "00400244"  # PS3.3 C.4.14 Performed Procedure Step
PERFORMED_PROCEDURE_STEP_START_TIME = "00400245"
# Instance level (PS3.3 C.12.1 SOP Common, C.7.6.1 General Image, C.10.9, C.17.2, C.24.2).
SOP_INSTANCE_UID = "00080018"
SOP_CLASS_UID = "00080016"
INSTANCE_NUMBER = "00200013"
CONTENT_LABEL = "00700080"
CONCEPT_NAME_CODE_SEQUENCE = "0040A043"
DOCUMENT_TITLE = "00420010"

STUDY_INCLUDEFIELDS: Final = (
    STUDY_INSTANCE_UID,
    STUDY_DATE,
    STUDY_TIME,
    TIMEZONE_OFFSET_FROM_UTC,
    ACCESSION_NUMBER,
    ISSUER_OF_ACCESSION_NUMBER_SEQUENCE,
    MODALITIES_IN_STUDY,
    REFERRING_PHYSICIAN_NAME,
    STUDY_DESCRIPTION,
    PROCEDURE_CODE_SEQUENCE,
    NUMBER_OF_STUDY_RELATED_SERIES,
    NUMBER_OF_STUDY_RELATED_INSTANCES,
    REASON_FOR_PERFORMED_PROCEDURE_CODE_SEQUENCE,
    REASON_FOR_REQUESTED_PROCEDURE_CODE_SEQUENCE,
    REQUEST_ATTRIBUTES_SEQUENCE,
    PATIENT_NAME,
    PATIENT_ID,
    "00100021",  # Issuer of Patient ID: not read here, the caller maps it to the FHIR system
    PATIENT_BIRTH_DATE,
    PATIENT_SEX,
)
"""Study-level attributes the mapping reads (QIDO ``includefield`` of a study search)."""

SERIES_INCLUDEFIELDS: Final = (
    SERIES_INSTANCE_UID,
    SERIES_NUMBER,
    MODALITY,
    SERIES_DESCRIPTION,
    NUMBER_OF_SERIES_RELATED_INSTANCES,
    BODY_PART_EXAMINED,
    LATERALITY,
    SERIES_DATE,
    SERIES_TIME,
    PERFORMED_PROCEDURE_STEP_START_DATE,
    PERFORMED_PROCEDURE_STEP_START_TIME,
    TIMEZONE_OFFSET_FROM_UTC,
    REQUEST_ATTRIBUTES_SEQUENCE,
)
"""Series-level attributes the mapping reads."""

INSTANCE_INCLUDEFIELDS: Final = (
    SERIES_INSTANCE_UID,
    SOP_INSTANCE_UID,
    SOP_CLASS_UID,
    INSTANCE_NUMBER,
    CONTENT_LABEL,
    CONCEPT_NAME_CODE_SEQUENCE,
    DOCUMENT_TITLE,
)
"""Instance-level attributes the mapping reads (Series Instance UID groups them by series)."""

DICOM_UID_SYSTEM = "urn:dicom:uid"
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_ID_NAMESPACE = b"ncpeh-dicomweb/ImagingStudy"


def _acsn() -> Json:
    """Identifier.type of an Accession Number (HL7 v2 table 0203)."""
    return {"coding": [{"system": V2_0203, "code": "ACSN", "display": "Accession ID"}]}


def _unknown() -> Json:
    """A required element the PACS did not give (FHIR data-absent-reason extension)."""
    return {"extension": [{"url": DATA_ABSENT_REASON, "valueCode": "unknown"}]}


# ---------------------------------------------------------------------------------------------
# Ids


def study_id(study_uid: str, site_id: str | None) -> str:
    """The FHIR id of the ImagingStudy of ``study_uid`` on ``site_id`` (FHIR R4 datatypes id).

    A FHIR id is ``[A-Za-z0-9\\-.]{1,64}``. On the default site (``site_id`` None) the Study
    Instance UID is the id: digits and dots, at most 64 characters. On any other site, and for
    a UID that is no valid id, the id is ``"h"`` + the first 48 hex digits of SHA-256 of
    ``b"ncpeh-dicomweb/ImagingStudy\\0" + site + b"\\0" + uid`` (site empty when None): 49
    characters, stable across restarts and replicas, lower case (FHIR ids are compared
    case-insensitively by some servers), and never equal to a UID id since it starts with a
    letter. It cannot be inverted: reading such an id needs the record of ids served.
    """
    if site_id is None and _FHIR_ID.fullmatch(study_uid):
        return study_uid
    digest = hashlib.sha256(
        b"\0".join((_ID_NAMESPACE, (site_id or "").encode(), study_uid.encode()))
    ).hexdigest()
    return "h" + digest[:48]


def _fhir_id(value: str | None) -> str | None:
    return value if value is not None and _FHIR_ID.fullmatch(value) else None


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str | list | dict) and not value)


# ---------------------------------------------------------------------------------------------
# R4 / R5


def _identity(value: Json) -> Json:
    return value


def _codeable_concept(coding: Coding) -> Json:
    return {"coding": [coding]}


def _codeable_reference(coding: Coding) -> Json:
    return {"concept": {"coding": [coding]}}


@dataclass(frozen=True, slots=True)
class _Shape:
    """Where R4 and R5 ImagingStudy differ (R5 imagingstudy.html "Changes from R4")."""

    names: Mapping[str, str]  # our element name → this version's
    acquisition_only: bool  # study modality: R4 lists acquisition modalities (CID 29) only
    modality: Callable[[Coding], Json]  # study and series modality, series laterality
    concept: Callable[[Coding], Json]  # procedure, reason
    body_site: Callable[[Coding], Json]  # series.bodySite


_SHAPES: Final[Mapping[FhirVersion, _Shape]] = MappingProxyType(
    {
        # R4: modality Coding, procedureCode / reasonCode CodeableConcept, bodySite Coding.
        "R4": _Shape(
            names=MappingProxyType({"procedure": "procedureCode", "reason": "reasonCode"}),
            acquisition_only=True,
            modality=_identity,
            concept=_codeable_concept,
            body_site=_identity,
        ),
        # R5: modality CodeableConcept, procedure / reason / bodySite CodeableReference.
        "R5": _Shape(
            names=MappingProxyType({}),
            acquisition_only=False,
            modality=_codeable_concept,
            concept=_codeable_reference,
            body_site=_codeable_reference,
        ),
    }
)


# ---------------------------------------------------------------------------------------------
# ImagingStudy


@dataclass(frozen=True, slots=True)
class _Study:
    ds: DicomJson
    series: Sequence[DicomJson]
    instances: Sequence[DicomJson]
    shape: _Shape
    patient_id: str
    endpoint_id: str
    zone: tzinfo | None


@dataclass(frozen=True, slots=True)
class _Series:
    ds: DicomJson
    instances: Sequence[DicomJson]
    shape: _Shape
    study_offset: str | None
    zone: tzinfo | None


def _build(
    table: Iterable[tuple[str, Callable[[Any], Any]]], ctx: Any, names: Mapping[str, str]
) -> Json:
    """Run an element table; absent and empty values are left out."""
    out: Json = {}
    for name, read in table:
        value = read(ctx)
        if not _empty(value):
            out[names.get(name, name)] = value
    return out


def _study_identifiers(s: _Study) -> list[Json]:
    """Study Instance UID as urn:dicom:uid (R4 ImagingStudy.identifier notes, IHE MADO) and the
    Accession Number as type ACSN, its system/assigner from Issuer of Accession Number Sequence
    (MADO AccessionNumberIdentifier)."""
    uid = string(s.ds, STUDY_INSTANCE_UID)
    out: list[Json] = [{"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{uid}"}]
    accession = string(s.ds, ACCESSION_NUMBER)
    if accession is not None:
        identifier: Json = {"type": _acsn()}
        issuer = first_value(s.ds, ISSUER_OF_ACCESSION_NUMBER_SEQUENCE)
        system, assigner = _issuer(issuer if isinstance(issuer, dict) else {})
        if system is not None:
            identifier["system"] = system
        identifier["value"] = accession
        if assigner is not None:
            identifier["assigner"] = {"display": assigner}
        out.append(identifier)
    return out


_UNIVERSAL_ID_SYSTEMS: Final[Mapping[str, Callable[[str], str | None]]] = MappingProxyType(
    {
        # Universal Entity ID Type (0040,0033) → Identifier.system (HL7 v2 HD, PS3.3 10.14).
        "ISO": lambda v: f"urn:oid:{v}" if is_valid_uid(v) else None,
        "UUID": lambda v: f"urn:uuid:{v.lower()}",
        "URI": lambda v: v,
    }
)


def _issuer(item: DicomJson) -> tuple[str | None, str | None]:
    """(system, assigner display) of an HL7v2 Hierarchic Designator item (PS3.3 10.14)."""
    local = string(item, LOCAL_NAMESPACE_ENTITY_ID)
    universal = string(item, UNIVERSAL_ENTITY_ID)
    kind = string(item, UNIVERSAL_ENTITY_ID_TYPE)
    to_system = None if kind is None else _UNIVERSAL_ID_SYSTEMS.get(kind)
    system = None if universal is None or to_system is None else to_system(universal)
    return system, local or (universal if system is None else None)


def _study_modalities(s: _Study) -> list[Json]:
    codes = [text(v) for v in values(s.ds, MODALITIES_IN_STUDY)]
    if not any(codes):
        codes = [string(ds, MODALITY) for ds in s.series]
    out: list[Json] = []
    for code in dict.fromkeys(c for c in codes if c is not None):
        row = MODALITIES.get(code)
        if s.shape.acquisition_only and row is not None and not row[1]:
            continue  # R4: "actual acquisition modalities, i.e. those in CID 29"
        out.append(s.shape.modality(modality_coding(code)))
    return out


def _reasons(s: _Study) -> list[Json]:
    items = [
        *values(s.ds, REASON_FOR_PERFORMED_PROCEDURE_CODE_SEQUENCE),
        *values(s.ds, REASON_FOR_REQUESTED_PROCEDURE_CODE_SEQUENCE),
    ]
    for ds in (s.ds, *s.series):
        for request in values(ds, REQUEST_ATTRIBUTES_SEQUENCE):
            if isinstance(request, dict):
                items.extend(values(request, REASON_FOR_REQUESTED_PROCEDURE_CODE_SEQUENCE))
    return [s.shape.concept(c) for c in codings(items)]


def _referrer(s: _Study) -> Json | None:
    names = person_names(first_value(s.ds, REFERRING_PHYSICIAN_NAME))
    return {"display": display_name(names[0])} if names else None


_STUDY_ELEMENTS: Final[tuple[tuple[str, Callable[[_Study], Any]], ...]] = (
    # FHIR element (R5 name, renamed for R4 by _Shape.names) → DICOM source, in FHIR order.
    ("identifier", _study_identifiers),  # (0020,000D), (0008,0050) + (0008,0051)
    ("status", lambda s: "available"),
    ("modality", _study_modalities),  # (0008,0061)
    ("subject", lambda s: {"reference": f"Patient/{s.patient_id}"}),  # (0010,*)
    (
        "started",  # (0008,0020) + (0008,0030) + (0008,0201)
        lambda s: fhir_datetime(
            string(s.ds, STUDY_DATE),
            string(s.ds, STUDY_TIME),
            string(s.ds, TIMEZONE_OFFSET_FROM_UTC),
            s.zone,
        ),
    ),
    ("referrer", _referrer),  # (0008,0090)
    ("endpoint", lambda s: [{"reference": f"Endpoint/{s.endpoint_id}"}]),
    ("numberOfSeries", lambda s: unsigned(s.ds, NUMBER_OF_STUDY_RELATED_SERIES)),  # (0020,1206)
    ("numberOfInstances", lambda s: unsigned(s.ds, NUMBER_OF_STUDY_RELATED_INSTANCES)),
    (
        "procedure",  # (0008,1032)
        lambda s: [s.shape.concept(c) for c in codings(values(s.ds, PROCEDURE_CODE_SEQUENCE))],
    ),
    ("reason", _reasons),  # (0040,1012), (0040,100A), (0040,0275) > (0040,100A)
    ("description", lambda s: string(s.ds, STUDY_DESCRIPTION)),  # (0008,1030)
    ("series", lambda s: _all_series(s)),
)


def _series_modality(c: _Series) -> Json:
    code = string(c.ds, MODALITY)
    if code is None:  # series.modality is 1..1 in R4 and R5
        return _unknown()
    return c.shape.modality(modality_coding(code))


def _series_body_site(c: _Series) -> Json | None:
    part = string(c.ds, BODY_PART_EXAMINED)
    # Defined Terms are written without spaces ("WHOLEBODY"); some modalities add them.
    row = None if part is None else BODY_PART_SNOMED.get(part.upper().replace(" ", ""))
    if row is None:
        return None
    return c.shape.body_site({"system": SCT, "code": row[0], "display": row[1]})


def _series_laterality(c: _Series) -> Json | None:
    value = string(c.ds, LATERALITY)
    row = None if value is None else LATERALITY_SNOMED.get(value.upper())
    if row is None:
        return None
    return c.shape.modality({"system": SCT, "code": row[0], "display": row[1]})


_SERIES_START: Final = (
    # (date, time) sources of series.started, first one with a date wins: Series Date/Time
    # (R4 mapping), else Performed Procedure Step Start Date/Time, which QIDO returns by default
    # at series level (PS3.18 Table 10.6.3-4) while Series Date/Time needs an includefield.
    (SERIES_DATE, SERIES_TIME),
    (PERFORMED_PROCEDURE_STEP_START_DATE, PERFORMED_PROCEDURE_STEP_START_TIME),
)


def _series_started(c: _Series) -> str | None:
    offset = string(c.ds, TIMEZONE_OFFSET_FROM_UTC) or c.study_offset
    for date_tag, time_tag in _SERIES_START:
        started = fhir_datetime(string(c.ds, date_tag), string(c.ds, time_tag), offset, c.zone)
        if started is not None:
            return started
    return None


_SERIES_ELEMENTS: Final[tuple[tuple[str, Callable[[_Series], Any]], ...]] = (
    ("uid", lambda c: _fhir_id(string(c.ds, SERIES_INSTANCE_UID))),  # (0020,000E)
    ("number", lambda c: unsigned(c.ds, SERIES_NUMBER)),  # (0020,0011)
    ("modality", _series_modality),  # (0008,0060)
    ("description", lambda c: string(c.ds, SERIES_DESCRIPTION)),  # (0008,103E)
    ("numberOfInstances", lambda c: unsigned(c.ds, NUMBER_OF_SERIES_RELATED_INSTANCES)),
    ("bodySite", _series_body_site),  # (0018,0015) → SNOMED CT (PS3.16 Annex L)
    ("laterality", _series_laterality),  # (0020,0060) → SNOMED CT (CID 244)
    ("started", _series_started),  # (0008,0021) + (0008,0031), else (0040,0244) + (0040,0245)
    ("instance", lambda c: _instances(c.instances)),
)


def _title(ds: DicomJson) -> str | None:
    concept = first_value(ds, CONCEPT_NAME_CODE_SEQUENCE)
    return (
        string(ds, CONTENT_LABEL)
        or (string(concept, CODE_MEANING) if isinstance(concept, dict) else None)
        or string(ds, DOCUMENT_TITLE)
    )


def _sop_class(ds: DicomJson) -> Json:
    uid = string(ds, SOP_CLASS_UID)
    if uid is None:  # instance.sopClass is 1..1 in R4 and R5
        return _unknown()
    return {"system": URI_SYSTEM, "code": f"urn:oid:{uid}"}


_INSTANCE_ELEMENTS: Final[tuple[tuple[str, Callable[[DicomJson], Any]], ...]] = (
    ("uid", lambda ds: _fhir_id(string(ds, SOP_INSTANCE_UID))),  # (0008,0018)
    ("sopClass", _sop_class),  # (0008,0016) as a URI (urn:ietf:rfc:3986)
    ("number", lambda ds: unsigned(ds, INSTANCE_NUMBER)),  # (0020,0013)
    ("title", _title),  # (0070,0080) | (0040,A043) > (0008,0104) | (0042,0010)
)


def _order(entries: list[Json]) -> list[Json]:
    """By number, then uid: the PACS's order varies, the resource should not."""
    return sorted(entries, key=lambda e: (e.get("number") is None, e.get("number", 0), e["uid"]))


def _instances(datasets: Sequence[DicomJson]) -> list[Json]:
    entries = [_build(_INSTANCE_ELEMENTS, ds, {}) for ds in datasets]
    unique = {e["uid"]: e for e in entries if "uid" in e}  # no uid, no instance (1..1)
    return _order(list(unique.values()))


def _all_series(s: _Study) -> list[Json]:
    """Series from the series answers; instances grouped under theirs by Series Instance UID. An
    instance of a series not in ``series`` brings its series along, read from its own
    series-level attributes (QIDO /studies/{s}/instances returns them, PS3.18 10.6.3.3.3)."""
    by_series: dict[str, list[DicomJson]] = {}
    for ds in s.instances:
        uid = string(ds, SERIES_INSTANCE_UID)
        if uid is not None:
            by_series.setdefault(uid, []).append(ds)
    sources: dict[str, DicomJson] = {}
    for ds in s.series:
        uid = string(ds, SERIES_INSTANCE_UID)
        if uid is not None:
            sources.setdefault(uid, ds)
    for uid, members in by_series.items():
        sources.setdefault(uid, members[0])
    study_offset = string(s.ds, TIMEZONE_OFFSET_FROM_UTC)
    entries = [
        _build(
            _SERIES_ELEMENTS,
            _Series(ds, by_series.get(uid, ()), s.shape, study_offset, s.zone),
            s.shape.names,
        )
        for uid, ds in sources.items()
    ]
    return _order([e for e in entries if "uid" in e])


def imaging_study(
    study: DicomJson,
    series: Sequence[DicomJson],
    instances: Sequence[DicomJson],
    *,
    version: FhirVersion,
    resource_id: str,
    patient_id: str,
    endpoint_id: str,
    local_zone: tzinfo | None = None,
) -> dict[str, Any]:
    """An ImagingStudy (FHIR R4 4.0.1 or R5 imagingstudy.html) from QIDO-RS answers.

    ``study`` is the study-level answer (:data:`STUDY_INCLUDEFIELDS`), ``series`` and
    ``instances`` those of its series and instances (may be empty: no ``series`` element then).
    ``subject`` references ``Patient/{patient_id}``, ``endpoint`` ``Endpoint/{endpoint_id}``.
    ``local_zone`` is the zone of the PACS's clock, used for ``started`` when the DICOM has no
    Timezone Offset From UTC (see the module docstring). Raises ValueError without a Study
    Instance UID.
    """
    if string(study, STUDY_INSTANCE_UID) is None:
        raise ValueError("a study-level answer without Study Instance UID (0020,000D)")
    shape = _SHAPES[version]
    ctx = _Study(study, series, instances, shape, patient_id, endpoint_id, local_zone)
    return {
        "resourceType": "ImagingStudy",
        "id": resource_id,
        **_build(_STUDY_ELEMENTS, ctx, shape.names),
    }


# ---------------------------------------------------------------------------------------------
# Patient and Endpoint


def patient(
    study: DicomJson, *, version: FhirVersion, resource_id: str, identifier_system: str | None
) -> dict[str, Any]:
    """A Patient (FHIR R4/R5 patient.html; same shape in both) from a study-level answer.

    identifier = Patient ID (0010,0020) with ``identifier_system`` (the caller's mapping of
    Issuer of Patient ID (0010,0021); no system when None); name = Patient's Name (0010,0010),
    Alphabetic then Ideographic groups; gender = Patient's Sex (0010,0040) M/F/O, any other
    value "unknown"; birthDate = Patient's Birth Date (0010,0030).
    """
    del version  # the elements used are identical in R4 and R5
    out: Json = {"resourceType": "Patient", "id": resource_id}
    value = string(study, PATIENT_ID)
    if value is not None:
        identifier = {"value": value}
        if identifier_system:
            identifier = {"system": identifier_system, **identifier}
        out["identifier"] = [identifier]
    names = [human_name(p) for p in person_names(first_value(study, PATIENT_NAME))]
    if names:
        out["name"] = names
    sex = string(study, PATIENT_SEX)
    if sex is not None:
        out["gender"] = GENDER.get(sex.upper(), "unknown")
    birth = fhir_date(string(study, PATIENT_BIRTH_DATE))
    if birth is not None:
        out["birthDate"] = birth
    return out


_WADO_RS: Final[Mapping[str, str]] = MappingProxyType(
    {"system": ENDPOINT_CONNECTION_TYPE, "code": "dicom-wado-rs", "display": "DICOM WADO-RS"}
)
_PAYLOAD_TYPE = "DICOM WADO-RS"  # IHE MADO WADO endpoint: payloadType text
_MIME_TYPES = ("application/dicom", "application/dicom+json", "application/octet-stream")

_ENDPOINT_SHAPES: Final[Mapping[FhirVersion, Callable[[], Json]]] = MappingProxyType(
    {
        # R4: connectionType Coding 1..1, payloadType CodeableConcept 1..*, payloadMimeType.
        "R4": lambda: {
            "connectionType": dict(_WADO_RS),
            "payloadType": [{"text": _PAYLOAD_TYPE}],
            "payloadMimeType": list(_MIME_TYPES),
        },
        # R5: connectionType CodeableConcept 1..*, payload.type / payload.mimeType.
        "R5": lambda: {
            "connectionType": [{"coding": [dict(_WADO_RS)]}],
            "payload": [{"type": [{"text": _PAYLOAD_TYPE}], "mimeType": list(_MIME_TYPES)}],
        },
    }
)


def endpoint(*, version: FhirVersion, resource_id: str, address: str) -> dict[str, Any]:
    """The WADO-RS Endpoint (FHIR R4/R5 endpoint.html, IHE MADO WADO endpoint) of a site.

    ``address`` is the gateway's WADO-RS root of the site (``{address}/studies/{uid}`` retrieves
    a study), never the PACS's.
    """
    return {
        "resourceType": "Endpoint",
        "id": resource_id,
        "status": "active",
        **_ENDPOINT_SHAPES[version](),
        "address": address,
    }
