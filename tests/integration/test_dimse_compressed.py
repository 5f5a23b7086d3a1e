"""DIMSE sites receive every instance as the PACS stores it: compressed or not, any SOP class.

Over C-GET the instances come back on the retrieving association, so it must have a context
accepted in each stored syntax for each SOP class (PS3.4 C.4.3; one syntax per accepted
context, PS3.8 9.3.3.2); over C-MOVE our storage SCP must accept them all. The reference is
the file Orthanc stores (REST ``/instances/{id}/file``) and its ``TransferSyntax`` metadata;
what arrived over DIMSE is the site's cache file (kept as received).

Orthanc re-encodes a dataset when it sends it over DIMSE (DCMTK writes it anew: group lengths
and trailing padding dropped, sequences of undefined length given a length), so "as stored"
is checked as: the stored transfer syntax in the File Meta; the bytes after the File Meta
identical, or else the same elements with the same values, Pixel Data (compressed fragments
included) byte for byte. The WADO-RS part (``transfer-syntax=*``) names and carries the stored
syntax, except the two PS3.18 8.7.3 keeps off the web (Implicit VR Little Endian, Explicit VR
Big Endian), sent as Explicit VR Little Endian with the same values.

Besides the `testdata` set, this module stores a study of its own (fresh UIDs, deleted at the
end): pydicom's compressed files that share SOP Instance UIDs with others in `testdata` (so
Orthanc kept only one of each), plus an Encapsulated PDF and a Key Object Selection; twelve
SOP classes and fourteen transfer syntaxes in one study, more than the 128 contexts can give
one context per syntax each.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    KeyObjectSelectionDocumentStorage,
    generate_uid,
)
from pynetdicom import AE, build_context, build_role, evt

from ncpeh_dicomweb.dicomweb.transfer_syntaxes import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    TRANSFER_SYNTAXES,
)
from tests.conftest import DimseGateway, Pacs, running_dimse_gateway
from tests.integration.multipart_split import split_multipart
from tests.integration.util import after_meta

pytestmark = pytest.mark.integration

AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
GET_MODEL = "1.2.840.10008.5.1.4.1.2.2.3"  # Study Root Q/R - GET
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
SITES = ["czget", "czmove"]
NOCACHE = ["czget-nocache", "czmove-nocache"]
# Our own AE titles: C-MOVE destinations are registered in Orthanc by title, and a test
# session running beside this one registers the shared fixture's titles to its own ports.
MOVE_AETS = ("NCPEH-CZMOVE", "NCPEH-CZMOVE2")

# pydicom test files for the module's own study: (file, its stored transfer syntax).
FILES = [
    ("MR_small_jpeg_ls_lossless.dcm", "1.2.840.10008.1.2.4.80"),
    ("JPEGLSNearLossless_16.dcm", "1.2.840.10008.1.2.4.81"),
    ("SC_rgb_jls_lossy_line.dcm", "1.2.840.10008.1.2.4.81"),
    ("SC_rgb_jpeg_gdcm.dcm", "1.2.840.10008.1.2.4.70"),
    ("JPGExtended.dcm", "1.2.840.10008.1.2.4.51"),
    ("SC_rgb_jpeg_dcmtk.dcm", "1.2.840.10008.1.2.4.50"),
    ("examples_ybr_color.dcm", "1.2.840.10008.1.2.4.50"),  # US multi-frame, 30 frames
    ("MR_small_jp2klossless.dcm", "1.2.840.10008.1.2.4.90"),
    ("693_J2KI.dcm", "1.2.840.10008.1.2.4.91"),
    ("MR_small_RLE.dcm", "1.2.840.10008.1.2.5"),
    ("SC_rgb_rle_2frame.dcm", "1.2.840.10008.1.2.5"),
    ("MR_small_implicit.dcm", "1.2.840.10008.1.2"),
    ("MR_small_bigendian.dcm", "1.2.840.10008.1.2.2"),
    ("image_dfl.dcm", "1.2.840.10008.1.2.1.99"),
    ("CT_small.dcm", "1.2.840.10008.1.2.1"),
    ("liver_1frame.dcm", "1.2.840.10008.1.2.1"),  # Segmentation
    ("waveform_ecg.dcm", "1.2.840.10008.1.2.1"),  # 12-lead ECG
    ("test-SR.dcm", "1.2.840.10008.1.2.1"),  # Comprehensive SR
    ("reportsi.dcm", "1.2.840.10008.1.2.1"),  # Basic Text SR
    ("rtplan.dcm", "1.2.840.10008.1.2"),
    ("rtdose.dcm", "1.2.840.10008.1.2"),
]


@dataclass(frozen=True)
class Stored:
    """One instance as Orthanc holds it."""

    orthanc_id: str
    series: str
    sop_class: str
    syntax: str
    file: bytes


@dataclass(frozen=True)
class Study:
    uid: str
    instances: dict[str, Stored]  # by SOP Instance UID
    series: dict[str, list[str]]  # Series Instance UID -> SOP Instance UIDs
    whole: bool = True  # False: some of it cannot be asked for or cannot be sent (left out)


# ---------------------------------------------------------------------- Orthanc's side


def _stored(pacs: Pacs, orthanc_id: str, series: str) -> Stored:
    metadata = requests.get(f"{pacs.url}/instances/{orthanc_id}/metadata?expand", timeout=30)
    metadata.raise_for_status()
    file = requests.get(f"{pacs.url}/instances/{orthanc_id}/file", timeout=30)
    file.raise_for_status()
    return Stored(
        orthanc_id,
        series,
        metadata.json()["SopClassUid"],
        metadata.json()["TransferSyntax"],
        file.content,
    )


def _orthanc_study(pacs: Pacs, study_uid: str) -> Study | None:
    """What Orthanc holds of a study, leaving out instances whose SOP Instance UID is not
    unique (pydicom's test files repeat UIDs under other Patient IDs: Orthanc keeps them
    apart, a retrieve by UIDs cannot), and those Orthanc cannot send over DIMSE at all."""
    found = requests.post(f"{pacs.url}/tools/lookup", data=study_uid, timeout=30).json()
    ids = [f["ID"] for f in found if f["Type"] == "Study"]
    if not ids:
        return None
    instances: dict[str, Stored] = {}
    series: dict[str, list[str]] = {}
    whole = True
    for study_id in ids:
        for answer in requests.get(f"{pacs.url}/studies/{study_id}/instances", timeout=30).json():
            sop = answer["MainDicomTags"]["SOPInstanceUID"]
            twins = requests.post(f"{pacs.url}/tools/lookup", data=sop, timeout=30).json()
            if sum(t["Type"] == "Instance" for t in twins) != 1:
                whole = False
                continue
            parent = requests.get(f"{pacs.url}/instances/{answer['ID']}/series", timeout=30)
            series_uid = parent.json()["MainDicomTags"]["SeriesInstanceUID"]
            stored = _stored(pacs, answer["ID"], series_uid)
            if not _sendable(pacs, study_uid, sop, stored):
                whole = False
                continue
            instances[sop] = stored
            series.setdefault(series_uid, []).append(sop)
    return Study(study_uid, instances, series, whole)


def _sendable(pacs: Pacs, study: str, sop: str, stored: Stored) -> bool:
    """Whether Orthanc C-GETs the instance to a plain SCU that offers exactly its stored
    syntax. Orthanc 1.10 cannot send some files at all: pydicom's 15-frame 32-bit RT Dose in
    RLE (written by GDCM) fails with "storeSCU: No presentation context for: (OT) 31"."""
    ae = AE(ae_title="NCPEH-CZORACLE")
    contexts = [
        build_context(GET_MODEL),
        build_context(stored.sop_class, [stored.syntax]),
    ]
    assoc = ae.associate(
        "127.0.0.1",
        pacs.dicom_port,
        ae_title=pacs.aet,
        contexts=contexts,
        ext_neg=[build_role(stored.sop_class, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)],
    )
    assert assoc.is_established
    try:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "IMAGE"
        identifier.StudyInstanceUID = study
        identifier.SeriesInstanceUID = stored.series
        identifier.SOPInstanceUID = sop
        final = [status for status, _ in assoc.send_c_get(identifier, GET_MODEL)][-1]
        return int(final.Status) == 0 and int(final.get("NumberOfFailedSuboperations", 0)) == 0
    finally:
        assoc.release()


# ---------------------------------------------------------------------- the module's study


def _uid(*parts: str) -> str:
    return str(generate_uid(entropy_srcs=["ncpeh-dicomweb test_dimse_compressed", *parts]))


def _with_uids(ds: Dataset, study: str, name: str) -> Dataset:
    """``ds`` moved into the module's study under fresh UIDs (pixel data untouched)."""
    ds.PatientID = "NCPEH-COMPRESSED"
    ds.PatientName = "Compressed^Syntaxes"
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = _uid(name, "series")
    sop = _uid(name, "instance")
    ds.SOPInstanceUID = sop
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop)
    return ds


