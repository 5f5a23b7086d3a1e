"""DICOM JSON (PS3.18 F.2) as Native DICOM Model XML (PS3.19 A.1): ``application/dicom+xml``.

A QIDO-RS or Retrieve Metadata response in XML (PS3.18 8.7.5, F.3) is a
``multipart/related; type="application/dicom+xml"`` body with one part per data set, each part
a ``<NativeDicomModel>`` document. :func:`to_native_xml` builds one such document from one data
set in the DICOM JSON model, the form every backend already answers in::

    <?xml version="1.0" encoding="UTF-8"?>
    <NativeDicomModel xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM" xml:space="preserve">
    <DicomAttribute tag="00100010" vr="PN" keyword="PatientName">
    <PersonName number="1"><Alphabetic><FamilyName>Doe</FamilyName>...</Alphabetic></PersonName>
    </DicomAttribute>...</NativeDicomModel>

(without the line breaks: ``xml:space="preserve"`` makes every character significant, so the
writer adds no indentation). The document is written as text rather than through an XML
library so that escaping is exact: a carriage return in an LT value must survive a parser's
end-of-line normalisation (XML 1.0 2.11), which only a character reference achieves.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag

__all__ = ["NATIVE_DICOM_NAMESPACE", "to_native_xml"]

NATIVE_DICOM_NAMESPACE = "http://dicom.nema.org/PS3.19/models/NativeDICOM"

_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>\n'
_ROOT_OPEN = f'<NativeDicomModel xmlns="{NATIVE_DICOM_NAMESPACE}" xml:space="preserve">'
_ROOT_CLOSE = "</NativeDicomModel>"

# The values of the ``vr`` XML attribute the schema allows (PS3.19 A.1.6).
_SCHEMA_VRS = frozenset(
    {
        "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FL", "FD", "IS", "LO", "LT", "OB", "OD", "OF",
        "OL", "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN",
        "UR", "US", "UT", "UV",
    }
)  # fmt: skip
# PS3.19 A.1.6 NameComponents, in the order of the components of a PN group (PS3.5 6.2).
_NAME_COMPONENTS = ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")
_PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")  # PS3.18 F.2.2, PS3.19 A.1.5

_TAG = re.compile(r"[0-9A-Fa-f]{8}")
# Characters XML 1.0 cannot carry at all, not even as character references (XML 1.0 2.2):
# C0 controls other than TAB, LF, CR (an LT may hold a form feed), lone surrogates, U+FFFE/F.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_TEXT_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"})
_ATTRIBUTE_ESCAPES = str.maketrans(
    {
        "&": "&amp;",
        "<": "&lt;",
        ">": "&gt;",
        '"': "&quot;",
        "\t": "&#9;",
        "\n": "&#10;",
        "\r": "&#13;",
    }
)


def to_native_xml(dataset: Mapping[str, Any]) -> bytes:
    """One data set in DICOM JSON (PS3.18 F.2) as a Native DICOM Model document (PS3.19 A.1).

    UTF-8 with an XML declaration (PS3.19 A.1.5: values are translated to the character
    encoding of the Infoset, whatever the Specific Character Set). The root element is in the
    schema's namespace (A.1.6) and carries ``xml:space="preserve"`` (A.1.5, Table A.1.5-1).
    Each attribute, in ascending tag order, is a ``DicomAttribute`` (Table A.1.5-2) with:

    * ``tag``: eight upper-case hex digits; group lengths (gggg,0000) are left out (A.1.1).
    * ``vr``: the JSON ``vr`` when it is one the schema lists, else the dictionary VR when it
      is unambiguous, else none (the XML attribute is optional).
    * ``keyword``: from pydicom's data dictionary (PS3.6), repeating groups included; none for
      private data elements and Private Creators, which PS3.6 gives none.
    * ``privateCreator``: for a private data element (gggg,bbee) whose Private Creator
      (gggg,00bb) is in the same data set; its ``tag`` is then gggg00ee, as A.1.5 requires
      (the block is conveyed by the creator, not by the element number). A private data
      element whose creator is absent keeps its own tag and has no ``privateCreator``.
    * content: one ``Value number="n"`` per value (n from 1; an empty value among several is an
      empty ``Value``, A.1.5; numbers written as in JSON; AT in upper case), one
      ``PersonName number="n"`` per PN value with its ``Alphabetic``, ``Ideographic`` and
      ``Phonetic`` groups split into ``FamilyName``, ``GivenName``, ``MiddleName``,
      ``NamePrefix`` and ``NameSuffix`` (empty components are left out; components past the
      fifth, which PS3.5 does not allow, stay in ``NameSuffix`` with their ``^``), one
      ``Item number="n"`` per sequence item holding its attributes, a ``BulkData uri=...``
      for a ``BulkDataURI`` (F.2.6), an ``InlineBinary`` for an ``InlineBinary`` (F.2.7), and
      nothing for an attribute without a value (F.2.5).

    Characters XML 1.0 cannot represent (C0 controls but TAB, LF and CR; lone surrogates)
    become U+FFFD; CR is written as ``&#13;`` so that parsers keep it. Raises ValueError for
    input that is not DICOM JSON (a key that is not a tag, an attribute that is not an
    object, a value that is neither text, number nor null).
    """
    out = [_DECLARATION, _ROOT_OPEN]
    _write_dataset(out, dataset)
    out.append(_ROOT_CLOSE)
    return "".join(out).encode("utf-8")


def _write_dataset(out: list[str], dataset: Mapping[str, Any]) -> None:
    if not isinstance(dataset, Mapping):
        raise ValueError(f"a DICOM JSON data set must be an object, not {type(dataset).__name__}")
    elements: dict[int, Mapping[str, Any]] = {}
    for key, element in dataset.items():
        if not isinstance(key, str) or not _TAG.fullmatch(key):
            raise ValueError(f"not a DICOM JSON attribute tag: {str(key)[:40]!r}")
        if not isinstance(element, Mapping):
            raise ValueError(f"attribute {key}: a DICOM JSON attribute must be an object")
        elements[int(key, 16)] = element
    for tag in sorted(elements):
        if tag & 0xFFFF:  # PS3.19 A.1.1: no Group Length (gggg,0000)
            _write_attribute(out, tag, elements[tag], elements)


def _write_attribute(
    out: list[str], tag: int, element: Mapping[str, Any], siblings: Mapping[int, Mapping[str, Any]]
) -> None:
    vr = _vr(tag, element.get("vr"))
    creator = _private_creator(tag, siblings)
    if creator is not None:  # PS3.19 A.1.5: a private data element's tag is gggg00ee
        attributes = [("tag", f"{tag >> 16:04X}00{tag & 0xFF:02X}")]
    else:
        attributes = [("tag", f"{tag:08X}")]
    if vr is not None:
        attributes.append(("vr", vr))
    keyword = "" if tag >> 16 & 1 else keyword_for_tag(tag)  # odd group: private, no keyword
    if keyword:
        attributes.append(("keyword", keyword))
    if creator is not None:
        attributes.append(("privateCreator", creator))
    head = "<DicomAttribute" + "".join(f' {k}="{_attribute(v)}"' for k, v in attributes)

    values = element.get("Value")
    uri = element.get("BulkDataURI")
    inline = element.get("InlineBinary")
    if isinstance(values, list) and values:
        out.append(head + ">")
        write = _WRITERS.get(vr or "", _write_values)
        write(out, values, vr)
    elif isinstance(uri, str):
        out.append(f'{head}><BulkData uri="{_attribute(uri)}"/>')
    elif isinstance(inline, str):
        out.append(f"{head}><InlineBinary>{_text(inline)}</InlineBinary>")
    else:  # zero length (PS3.18 F.2.5): no content at all
        out.append(head + "/>")
        return
    out.append("</DicomAttribute>")


def _vr(tag: int, declared: Any) -> str | None:
    """The ``vr`` XML attribute: the JSON one if the schema knows it, else the dictionary's."""
    if isinstance(declared, str) and declared in _SCHEMA_VRS:
        return str(declared)  # a plain str, should it be pydicom's VR enum
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return None
    return vr if vr in _SCHEMA_VRS else None  # "US or SS": ambiguous, left out


