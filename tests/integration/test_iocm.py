"""IHE IOCM against the real Orthanc: a study with a rejection note in the PACS, and what every
route of a DICOMweb site and a DIMSE (C-GET) site serves of it.

The test stores its own study (3 CT instances in 2 series, from pydicom's CT_small.dcm with
fresh UIDs and a patient of its own) and a rejection note (a KOS titled DCM 113001 "Rejected for
Quality Reasons") naming 2 of them; no route may show those two, nor the note. A second note,
in the same KO series, then rejects the last instance: the study is gone for QIDO, WADO and FHIR.
The study is deleted from Orthanc at the end. The gateway is the test's own, reading the notes
before every request (``iocm_refresh_seconds = 0``).
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from ncpeh_dicomweb.fhir.mapping import study_id
from tests.conftest import DimseGateway, Pacs, running_dimse_gateway
from tests.integration.multipart_split import split_multipart

pytestmark = pytest.mark.integration

SITES = ["web", "get"]  # a DICOMweb site and a DIMSE (C-GET) site
KOS_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"
AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
CT_SMALL = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"


@dataclass
class Study:
    """The test's study in Orthanc: series A (a1, a2), series B (b1), KO series (notes)."""

    patient: str
    study: str
    series_a: str
    series_b: str
    a1: str
    a2: str
    b1: str
    notes_series: str
    note1: str
    note2: str
    orthanc_id: str = ""

    @property
    def rejected(self) -> list[str]:
        """What the first note hides: a1, b1 (all of series B), and the note itself."""
        return [self.a1, self.b1, self.note1]


def _ct(study: Study, series: str, sop: str, number: int) -> Dataset:
    ds = pydicom.dcmread(CT_SMALL)
    ds.PatientID = study.patient
    ds.PatientName = "IOCM^Test"
    ds.StudyInstanceUID = study.study
    ds.SeriesInstanceUID = series
    ds.SeriesNumber = 1 if series == study.series_a else 2
    ds.SOPInstanceUID = sop
    ds.InstanceNumber = number
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop)
    return ds


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = meaning
    return item


def _rejection_note(study: Study, sop: str, number: int, rejected: list[Dataset]) -> Dataset:
    """A KOS titled 113001 naming ``rejected`` (each an instance of this study) both in Current
    Requested Procedure Evidence Sequence and as IMAGE content items (TID 2010)."""
    ct = pydicom.dcmread(CT_SMALL, stop_before_pixels=True)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(KOS_CLASS)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = KOS_CLASS
    ds.SOPInstanceUID = sop
    ds.PatientID = study.patient
    ds.PatientName = "IOCM^Test"
    ds.PatientBirthDate = ct.get("PatientBirthDate", "")
    ds.PatientSex = ct.get("PatientSex", "")
    ds.StudyInstanceUID = study.study
    ds.StudyDate = ct.StudyDate
    ds.StudyTime = ct.get("StudyTime", "")
    ds.StudyID = ct.get("StudyID", "")
    ds.AccessionNumber = ct.get("AccessionNumber", "")
    ds.ReferringPhysicianName = ""
    ds.SeriesInstanceUID = study.notes_series
    ds.SeriesNumber = 99
    ds.Modality = "KO"
    ds.InstanceNumber = number
    ds.ContentDate = "20250101"
    ds.ContentTime = "120000"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.ConceptNameCodeSequence = [_code("113001", "Rejected for Quality Reasons")]
    template = Dataset()
    template.MappingResource = "DCMR"
    template.TemplateIdentifier = "2010"
    ds.ContentTemplateSequence = [template]
    by_series: dict[str, list[Dataset]] = {}
    items = []
    for ref in rejected:
        sop_ref = Dataset()
        sop_ref.ReferencedSOPClassUID = ref.SOPClassUID
        sop_ref.ReferencedSOPInstanceUID = ref.SOPInstanceUID
        by_series.setdefault(ref.SeriesInstanceUID, []).append(sop_ref)
        item = Dataset()
        item.RelationshipType = "CONTAINS"
        item.ValueType = "IMAGE"
        content_ref = Dataset()
        content_ref.ReferencedSOPClassUID = ref.SOPClassUID
        content_ref.ReferencedSOPInstanceUID = ref.SOPInstanceUID
        item.ReferencedSOPSequence = [content_ref]
        items.append(item)
    evidence = Dataset()
    evidence.StudyInstanceUID = study.study
    series_items = []
    for series, refs in by_series.items():
        series_item = Dataset()
        series_item.SeriesInstanceUID = series
        series_item.ReferencedSOPSequence = refs
        series_items.append(series_item)
    evidence.ReferencedSeriesSequence = series_items
    ds.CurrentRequestedProcedureEvidenceSequence = [evidence]
    ds.ContentSequence = items
    return ds


