"""DICOM JSON to Native DICOM Model XML (PS3.19 A.1): checked against the schema's rules, read
back with an independent reader, and compared attribute by attribute with pydicom."""

from __future__ import annotations

import base64
import binascii
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset

from ncpeh_dicomweb.dicomweb.dicomxml import NATIVE_DICOM_NAMESPACE, to_native_xml

Q = f"{{{NATIVE_DICOM_NAMESPACE}}}"
XML_SPACE = "{http://www.w3.org/XML/1998/namespace}space"
DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'
DATA = Path(pydicom.__file__).parent / "data"  # bundled files only: get_testdata_file downloads

# PS3.19 A.1.6: the schema's VR values, NameComponents in order, PersonName groups in order.
SCHEMA_VRS = {
    "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FL", "FD", "IS", "LO", "LT", "OB", "OD", "OF",
    "OL", "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN",
    "UR", "US", "UT", "UV",
}  # fmt: skip
COMPONENTS = ["FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix"]
GROUPS = ["Alphabetic", "Ideographic", "Phonetic"]
INTEGER_VRS = {"IS", "SL", "SS", "SV", "UL", "US", "UV"}
DECIMAL_VRS = {"DS", "FL", "FD"}

Json = dict[str, Any]


# ---------------------------------------------------------------- the schema's rules (A.1.6)


def parse(document: bytes) -> ET.Element:
    """Parse one document and check everything of PS3.19 A.1.5/A.1.6 a reader can check."""
    assert document.startswith(DECLARATION)
    document.decode("utf-8")  # strict: well-formed UTF-8
    root = ET.fromstring(document)
    assert root.tag == Q + "NativeDicomModel"
    assert root.attrib == {XML_SPACE: "preserve"}
    assert not root.text and not root.tail
    check_data_set(root)
    return root


def check_data_set(parent: ET.Element) -> None:
    for attribute in parent:
        assert attribute.tag == Q + "DicomAttribute"
        check_attribute(attribute)
        # No group lengths (A.1.1); a private data element (gggg,xx00) is written gggg0000,
        # its privateCreator telling it apart. Private ones may share a tag (one per block).
        tag = int(attribute.attrib["tag"], 16)
        assert tag & 0xFFFF or "privateCreator" in attribute.attrib


def check_attribute(attribute: ET.Element) -> None:
    attrs = attribute.attrib
    assert {"tag"} <= set(attrs) <= {"tag", "vr", "keyword", "privateCreator"}, attrs
    tag = attrs["tag"]
    assert re.fullmatch(r"[0-9A-F]{8}", tag), tag
    vr = attrs.get("vr")
    assert vr is None or vr in SCHEMA_VRS, vr
    if "keyword" in attrs:
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", attrs["keyword"])
    if "privateCreator" in attrs:  # A.1.5: a private data element is gggg00ee, no keyword
        assert int(tag[:4], 16) & 1 and tag[4:6] == "00" and "keyword" not in attrs
    assert not attribute.text and all(not child.tail for child in attribute)
    kinds = {child.tag.removeprefix(Q) for child in attribute}
    assert len(kinds) <= 1, kinds  # BulkData | Value+ | Item+ | PersonName+ | InlineBinary
    kind = kinds.pop() if kinds else None
    children = list(attribute)
    if kind == "BulkData":
        assert len(children) == 1 and not children[0].text and not list(children[0])
        assert set(children[0].attrib) in ({"uri"}, {"uuid"})
    elif kind == "InlineBinary":
        assert len(children) == 1 and not list(children[0]) and not children[0].attrib
        base64.b64decode(children[0].text or "", validate=True)
    elif kind == "Value":
        assert vr not in ("SQ", "PN")  # A.1.5: Value is not used for SQ and PN
        numbered(children)
        assert all(not list(value) for value in children)
    elif kind == "Item":
        assert vr in (None, "SQ")
        numbered(children)
        for item in children:
            assert not item.text
            check_data_set(item)
    elif kind == "PersonName":
        assert vr in (None, "PN")
        numbered(children)
        for name in children:
            check_person_name(name)
    else:
        assert kind is None, kind


def numbered(children: list[ET.Element]) -> None:
    """A.1.5: number= from 1 by 1, the only XML attribute."""
    assert [c.attrib for c in children] == [{"number": str(i)} for i in range(1, len(children) + 1)]