def _private_creator(tag: int, siblings: Mapping[int, Mapping[str, Any]]) -> str | None:
    """Value of the Private Creator (gggg,00bb) reserving the block of (gggg,bbee), if known."""
    group, number = tag >> 16, tag & 0xFFFF
    if not group & 1 or number < 0x1000 or group in (0x0001, 0x0003, 0x0005, 0x0007, 0xFFFF):
        return None  # PS3.5 7.8.1: only odd groups above 0008, elements 10xx-FFxx
    creator = siblings.get(group << 16 | number >> 8)
    values = None if creator is None else creator.get("Value")
    if isinstance(values, list) and values and isinstance(values[0], str) and values[0].strip():
        return values[0].strip(" ")
    return None


def _write_values(out: list[str], values: list[Any], vr: str | None) -> None:
    for number, value in enumerate(values, 1):
        text = _scalar(value)
        if vr == "AT":
            text = text.upper()  # PS3.19 A.1.5: AT as ggggeeee, lower case disallowed
        if text:
            out.append(f'<Value number="{number}">{_text(text)}</Value>')
        else:
            out.append(f'<Value number="{number}"/>')


def _write_items(out: list[str], items: list[Any], _vr: str | None) -> None:
    for number, item in enumerate(items, 1):
        if not item:  # an empty item (or a null one)
            out.append(f'<Item number="{number}"/>')
            continue
        out.append(f'<Item number="{number}">')
        _write_dataset(out, item)
        out.append("</Item>")


