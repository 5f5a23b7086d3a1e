from __future__ import annotations

from io import BytesIO

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

from ncpeh_dicomweb.dicomweb.part10 import NEED_MORE, transfer_syntax_of


def _file(syntax: str) -> bytes:
    ds = Dataset()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = BytesIO()
    ds.save_as(out, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, JPEGBaseline8Bit])
def test_reads_the_syntax_whole_and_byte_by_byte(syntax: str) -> None:
    data = _file(syntax)
    assert transfer_syntax_of(data) == syntax
    results = [transfer_syntax_of(data[:n]) for n in range(len(data) + 1)]
    first = next(i for i, r in enumerate(results) if r != NEED_MORE)
    assert all(r == NEED_MORE for r in results[:first])
    assert all(r == syntax for r in results[first:])


def test_not_part10() -> None:
    with pytest.raises(ValueError, match="DICM"):
        transfer_syntax_of(b"\0" * 200)
    with pytest.raises(ValueError, match="Transfer Syntax"):
        transfer_syntax_of(b"\0" * 128 + b"DICM" + b"\x08\x00\x16\x00UI\x02\x001\0")