def check_person_name(name: ET.Element) -> None:
    assert not name.text
    groups = [group.tag.removeprefix(Q) for group in name]
    assert groups == [g for g in GROUPS if g in groups]  # each at most once, in schema order
    for group in name:
        assert not group.attrib and not group.text and not group.tail
        components = [c.tag.removeprefix(Q) for c in group]
        assert components == [c for c in COMPONENTS if c in components]
        for component in group:
            assert not component.attrib and not list(component) and not component.tail


# ------------------------------------------------------- an independent reader back to JSON


def read(document: bytes) -> Json:
    return read_data_set(parse(document))


def by_tag(parent: ET.Element) -> dict[int, ET.Element]:
    """The DicomAttribute elements of a data set by their DICOM tag (private blocks restored)."""
    blocks: dict[tuple[int, str], int] = {}
    for attribute in parent:
        tag = int(attribute.attrib["tag"], 16)
        value = attribute.find(Q + "Value")
        is_creator = tag >> 16 & 1 and 0x10 <= tag & 0xFFFF <= 0xFF
        if is_creator and "privateCreator" not in attribute.attrib and value is not None:
            blocks[(tag >> 16, (value.text or "").strip(" "))] = tag & 0xFF
    out = {}
    for attribute in parent:
        tag = int(attribute.attrib["tag"], 16)
        creator = attribute.get("privateCreator")
        if creator is not None:
            tag = (tag & 0xFFFF00FF) | blocks[(tag >> 16, creator)] << 8
        assert tag not in out
        out[tag] = attribute
    return out


def read_data_set(parent: ET.Element) -> Json:
    return {f"{tag:08X}": read_attribute(a) for tag, a in by_tag(parent).items()}


def read_attribute(attribute: ET.Element) -> Json:
    vr = attribute.get("vr")
    out: Json = {"vr": vr}
    children = list(attribute)
    if not children:
        return out
    kind = children[0].tag.removeprefix(Q)
    if kind == "BulkData":
        out["BulkDataURI"] = children[0].attrib["uri"]
    elif kind == "InlineBinary":
        out["InlineBinary"] = children[0].text
    elif kind == "Item":
        out["Value"] = [read_data_set(item) for item in children]
    elif kind == "PersonName":
        out["Value"] = [read_person_name(name) for name in children]
    else:
        out["Value"] = [read_value(value.text, vr) for value in children]
    return out


def read_person_name(name: ET.Element) -> Json | None:
    groups = {}
    for group in name:
        parts = {c.tag.removeprefix(Q): c.text or "" for c in group}
        groups[group.tag.removeprefix(Q)] = "^".join(parts.get(c, "") for c in COMPONENTS).rstrip(
            "^"
        )
    return groups or None


def read_value(text: str | None, vr: str | None) -> Any:
    if not text:
        return None
    if vr in INTEGER_VRS:
        return int(text)
    if vr in DECIMAL_VRS:
        return float(text)
    return text


def expected(dataset: Json) -> Json:
    """What reading the XML back must give: the documented normalisation of ``dataset``."""
    out = {}
    for key, element in dataset.items():
        if int(key, 16) & 0xFFFF:  # group lengths are left out
            out[key.upper()] = expected_attribute(element)
    return out


def expected_attribute(element: Json) -> Json:
    vr = str(element["vr"])
    out: Json = {"vr": vr}
    values = element.get("Value")
    if values:
        if vr == "SQ":
            out["Value"] = [expected(item or {}) for item in values]
        elif vr == "PN":
            out["Value"] = [expected_name(name) for name in values]
        else:
            out["Value"] = [
                None if v in ("", None) else v.upper() if vr == "AT" else v for v in values
            ]
    elif "BulkDataURI" in element:
        out["BulkDataURI"] = element["BulkDataURI"]
    elif "InlineBinary" in element:
        out["InlineBinary"] = element["InlineBinary"]
    return out


def expected_name(name: Json | None) -> Json | None:
    groups = {g: name[g].rstrip("^") for g in GROUPS if name and name.get(g, "").strip("^")}
    return groups or None


# ------------------------------------------------------------------------ real data sets

