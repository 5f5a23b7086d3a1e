"""The cheap read of a received data set's Study and Series UIDs, against pydicom's encoding."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from ncpeh_dicomweb.backends.dimse.received import dataset_uids

STUDY, SERIES = "1.2.3.4", "1.2.3.4.5"


def _encoded(ds: Dataset, syntax: str, undefined_lengths: bool = False) -> bytes:
    if undefined_lengths:
        for element in ds.iterall():
            if element.VR == "SQ":
                element.is_undefined_length = True
                for item in element.value:
                    item.is_undefined_length_sequence_item = True
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, syntax == ImplicitVRLittleEndian
    write_dataset(out, ds)
    return out.getvalue()


def _dataset() -> Dataset:
    ds = Dataset()
    ds.SOPInstanceUID = "1.2.3.4.5.6"
    ds.PatientName = "Test^Name"
    # a nested Series Instance UID before the dataset's own: must not be taken for it
    inner = Dataset()
    inner.SeriesInstanceUID = "9.9.9"
    inner.ReferencedSOPSequence = Sequence([Dataset()])
    ds.ReferencedSeriesSequence = Sequence([inner, Dataset()])
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = SERIES
    ds.InstanceNumber = 3
    return ds


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
@pytest.mark.parametrize("undefined", [False, True], ids=["defined", "undefined-lengths"])
def test_uids_as_pydicom_wrote_them(syntax: str, undefined: bool) -> None:
    encoded = _encoded(_dataset(), syntax, undefined)
    assert dataset_uids(encoded, syntax) == (STUDY, SERIES)
    assert dataset_uids(memoryview(encoded), syntax) == (STUDY, SERIES)


def test_compressed_syntaxes_walk_as_explicit_little_endian() -> None:
    encoded = _encoded(_dataset(), ExplicitVRLittleEndian)
    assert dataset_uids(encoded, "1.2.840.10008.1.2.4.90") == (STUDY, SERIES)


@pytest.mark.parametrize("syntax", [ExplicitVRBigEndian, "1.2.840.10008.1.2.1.99"])
def test_big_endian_and_deflated_are_left_to_pydicom(syntax: str) -> None:
    assert dataset_uids(_encoded(_dataset(), ExplicitVRLittleEndian), syntax) is None


def test_missing_or_truncated_is_none() -> None:
    ds = _dataset()
    del ds.SeriesInstanceUID
    assert dataset_uids(_encoded(ds, ExplicitVRLittleEndian), ExplicitVRLittleEndian) is None
    whole = _encoded(_dataset(), ExplicitVRLittleEndian, undefined_lengths=True)
    for cut in (3, 20, len(whole) // 2):
        assert dataset_uids(whole[:cut], ExplicitVRLittleEndian) is None
    assert dataset_uids(b"\xfe\xff\x00\xe0" + b"\xff" * 8, ImplicitVRLittleEndian) is None
