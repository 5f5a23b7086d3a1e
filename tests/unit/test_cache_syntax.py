"""The instance cache knows each file's transfer syntax without a DICOM library: read from the
file meta as it is written or adopted, kept with the study's listing across restarts."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit

from ncpeh_dicomweb.backends.cache import InstanceCache, file_syntax
from ncpeh_dicomweb.backends.dimse.instances import stored_syntax

STUDY, SERIES = "1.2.3", "1.2.3.4"


def _part10(sop: str, syntax: str, *, extra_meta: bool = False) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = syntax
    if extra_meta:  # a long OB value before (0002,0010): the 4-byte length form
        meta.FileMetaInformationVersion = b"\x00\x01"
        meta.PrivateInformationCreatorUID = "1.2.9"
        meta.PrivateInformation = b"x" * 300
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPInstanceUID = sop
    ds.PatientID = "P"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.parametrize(
    "syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit]
)
@pytest.mark.parametrize("extra_meta", [False, True])
def test_file_syntax_reads_the_meta_as_pydicom_does(syntax: str, extra_meta: bool) -> None:
    data = _part10("1.2.3.4.5", syntax, extra_meta=extra_meta)
    assert file_syntax(data) == syntax
    assert pydicom.dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID == syntax


@pytest.mark.parametrize(
    "head",
    [
        b"",
        b"\0" * 132,  # no DICM
        b"\0" * 128 + b"DICM",  # nothing after it
        b"\0" * 128 + b"DICM" + b"\x08\x00\x05\x00CS\x02\x00IR",  # group 0008 first
    ],
)
def test_file_syntax_is_none_when_the_head_does_not_show_one(head: bytes) -> None:
    assert file_syntax(head) is None


def test_a_cut_head_gives_none_never_a_partial_uid() -> None:
    data = _part10("1.2.3.4.5", JPEGBaseline8Bit)
    end = data.index(JPEGBaseline8Bit.encode()) + 5
    assert file_syntax(data[:end]) is None


def test_written_and_adopted_instances_carry_their_syntax(tmp_path: Path) -> None:
    cache = InstanceCache(tmp_path / "c", 1 << 30)
    with cache.writer(STUDY, SERIES, "1.1") as writer:
        data = _part10("1.1", JPEGBaseline8Bit)
        for at in range(0, len(data), 7):  # written in small pieces
            writer.write(data[at : at + 7])
        assert writer.commit().syntax == JPEGBaseline8Bit
    source = tmp_path / "in.dcm"
    source.write_bytes(_part10("1.2", ImplicitVRLittleEndian))
    assert cache.adopt(STUDY, SERIES, "1.2", source).syntax == ImplicitVRLittleEndian
    got = cache.get(STUDY, SERIES, "1.1")
    assert got is not None and got.syntax == JPEGBaseline8Bit


def test_the_listing_keeps_the_syntaxes_across_a_restart(tmp_path: Path) -> None:
    root = tmp_path / "c"
    cache = InstanceCache(root, 1 << 30)
    for sop, syntax in (("1.1", ExplicitVRLittleEndian), ("1.2", JPEGBaseline8Bit)):
        with cache.writer(STUDY, SERIES, sop) as writer:
            writer.write(_part10(sop, syntax))
            writer.commit()
    with cache.writer(STUDY, SERIES, "1.3") as writer:  # not in the listing
        writer.write(_part10("1.3", ExplicitVRLittleEndian))
        writer.commit()
    assert cache.record_listing(STUDY, None, [(SERIES, "1.1"), (SERIES, "1.2")])
    again = InstanceCache(root, 1 << 30)
    listed = again.listing(STUDY)
    assert listed is not None
    assert [i.syntax for i in listed] == [ExplicitVRLittleEndian, JPEGBaseline8Bit]
    unlisted = again.get(STUDY, SERIES, "1.3")
    assert unlisted is not None and unlisted.syntax is None  # read from the file when asked


def test_an_older_listing_without_syntaxes_still_answers(tmp_path: Path) -> None:
    root = tmp_path / "c"
    cache = InstanceCache(root, 1 << 30)
    with cache.writer(STUDY, SERIES, "1.1") as writer:
        writer.write(_part10("1.1", JPEGBaseline8Bit))
        writer.commit()
    assert cache.record_listing(STUDY, None, [(SERIES, "1.1")])
    listing = root / "listings" / STUDY / "study.json"
    doc = json.loads(listing.read_bytes())
    del doc["syntaxes"]
    listing.write_text(json.dumps(doc))
    again = InstanceCache(root, 1 << 30)
    listed = again.listing(STUDY)
    assert listed is not None and listed[0].syntax is None
    known = again.note_syntax(listed[0], stored_syntax(listed[0].path))
    assert known.syntax == JPEGBaseline8Bit
    relisted = again.listing(STUDY)
    assert relisted is not None and relisted[0].syntax == JPEGBaseline8Bit


def test_pins_are_counted_in_the_stats(tmp_path: Path) -> None:
    cache = InstanceCache(tmp_path / "c", 1 << 30)
    with cache.writer(STUDY, SERIES, "1.1", pin=True) as writer:
        writer.write(_part10("1.1", ExplicitVRLittleEndian))
        item = writer.commit()
    assert cache.stats.pinned == 1
    cache.unpin([item])
    assert cache.stats.pinned == 0