REAL_FILES = [
    "test_files/CT_small.dcm",
    "test_files/MR_small.dcm",
    "test_files/rtplan.dcm",
    "test_files/test-SR.dcm",
    "test_files/reportsi_with_empty_number_tags.dcm",
    "test_files/examples_overlay.dcm",  # repeating group (60xx) keywords
    "test_files/examples_ybr_color.dcm",  # AT, UT
    "test_files/JPEG2000.dcm",
    "test_files/waveform_ecg.dcm",
    "test_files/nested_priv_SQ.dcm",  # private sequences in private sequences
    "test_files/priv_SQ.dcm",
    "test_files/UN_sequence.dcm",
    "charset_files/chrH31.dcm",  # Japanese PN: three component groups
    "charset_files/chrKoreanMulti.dcm",
    "charset_files/chrX1.dcm",  # UTF-8
    "charset_files/chrFren.dcm",  # Latin-1
    "charset_files/chrGreek.dcm",
    "charset_files/chrArab.dcm",
    "charset_files/chrSQEncoding.dcm",  # character set inside a sequence
]


def bulk_uri(element: Any) -> str:
    # with characters that need escaping in an XML attribute
    return f'https://gw.example/dicom-web/studies/1/bulk/{element.tag:08X}?a=1&b="<2>"'


def to_json(ds: Dataset) -> Json:
    json: Json = ds.to_json_dict(bulk_data_threshold=256, bulk_data_element_handler=bulk_uri)
    return json


@pytest.mark.parametrize("name", REAL_FILES)
def test_real_data_set_reads_back_as_its_dicom_json(name: str) -> None:
    ds = pydicom.dcmread(DATA / name)
    dataset = to_json(ds)
    assert read(to_native_xml(dataset)) == expected(dataset)


@pytest.mark.parametrize("name", REAL_FILES)
def test_real_data_set_attribute_by_attribute_against_pydicom(name: str) -> None:
    ds = pydicom.dcmread(DATA / name)
    compare_with_pydicom(ds, parse(to_native_xml(to_json(ds))))


def compare_with_pydicom(ds: Dataset, parent: ET.Element) -> None:
    found = by_tag(parent)
    wanted = [elem for elem in ds if elem.tag.element != 0]
    assert sorted(found) == sorted(int(elem.tag) for elem in wanted)
    for elem in wanted:
        attribute = found[int(elem.tag)]
        where = f"{int(elem.tag):08X}"
        assert attribute.get("vr") == str(elem.VR), where
        if elem.tag.is_private:
            assert "keyword" not in attribute.attrib, where
            creator = ds.get((elem.tag.group, elem.tag.element >> 8))
            if elem.tag.element >= 0x1000 and creator is not None and creator.value:
                assert attribute.get("privateCreator") == creator.value.strip(), where
            else:  # a Private Creator, or an element whose creator is not in the data set
                assert "privateCreator" not in attribute.attrib, where
        else:
            # DataElement.keyword misses repeating groups (60xx,0010): the dictionary has them
            keyword = elem.keyword or keyword_for_tag(elem.tag) or None
            assert attribute.get("keyword") == keyword, where
            assert "privateCreator" not in attribute.attrib
        children = list(attribute)
        if elem.VR == "SQ":
            assert len(children) == len(elem.value), where
            for item, child in zip(elem.value, children, strict=True):
                compare_with_pydicom(item, child)
        elif elem.is_empty:
            assert children == [], where
        elif children[0].tag in (Q + "BulkData", Q + "InlineBinary"):
            assert len(children) == 1
        else:
            kind = "PersonName" if elem.VR == "PN" else "Value"
            assert [c.tag for c in children] == [Q + kind] * elem.VM, where


# ------------------------------------------------------------------------ format, exactly


