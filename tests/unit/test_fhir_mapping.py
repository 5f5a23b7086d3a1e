"""DICOM JSON → FHIR ImagingStudy / Patient / Endpoint (R4 and R5), validated by fhir.resources.

R4 output is validated with the R4B models (ImagingStudy, Patient and Endpoint are the same in
R4 4.0.1 and R4B 4.3), R5 output with the R5 models.
"""

from __future__ import annotations

import copy
import re
from datetime import timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any, cast
from zoneinfo import ZoneInfo

import pydicom
import pytest
from fhir.resources.endpoint import Endpoint as EndpointR5
from fhir.resources.imagingstudy import ImagingStudy as ImagingStudyR5
from fhir.resources.patient import Patient as PatientR5
from fhir.resources.R4B.endpoint import Endpoint as EndpointR4
from fhir.resources.R4B.imagingstudy import ImagingStudy as ImagingStudyR4
from fhir.resources.R4B.patient import Patient as PatientR4

from ncpeh_dicomweb.fhir import codes
from ncpeh_dicomweb.fhir.codes import fhir_date, fhir_datetime
from ncpeh_dicomweb.fhir.mapping import (
    INSTANCE_INCLUDEFIELDS,
    SERIES_INCLUDEFIELDS,
    STUDY_INCLUDEFIELDS,
    FhirVersion,
    endpoint,
    imaging_study,
    patient,
    study_id,
)

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
VERSIONS: tuple[FhirVersion, ...] = ("R4", "R5")
MODELS: dict[FhirVersion, dict[str, Any]] = {
    "R4": {"ImagingStudy": ImagingStudyR4, "Patient": PatientR4, "Endpoint": EndpointR4},
    "R5": {"ImagingStudy": ImagingStudyR5, "Patient": PatientR5, "Endpoint": EndpointR5},
}
DCM = "http://dicom.nema.org/resources/ontology/DCM"
SCT = "http://snomed.info/sct"
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
STUDY_UID = "1.2.826.0.1.3680043.8.498.10001"
MR_SERIES = "1.2.826.0.1.3680043.8.498.10001.1"
SR_SERIES = "1.2.826.0.1.3680043.8.498.10001.2"
CT_SERIES = "1.2.826.0.1.3680043.8.498.10001.3"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
KOS = "1.2.840.10008.5.1.4.1.1.88.59"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


# --- DICOM JSON builders ---------------------------------------------------------------------


