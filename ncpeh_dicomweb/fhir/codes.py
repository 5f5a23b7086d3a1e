"""DICOM values as FHIR datatypes, for the DICOM → FHIR mapping (:mod:`.mapping`).

Codes: DICOM code sequence items (PS3.3 8.8, Code Sequence Macro) become FHIR ``Coding``s
through the table of coding scheme designators :data:`CODING_SCHEMES` (PS3.16 Table 8-1, FHIR
R4 "Terminologies: Systems"); modalities (PS3.16 CID 33 / CID 29), laterality (CID 244) and
sex are tables too. Values: DA / TM / offset as FHIR ``date`` / ``dateTime`` (FHIR R4
datatypes), PN as ``HumanName``, IS / US as ``unsignedInt``. A blank DICOM value reads as
absent everywhere (FHIR forbids empty strings).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import date, datetime, timedelta, tzinfo
from types import MappingProxyType
from typing import Any

from ..backends.base import DicomJson
from ..dicomweb.dicomjson import first_value
from ..dicomweb.uids import is_valid_uid

__all__ = [
    "CODE_MEANING",
    "CODING_SCHEMES",
    "DATA_ABSENT_REASON",
    "DCM",
    "ENDPOINT_CONNECTION_TYPE",
    "GENDER",
    "LATERALITY_SNOMED",
    "MODALITIES",
    "SCT",
    "URI_SYSTEM",
    "V2_0203",
    "Coding",
    "Json",
    "code_item_coding",
    "code_system",
    "codings",
    "display_name",
    "fhir_date",
    "fhir_datetime",
    "human_name",
    "modality_coding",
    "person_names",
    "string",
    "text",
    "unsigned",
    "values",
]

Json = dict[str, Any]
Coding = dict[str, str]

DCM = "http://dicom.nema.org/resources/ontology/DCM"
SCT = "http://snomed.info/sct"
URI_SYSTEM = "urn:ietf:rfc:3986"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
ENDPOINT_CONNECTION_TYPE = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"
DATA_ABSENT_REASON = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"

# Code Sequence Macro attributes (PS3.3 Table 8.8-1).
CODE_VALUE = "00080100"
CODING_SCHEME_DESIGNATOR = "00080102"
CODING_SCHEME_VERSION = "00080103"
CODE_MEANING = "00080104"
LONG_CODE_VALUE = "00080119"
URN_CODE_VALUE = "00080120"

CODING_SCHEMES: Mapping[str, str] = MappingProxyType(
    {
        # Coding Scheme Designator (0008,0102) → FHIR Coding.system. URIs where FHIR names one
        # (R4 terminologies-systems), else the HL7 OID of PS3.16 Table 8-1 as urn:oid:.
        "DCM": DCM,
        "SCT": SCT,
        # SNOMED-RT style legacy ids ("T-D4000"): not SNOMED CT concept ids, so not sct.
        "SRT": "http://snomed.info/srt",
        "LN": "http://loinc.org",
        "UCUM": "http://unitsofmeasure.org",
        "RADLEX": "http://www.radlex.org",
        "I9C": "http://hl7.org/fhir/sid/icd-9-cm",
        "I10": "http://hl7.org/fhir/sid/icd-10",
        "C4": "http://www.ama-assn.org/go/cpt",
        "MDC": "urn:iso:std:iso:11073:10101",
        "NCIt": "urn:oid:2.16.840.1.113883.3.26.1.1",
        "UMLS": "urn:oid:2.16.840.1.113883.6.86",
        "ACR": "urn:oid:2.16.840.1.113883.6.76",
    }
)

MODALITIES: Mapping[str, tuple[str, bool]] = MappingProxyType(
    {
        # Modality code (DCM) → (Code Meaning, acquisition modality?). The codes of PS3.16
        # CID 33 "Modality"; True for those also in CID 29 "Acquisition Modality", the only ones
        # FHIR R4 ImagingStudy.modality lists. Checked against pydicom's tables by a unit test.
        "AR": ("Autorefraction", True),
        "ASMT": ("Content Assessment Result", False),
        "AU": ("Basic Voice Audio", False),
        "BDUS": ("Ultrasound Bone Densitometry", True),
        "BI": ("Biomagnetic Imaging", True),
        "BMD": ("Bone Mineral Densitometry", True),
        "CFM": ("Confocal Microscopy", True),
        "CR": ("Computed Radiography", True),
        "CT": ("Computed Tomography", True),
        "CTPROTOCOL": ("CT Protocol", False),
        "DG": ("Diaphanography", True),
        "DMS": ("Dermoscopy", True),
        "DOC": ("Document", False),
        "DX": ("Digital Radiography", True),
        "ECG": ("Electrocardiography", True),
        "EEG": ("Electroencephalography", True),
        "EMG": ("Electromyography", True),
        "EOG": ("Electrooculography", True),
        "EPS": ("Cardiac Electrophysiology", True),
        "ES": ("Endoscopy", True),
        "FID": ("Spatial Fiducials", False),
        "GM": ("General Microscopy", True),
        "HC": ("Hard Copy", False),
        "HD": ("Hemodynamic Waveform", True),
        "IO": ("Intra-oral Radiography", True),
        "IOL": ("Intraocular Lens Calculation", False),
        "IVOCT": ("Intravascular Optical Coherence Tomography", True),
        "IVUS": ("Intravascular Ultrasound", True),
        "KER": ("Keratometry", True),
        "KO": ("Key Object Selection", False),
        "LEN": ("Lensometry", True),
        "LS": ("Laser Scan", True),
        "M3D": ("Model for 3D Manufacturing", False),
        "MG": ("Mammography", True),
        "MR": ("Magnetic Resonance", True),
        "NM": ("Nuclear Medicine", True),
        "OAM": ("Ophthalmic Axial Measurements", True),
        "OCT": ("Optical Coherence Tomography", True),
        "OP": ("Ophthalmic Photography", True),
        "OPM": ("Ophthalmic Mapping", True),
        "OPT": ("Ophthalmic Tomography", True),
        "OPTBSV": ("Ophthalmic Tomography B-scan Volume Analysis", True),
        "OPTENF": ("Ophthalmic Tomography En Face", True),
        "OPV": ("Ophthalmic Visual Field", True),
        "OSS": ("Optical Surface Scanner", True),
        "OT": ("Other", False),
        "PA": ("Photoacoustic", True),
        "PLAN": ("Plan", False),
        "POS": ("Position Sensor", True),
        "PR": ("Presentation State", False),
        "PT": ("Positron emission tomography", True),
        "PX": ("Panoramic X-Ray", True),
        "REG": ("Registration", False),
        "RESP": ("Respiratory Waveform", True),
        "RF": ("Radiofluoroscopy", True),
        "RG": ("Radiographic imaging", True),
        "RTDOSE": ("RT Dose", False),
        "RTIMAGE": ("RT Image", True),
        "RTPLAN": ("RT Plan", False),
        "RTRECORD": ("RT Treatment Record", False),
        "RTSTRUCT": ("RT Structure Set", False),
        "RWV": ("Real World Value Map", False),
        "SEG": ("Segmentation", False),
        "SM": ("Slide Microscopy", True),
        "SMR": ("Stereometric Relationship", False),
        "SR": ("Structured Report Document", False),
        "SRF": ("Subjective Refraction", True),
        "STAIN": ("Automated Slide Stainer", False),
        "TEXTUREMAP": ("Texture Map", False),
        "TG": ("Thermography", True),
        "US": ("Ultrasound", True),
        "VA": ("Visual Acuity", True),
        "XA": ("X-Ray Angiography", True),
        "XC": ("External-camera Photography", True),
    }
)

LATERALITY_SNOMED: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        # Laterality (0020,0060) → SNOMED CT, PS3.16 CID 244 "Laterality" (the binding of FHIR
        # R5 ImagingStudy.series.laterality). "B" only occurs in Image Laterality (0020,0062),
        # kept for PACSs that put it in the series attribute.
        "L": ("7771000", "Left"),
        "R": ("24028007", "Right"),
        "B": ("51440002", "Right and left"),
    }
)

GENDER: Mapping[str, str] = MappingProxyType(
    # Patient's Sex (0010,0040) → Patient.gender (FHIR administrative-gender).
    {"M": "male", "F": "female", "O": "other"}
)


def text(value: Any) -> str | None:
    """A DICOM string value stripped of padding, or None if absent or blank (FHIR forbids "")."""
    if not isinstance(value, str):
        return None
    stripped = value.strip()
    return stripped or None


def code_system(designator: str) -> str | None:
    """The FHIR ``Coding.system`` of a Coding Scheme Designator (0008,0102).

    Known designators through :data:`CODING_SCHEMES`; a designator that is itself an OID gives
    ``urn:oid:<OID>`` and one that is already a URI (``urn:``, ``http``) is kept. Anything else
    (private ``99...`` schemes, unknown designators) has no FHIR system: ``None``, and the
    Coding is emitted without ``system`` rather than with a made-up one.
    """
    known = CODING_SCHEMES.get(designator)
    if known is not None:
        return known
    if "." in designator and is_valid_uid(designator):
        return f"urn:oid:{designator}"
    if designator.startswith(("urn:", "http://", "https://")):
        return designator
    return None


def code_item_coding(item: Any) -> Coding | None:
    """A FHIR ``Coding`` from one Code Sequence Macro item (PS3.3 Table 8.8-1), or None.

    code = Code Value, else Long Code Value, else URN Code Value; system from the Coding Scheme
    Designator (:func:`code_system`); version = Coding Scheme Version; display = Code Meaning.
    An item without any code value is no code and gives None.
    """
    if not isinstance(item, dict):
        return None
    code = (
        text(first_value(item, CODE_VALUE))
        or text(first_value(item, LONG_CODE_VALUE))
        or text(first_value(item, URN_CODE_VALUE))
    )
    if code is None:
        return None
    coding: Coding = {}
    designator = text(first_value(item, CODING_SCHEME_DESIGNATOR))
    system = None if designator is None else code_system(designator)
    if system is not None:
        coding["system"] = system
    version = text(first_value(item, CODING_SCHEME_VERSION))
    if version is not None:
        coding["version"] = version
    coding["code"] = code
    display = text(first_value(item, CODE_MEANING))
    if display is not None:
        coding["display"] = display
    return coding


def modality_coding(code: str) -> Coding:
    """A DCM ``Coding`` of a modality (PS3.16 CID 33), with its Code Meaning when known."""
    coding = {"system": DCM, "code": code}
    row = MODALITIES.get(code)
    if row is not None:
        coding["display"] = row[0]
    return coding


# ---------------------------------------------------------------------------------------------
# DICOM values as FHIR datatypes


def values(dataset: DicomJson, tag: str) -> list[Any]:
    """All values of ``tag`` in a DICOM JSON dataset (PS3.18 F.2.4), ``[]`` if none."""
    element = dataset.get(tag)
    if isinstance(element, dict):
        found = element.get("Value")
        if isinstance(found, list):
            return found
    return []


def string(dataset: DicomJson, tag: str) -> str | None:
    """The first value of a string ``tag``, stripped; None if absent or blank."""
    return text(first_value(dataset, tag))


def unsigned(dataset: DicomJson, tag: str) -> int | None:
    """An IS/US value as a FHIR unsignedInt; PS3.18 F.2.3 says a JSON number, some PACSs send a
    string. Negative (legal in IS) or non-integral values are not unsignedInt: None."""
    value = first_value(dataset, tag)
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and 0 <= value <= 2**31 - 1:
        return value
    return None


_DA = re.compile(r"([0-9]{4})\.?([0-9]{2})\.?([0-9]{2})")  # dots: ACR-NEMA legacy (PS3.5 6.2)
_TM = re.compile(r"([0-9]{2})(?::?([0-9]{2})(?::?([0-9]{2})(\.[0-9]{1,6})?)?)?")
_OFFSET = re.compile(r"([+-])([0-9]{2})([0-9]{2})")


def fhir_date(da: str | None) -> str | None:
    """A DICOM DA (YYYYMMDD) as a FHIR date (YYYY-MM-DD), or None if absent or no real date."""
    if da is None:
        return None
    m = _DA.fullmatch(da.strip())
    if m is None:
        return None
    try:
        return date(int(m[1]), int(m[2]), int(m[3])).isoformat()
    except ValueError:
        return None


def _offset_text(offset: str | None) -> str | None:
    """Timezone Offset From UTC (&ZZXX, PS3.3 C.12.1.1.8) as FHIR's ±hh:mm, if FHIR allows it."""
    if offset is None:
        return None
    m = _OFFSET.fullmatch(offset.strip())
    if m is None:
        return None
    hours, minutes = int(m[2]), int(m[3])
    if minutes > 59 or hours > 14 or (hours == 14 and minutes):
        return None
    return f"{m[1]}{m[2]}:{m[3]}"