def test_document_bytes() -> None:
    dataset = {
        "00201208": {"vr": "IS", "Value": [12]},
        "00100020": {"vr": "LO", "Value": ["P-1"]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
        "00080020": {"vr": "DA"},
    }
    assert to_native_xml(dataset) == (
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b'<NativeDicomModel xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM"'
        b' xml:space="preserve">'
        b'<DicomAttribute tag="00080020" vr="DA" keyword="StudyDate"/>'
        b'<DicomAttribute tag="00100010" vr="PN" keyword="PatientName"><PersonName number="1">'
        b"<Alphabetic><FamilyName>Doe</FamilyName><GivenName>Jane</GivenName></Alphabetic>"
        b"</PersonName></DicomAttribute>"
        b'<DicomAttribute tag="00100020" vr="LO" keyword="PatientID"><Value number="1">P-1'
        b"</Value></DicomAttribute>"
        b'<DicomAttribute tag="00201208" vr="IS" keyword="NumberOfStudyRelatedInstances">'
        b'<Value number="1">12</Value></DicomAttribute>'
        b"</NativeDicomModel>"
    )


def test_empty_data_set() -> None:
    root = parse(to_native_xml({}))
    assert list(root) == []


# ------------------------------------------------------------------------------ person names


def names(value: list[Any]) -> list[dict[str, list[tuple[str, str]]]]:
    """Each PersonName as {group: [(component, text), ...]}."""
    root = parse(to_native_xml({"00100010": {"vr": "PN", "Value": value}}))
    return [
        {g.tag.removeprefix(Q): [(c.tag.removeprefix(Q), c.text or "") for c in g] for g in name}
        for name in root.iter(Q + "PersonName")
    ]


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        (
            [
                {
                    "Alphabetic": "Yamada^Tarou",
                    "Ideographic": "山田^太郎",
                    "Phonetic": "やまだ^たろう",
                }
            ],
            [
                {
                    "Alphabetic": [("FamilyName", "Yamada"), ("GivenName", "Tarou")],
                    "Ideographic": [("FamilyName", "山田"), ("GivenName", "太郎")],
                    "Phonetic": [("FamilyName", "やまだ"), ("GivenName", "たろう")],
                }
            ],
        ),
        (  # PS3.5 6.2.1.1's example: five components, the middle one empty
            [{"Alphabetic": "Adams^John Robert Quincy^^Rev.^B.A. M.Div."}],
            [
                {
                    "Alphabetic": [
                        ("FamilyName", "Adams"),
                        ("GivenName", "John Robert Quincy"),
                        ("NamePrefix", "Rev."),
                        ("NameSuffix", "B.A. M.Div."),
                    ]
                }
            ],
        ),
        ([{"Alphabetic": "^^Maria"}], [{"Alphabetic": [("MiddleName", "Maria")]}]),
        ([{"Alphabetic": "Morrison-Jones^Susan^^^Ph.D., Chief Executive Officer"}], None),
        (
            [{"Ideographic": "洪^吉洞"}],
            [{"Ideographic": [("FamilyName", "洪"), ("GivenName", "吉洞")]}],
        ),
        ([{"Alphabetic": "Wang", "Phonetic": "ワン"}], None),
        ([{"Alphabetic": ""}], [{}]),  # one empty name: the value is there, without groups
        ([{}], [{}]),
        (
            [{"Alphabetic": "A^B"}, None, {"Alphabetic": "C"}],  # an empty value among several
            [
                {"Alphabetic": [("FamilyName", "A"), ("GivenName", "B")]},
                {},
                {"Alphabetic": [("FamilyName", "C")]},
            ],
        ),
        (  # not PS3.5, but nothing is lost: past the fifth, components stay in NameSuffix
            [{"Alphabetic": "a^b^c^d^e^f"}],
            [
                {
                    "Alphabetic": [
                        ("FamilyName", "a"),
                        ("GivenName", "b"),
                        ("MiddleName", "c"),
                        ("NamePrefix", "d"),
                        ("NameSuffix", "e^f"),
                    ]
                }
            ],
        ),
        (["Doe^John"], [{"Alphabetic": [("FamilyName", "Doe"), ("GivenName", "John")]}]),
    ],
)
def test_person_names(value: list[Any], parsed: list[Any] | None) -> None:
    if parsed is not None:
        assert names(value) == parsed
    dataset = {"00100010": {"vr": "PN", "Value": value}}
    wanted = [{"Alphabetic": v} if isinstance(v, str) else v for v in value]
    assert read(to_native_xml(dataset)) == expected({"00100010": {"vr": "PN", "Value": wanted}})


def test_person_name_numbers_in_a_multi_valued_attribute() -> None:
    value = [{"Alphabetic": f"Name{i}"} for i in range(1, 12)]
    root = parse(to_native_xml({"00081060": {"vr": "PN", "Value": value}}))  # NameOfPhysicians
    numbers = [n.attrib["number"] for n in root.iter(Q + "PersonName")]
    assert numbers == [str(i) for i in range(1, 12)]


# ---------------------------------------------------------------------------- empty values