def _store(pacs: Pacs, ds: Dataset) -> dict[str, Any]:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    stored = requests.post(f"{pacs.url}/instances", data=out.getvalue(), timeout=30)
    assert stored.ok, stored.text
    answer: dict[str, Any] = stored.json()
    return answer


@pytest.fixture(scope="module")
def gw(pacs: Pacs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DimseGateway]:
    work = tmp_path_factory.mktemp("iocm-gateway")
    aets = ("NCPEH-IOCM-GET", "NCPEH-IOCM-GET2"), ("NCPEH-IOCM-MV", "NCPEH-IOCM-MV2")
    with running_dimse_gateway(
        pacs, work, "", *aets, forget_destinations=True, iocm_refresh=0
    ) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def study(pacs: Pacs) -> Iterator[Study]:
    uids = [generate_uid() for _ in range(10)]
    made = Study(f"IOCM-{uids[0][-12:]}", *uids[1:])
    cts = [
        _ct(made, made.series_a, made.a1, 1),
        _ct(made, made.series_a, made.a2, 2),
        _ct(made, made.series_b, made.b1, 1),
    ]
    try:
        for ds in cts:
            made.orthanc_id = _store(pacs, ds)["ParentStudy"]
        _store(pacs, _rejection_note(made, made.note1, 1, [cts[0], cts[2]]))
        yield made
    finally:
        if made.orthanc_id:
            requests.delete(f"{pacs.url}/studies/{made.orthanc_id}", timeout=30)
        assert not requests.post(f"{pacs.url}/tools/lookup", data=made.study, timeout=30).json()


# ---------------------------------------------------------------------- helpers


def _fhir(gw: DimseGateway, site: str) -> str:
    return f"{gw.url}/fhir" if site == "web" else f"{gw.url}/site/{site}/fhir"


def _shows_none(body: bytes | str, uids: list[str]) -> None:
    data = body.encode() if isinstance(body, str) else body
    for uid in uids:
        assert not re.search(re.escape(uid.encode()) + rb"(?![0-9.])", data), uid


def _get(url: str, status: int = 200, **kwargs: Any) -> requests.Response:
    response = requests.get(url, timeout=120, **kwargs)
    assert response.status_code == status, (url, response.status_code, response.text[:300])
    return response


def _json(url: str) -> list[dict[str, Any]]:
    response = _get(url)
    body: list[dict[str, Any]] = response.json() if response.content else []
    return body


def _values(dataset: dict[str, Any], tag: str) -> list[Any]:
    return list(dataset.get(tag, {}).get("Value", []))


def _sops(datasets: list[dict[str, Any]]) -> list[str]:
    return [d["00080018"]["Value"][0] for d in datasets]


def _retrieved(url: str) -> list[str]:
    response = _get(url, headers={"Accept": AS_STORED})
    parts = split_multipart(response.headers["Content-Type"], response.content)
    return [pydicom.dcmread(io.BytesIO(body)).SOPInstanceUID for _, body in parts]


def _stats(gw: DimseGateway, site: str) -> dict[str, int]:
    return dict(_get(f"{gw.url}/health/stats").json()["sites"][site])


# ---------------------------------------------------------------------- one note