def _write_person_names(out: list[str], names: list[Any], _vr: str | None) -> None:
    for number, name in enumerate(names, 1):
        if isinstance(name, str):  # not DICOM JSON, but unambiguous: the alphabetic group
            name = {"Alphabetic": name}
        if name is not None and not isinstance(name, Mapping):
            raise ValueError(f"a PN value must be an object, not {type(name).__name__}")
        groups = [
            (group, components)
            for group in _PN_GROUPS
            if name is not None and (components := _components(name.get(group)))
        ]
        if not groups:
            out.append(f'<PersonName number="{number}"/>')
            continue
        out.append(f'<PersonName number="{number}">')
        for group, components in groups:
            out.append(f"<{group}>{components}</{group}>")
        out.append("</PersonName>")


def _components(group: Any) -> str:
    """The NameComponents elements of one component group (PS3.5 6.2 PN), "" if none."""
    if group is None:
        return ""
    if not isinstance(group, str):
        raise ValueError(f"a PN component group must be text, not {type(group).__name__}")
    parts = group.split("^")
    parts[4:] = ["^".join(parts[4:])] if len(parts) > 4 else []
    return "".join(
        f"<{name}>{_text(part)}</{name}>"
        for name, part in zip(_NAME_COMPONENTS, parts, strict=False)
        if part
    )


def _scalar(value: Any) -> str:
    """A DICOM JSON value as text: strings as they are, numbers as JSON writes them."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):  # bool is an int: JSON's true/false, not valid DICOM
        return json.dumps(value)
    raise ValueError(
        f"a DICOM JSON value must be text, a number or null, not {type(value).__name__}"
    )


def _text(text: str) -> str:
    return _NOT_XML.sub("\ufffd", text).translate(_TEXT_ESCAPES)


def _attribute(text: str) -> str:
    return _NOT_XML.sub("\ufffd", text).translate(_ATTRIBUTE_ESCAPES)


_WRITERS = {"SQ": _write_items, "PN": _write_person_names}