def test_empty_values() -> None:
    dataset = {
        "00080050": {"vr": "SH"},  # zero length (F.2.5): no Value at all
        "00080060": {"vr": "CS", "Value": []},
        "00080070": {"vr": "LO", "Value": [""]},
        "00080008": {"vr": "CS", "Value": ["MPG", None, "XR3"]},  # A.1.5's own example
        "00081032": {"vr": "SQ", "Value": []},
        "00081140": {"vr": "SQ", "Value": [{}, {"00081150": {"vr": "UI"}}]},
        "00100010": {"vr": "PN"},
        "7FE00010": {"vr": "OW"},
    }
    root = parse(to_native_xml(dataset))
    found = {a.attrib["tag"]: a for a in root}
    for tag in ("00080050", "00080060", "00081032", "00100010", "7FE00010"):
        assert list(found[tag]) == [] and not found[tag].text, tag
    assert [(v.attrib["number"], v.text) for v in found["00080070"]] == [("1", None)]
    assert [(v.attrib["number"], v.text) for v in found["00080008"]] == [
        ("1", "MPG"),
        ("2", None),
        ("3", "XR3"),
    ]
    items = list(found["00081140"])
    assert [i.attrib["number"] for i in items] == ["1", "2"]
    assert list(items[0]) == []
    assert [a.attrib for a in items[1]] == [
        {"tag": "00081150", "vr": "UI", "keyword": "ReferencedSOPClassUID"}
    ]
    assert read(to_native_xml(dataset)) == expected(dataset)


# -------------------------------------------------------------------------- nested sequences


def test_nested_sequences() -> None:
    code = {
        "00080100": {"vr": "SH", "Value": ["T-04000"]},
        "00080102": {"vr": "SH", "Value": ["SRT"]},
        "00080104": {"vr": "LO", "Value": ["Breast"]},
    }
    dataset = {
        "0040A730": {  # ContentSequence > ContentSequence > ConceptNameCodeSequence
            "vr": "SQ",
            "Value": [
                {"0040A010": {"vr": "CS", "Value": ["CONTAINS"]}},
                {
                    "0040A040": {"vr": "CS", "Value": ["CONTAINER"]},
                    "0040A730": {
                        "vr": "SQ",
                        "Value": [
                            {"0040A043": {"vr": "SQ", "Value": [code]}},
                            {"0040A043": {"vr": "SQ", "Value": [code, code]}},
                        ],
                    },
                },
            ],
        }
    }
    document = to_native_xml(dataset)
    root = parse(document)
    # PS3.19 A.1.7's XPath style reaches into the levels
    meaning = root.find(
        f"./{Q}DicomAttribute[@keyword='ContentSequence']/{Q}Item[@number='2']"
        f"/{Q}DicomAttribute[@keyword='ContentSequence']/{Q}Item[@number='2']"
        f"/{Q}DicomAttribute[@keyword='ConceptNameCodeSequence']/{Q}Item[@number='2']"
        f"/{Q}DicomAttribute[@keyword='CodeMeaning']/{Q}Value[@number='1']"
    )
    assert meaning is not None and meaning.text == "Breast"
    assert read(document) == expected(dataset)


# ------------------------------------------------------------------------------- bulk data


def test_bulk_data_and_inline_binary() -> None:
    uri = "https://gw.example/dicom-web/studies/1.2/series/3.4/instances/5.6/bulk/7FE00010?a=1&b=2"
    dataset = {
        "7FE00010": {"vr": "OW", "BulkDataURI": uri},
        "00283006": {"vr": "US", "BulkDataURI": uri + "&lut"},  # a large US value, A.1.5
        "00091010": {"vr": "UN", "InlineBinary": base64.b64encode(b"\x00\x01<&>").decode()},
        "00090010": {"vr": "LO", "Value": ["ACME"]},
    }
    document = to_native_xml(dataset)
    assert b"?a=1&amp;b=2" in document
    root = parse(document)
    bulk = root.find(f"./{Q}DicomAttribute[@tag='7FE00010']/{Q}BulkData")
    assert bulk is not None and bulk.attrib == {"uri": uri}
    inline = root.find(f"./{Q}DicomAttribute[@privateCreator='ACME']/{Q}InlineBinary")
    assert inline is not None and base64.b64decode(inline.text or "") == b"\x00\x01<&>"
    assert read(document) == expected(dataset)


# ---------------------------------------------------------------------- escaping, non-ASCII