@pytest.mark.parametrize("site", SITES)
def test_rejected_instances_appear_in_no_answer(gw: DimseGateway, study: Study, site: str) -> None:
    root = gw.root(site)
    hidden = [*study.rejected, study.series_b, study.notes_series]
    s, a, b = study.study, study.series_a, study.series_b

    # QIDO at every level, from the root and scoped.
    (row,) = _json(f"{root}/studies?PatientID={study.patient}")
    assert row["0020000D"]["Value"] == [s]
    for tag, left in (("00201208", 1), ("00201206", 1)):  # instances, series left
        assert _values(row, tag) in ([], [left]), tag
    assert _values(row, "00080061") in ([], ["CT"])  # the note's KO series is gone
    series = _json(f"{root}/studies/{s}/series")
    assert [d["0020000E"]["Value"][0] for d in series] == [a]
    assert _values(series[0], "00201209") in ([], [1])
    assert [d["0020000E"]["Value"][0] for d in _json(f"{root}/series?StudyInstanceUID={s}")] == [a]
    assert _json(f"{root}/series?StudyInstanceUID={s}&Modality=KO") == []
    for path in (
        f"studies/{s}/instances",
        f"studies/{s}/series/{a}/instances",
        f"instances?StudyInstanceUID={s}",
        f"instances?PatientID={study.patient}",
        f"studies/{s}/instances?limit=1",
    ):
        assert _sops(_json(f"{root}/{path}")) == [study.a2], path
    for path in (
        f"studies/{s}/series/{b}/instances",
        f"studies/{s}/series/{study.notes_series}/instances",
        f"instances?SOPInstanceUID={study.a1}",
        f"instances?SOPInstanceUID={study.note1}",
        f"studies/{s}/instances?limit=1&offset=1",
        f"studies?SOPInstanceUID={study.b1}",
    ):
        assert _json(f"{root}/{path}") == [], path
    for path in (
        f"studies?PatientID={study.patient}",
        f"studies/{s}/series",
        f"series?StudyInstanceUID={s}",
        f"studies/{s}/instances",
        f"instances?StudyInstanceUID={s}&includefield=all",
    ):
        _shows_none(_get(f"{root}/{path}").content, hidden)

    # WADO-RS retrieve: the parts are the instances left, nothing else.
    assert _retrieved(f"{root}/studies/{s}") == [study.a2]
    assert _retrieved(f"{root}/studies/{s}/series/{a}") == [study.a2]
    assert _retrieved(f"{root}/studies/{s}/series/{a}/instances/{study.a2}") == [study.a2]
    for path in (
        f"studies/{s}/series/{b}",
        f"studies/{s}/series/{study.notes_series}",
        f"studies/{s}/series/{a}/instances/{study.a1}",
        f"studies/{s}/series/{b}/instances/{study.b1}",
        f"studies/{s}/series/{study.notes_series}/instances/{study.note1}",
    ):
        _get(f"{root}/{path}", 404, headers={"Accept": AS_STORED})

    # Metadata at each level.
    for path in (
        f"studies/{s}",
        f"studies/{s}/series/{a}",
        f"studies/{s}/series/{a}/instances/{study.a2}",
    ):
        response = _get(f"{root}/{path}/metadata")
        assert _sops(response.json()) == [study.a2], path
        _shows_none(response.content, hidden)
    for path in (
        f"studies/{s}/series/{b}",
        f"studies/{s}/series/{study.notes_series}",
        f"studies/{s}/series/{a}/instances/{study.a1}",
        f"studies/{s}/series/{study.notes_series}/instances/{study.note1}",
    ):
        _get(f"{root}/{path}/metadata", 404)

    # Frames, bulk data, rendered, thumbnail of a rejected instance; of a series left empty.
    a1 = f"{root}/studies/{s}/series/{a}/instances/{study.a1}"
    b1 = f"{root}/studies/{s}/series/{b}/instances/{study.b1}"
    for url in (
        f"{a1}/frames/1",
        f"{b1}/frames/1",
        f"{a1}/bulk/7FE00010",
        f"{a1}/rendered",
        f"{b1}/thumbnail",
        f"{a1}/frames/1/rendered",
        f"{root}/studies/{s}/series/{b}/rendered",
    ):
        _get(url, 404)
    _get(f"{root}/studies/{s}/series/{a}/instances/{study.a2}/frames/1")
    assert _get(f"{root}/studies/{s}/rendered", headers={"Accept": "image/png"}).content

    # FHIR: search, then read, show the one instance left.
    bundle = _get(f"{_fhir(gw, site)}/ImagingStudy?patient.identifier=|{study.patient}").json()
    (entry,) = bundle["entry"]
    resource = entry["resource"]
    assert resource["numberOfInstances"] == 1 and resource["numberOfSeries"] == 1
    assert [x["uid"] for x in resource["series"]] == [a]
    _shows_none(str(bundle), hidden)
    read = _get(f"{_fhir(gw, site)}/ImagingStudy/{resource['id']}").json()
    assert [x["uid"] for x in read["series"]] == [a]
    assert [i["uid"] for i in read["series"][0]["instance"]] == [study.a2]
    _shows_none(str(read), hidden)