def el(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


def code(value: str, designator: str, meaning: str) -> dict[str, Any]:
    return {
        "00080100": el("SH", value),
        "00080102": el("SH", designator),
        "00080104": el("LO", meaning),
    }


def study_answer() -> dict[str, Any]:
    """A study-level QIDO answer with everything the mapping reads."""
    return {
        "0020000D": el("UI", STUDY_UID),
        "00080020": el("DA", "20240315"),
        "00080030": el("TM", "093015.25"),
        "00080201": el("SH", "+0100"),
        "00080050": el("SH", "ACC-2024-001"),
        "00080051": el(
            "SQ",
            {
                "00400031": el("UT", "FNKV"),
                "00400032": el("UT", "1.2.203.24341.1.7"),
                "00400033": el("CS", "ISO"),
            },
        ),
        "00080061": el("CS", "MR", "SR", "KO"),
        "00080090": el("PN", {"Alphabetic": "Novak^Jan^^MUDr."}),
        "00081030": el("LO", "MR kidneys"),
        "00081032": el("SQ", code("36813-4", "LN", "CT Abdomen and Pelvis")),
        "00201206": el("IS", 2),
        "00201208": el("IS", 3),
        "00401012": el("SQ", code("90708001", "SCT", "Kidney disease")),
        "00400275": el(
            "SQ",
            {
                "0040100A": el(
                    "SQ",
                    code("90708001", "SCT", "Kidney disease"),  # a repeat: emitted once
                    code("R-1", "99CZLOCAL", "Local reason"),
                )
            },
        ),
        "00100010": el("PN", {"Alphabetic": "Dvorak^Petr^Karel^Ing.^Ph.D."}),
        "00100020": el("LO", "456789123"),
        "00100021": el("LO", "CZ-RID"),
        "00100030": el("DA", "19700412"),
        "00100040": el("CS", "M"),
    }


def series_answers() -> list[dict[str, Any]]:
    return [
        {
            "0020000E": el("UI", MR_SERIES),
            "00200011": el("IS", 2),
            "00080060": el("CS", "MR"),
            "0008103E": el("LO", "T2 coronal"),
            "00201209": el("IS", 2),
            "00180015": el("CS", "KIDNEY"),
            "00200060": el("CS", "L"),
            "00080021": el("DA", "20240315"),
            "00080031": el("TM", "0945"),
        },
        {
            "0020000E": el("UI", SR_SERIES),
            "00200011": el("IS", 1),
            "00080060": el("CS", "KO"),
            "00201209": el("IS", 1),
            "00080021": el("DA", "20240316"),
            "00080031": el("TM", "101500"),
            "00080201": el("SH", "+0200"),
        },
    ]


def instance_answers() -> list[dict[str, Any]]:
    return [
        {  # out of order on purpose: the mapping sorts by number
            "0020000E": el("UI", MR_SERIES),
            "00080018": el("UI", f"{MR_SERIES}.2"),
            "00080016": el("UI", MR_IMAGE),
            "00200013": el("IS", 2),
        },
        {
            "0020000E": el("UI", MR_SERIES),
            "00080018": el("UI", f"{MR_SERIES}.1"),
            "00080016": el("UI", MR_IMAGE),
            "00200013": el("IS", 1),
        },
        {
            "0020000E": el("UI", SR_SERIES),
            "00080018": el("UI", f"{SR_SERIES}.1"),
            "00080016": el("UI", KOS),
            "00200013": el("IS", 1),
            "0040A043": el("SQ", code("113000", "DCM", "Of Interest")),
        },
    ]


def from_file(name: str) -> dict[str, Any]:
    dataset = pydicom.dcmread(TEST_FILES / name, stop_before_pixels=True)
    return dataset.to_json_dict()


# --- checks ----------------------------------------------------------------------------------


def validate(version: FhirVersion, resource: dict[str, Any]) -> None:
    MODELS[version][resource["resourceType"]].model_validate(resource)
    assert_no_empty(resource)


def assert_no_empty(value: Any, path: str = "$") -> None:
    """FHIR ele-1: no empty string, list or object anywhere (fhir.resources lets [] through)."""
    if isinstance(value, dict):
        assert value, f"empty object at {path}"
        for key, item in value.items():
            assert_no_empty(item, f"{path}.{key}")
    elif isinstance(value, list):
        assert value, f"empty list at {path}"
        for i, item in enumerate(value):
            assert_no_empty(item, f"{path}[{i}]")
    elif isinstance(value, str):
        assert value.strip() == value and value, f"empty or padded string at {path}"


def study(version: FhirVersion, **changes: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "study": study_answer(),
        "series": series_answers(),
        "instances": instance_answers(),
        "version": version,
        "resource_id": study_id(STUDY_UID, None),
        "patient_id": "pat-1",
        "endpoint_id": "wado-central",
    }
    args.update(changes)
    out = imaging_study(args.pop("study"), args.pop("series"), args.pop("instances"), **args)
    validate(version, out)
    return out


# --- pydicom's files -------------------------------------------------------------------------

FILES = ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "rtplan.dcm", "reportsi.dcm"]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", FILES)
def test_pydicom_files_map_and_validate(name: str, version: FhirVersion) -> None:
    # One instance file answers all three levels: it holds study, series and instance attributes.
    ds = from_file(name)
    uid = ds["0020000D"]["Value"][0]
    out = imaging_study(
        ds,
        [ds],
        [ds],
        version=version,
        resource_id=study_id(uid, None),
        patient_id="p",
        endpoint_id="e",
    )
    validate(version, out)
    assert out["id"] == uid
    assert out["identifier"][0] == {"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}
    [series] = out["series"]
    assert series["uid"] == ds["0020000E"]["Value"][0]
    [instance] = series["instance"]
    assert instance["uid"] == ds["00080018"]["Value"][0]
    assert instance["sopClass"] == {
        "system": "urn:ietf:rfc:3986",
        "code": f"urn:oid:{ds['00080016']['Value'][0]}",
    }
    for resource in (
        patient(ds, version=version, resource_id="p", identifier_system=None),
        patient(ds, version=version, resource_id="p", identifier_system="urn:oid:1.2.3"),
    ):
        validate(version, resource)


@pytest.mark.parametrize("version", VERSIONS)
def test_pydicom_ct_small_values(version: FhirVersion) -> None:
    ds = from_file("CT_small.dcm")  # TimezoneOffsetFromUTC -0500; AccessionNumber empty
    out = imaging_study(
        ds, [ds], [ds], version=version, resource_id="x", patient_id="p", endpoint_id="e"
    )
    assert out["started"] == "2004-01-19T07:27:30-05:00"
    assert out["series"][0]["started"] == "1997-04-30T11:27:49-05:00"
    assert len(out["identifier"]) == 1  # an empty Accession Number is no identifier
    assert "laterality" not in out["series"][0]  # Laterality present but empty


@pytest.mark.parametrize("version", VERSIONS)
def test_pydicom_whole_body_and_sr_title(version: FhirVersion) -> None:
    nm = from_file("JPEG2000.dcm")  # BodyPartExamined "WHOLE BODY" (with a space)
    out = imaging_study(
        nm, [nm], [], version=version, resource_id="x", patient_id="p", endpoint_id="e"
    )
    body_site = {"system": SCT, "code": "38266002", "display": "Entire body"}
    expected = body_site if version == "R4" else {"concept": {"coding": [body_site]}}
    assert out["series"][0]["bodySite"] == expected
    assert "instance" not in out["series"][0]

    sr = from_file("reportsi.dcm")  # Concept Name Code Sequence: the document title
    out = imaging_study(
        sr, [sr], [sr], version=version, resource_id="x", patient_id="p", endpoint_id="e"
    )
    assert out["series"][0]["instance"][0]["title"] == "Document Title"


# --- the key elements, exactly ---------------------------------------------------------------


def test_r4_key_elements() -> None:
    out = study("R4")
    assert out["resourceType"] == "ImagingStudy"
    assert out["id"] == STUDY_UID
    assert out["identifier"] == [
        {"system": "urn:dicom:uid", "value": f"urn:oid:{STUDY_UID}"},
        {
            "type": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                        "code": "ACSN",
                        "display": "Accession ID",
                    }
                ]
            },
            "system": "urn:oid:1.2.203.24341.1.7",
            "value": "ACC-2024-001",
            "assigner": {"display": "FNKV"},
        },
    ]
    assert out["status"] == "available"
    # R4: acquisition modalities only (CID 29): SR and KO are not.
    assert out["modality"] == [{"system": DCM, "code": "MR", "display": "Magnetic Resonance"}]
    assert out["subject"] == {"reference": "Patient/pat-1"}
    assert out["started"] == "2024-03-15T09:30:15.25+01:00"
    assert out["referrer"] == {"display": "MUDr. Jan Novak"}
    assert out["endpoint"] == [{"reference": "Endpoint/wado-central"}]
    assert (out["numberOfSeries"], out["numberOfInstances"]) == (2, 3)
    assert out["procedureCode"] == [
        {
            "coding": [
                {
                    "system": "http://loinc.org",
                    "code": "36813-4",
                    "display": "CT Abdomen and Pelvis",
                }
            ]
        }
    ]
    assert out["reasonCode"] == [
        {"coding": [{"system": SCT, "code": "90708001", "display": "Kidney disease"}]},
        {"coding": [{"code": "R-1", "display": "Local reason"}]},  # private scheme: no system
    ]
    assert out["description"] == "MR kidneys"
    assert "procedure" not in out and "reason" not in out

    ko, mr = out["series"]  # ordered by series number
    assert mr == {
        "uid": MR_SERIES,
        "number": 2,
        "modality": {"system": DCM, "code": "MR", "display": "Magnetic Resonance"},
        "description": "T2 coronal",
        "numberOfInstances": 2,
        "bodySite": {"system": SCT, "code": "64033007", "display": "Kidney"},
        "laterality": {"system": SCT, "code": "7771000", "display": "Left"},
        "started": "2024-03-15T09:45:00+01:00",  # the study's offset
        "instance": [
            {
                "uid": f"{MR_SERIES}.1",
                "sopClass": {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{MR_IMAGE}"},
                "number": 1,
            },
            {
                "uid": f"{MR_SERIES}.2",
                "sopClass": {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{MR_IMAGE}"},
                "number": 2,
            },
        ],
    }
    assert ko["modality"] == {"system": DCM, "code": "KO", "display": "Key Object Selection"}
    assert ko["started"] == "2024-03-16T10:15:00+02:00"  # its own offset wins
    assert ko["instance"][0]["title"] == "Of Interest"
    assert "bodySite" not in ko and "laterality" not in ko and "description" not in ko


def test_r5_key_elements() -> None:
    out = study("R5")
    assert out["modality"] == [
        {"coding": [{"system": DCM, "code": c, "display": d}]}
        for c, d in (
            ("MR", "Magnetic Resonance"),
            ("SR", "Structured Report Document"),
            ("KO", "Key Object Selection"),
        )
    ]
    assert out["procedure"] == [
        {
            "concept": {
                "coding": [
                    {
                        "system": "http://loinc.org",
                        "code": "36813-4",
                        "display": "CT Abdomen and Pelvis",
                    }
                ]
            }
        }
    ]
    assert out["reason"] == [
        {"concept": {"coding": [{"system": SCT, "code": "90708001", "display": "Kidney disease"}]}},
        {"concept": {"coding": [{"code": "R-1", "display": "Local reason"}]}},
    ]
    assert "procedureCode" not in out and "reasonCode" not in out
    _, mr = out["series"]
    assert mr["modality"] == {
        "coding": [{"system": DCM, "code": "MR", "display": "Magnetic Resonance"}]
    }
    assert mr["bodySite"] == {
        "concept": {"coding": [{"system": SCT, "code": "64033007", "display": "Kidney"}]}
    }
    assert mr["laterality"] == {"coding": [{"system": SCT, "code": "7771000", "display": "Left"}]}
    # The parts R4 and R5 share are the same.
    r4 = study("R4")
    for key in (
        "identifier",
        "status",
        "subject",
        "started",
        "referrer",
        "endpoint",
        "numberOfSeries",
        "numberOfInstances",
        "description",
    ):
        assert out[key] == r4[key]
    assert [s["instance"] for s in out["series"]] == [s["instance"] for s in r4["series"]]


# --- absent and empty sources ----------------------------------------------------------------

MINIMAL_KEYS = {"resourceType", "id", "identifier", "status", "subject", "endpoint"}


@pytest.mark.parametrize("version", VERSIONS)
def test_only_a_uid_gives_only_the_required_elements(version: FhirVersion) -> None:
    out = study(version, study={"0020000D": el("UI", STUDY_UID)}, series=[], instances=[])
    assert set(out) == MINIMAL_KEYS


def blanked(dataset: dict[str, Any]) -> dict[str, Any]:
    """Every element of ``dataset`` present but empty, in each way DICOM JSON allows."""
    out: dict[str, Any] = {}
    for i, (tag, element) in enumerate(dataset.items()):
        vr = element["vr"]
        if tag in ("0020000D", "0020000E", "00080018"):
            out[tag] = element  # the keys stay
        elif vr == "PN":
            out[tag] = el("PN", {"Alphabetic": "  "}) if i % 2 else el("PN", {})
        elif vr == "SQ":
            out[tag] = el("SQ", {}) if i % 2 else el("SQ")
        else:
            out[tag] = el(vr, " ") if i % 2 and vr not in ("IS", "US") else el(vr)
    return out


@pytest.mark.parametrize("version", VERSIONS)
def test_blank_values_are_never_emitted(version: FhirVersion) -> None:
    series = [blanked(s) for s in series_answers()]
    instances = [blanked(i) for i in instance_answers()]
    out = study(version, study=blanked(study_answer()), series=series, instances=instances)
    assert set(out) == {*MINIMAL_KEYS, "series"}
    for entry in out["series"]:
        # modality (1..1) and sopClass (1..1) say they are unknown rather than being invented
        assert set(entry) == {"uid", "modality", "instance"}
        assert entry["modality"] == {
            "extension": [
                {
                    "url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
                    "valueCode": "unknown",
                }
            ]
        }
        for instance in entry["instance"]:
            assert set(instance) == {"uid", "sopClass"}
            assert "extension" in instance["sopClass"]
    blank_patient = patient(
        blanked(study_answer()), version=version, resource_id="p", identifier_system="urn:x"
    )
    assert blank_patient == {"resourceType": "Patient", "id": "p"}
    validate(version, blank_patient)


@pytest.mark.parametrize("version", VERSIONS)
def test_no_series_element_without_series_and_instances(version: FhirVersion) -> None:
    out = study(version, series=[], instances=[])
    assert "series" not in out
    assert out["numberOfSeries"] == 2  # the PACS's counts still come through


@pytest.mark.parametrize("version", VERSIONS)
def test_instances_alone_bring_their_series(version: FhirVersion) -> None:
    orphan = {
        "0020000E": el("UI", CT_SERIES),
        "00200011": el("IS", 7),
        "00080060": el("CS", "CT"),
        "00080018": el("UI", f"{CT_SERIES}.1"),
        "00080016": el("UI", CT_IMAGE),
    }
    out = study(version, instances=[*instance_answers(), orphan])
    assert [s["uid"] for s in out["series"]] == [SR_SERIES, MR_SERIES, CT_SERIES]
    ct = out["series"][2]
    assert ct["number"] == 7 and ct["instance"][0]["uid"] == f"{CT_SERIES}.1"
    out = study(version, series=[], instances=[orphan])
    assert [s["uid"] for s in out["series"]] == [CT_SERIES]


@pytest.mark.parametrize("version", VERSIONS)
def test_study_modality_falls_back_to_the_series(version: FhirVersion) -> None:
    answer = study_answer()
    del answer["00080061"]
    out = study(version, study=answer)
    codes_out = [m.get("code") or m["coding"][0]["code"] for m in out["modality"]]
    assert codes_out == (["MR"] if version == "R4" else ["MR", "KO"])


@pytest.mark.parametrize("version", VERSIONS)
def test_series_started_falls_back_to_the_performed_procedure_step(version: FhirVersion) -> None:
    series = series_answers()
    del series[0]["00080021"], series[0]["00080031"]
    series[0]["00400244"] = el("DA", "20240315")
    series[0]["00400245"] = el("TM", "094100")
    assert study(version, series=series)["series"][1]["started"] == "2024-03-15T09:41:00+01:00"
    del series[0]["00400244"]
    assert "started" not in study(version, series=series)["series"][1]


def test_odd_numbers_and_strings() -> None:
    answer = study_answer()
    answer["00201206"] = el("IS", "12")  # a string, as some PACSs send IS
    answer["00201208"] = el("IS", -1)  # negative: not an unsignedInt
    series = series_answers()
    series[0]["00200011"] = el("IS", "x")
    out = study("R4", study=answer, series=series)
    assert out["numberOfSeries"] == 12 and "numberOfInstances" not in out
    assert "number" not in out["series"][1]


def test_a_study_without_uid_is_refused() -> None:
    with pytest.raises(ValueError, match="Study Instance UID"):
        imaging_study({}, [], [], version="R4", resource_id="x", patient_id="p", endpoint_id="e")


# --- identifiers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "system", "assigner"),
    [
        ({"00400032": el("UT", "1.2.3"), "00400033": el("CS", "ISO")}, "urn:oid:1.2.3", None),
        (
            {
                "00400032": el("UT", "A1B2C3D4-0000-4000-8000-000000000001"),
                "00400033": el("CS", "UUID"),
            },
            "urn:uuid:a1b2c3d4-0000-4000-8000-000000000001",
            None,
        ),
        (
            {"00400032": el("UT", "https://ris.example.cz/acc"), "00400033": el("CS", "URI")},
            "https://ris.example.cz/acc",
            None,
        ),
        ({"00400031": el("UT", "RIS-A")}, None, "RIS-A"),
        (
            {"00400032": el("UT", "ris.example.cz"), "00400033": el("CS", "DNS")},
            None,
            "ris.example.cz",
        ),
        ({"00400032": el("UT", "not-an-oid"), "00400033": el("CS", "ISO")}, None, "not-an-oid"),
    ],
)
@pytest.mark.parametrize("version", VERSIONS)
def test_accession_issuer(
    item: dict[str, Any], system: str | None, assigner: str | None, version: FhirVersion
) -> None:
    answer = study_answer()
    answer["00080051"] = el("SQ", item)
    accession = study(version, study=answer)["identifier"][1]
    assert accession.get("system") == system
    assert accession.get("assigner") == (None if assigner is None else {"display": assigner})
    assert accession["value"] == "ACC-2024-001"


def test_accession_without_issuer() -> None:
    answer = study_answer()
    del answer["00080051"]
    accession = study("R4", study=answer)["identifier"][1]
    assert set(accession) == {"type", "value"}


def test_study_id() -> None:
    assert study_id(STUDY_UID, None) == STUDY_UID
    longest = "1." + "2" * 62
    assert study_id(longest, None) == longest
    hashed = study_id(STUDY_UID, "prague-1")
    assert re.fullmatch(r"h[0-9a-f]{48}", hashed)
    assert hashed == study_id(STUDY_UID, "prague-1")  # stable
    assert hashed != study_id(STUDY_UID, "brno")
    assert hashed != study_id(STUDY_UID + "1", "prague-1")
    site = "s" * 64  # site ids may be 64 characters and hold "_", which ids may not
    for uid, site_id in ((longest, site), (STUDY_UID, "a_b"), ("1." + "9" * 70, None)):
        out = study_id(uid, site_id)
        assert FHIR_ID.fullmatch(out) and len(out) <= 64
    assert study_id("1.2_3", None).startswith("h")  # no valid id: hashed, never emitted raw


# --- dates and times -------------------------------------------------------------------------

PRAGUE = ZoneInfo("Europe/Prague")


@pytest.mark.parametrize(
    ("da", "tm", "offset", "zone", "expected"),
    [
        ("20240315", None, None, None, "2024-03-15"),
        ("20240315", "093015", None, None, "2024-03-15"),  # a time without a zone: date only
        ("20240315", "093015", "+0100", None, "2024-03-15T09:30:15+01:00"),
        ("20240315", "093015.123456", "-0530", None, "2024-03-15T09:30:15.123456-05:30"),
        ("20240315", "09", "+0000", None, "2024-03-15T09:00:00+00:00"),
        ("20240315", "0930", "+1400", None, "2024-03-15T09:30:00+14:00"),
        ("20240315", "09:30:15", "+0100", None, "2024-03-15T09:30:15+01:00"),  # ACR-NEMA
        ("2024.03.15", None, None, None, "2024-03-15"),  # ACR-NEMA
        ("20241231", "235960", "+0000", None, "2024-12-31T23:59:60+00:00"),  # leap second
        ("20240315", "093015", "+1500", None, "2024-03-15"),  # beyond FHIR's zones
        ("20240315", "093015", "0100", None, "2024-03-15"),  # no sign
        ("20240315", "250000", "+0100", None, "2024-03-15"),  # no such hour
        ("20240315", "0930xx", "+0100", None, "2024-03-15"),
        ("20240231", "093015", "+0100", None, None),  # no such day
        ("2024", None, None, None, None),
        (None, "093015", "+0100", None, None),
        ("20240115", "093015", None, PRAGUE, "2024-01-15T09:30:15+01:00"),  # CET
        ("20240715", "093015", None, PRAGUE, "2024-07-15T09:30:15+02:00"),  # CEST
        ("20240715", "093015", "+0000", PRAGUE, "2024-07-15T09:30:15+00:00"),  # DICOM wins
        ("20240715", "0930", None, timezone(timedelta(hours=-3)), "2024-07-15T09:30:00-03:00"),
    ],
)
def test_fhir_datetime(
    da: str | None,
    tm: str | None,
    offset: str | None,
    zone: tzinfo | None,
    expected: str | None,
) -> None:
    assert fhir_datetime(da, tm, offset, zone) == expected


@pytest.mark.parametrize("version", VERSIONS)
def test_local_zone_applies_to_study_and_series(version: FhirVersion) -> None:
    answer = study_answer()
    del answer["00080201"]
    out = study(version, study=answer, local_zone=PRAGUE)
    assert out["started"] == "2024-03-15T09:30:15.25+01:00"
    assert out["series"][1]["started"] == "2024-03-15T09:45:00+01:00"
    assert out["series"][0]["started"] == "2024-03-16T10:15:00+02:00"  # its own offset
    without = study(version, study=answer)
    assert without["started"] == "2024-03-15"
    assert without["series"][1]["started"] == "2024-03-15"


def test_fhir_date() -> None:
    assert fhir_date("19700412") == "1970-04-12"
    assert fhir_date("19701332") is None
    assert fhir_date(None) is None


# --- Patient and Endpoint --------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_patient(version: FhirVersion) -> None:
    out = patient(
        study_answer(),
        version=version,
        resource_id="pat-1",
        identifier_system="urn:oid:1.2.203.24341.1.1",
    )
    validate(version, out)
    assert out == {
        "resourceType": "Patient",
        "id": "pat-1",
        "identifier": [{"system": "urn:oid:1.2.203.24341.1.1", "value": "456789123"}],
        "name": [
            {
                "text": "Ing. Petr Karel Dvorak Ph.D.",
                "family": "Dvorak",
                "given": ["Petr", "Karel"],
                "prefix": ["Ing."],
                "suffix": ["Ph.D."],
            }
        ],
        "gender": "male",
        "birthDate": "1970-04-12",
    }
    no_system = patient(study_answer(), version=version, resource_id="p", identifier_system=None)
    validate(version, no_system)
    assert no_system["identifier"] == [{"value": "456789123"}]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("sex", "gender"), [("F", "female"), ("O", "other"), ("X", "unknown")])