@pytest.mark.parametrize(
    "text",
    [
        "<script>alert('x')</script>",
        "R&D \"quoted\" 'single'",
        "a ]]> b",
        "&amp; stays literal",
        "line 1\r\nline 2\rline 3\nline 4",  # CR must survive end-of-line normalisation
        "\ttabbed\t",
        "  leading and trailing spaces  ",
        "Müller^Jürgen",
        "Dubois^Élodie",
        "Παπαδόπουλος",
        "Иванов",
        "山田太郎",
        "😀 astral plane",
    ],
)
def test_text_survives(text: str) -> None:
    dataset = {
        "00081030": {"vr": "LO", "Value": [text]},
        "00204000": {"vr": "LT", "Value": [text]},
        "00090010": {"vr": "LO", "Value": [text]},
        "00091001": {"vr": "LO", "Value": [text]},
        "00081190": {"vr": "UR", "Value": ["https://x/?q=" + text]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": f"{text}^{text}"}]},
    }
    document = to_native_xml(dataset)
    root = parse(document)
    private = root.find(f"./{Q}DicomAttribute[@tag='00090001']")
    assert private is not None and private.get("privateCreator") == text.strip(" ")
    if text == text.strip(" "):
        assert read(document) == expected(dataset)


def test_non_ascii_is_utf8_not_references() -> None:
    document = to_native_xml({"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Nowak^Łukasz"}]}})
    assert "Łukasz".encode() in document
    assert b"&#" not in document


@pytest.mark.parametrize(
    ("text", "written"),
    [
        ("form\x0cfeed", "form\ufffdfeed"),  # LT may hold FF (PS3.5 6.2); XML 1.0 cannot
        ("nul\x00", "nul\ufffd"),
        ("esc\x1b$B", "esc\ufffd$B"),
        ("lone \ud800 surrogate", "lone \ufffd surrogate"),
        ("not a character \ufffe", "not a character \ufffd"),
    ],
)
def test_characters_xml_cannot_carry(text: str, written: str) -> None:
    root = parse(to_native_xml({"00204000": {"vr": "LT", "Value": [text]}}))
    value = root.find(f"./{Q}DicomAttribute/{Q}Value")
    assert value is not None and value.text == written


# ----------------------------------------------------------------------------------- values


def values_of(dataset: Json) -> list[str | None]:
    root = parse(to_native_xml(dataset))
    return [v.text for v in root.iter(Q + "Value")]


@pytest.mark.parametrize(
    ("element", "texts"),
    [
        ({"vr": "IS", "Value": [12, -3, 0]}, ["12", "-3", "0"]),
        (
            {"vr": "DS", "Value": [0.5, 1e-05, 1.0, -2, 12345678.9]},
            ["0.5", "1e-05", "1.0", "-2", "12345678.9"],
        ),
        ({"vr": "DS", "Value": ["0.50", " 7 "]}, ["0.50", " 7 "]),  # strings stay as they are
        ({"vr": "FD", "Value": [3.141592653589793]}, ["3.141592653589793"]),
        ({"vr": "US", "Value": [1, 65535]}, ["1", "65535"]),
        ({"vr": "SV", "Value": [-(2**63)]}, [str(-(2**63))]),
        ({"vr": "AT", "Value": ["0010001a", "7FE00010"]}, ["0010001A", "7FE00010"]),
        ({"vr": "UI", "Value": ["1.2.840.10008.1.2.1"]}, ["1.2.840.10008.1.2.1"]),
    ],
)
def test_values_as_in_json(element: Json, texts: list[str]) -> None:
    assert values_of({"00280034": element}) == texts


# ------------------------------------------------------------------ tags, keywords, private


def attributes(dataset: Json) -> list[dict[str, str]]:
    return [dict(a.attrib) for a in parse(to_native_xml(dataset))]


def test_tags_in_ascending_order_upper_case_and_no_group_length() -> None:
    dataset = {
        "7fe00010": {"vr": "OW"},
        "00100000": {"vr": "UL", "Value": [10]},  # group length: left out (A.1.1)
        "0020000d": {"vr": "UI", "Value": ["1.2"]},
        "00080005": {"vr": "CS", "Value": ["ISO_IR 192"]},
    }
    assert [a["tag"] for a in attributes(dataset)] == ["00080005", "0020000D", "7FE00010"]