def test_the_cost_of_the_index(gw: DimseGateway, study: Study) -> None:
    """With the notes read before every request (interval 0): one KO QIDO per request, no
    KO metadata read again, and one listing per study the index touches."""
    for site in SITES:
        root = gw.root(site)
        _json(f"{root}/studies?PatientID={study.patient}")  # the KO series are read by now
        before = _stats(gw, site)
        _json(f"{root}/studies?PatientID={study.patient}")
        _json(f"{root}/studies?PatientID=NOBODY-{study.patient}")
        after = _stats(gw, site)
        delta = {
            k: after[k] - before[k]
            for k in after
            if k.startswith("iocm_") and k != "iocm_hidden_instances"
        }
        print(f"\n{site}: two searches cost {delta}")
        assert delta["iocm_ko_queries"] == 2 and delta["iocm_ko_reads"] == 0
        assert delta["iocm_listings"] == 1  # only the study with rejections
        assert after["iocm_hidden_instances"] == 3


# ---------------------------------------------------------------------- every instance rejected


@pytest.fixture(scope="module")
def second_note(pacs: Pacs, study: Study) -> Study:
    """A second note, in the KO series of the first, rejecting the last instance (a2)."""
    a2 = _ct(study, study.series_a, study.a2, 2)
    _store(pacs, _rejection_note(study, study.note2, 2, [a2]))
    return study


@pytest.mark.parametrize("site", SITES)
def test_a_study_whose_every_instance_is_rejected_is_gone(
    gw: DimseGateway, second_note: Study, site: str
) -> None:
    study, root = second_note, gw.root(site)
    s, a = study.study, study.series_a
    bundle = _get(f"{_fhir(gw, site)}/ImagingStudy?patient.identifier=|{study.patient}").json()
    assert bundle.get("entry", []) == []
    for path in (
        f"studies?PatientID={study.patient}",
        f"studies?StudyInstanceUID={s}",
        f"studies/{s}/series",
        f"studies/{s}/instances",
        f"series?StudyInstanceUID={s}",
        f"instances?StudyInstanceUID={s}",
    ):
        assert _json(f"{root}/{path}") == [], path
    for path in (
        f"studies/{s}",
        f"studies/{s}/series/{a}",
        f"studies/{s}/series/{a}/instances/{study.a2}",
        f"studies/{s}/series/{study.notes_series}/instances/{study.note2}",
    ):
        _get(f"{root}/{path}", 404, headers={"Accept": AS_STORED})
    _get(f"{root}/studies/{s}/series/{study.notes_series}/metadata", 404)
    _get(f"{root}/studies/{s}/series/{a}/instances/{study.a2}/frames/1", 404)
    _get(f"{root}/studies/{s}/rendered", 404)
    # FHIR read: 410, the study having been served (and every instance of it being rejected).
    fhir_id = study_id(s, None if site == "web" else site)
    gone = _get(f"{_fhir(gw, site)}/ImagingStudy/{fhir_id}", 410)
    assert gone.json()["issue"][0]["code"] == "deleted"