def test_patient_gender(version: FhirVersion, sex: str, gender: str) -> None:
    answer = study_answer()
    answer["00100040"] = el("CS", sex)
    out = patient(answer, version=version, resource_id="p", identifier_system=None)
    validate(version, out)
    assert out["gender"] == gender


@pytest.mark.parametrize("version", VERSIONS)
def test_patient_ideographic_name(version: FhirVersion) -> None:
    answer = {
        "00100010": el(
            "PN",
            {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"},
        )
    }
    out = patient(answer, version=version, resource_id="p", identifier_system=None)
    validate(version, out)
    assert [n["family"] for n in out["name"]] == ["Yamada", "山田"]


WADO_RS = {
    "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
    "code": "dicom-wado-rs",
    "display": "DICOM WADO-RS",
}
ADDRESS = "https://ncp.example.cz/site/prague-1/dicom-web"


def test_endpoint_r4() -> None:
    out = endpoint(version="R4", resource_id="wado-prague-1", address=ADDRESS)
    validate("R4", out)
    assert out == {
        "resourceType": "Endpoint",
        "id": "wado-prague-1",
        "status": "active",
        "connectionType": WADO_RS,
        "payloadType": [{"text": "DICOM WADO-RS"}],
        "payloadMimeType": [
            "application/dicom",
            "application/dicom+json",
            "application/octet-stream",
        ],
        "address": ADDRESS,
    }


def test_endpoint_r5() -> None:
    out = endpoint(version="R5", resource_id="wado-prague-1", address=ADDRESS)
    validate("R5", out)
    assert out["connectionType"] == [{"coding": [WADO_RS]}]
    assert out["payload"] == [
        {
            "type": [{"text": "DICOM WADO-RS"}],
            "mimeType": ["application/dicom", "application/dicom+json", "application/octet-stream"],
        }
    ]
    assert (out["status"], out["address"]) == ("active", ADDRESS)


# --- codes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("designator", "system"),
    [
        ("SCT", SCT),
        ("LN", "http://loinc.org"),
        ("DCM", DCM),
        ("SRT", "http://snomed.info/srt"),
        ("UCUM", "http://unitsofmeasure.org"),
        ("RADLEX", "http://www.radlex.org"),
        ("NCIt", "urn:oid:2.16.840.1.113883.3.26.1.1"),
        ("2.16.840.1.113883.6.3", "urn:oid:2.16.840.1.113883.6.3"),
        ("urn:iso:std:iso:3166", "urn:iso:std:iso:3166"),
        ("99CZLOCAL", None),
        ("99", None),
        ("L", None),
    ],
)
def test_code_system(designator: str, system: str | None) -> None:
    assert codes.code_system(designator) == system