@pytest.mark.parametrize(
    ("tag", "keyword"),
    [
        ("00100010", "PatientName"),
        ("60023000", "OverlayData"),  # a repeating group
        ("00280034", "PixelAspectRatio"),
        ("0008FFFE", None),  # unknown to the dictionary: no keyword (A.1.5 allows it)
    ],
)
def test_keyword(tag: str, keyword: str | None) -> None:
    (attribute,) = attributes({tag: {"vr": "UN"}})
    assert attribute.get("keyword") == keyword


def test_private_data_elements() -> None:
    dataset = {
        "00090010": {"vr": "LO", "Value": ["ACME 1.0"]},
        "00090011": {"vr": "LO", "Value": ["OTHER & CO"]},
        "00091001": {"vr": "DS", "Value": [1.5]},
        "00091101": {"vr": "SH", "Value": ["other"]},
        "00291010": {"vr": "UN", "InlineBinary": "AAE="},  # its creator is not in the data set
    }
    assert attributes(dataset) == [
        {"tag": "00090010", "vr": "LO"},
        {"tag": "00090011", "vr": "LO"},
        {"tag": "00090001", "vr": "DS", "privateCreator": "ACME 1.0"},
        {"tag": "00090001", "vr": "SH", "privateCreator": "OTHER & CO"},
        {"tag": "00291010", "vr": "UN"},
    ]
    assert read(to_native_xml({k: v for k, v in dataset.items() if k != "00291010"})) == expected(
        {k: v for k, v in dataset.items() if k != "00291010"}
    )


def test_private_creator_in_a_sequence_item_is_that_items_own() -> None:
    dataset = {
        "00090010": {"vr": "LO", "Value": ["OUTER"]},
        "00091001": {
            "vr": "SQ",
            "Value": [
                {
                    "00090010": {"vr": "LO", "Value": ["INNER"]},
                    "00091002": {"vr": "LO", "Value": ["x"]},
                }
            ],
        },
    }
    root = parse(to_native_xml(dataset))
    outer = root.find(f"./{Q}DicomAttribute[@privateCreator]")
    inner = root.find(f".//{Q}Item/{Q}DicomAttribute[@privateCreator]")
    assert outer is not None and outer.attrib["privateCreator"] == "OUTER"
    assert inner is not None and inner.attrib == {
        "tag": "00090002",
        "vr": "LO",
        "privateCreator": "INNER",
    }


@pytest.mark.parametrize(
    ("tag", "vr", "written"),
    [
        ("00100010", None, "PN"),  # no vr in the JSON: the dictionary's
        ("00100010", "XX", "PN"),  # not a VR
        ("00280106", None, None),  # "US or SS": ambiguous, the XML attribute is optional
        ("00091001", None, None),  # private: unknown
        ("00091001", "LO", "LO"),
    ],
)
def test_vr_attribute(tag: str, vr: str | None, written: str | None) -> None:
    element: Json = {"Value": [{"Alphabetic": "A"}] if tag == "00100010" else ["1"]}
    if vr is not None:
        element["vr"] = vr
    (attribute,) = attributes({tag: element})
    assert attribute.get("vr") == written


# ------------------------------------------------------------------------- not DICOM JSON


@pytest.mark.parametrize(
    "dataset",
    [
        {"0010": {"vr": "LO"}},
        {"0010001G": {"vr": "LO"}},
        {"PatientName": {"vr": "PN"}},
        {"00100020": "P1"},
        {"00100020": {"vr": "LO", "Value": [["nested"]]}},
        {"00100020": {"vr": "LO", "Value": [{"a": 1}]}},
        {"00081140": {"vr": "SQ", "Value": ["not an item"]}},
        {"00100010": {"vr": "PN", "Value": [1]}},
        {"00100010": {"vr": "PN", "Value": [{"Alphabetic": 1}]}},
    ],
)
def test_not_dicom_json(dataset: Json) -> None:
    with pytest.raises(ValueError, match=r"DICOM JSON|PN"):
        to_native_xml(dataset)


def test_inline_binary_is_base64_text() -> None:
    root = parse(to_native_xml({"00420011": {"vr": "OB", "InlineBinary": "AQID"}}))
    inline = root.find(f"./{Q}DicomAttribute/{Q}InlineBinary")
    assert inline is not None and binascii.a2b_base64(inline.text or "") == b"\x01\x02\x03"
