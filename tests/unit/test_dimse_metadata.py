"""DICOM JSON of a cached instance, including one with a malformed value (such files are in
PACS: pydicom's own test data has an IS of "1A")."""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from ncpeh_dicomweb.backends.dimse.instances import metadata_of


def _write(path: Path, series_number: str, nested_number: str) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds.SOPInstanceUID = "1.2.3.4"
    ds.PatientID = "P1"
    ds.SeriesNumber = "7"
    item = Dataset()
    item.CodeValue = "c"
    item.ReferencedFrameNumber = "3"
    ds.ContentSequence = Sequence([item])
    ds.save_as(path, enforce_file_format=True)
    # Corrupt the IS values the way a real file may carry them: same length, not a number.
    raw = path.read_bytes().replace(b"IS\x02\x007 ", b"IS\x02\x00" + series_number.encode())
    raw = raw.replace(b"IS\x02\x003 ", b"IS\x02\x00" + nested_number.encode())
    path.write_bytes(raw)
    return path


def test_a_well_formed_instance(tmp_path: Path) -> None:
    out = metadata_of(_write(tmp_path / "ok.dcm", "7 ", "3 "))
    assert out["00200011"] == {"vr": "IS", "Value": [7]}
    assert out["0040A730"]["Value"][0]["00081160"] == {"vr": "IS", "Value": [3]}


def test_a_malformed_value_is_left_out_and_the_rest_kept(tmp_path: Path) -> None:
    out = metadata_of(_write(tmp_path / "bad.dcm", "1A", "2B"))
    assert out["00200011"] == {"vr": "IS"}  # the attribute stays, without its value
    assert out["00100020"] == {"vr": "LO", "Value": ["P1"]}
    nested = out["0040A730"]["Value"][0]
    assert nested["00081160"] == {"vr": "IS"}
    assert nested["00080100"] == {"vr": "SH", "Value": ["c"]}


def test_an_empty_sequence_has_no_value(tmp_path: Path) -> None:
    """PS3.18 F.2.5, as Orthanc answers it."""
    path = _write(tmp_path / "empty.dcm", "7 ", "3 ")
    ds = dcmread(path)
    ds.ReferencedSeriesSequence = Sequence([])
    ds.ContentSequence[0].ReferencedSOPSequence = Sequence([])
    ds.save_as(path, enforce_file_format=True)
    out = metadata_of(path)
    assert out["00081115"] == {"vr": "SQ"}
    assert out["0040A730"]["Value"][0]["00081199"] == {"vr": "SQ"}