def _encoded(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _new(sop_class: str, modality: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.SOPClassUID = sop_class
    ds.Modality = modality
    ds.SeriesNumber = 99
    ds.InstanceNumber = 1
    ds.ContentDate = "20240101"
    ds.ContentTime = "120000"
    return ds


def _pdf() -> Dataset:
    ds = _new(EncapsulatedPDFStorage, "DOC")
    ds.ConversionType = "WSD"
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = "Befund"
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
    return ds


def _kos(referenced: Dataset) -> Dataset:
    ds = _new(KeyObjectSelectionDocumentStorage, "KO")
    ds.ValueType = "CONTAINER"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "113000", "DCM", "Of Interest"
    ds.ConceptNameCodeSequence = Sequence([code])
    ds.ContinuityOfContent = "SEPARATE"
    item = Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", "IMAGE"
    ref = Dataset()
    ref.ReferencedSOPClassUID = referenced.SOPClassUID
    ref.ReferencedSOPInstanceUID = referenced.SOPInstanceUID
    item.ReferencedSOPSequence = Sequence([ref])
    ds.ContentSequence = Sequence([item])
    return ds


@pytest.fixture(scope="module")
def gateway(pacs: Pacs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DimseGateway]:
    """A gateway of its own (C-GET and C-MOVE sites, with and without a cache) on Orthanc."""
    work = tmp_path_factory.mktemp("compressed-gateway")
    get_aets = ("NCPEH-CZGET", "NCPEH-CZGET2")
    with running_dimse_gateway(
        pacs, work, "cz", get_aets, MOVE_AETS, forget_destinations=True
    ) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def own_study(pacs: Pacs) -> Iterator[Study]:
    study_uid = _uid("study")
    files = []
    for name, _ in FILES:
        files.append(_with_uids(pydicom.dcmread(TEST_FILES / name), study_uid, name))
    files.append(_with_uids(_pdf(), study_uid, "pdf"))
    files.append(_with_uids(_kos(files[0]), study_uid, "kos"))
    study_ids = set()
    try:
        for ds in files:
            answer = requests.post(f"{pacs.url}/instances", data=_encoded(ds), timeout=60)
            assert answer.status_code == 200, answer.text
            study_ids.add(answer.json()["ParentStudy"])
        study = _orthanc_study(pacs, study_uid)
        assert study is not None and len(study.instances) == len(files)
        yield study
    finally:
        for study_id in study_ids:
            requests.delete(f"{pacs.url}/studies/{study_id}", timeout=60)


@pytest.fixture(scope="module")
def testdata(pacs: Pacs) -> list[Study]:
    studies = []
    for uid in dict.fromkeys(pacs.manifest["testdata"]["study_uids"]):
        study = _orthanc_study(pacs, uid)
        if study is not None and study.instances:
            studies.append(study)
    return studies


# ---------------------------------------------------------------------- the comparison


def _parts(url: str) -> dict[str, tuple[str, bytes]]:
    """SOP Instance UID -> (part Content-Type, body) of a WADO-RS retrieve as stored."""
    response = requests.get(url, headers={"Accept": AS_STORED}, timeout=120)
    assert response.status_code == 200, (url, response.status_code, response.text[:300])
    out = {}
    for headers, body in split_multipart(response.headers["Content-Type"], response.content):
        sop = str(pydicom.dcmread(io.BytesIO(body), stop_before_pixels=True).SOPInstanceUID)
        assert sop not in out, f"{sop} sent twice"
        out[sop] = (headers["content-type"], body)
    return out


def _elements(body: bytes, *, bulk: bool = True) -> Dataset:
    """The dataset without what a DIMSE sender may drop (group lengths, trailing padding);
    without OB/OW/UN values too unless ``bulk`` (their bytes follow the byte order)."""
    ds = pydicom.dcmread(io.BytesIO(body))
    for element in list(ds):
        tag = element.tag
        if tag.element == 0 or tag == 0xFFFCFFFC or (not bulk and element.VR in _BULK_VRS):
            del ds[tag]
        elif (
            element.VR == "OW"
            and tag == 0x7FE00010
            and ds.file_meta.TransferSyntaxUID in (_ENCAPSULATED)
        ):
            element.VR = "OB"  # some files say OW; DCMTK sends OB, as PS3.5 A.4 has it
    return ds


_ENCAPSULATED = {uid for uid, info in TRANSFER_SYNTAXES.items() if info.compressed}


_BULK_VRS = {"OB", "OW", "OD", "OF", "OL", "OV", "UN", "OB or OW", "US or OW"}


def _same_instance(body: bytes, stored: Stored) -> bool:
    """Asserts ``body`` is the stored instance in the stored syntax; True if byte-identical
    after the File Meta (else the same elements, Pixel Data byte for byte)."""
    meta = pydicom.dcmread(io.BytesIO(body), stop_before_pixels=True).file_meta
    assert meta.TransferSyntaxUID == stored.syntax, stored.sop_class
    assert meta.MediaStorageSOPClassUID == stored.sop_class
    if after_meta(body) == after_meta(stored.file):
        return True
    mine, theirs = _elements(body), _elements(stored.file)
    assert mine == theirs, stored.sop_class
    if "PixelData" in theirs:
        assert mine.PixelData == theirs.PixelData
    return False


def _web_syntax(stored: str) -> str:
    info = TRANSFER_SYNTAXES.get(stored)
    return EXPLICIT_VR_LITTLE_ENDIAN if info is not None and not info.web else stored


def _check_part(content_type: str, body: bytes, stored: Stored) -> None:
    """The WADO-RS part: as stored, or (a syntax kept off the web) the same values in ELE."""
    syntax = _web_syntax(stored.syntax)
    assert content_type == f"application/dicom; transfer-syntax={syntax}", stored.sop_class
    if syntax == stored.syntax:
        _same_instance(body, stored)
        return
    mine, theirs = _elements(body, bulk=False), _elements(stored.file, bulk=False)
    assert mine.file_meta.TransferSyntaxUID == syntax
    assert mine == theirs, stored.sop_class
    if "PixelData" in pydicom.dcmread(io.BytesIO(stored.file), stop_before_pixels=False):
        mine_px = pydicom.dcmread(io.BytesIO(body)).pixel_array
        theirs_px = pydicom.dcmread(io.BytesIO(stored.file)).pixel_array
        assert (mine_px == theirs_px).all()


def _cached(gateway: DimseGateway, site: str, study: str, sop: str, stored: Stored) -> bytes:
    """The instance as it arrived over DIMSE: the site's cache keeps it as received."""
    path = gateway.cache_root / f"cache-{site}" / "data" / study / stored.series / f"{sop}.dcm"
    return path.read_bytes()


def _check_study(gateway: DimseGateway, site: str, study: Study) -> tuple[int, int]:
    """The study through ``site`` (instance by instance if some of it cannot be asked for
    by UIDs): each instance arrived as stored, and its part says so; returns (instances,
    byte-identical after the File Meta)."""
    root = f"{gateway.root(site)}/studies/{study.uid}"
    if study.whole:
        got = _parts(root)
    else:
        got = {}
        for sop, stored in study.instances.items():
            got.update(_parts(f"{root}/series/{stored.series}/instances/{sop}"))
    assert set(study.instances) <= set(got), set(study.instances) - set(got)
    identical = 0
    for sop, stored in study.instances.items():
        identical += _same_instance(_cached(gateway, site, study.uid, sop, stored), stored)
        _check_part(*got[sop], stored)
    return len(study.instances), identical


# ---------------------------------------------------------------------- the tests


@pytest.mark.parametrize("site", SITES)
def test_own_study_arrives_as_stored(gateway: DimseGateway, own_study: Study, site: str) -> None:
    """One retrieve of twelve SOP classes in fourteen syntaxes: each instance as stored."""
    syntaxes = {s.syntax for s in own_study.instances.values()}
    assert syntaxes == {syntax for _, syntax in FILES}, "Orthanc changed a syntax on storing"
    classes = {s.sop_class for s in own_study.instances.values()}
    assert len(classes) == 12
    count, identical = _check_study(gateway, site, own_study)
    print(f"\n{site}: {count} instances as stored, {identical} byte-identical after the meta")
    assert count == len(FILES) + 2


@pytest.mark.parametrize("site", NOCACHE)
def test_own_instances_and_series_arrive_as_stored(
    gateway: DimseGateway, own_study: Study, site: str
) -> None:
    """Series and instance retrieves: planned from an IMAGE-level C-FIND instead."""
    root = f"{gateway.root(site)}/studies/{own_study.uid}"
    for series, sops in own_study.series.items():
        for sop in sops:
            got = _parts(f"{root}/series/{series}/instances/{sop}")
            assert set(got) == {sop}
            _check_part(*got[sop], own_study.instances[sop])
    series, sops = max(own_study.series.items(), key=lambda item: len(item[1]))
    got = _parts(f"{root}/series/{series}")
    assert set(got) == set(sops)


@pytest.mark.parametrize("site", SITES)
def test_testdata_arrives_as_stored(
    gateway: DimseGateway, testdata: list[Study], site: str
) -> None:
    """Every `testdata` study (pydicom's files: JPEG 2000, JPEG-LS, RLE, JPEG baseline and
    extended, Deflate, Big Endian, SR, waveform, SEG, RT) as Orthanc stores it."""
    compared = identical = 0
    for study in testdata:
        count, same = _check_study(gateway, site, study)
        compared, identical = compared + count, identical + same
    syntaxes = {s.syntax for study in testdata for s in study.instances.values()}
    print(f"\n{site}: {compared} instances as stored ({identical} byte-identical), {syntaxes}")
    assert compared >= 100
    compressed = {s for s in syntaxes if UID(s).is_compressed}
    assert len(compressed) >= 4, syntaxes  # J2K lossless and lossy, JPEG baseline, ...
