"""Helpers for comparing the gateway with the PACS reached directly."""

from __future__ import annotations

import http.client
import io
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pydicom
import requests

from tests.conftest import Gateway, Pacs
from tests.integration.multipart_split import split_multipart


def pacs_json(pacs: Pacs, path: str, raw_query: str = "") -> Any:
    """GET from Orthanc with the query string sent exactly as given (it does not decode it)."""
    url = urlsplit(f"{pacs.dicomweb_root}/{path}")
    target = url.path + (f"?{raw_query}" if raw_query else "")
    # http.client sends the target as given; requests/urllib3 would re-quote `^` to %5E.
    connection = http.client.HTTPConnection(url.netloc, timeout=60)
    try:
        connection.request("GET", target, headers={"Accept": "application/dicom+json"})
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    assert response.status == 200, (target, response.status, body[:300])
    return json.loads(body)


def as_seen_through(gateway_root: str, pacs: Pacs, body: Any) -> Any:
    """The PACS's answer with its URLs moved to the gateway's root, done independently."""
    text = json.dumps(body).replace(pacs.dicomweb_root + "/", gateway_root + "/")
    return json.loads(text)


def uids(datasets: list[dict[str, Any]], tag: str) -> list[str]:
    return [d[tag]["Value"][0] for d in datasets]


def gateway_root(gateway: Gateway, site: str | None = None) -> str:
    return gateway.dicomweb if site is None else f"{gateway.url}/site/{site}/dicom-web"


def status_kb(pid: int, field: str) -> int:
    """A /proc/PID/status figure in kB (VmRSS: resident now, VmHWM: its peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {pid}")


def reset_peak_rss(pid: int) -> None:
    """Writing 5 to clear_refs resets VmHWM (peak RSS) to the current RSS (Linux >= 4.0)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


# PS3.18 Tables 10.6.3-3/-4/-5: the type R return attributes (empty when the PACS has no value),
# written out here rather than taken from the gateway's own tables.
_REQUIRED = {
    "study": [
        *("StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy"),
        *("ReferringPhysicianName", "PatientName", "PatientID", "PatientBirthDate", "PatientSex"),
        *("StudyID", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"),
    ],
    "series": ["Modality", "SeriesNumber", "NumberOfSeriesRelatedInstances"],
    "instance": ["SOPClassUID", "InstanceNumber"],
}
_UID = {"study": "0020000D", "series": "0020000E"}
_PARENTS_OWN = {"00081190", "00080056", "00080201"}  # never copied from a parent


def _hex(keyword: str) -> str:
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return f"{tag:08X}"


def qido_as_answered(gateway_root: str, pacs: Pacs, path: str, body: list[Any]) -> list[Any]:
    """What the gateway answers for the QIDO ``path`` the PACS answered ``body`` to, worked out
    from PS3.18 10.6.3.3 and the PACS reached directly: URLs moved (:func:`as_seen_through`),
    a search of all series or instances carrying its study's (and series') attributes as the
    PACS answers for those, every type R attribute present (empty if unknown)."""
    from pydicom.datadict import dictionary_VR

    parts = path.strip("/").split("/")
    level = {"studies": "study", "series": "series", "instances": "instance"}[parts[-1]]
    parents: list[str] = []
    if len(parts) == 1 and level != "study":
        parents = ["study"] if level == "series" else ["study", "series"]
    elif parts[0] == "studies" and len(parts) == 3 and level == "instance":
        parents = ["series"]
    answer: list[dict[str, Any]] = as_seen_through(gateway_root, pacs, body)
    for parent in parents:
        uid_tag = _UID[parent]
        found = {}
        for item in answer:
            uid = item.get(uid_tag, {}).get("Value", [None])[0]
            if uid is None or uid in found:
                continue
            if parent == "study":
                where = "studies"
            else:
                where = "series" if len(parts) == 1 else f"studies/{parts[1]}/series"
            (found[uid],) = as_seen_through(
                gateway_root, pacs, pacs_json(pacs, where, f"{uid_tag}={uid}")
            )
        for item in answer:
            uid = item.get(uid_tag, {}).get("Value", [None])[0]
            for key, value in found.get(uid, {}).items():
                if key not in item and key not in _PARENTS_OWN:
                    item[key] = value
    for lv in [*parents, level]:
        for keyword in _REQUIRED[lv]:
            tag = _hex(keyword)
            for item in answer:
                item.setdefault(tag, {"vr": dictionary_VR(tag).split(" or ")[0]})
    return answer


def after_meta(body: bytes) -> bytes:
    """A Part-10 file's dataset without its preamble and File Meta Information: what a PACS
    stored, whoever wrote the meta (each receiver writes its own, PS3.10 7.1)."""
    stream = io.BytesIO(body)
    pydicom.filereader.read_preamble(stream, False)
    pydicom.filereader._read_file_meta_info(stream)
    return body[stream.tell() :]


def orthanc_study_files(pacs: Pacs, study: str) -> dict[str, bytes]:
    """Orthanc's own WADO-RS retrieve of ``study``, as stored: its Part-10 files by SOP UID."""
    response = requests.get(
        f"{pacs.dicomweb_root}/studies/{study}",
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        timeout=120,
    )
    assert response.status_code == 200
    out = {}
    for _, body in split_multipart(response.headers["Content-Type"], response.content):
        sop = str(pydicom.dcmread(io.BytesIO(body), stop_before_pixels=True).SOPInstanceUID)
        out[sop] = body
    return out
