"""What the WADO-RS checks (``wado``, ``wado_metadata``, ``wado_errors``, ``wado_pixels``)
share besides the wire (``_wado_stream``): media types and transfer syntaxes, the fixture's
paths, DICOM JSON values read without trust, QIDO's instance count of a series, and a
compressed instance searched once per run (:meth:`Probe.memo`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..context import Answer, Fixture, Probe
from ..model import Failed
from ._wado_stream import DICOM, retrieve_instances

__all__ = [
    "DICOM_JSON",
    "EVRLE",
    "OCTETS",
    "Stored",
    "bulkdata_uri",
    "compressed_instance",
    "instance_path",
    "metadata_url",
]

DICOM_JSON = "application/dicom+json"
OCTETS = 'multipart/related; type="application/octet-stream"'
EVRLE = "1.2.840.10008.1.2.1"  # Explicit VR Little Endian: the web services' default
ANY = "transfer-syntax=*"
# Transfer syntaxes that never lose information: an instance stored so must come back as
# Explicit VR Little Endian by default (PS3.18 8.7.3.4 allows the stored form only if lossy).
LOSSLESS = {
    EVRLE,
    "1.2.840.10008.1.2.1.98",  # Encapsulated Uncompressed Explicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless Only
    "1.2.840.10008.1.2.4.110",  # JPEG XL Lossless
    "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless RPCL
}
CANDIDATE_STUDIES = 20  # studies whose metadata is searched for a compressed instance


def instance_path(fx: Fixture) -> str:
    return f"/studies/{fx.study}/series/{fx.series}/instances/{fx.instance}"


def metadata_url(probe: Probe, fx: Fixture) -> str:
    """Where the fixture's instance metadata came from (relative BulkDataURIs resolve here)."""
    return probe.url(f"{instance_path(fx)}/metadata")


def _series_path(fx: Fixture) -> str:
    return f"/studies/{fx.study}/series/{fx.series}"


def _value(element_map: Any, tag: str) -> Any:
    """The first Value of ``tag`` in a DICOM JSON object, or None."""
    element = element_map.get(tag) if isinstance(element_map, dict) else None
    values = element.get("Value") if isinstance(element, dict) else None
    return values[0] if isinstance(values, list) and values else None


def bulkdata_uri(item: Any, tag: str) -> str | None:
    """The BulkDataURI of ``tag`` in a DICOM JSON object, or None."""
    element = item.get(tag) if isinstance(item, dict) else None
    uri = element.get("BulkDataURI") if isinstance(element, dict) else None
    return uri if isinstance(uri, str) else None


def _int(value: Any) -> int | None:
    """A DICOM JSON IS value as an int (a number or a numeric string), else None."""
    try:
        return int(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


def _json(answer: Answer) -> Any:
    """A 200 answer's JSON, or None (for searches where a bad answer just finds nothing)."""
    if answer.status != 200 or answer.truncated:
        return None
    try:
        return answer.json()
    except Failed:
        return None


async def _series_count(probe: Probe, fx: Fixture) -> int | None:
    """NumberOfSeriesRelatedInstances by QIDO, or the instances QIDO lists (None if unsure:
    QIDO's own faults are the QIDO checks' business)."""
    found = _json(
        await probe.get(
            f"/studies/{fx.study}/series",
            accept=DICOM_JSON,
            params={"SeriesInstanceUID": fx.series, "includefield": "00201209"},
        )
    )
    for item in found if isinstance(found, list) else []:
        if _value(item, "0020000E") == fx.series and _int(_value(item, "00201209")) is not None:
            return _int(_value(item, "00201209"))
    listed = await probe.get(f"{_series_path(fx)}/instances", accept=DICOM_JSON)
    items = _json(listed)
    if isinstance(items, list) and "Warning" not in listed.headers:
        return len(items)
    return None


@dataclass(frozen=True)
class Stored:
    """An instance and the transfer syntax it comes in with transfer-syntax=*."""

    path: str
    transfer_syntax: str


async def compressed_instance(probe: Probe) -> Stored | None:
    """An instance stored compressed, losslessly if possible (None when none is found):
    searched once per run in the metadata of the fixture's and the smallest studies."""
    return await probe.memo("compressed-instance", lambda: _find_compressed(probe))


async def _find_compressed(probe: Probe) -> Stored | None:
    fx = await probe.fixture()
    studies = [fx.study] + [s for s in await _small_studies(probe) if s != fx.study]
    found: list[Stored] = []
    for study in studies[:CANDIDATE_STUDIES]:
        items = _json(await probe.get(f"/studies/{study}/metadata", accept=DICOM_JSON))
        for item in items if isinstance(items, list) else []:
            series, instance = _value(item, "0020000E"), _value(item, "00080018")
            if not (series and instance and _looks_compressed(item)) or len(found) >= 4:
                continue
            path = f"/studies/{study}/series/{series}/instances/{instance}"
            try:
                _, parts = await retrieve_instances(probe, path, accept=f"{DICOM}; {ANY}")
            except Failed:  # transfer-syntax-any will say why; its stored form stays unknown
                found.append(Stored(path, ""))
                continue
            found.append(Stored(path, parts[0].transfer_syntax))
            if found[-1].transfer_syntax in LOSSLESS - {EVRLE}:
                return found[-1]
    # A lossy one, else one whose retrieve failed (EVRLE-stored ones prove nothing).
    ranked = [f for f in found if f.transfer_syntax and f.transfer_syntax not in LOSSLESS] + [
        f for f in found if not f.transfer_syntax
    ]
    return ranked[0] if ranked else None


async def _small_studies(probe: Probe) -> list[str]:
    """Study UIDs by QIDO, fewest instances first (their metadata is cheap to read)."""
    answer = await probe.get(
        "/studies", accept=DICOM_JSON, params={"limit": "100", "includefield": "00201208"}
    )
    items = _json(answer)
    found = [
        (_int(_value(s, "00201208")) or 10**9, str(_value(s, "0020000D")))
        for s in (items if isinstance(items, list) else [])
        if _value(s, "0020000D")
    ]
    return [uid for _, uid in sorted(found)]


def _looks_compressed(item: Any) -> bool:
    """From metadata alone: a transfer syntax given (0002,0010 or Available Transfer Syntax
    0008,3002) other than EVRLE, Pixel Data of more than 8 bits as OB (encapsulated), or an
    image without Pixel Data (a server that leaves encapsulated pixels out)."""
    for tag in ("00020010", "00083002"):
        element = item.get(tag) if isinstance(item, dict) else None
        values = element.get("Value") if isinstance(element, dict) else None
        if isinstance(values, list) and values and EVRLE not in values:
            return True
    if not isinstance(item, dict) or "00280010" not in item:
        return False  # not an image
    pixels = item.get("7FE00010")
    if pixels is None:
        return not {"7FE00008", "7FE00009"} & item.keys()  # some servers drop encapsulated data
    bits = _value(item, "00280100")
    return (
        isinstance(pixels, dict)
        and pixels.get("vr") == "OB"
        and isinstance(bits, int)
        and (bits > 8)
    )