def test_code_item_coding() -> None:
    item = {**code("36813-4", "LN", "CT Abdomen and Pelvis"), "00080103": el("SH", "2.76")}
    assert codes.code_item_coding(item) == {
        "system": "http://loinc.org",
        "version": "2.76",
        "code": "36813-4",
        "display": "CT Abdomen and Pelvis",
    }
    long_code = {"00080119": el("UC", "A" * 70), "00080102": el("SH", "99X")}
    assert codes.code_item_coding(long_code) == {"code": "A" * 70}
    urn = {"00080120": el("UR", "urn:example:1"), "00080102": el("SH", "DCM")}
    assert codes.code_item_coding(urn) == {"system": DCM, "code": "urn:example:1"}
    assert codes.code_item_coding({"00080104": el("LO", "meaning only")}) is None
    assert codes.code_item_coding("not an item") is None


def test_modality_table_matches_pydicoms_cid_29_and_33() -> None:
    from pydicom.sr import _concepts_dict  # test only: 16 MB the gateway need not hold

    dcm = cast(dict[str, dict[str, tuple[str, list[int]]]], _concepts_dict.concepts["DCM"])
    expected = {
        value: (meaning, 29 in cids)
        for entry in dcm.values()
        for value, (meaning, cids) in entry.items()
        if 33 in cids
    }
    assert dict(codes.MODALITIES) == expected


def test_includefields_are_tags() -> None:
    for tags in (STUDY_INCLUDEFIELDS, SERIES_INCLUDEFIELDS, INSTANCE_INCLUDEFIELDS):
        assert all(re.fullmatch(r"[0-9A-F]{8}", t) for t in tags)
        assert len(set(tags)) == len(tags)


def test_inputs_are_not_modified() -> None:
    answers = (study_answer(), series_answers(), instance_answers())
    before = copy.deepcopy(answers)
    for version in VERSIONS:
        study(version, study=answers[0], series=answers[1], instances=answers[2])
    assert answers == before