def _zone_offset(zone: tzinfo, moment: datetime) -> str | None:
    delta = zone.utcoffset(moment.replace(tzinfo=zone))
    if delta is None:
        return None
    total = int(delta // timedelta(minutes=1))
    sign = "-" if total < 0 else "+"
    hours, minutes = divmod(abs(total), 60)
    return _offset_text(f"{sign}{hours:02d}{minutes:02d}")


def fhir_datetime(
    da: str | None, tm: str | None, offset: str | None, local_zone: tzinfo | None = None
) -> str | None:
    """DICOM DA + TM (+ &ZZXX offset) as a FHIR dateTime (R4/R5 datatypes dateTime).

    FHIR: "If hours and minutes are specified, a time zone SHALL be populated", seconds are
    required (zero-filled here) and fractions are kept. The zone is ``offset``, else
    ``local_zone`` at that local date and time; without either, or with a time that does not
    parse (TM is HH[MM[SS[.F{1,6}]]], colons of ACR-NEMA accepted), the date alone.
    """
    day = fhir_date(da)
    if day is None:
        return None
    m = None if tm is None else _TM.fullmatch(tm.strip())
    if m is None:
        return day
    hour, minute, second = int(m[1]), int(m[2] or 0), int(m[3] or 0)
    if hour > 23 or minute > 59 or second > 60:  # 60: a leap second
        return day
    zone = _offset_text(offset)
    if zone is None and local_zone is not None:
        moment = datetime.fromisoformat(day).replace(
            hour=hour, minute=minute, second=min(second, 59)
        )
        zone = _zone_offset(local_zone, moment)
    if zone is None:
        return day
    return f"{day}T{hour:02d}:{minute:02d}:{second:02d}{m[4] or ''}{zone}"


def person_names(value: Any) -> list[tuple[str, ...]]:
    """The component groups of a PN value (PS3.18 F.2.2): Alphabetic, then Ideographic; each
    as (family, given, middle, prefix, suffix) (PS3.5 6.2.1). Phonetic is not a name to show."""
    if isinstance(value, str):  # a PACS that flattened PN to a string
        value = {"Alphabetic": value}
    if not isinstance(value, dict):
        return []
    groups = []
    for key in ("Alphabetic", "Ideographic"):
        group = value.get(key)
        if isinstance(group, str):
            parts = tuple(p.strip() for p in (group.split("^") + [""] * 5)[:5])
            if any(parts):
                groups.append(parts)
    return groups


def display_name(parts: tuple[str, ...]) -> str:
    family, given, middle, prefix, suffix = parts
    return " ".join(p for p in (prefix, given, middle, family, suffix) if p)


def human_name(parts: tuple[str, ...]) -> Json:
    """FHIR HumanName from PN components (family, given + middle, prefix, suffix, text)."""
    family, given, middle, prefix, suffix = parts
    name: Json = {"text": display_name(parts)}
    if family:
        name["family"] = family
    givens = [p for p in (given, middle) if p]
    if givens:
        name["given"] = givens
    if prefix:
        name["prefix"] = [prefix]
    if suffix:
        name["suffix"] = [suffix]
    return name


def codings(items: Iterable[Any]) -> list[Coding]:
    """Codings of Code Sequence items, without repeats of one (system, code)."""
    seen: set[tuple[str | None, str]] = set()
    out = []
    for item in items:
        coding = code_item_coding(item)
        if coding is None:
            continue
        key = (coding.get("system"), coding["code"])
        if key not in seen:
            seen.add(key)
            out.append(coding)
    return out
